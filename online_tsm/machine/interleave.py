"""The order in which contestants take turns when they are timed against each other in one process.

Two timed things in one process disturb each other at every hand-over: the
one that just ran leaves its thread pool spinning and its working set in the
caches.  Measured on a 2-core VM with three identical ONNX Runtime sessions,
the first three frames after a hand-over ran up to 1.7x slower than the rest
(224x224 MobileNetV2: 6.9, 8.8, 8.6, then 5.3-5.5 ms), for small and large
models alike.  With the palindromic order A B C, C B A the middle contestant
was handed over to in every round and the outer ones in every other, which
made an identical session look 0.58x as fast.  So:

* turns rotate (A B C, B C A, C A B): every contestant follows each of the
  others equally often and never itself, so none is favoured;
* each turn begins with :data:`SETTLE_FRAMES` untimed calls, so what is
  timed is the steady state a single-model application sees.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence, TypeVar

T = TypeVar("T")

SETTLE_FRAMES = 3  # untimed calls at the start of every turn (see the module docstring)


def turn_order(contestants: Sequence[T], turn: int) -> list[T]:
    """The contestants in the order they run in round ``turn``: rotated by one place per round."""
    n = len(contestants)
    if n == 0:
        return []
    k = turn % n
    return list(contestants[k:]) + list(contestants[:k])


def interleaved_samples(samplers: Mapping[str, Callable[[], float]], samples_in_turn: Callable[[int], int], *,
                        settle: Mapping[str, Callable[[], object]] | None = None, settle_calls: int = SETTLE_FRAMES,
                        on_sample: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Take samples from every contestant in rotating rounds; the one timing loop of the toolkit.

    In round ``turn`` each contestant, in :func:`turn_order`, first makes
    ``settle_calls`` untimed calls of its ``settle`` function (when given and
    when there is more than one contestant: a lone one is never handed over
    to), then gives ``samples_in_turn(turn)`` samples of its sampler (a
    measured figure, e.g. milliseconds).  Rounds go on until
    ``samples_in_turn`` returns 0, so callers stop on a count, a deadline or
    both.  ``on_sample`` runs after every sample (progress bars).
    """
    names = list(samplers)
    samples: dict[str, list[float]] = {name: [] for name in names}
    settle = settle if settle and len(names) > 1 else {}
    turn = 0
    while (count := samples_in_turn(turn)) > 0:
        for name in turn_order(names, turn):
            if name in settle:
                for _ in range(settle_calls):
                    settle[name]()
            for _ in range(count):
                samples[name].append(samplers[name]())
                if on_sample:
                    on_sample()
        turn += 1
    return samples
