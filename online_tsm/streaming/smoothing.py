"""Turn noisy per-frame logits into a steady prediction, as the paper's online demo did.

A single frame's logits flicker: the streaming model sees one new frame per
step, and near a gesture's start and end the top class changes every few
frames.  The upstream demo therefore (1) averaged the logits of the last 12
steps, (2) refused to switch the shown class on a single step, and (3) never
showed a few Jester classes that fire spuriously on a live webcam.  This
module is that logic as one small class, with every knob explicit.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from online_tsm.labels import JESTER_LABELS

DEFAULT_HISTORY = 12
DEFAULT_DEBOUNCE = 2

# Jester classes the upstream demo masked out because they fire on ordinary hand
# movement in front of a webcam: Pulling Hand In, Rolling Hand Backward/Forward,
# Turning Hand Clockwise/Counterclockwise.
JESTER_IGNORED: tuple[int, ...] = (3, 7, 8, 21, 22)


@dataclass(frozen=True)
class SmoothedPrediction:
    """What to show after one step.

    ``index`` is the debounced class (``None`` until a class that is not
    ignored has been seen); ``confidence`` is its softmax probability under the
    averaged logits; ``top`` lists ``(class, probability)`` of the averaged
    logits, best first, ignored classes included (they are real model output).
    ``raw_index`` is the argmax of the averaged logits before debounce and
    masking, which is useful in logs to see what the smoothing held back.
    """

    index: int | None
    confidence: float
    top: list[tuple[int, float]] = field(default_factory=list)
    raw_index: int | None = None
    switched: bool = False


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max())
    return z / z.sum()


class PredictionSmoother:
    """Average of the last ``history`` logits + debounce + ignored classes.

    - **History**: the shown class is the argmax of the mean of the last
      ``history`` logit vectors (1 = no averaging).
    - **Debounce**: a different class replaces the shown one only after it has
      been the argmax on ``debounce`` consecutive steps (1 = switch at once).
      The very first class is shown at once: there is nothing to flicker from.
    - **Ignored classes**: when the argmax is ignored, the shown class stays
      and any pending switch is cancelled, as the upstream demo did.
    """

    def __init__(self, n_class: int, history: int = DEFAULT_HISTORY, debounce: int = DEFAULT_DEBOUNCE,
                 ignore: Iterable[int] = (), top_k: int = 3) -> None:
        if n_class < 1:
            raise ValueError(f"n_class must be >= 1, got {n_class}")
        if history < 1:
            raise ValueError(f"history (number of logit vectors averaged) must be >= 1, got {history}")
        if debounce < 1:
            raise ValueError(f"debounce (consecutive steps before switching) must be >= 1, got {debounce}")
        ignored = frozenset(int(i) for i in ignore)
        bad = sorted(i for i in ignored if not 0 <= i < n_class)
        if bad:
            raise ValueError(f"ignored class indices {bad} are out of range for {n_class} classes")
        if len(ignored) == n_class:
            raise ValueError("every class is ignored; nothing could ever be shown")
        self.n_class = n_class
        self.history = history
        self.debounce = debounce
        self.ignore = ignored
        self.top_k = max(1, min(top_k, n_class))
        self._logits: deque[np.ndarray] = deque(maxlen=history)
        self._current: int | None = None
        self._pending: int | None = None
        self._pending_count = 0

    @property
    def current(self) -> int | None:
        """The class shown now (``None`` before the first usable step)."""
        return self._current

    def reset(self) -> None:
        """Forget everything, e.g. when the stream's shift buffers are reset."""
        self._logits.clear()
        self._current = None
        self._pending = None
        self._pending_count = 0

    def update(self, logits: np.ndarray) -> SmoothedPrediction:
        """Add one step's logits ``[n_class]`` and return what to show now."""
        vec = np.asarray(logits, dtype=np.float32).reshape(-1)
        if vec.shape[0] != self.n_class:
            raise ValueError(f"expected logits of shape [{self.n_class}], got {list(np.shape(logits))}")
        self._logits.append(vec)
        mean = np.mean(np.stack(self._logits), axis=0)
        probs = softmax(mean)
        raw = int(np.argmax(mean))
        switched = self._debounce(raw)
        order = np.argsort(-probs, kind="stable")[: self.top_k]
        top = [(int(i), float(probs[i])) for i in order]
        confidence = float(probs[self._current]) if self._current is not None else 0.0
        return SmoothedPrediction(self._current, confidence, top, raw, switched)

    def _debounce(self, candidate: int) -> bool:
        """Advance the debounce state with this step's argmax; True when the shown class changed."""
        if candidate in self.ignore or candidate == self._current:
            self._pending, self._pending_count = None, 0
            return False
        if self._current is None:
            self._current = candidate
            return True
        if candidate == self._pending:
            self._pending_count += 1
        else:
            self._pending, self._pending_count = candidate, 1
        if self._pending_count >= self.debounce:
            self._current, self._pending, self._pending_count = candidate, None, 0
            return True
        return False


def default_ignored(labels: Sequence[str]) -> tuple[int, ...]:
    """The upstream demo's ignored classes for the 27 Jester labels, none for any other label set."""
    return JESTER_IGNORED if tuple(labels) == JESTER_LABELS else ()


def resolve_ignored(names: str | Sequence[str], labels: Sequence[str]) -> tuple[int, ...]:
    """Class names (a comma-separated string or a list; case-insensitive) -> indices into ``labels``."""
    if isinstance(names, str):
        names = [n for n in (part.strip() for part in names.split(",")) if n]
    by_name = {label.casefold(): i for i, label in enumerate(labels)}
    unknown = [n for n in names if n.strip().casefold() not in by_name]
    if unknown:
        raise ValueError(f"unknown class name(s) to ignore: {', '.join(map(repr, unknown))}; "
                         f"the model's classes are: {', '.join(labels)}")
    return tuple(sorted({by_name[n.strip().casefold()] for n in names}))
