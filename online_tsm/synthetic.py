"""Synthetic video frames, so that every tool runs on any machine without a camera or data set.

A textured, hand-sized square moves over a noisy background; the motion is
what carries the meaning (a swipe left looks, frame by frame, like a swipe
right played backwards).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

MOTIONS = ("swipe-left", "swipe-right", "swipe-up", "swipe-down", "zoom-in", "zoom-out", "still", "jitter")


def synthetic_frames(n_frames: int, height: int = 240, width: int = 320, motion: str = "swipe-left",
                     seed: int = 0) -> Iterator[np.ndarray]:
    """Yield ``n_frames`` uint8 BGR frames ``[height, width, 3]`` of one gesture-like motion."""
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}; expected one of {', '.join(MOTIONS)}")
    rng = np.random.default_rng(seed)
    background = rng.integers(40, 120, size=(height, width, 3), dtype=np.uint8)
    texture = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    base = min(height, width) // 3
    for t in range(n_frames):
        p = t / max(1, n_frames - 1)  # progress 0..1
        cx, cy, size = 0.5, 0.5, base
        if motion == "swipe-left":
            cx = 0.8 - 0.6 * p
        elif motion == "swipe-right":
            cx = 0.2 + 0.6 * p
        elif motion == "swipe-up":
            cy = 0.8 - 0.6 * p
        elif motion == "swipe-down":
            cy = 0.2 + 0.6 * p
        elif motion == "zoom-in":
            size = int(base * (0.5 + p))
        elif motion == "zoom-out":
            size = int(base * (1.5 - p))
        elif motion == "jitter":
            cx, cy = 0.5 + rng.uniform(-0.2, 0.2), 0.5 + rng.uniform(-0.2, 0.2)
        frame = background.copy()
        size = max(4, size)
        x0 = int(np.clip(cx * width - size / 2, 0, width - size))
        y0 = int(np.clip(cy * height - size / 2, 0, height - size))
        patch = np.kron(texture, np.ones((size // 8 + 1, size // 8 + 1, 1), dtype=np.uint8))[:size, :size]
        frame[y0:y0 + size, x0:x0 + size] = patch
        noise = rng.integers(-8, 9, size=frame.shape, dtype=np.int16)
        yield np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8)
