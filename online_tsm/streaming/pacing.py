"""How often to run a streaming model, and how much to smooth it, from how it was trained.

A TSM model is trained on clips cut into T segments with one frame taken per
segment, so between two of its steps the world moved by about
``clip length / T`` source frames.  Streamed on every camera frame it sees
motion several times slower than it learned, and a model trained on
synthetic gestures of ~32 frames at 8 segments then mistakes most swipes for
zooms or "no gesture" (measured with the shipped default model on the
synthetic demo source: right on 22 % of the late-gesture frames at every
frame, 100 % at every 4th, the training stride).  Training therefore records
``frame_stride`` (source frames per step) and ``segments`` in the
checkpoint, the export copies them into the manifest, and the demo derives
its defaults from them.  Checkpoints without them (the upstream Jester
weights) keep the upstream demo's settings.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from online_tsm.streaming.smoothing import DEFAULT_DEBOUNCE, DEFAULT_HISTORY


@dataclass(frozen=True)
class StreamPace:
    """Inference every ``every`` frames; logits averaged over ``history`` steps; ``debounce`` steps to switch."""

    every: int
    history: int
    debounce: int
    reason: str


UPSTREAM_PACE = StreamPace(1, DEFAULT_HISTORY, DEFAULT_DEBOUNCE,
                           "no training pace recorded in the model: the upstream demo's settings")


def pace_from_metadata(meta: Mapping[str, Any] | None) -> StreamPace:
    """The pace a model was trained for, from checkpoint ``extra`` or manifest ``model`` metadata.

    ``every`` is the recorded frame stride rounded (at least 1).  ``history``
    is half a training clip (``segments // 2`` steps): long enough to average
    out single-step flicker, short enough that the previous gesture has left
    the average by the middle of the next one; ``debounce`` is 1 because the
    average already smooths.  Without a usable stride: :data:`UPSTREAM_PACE`.
    """
    meta = meta or {}
    try:
        stride = float(meta["frame_stride"])
        segments = int(meta.get("segments", 8))
    except (KeyError, TypeError, ValueError):
        return UPSTREAM_PACE
    if not stride > 0 or segments < 1:
        return UPSTREAM_PACE
    every = max(1, round(stride))
    history = max(1, segments // 2)
    return StreamPace(every, history, 1, f"the model was trained at one frame in {stride:.1f}, "
                                         f"{segments} steps per clip")
