"""Timing loops over the runtimes protocol, and the statistics they give.

Everything here times *callables* (one call = one frame, or one batch of
frames), so the same loop serves a stream's ``step``, a plain ONNX Runtime
session, the end-to-end camera loop and ``step_many``.  Contestants that are
compared with each other (TSM against TSN, batched against sequential) are
measured in interleaved rounds: on a shared, noisy 2-core machine a slow
minute then hurts both sides alike instead of biasing one of them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import numpy as np

from online_tsm.machine.interleave import SETTLE_FRAMES, interleaved_samples

Clock = Callable[[], float]


@dataclass
class LatencyStats:
    """Per-call latencies in milliseconds, plus the cold first call measured apart."""

    samples_ms: list[float]
    cold_ms: float | None = None
    calls_per_sample: int = 1  # frames per timed call (``step_many`` over N streams: N)

    @property
    def runs(self) -> int:
        return len(self.samples_ms)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.samples_ms, q)) if self.samples_ms else float("nan")

    @property
    def min(self) -> float:
        return float(min(self.samples_ms)) if self.samples_ms else float("nan")

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p90(self) -> float:
        return self.percentile(90)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples_ms)) if self.samples_ms else float("nan")

    @property
    def fps(self) -> float:
        """Sustained frames per second: frames per call over the *mean* call time (not the median)."""
        return 1000.0 * self.calls_per_sample / self.mean if self.samples_ms else float("nan")

    def summary(self) -> dict[str, float | int | None]:
        """The numbers every report shows; the raw samples stay in :attr:`samples_ms`."""
        return {"runs": self.runs, "min_ms": self.min, "p50_ms": self.p50, "p90_ms": self.p90,
                "p99_ms": self.p99, "mean_ms": self.mean, "fps": self.fps, "cold_ms": self.cold_ms}


def time_call(fn: Callable[[], object], clock: Clock = time.perf_counter) -> float:
    """Milliseconds one call of ``fn`` takes."""
    start = clock()
    fn()
    return (clock() - start) * 1e3


@dataclass
class Contestant:
    """One thing to time: ``call`` runs one sample (a frame, or a batch of ``calls_per_sample`` frames)."""

    name: str
    call: Callable[[], object]
    calls_per_sample: int = 1
    stats: LatencyStats = field(init=False)

    def __post_init__(self) -> None:
        self.stats = LatencyStats([], calls_per_sample=self.calls_per_sample)


def measure_interleaved(contestants: Iterable[Contestant], *, samples: int, warmup: int, round_size: int = 10,
                        measure_cold: bool = True, clock: Clock = time.perf_counter,
                        on_sample: Callable[[], None] | None = None,
                        settle: int = SETTLE_FRAMES) -> dict[str, LatencyStats]:
    """Time every contestant ``samples`` times, in interleaved rounds of ``round_size``.

    Order per contestant: one cold call (timed apart, if ``measure_cold``),
    ``warmup`` untimed calls, then the timed calls.  Rounds rotate the
    contestants' order (A B C, B C A, ...) and every turn starts with
    ``settle`` untimed calls, so that no contestant pays for the hand-over
    more than another (see :mod:`online_tsm.machine.interleave`).  ``on_sample`` is
    called after each timed sample (progress bars).
    """
    players = list(contestants)
    if samples <= 0:
        raise ValueError(f"expected a positive number of timed frames, got {samples}")
    if warmup < 0:
        raise ValueError(f"expected a non-negative number of warm-up frames, got {warmup}")
    round_size = max(1, int(round_size))
    for p in players:
        if measure_cold:
            p.stats.cold_ms = time_call(p.call, clock)
        for _ in range(warmup):
            p.call()
    timed = interleaved_samples(
        {p.name: (lambda p=p: time_call(p.call, clock)) for p in players},
        lambda turn: max(0, min(round_size, samples - turn * round_size)),
        settle={p.name: p.call for p in players}, settle_calls=settle, on_sample=on_sample)
    for p in players:
        p.stats.samples_ms.extend(timed[p.name])
    return {p.name: p.stats for p in players}


def cycle_frames(frames: np.ndarray) -> Callable[[], np.ndarray]:
    """A function returning the next of ``frames`` on each call, round and round."""
    index = [0]

    def next_frame() -> np.ndarray:
        frame = frames[index[0] % len(frames)]
        index[0] += 1
        return frame

    return next_frame


@dataclass
class StageTimes:
    """Per-frame times of the camera loop's stages (ms): what one frame costs end to end."""

    stages: dict[str, list[float]]

    def p50(self) -> dict[str, float]:
        return {name: float(np.percentile(ts, 50)) for name, ts in self.stages.items()}

    @property
    def total(self) -> LatencyStats:
        return LatencyStats([float(sum(parts)) for parts in zip(*self.stages.values())])


def measure_stages(stages: Mapping[str, Callable[[object], object]], make_input: Callable[[], object], *,
                   samples: int, warmup: int, clock: Clock = time.perf_counter,
                   on_sample: Callable[[], None] | None = None) -> StageTimes:
    """Time a pipeline of stages frame by frame: each stage gets the previous stage's output.

    Used for the end-to-end loop (pre-processing -> step -> smoothing); the
    stage times of one frame are taken in the same pass, so their sum is that
    frame's end-to-end time.
    """
    names = list(stages)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(warmup + samples):
        value = make_input()
        for name in names:
            start = clock()
            value = stages[name](value)
            if i >= warmup:
                times[name].append((clock() - start) * 1e3)
        if i >= warmup and on_sample:
            on_sample()
    return StageTimes(times)
