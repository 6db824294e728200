"""TSM-style segment sampling and the torch ``Dataset`` that feeds the clip model.

A clip of ``n`` frames is cut into ``T`` equal segments and one frame is taken
from each: a random one for training (a cheap temporal augmentation that
covers the whole gesture), the middle one for evaluation (deterministic).
"""
from __future__ import annotations

import sys
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from online_tsm.clips import Clip, DataError

Transform = Callable[[list[np.ndarray], int, np.random.Generator], tuple[np.ndarray, int]]


def segment_indices(n_frames: int, n_segments: int, rng: np.random.Generator | None = None) -> list[int]:
    """One frame index per segment: random within it with ``rng``, its centre without.

    Clips shorter than ``n_segments`` repeat frames, in order.
    """
    if n_frames < 1 or n_segments < 1:
        raise ValueError(f"need at least one frame and one segment, got {n_frames} frames, {n_segments} segments")
    tick = n_frames / n_segments
    if rng is None:
        return [min(n_frames - 1, int(tick * (k + 0.5))) for k in range(n_segments)]
    out = []
    for k in range(n_segments):
        lo = int(np.floor(tick * k))
        hi = max(lo, int(np.ceil(tick * (k + 1))) - 1)
        out.append(min(n_frames - 1, int(rng.integers(lo, hi + 1))))
    return out


class ClipDataset(Dataset):
    """``(clip [T, 3, S, S] float32, label)`` per item; seeded per (seed, epoch, item)."""

    def __init__(self, clips: Sequence[Clip], n_segments: int, transform: Transform, train: bool,
                 seed: int = 0) -> None:
        self.clips = list(clips)
        self.n_segments = n_segments
        self.transform = transform
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.unreadable: dict[int, str] = {}  # clip index -> why (per process: each loader worker keeps its own)

    def set_epoch(self, epoch: int) -> None:
        """Different random draws every epoch, the same ones on every run."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Clip ``index``; if it cannot be read, the next readable one after it, with a counted warning.

        A frame that went bad after the scan (a truncated file, a disk error)
        must not end hours of training: the clip is skipped from then on.
        """
        for offset in range(len(self.clips)):
            position = (index + offset) % len(self.clips)
            if position in self.unreadable:
                continue
            try:
                return self._item(position)
            except DataError as exc:
                self.unreadable[position] = str(exc)
                skipped = len(self.unreadable)
                print(f"warning: skipping an unreadable clip ({exc}); {skipped} of {len(self.clips)} clip(s) "
                      "skipped so far", file=sys.stderr, flush=True)
        raise DataError(f"none of the {len(self.clips)} clips can be read any more (last: "
                        f"{next(reversed(self.unreadable.values()), '?')})")

    def _item(self, index: int) -> tuple[torch.Tensor, int]:
        clip = self.clips[index]
        rng = np.random.default_rng((self.seed, self.epoch if self.train else 0, index))
        indices = segment_indices(clip.n_frames, self.n_segments, rng if self.train else None)
        frames = clip.load(indices)
        array, label = self.transform(frames, clip.label, rng)
        return torch.from_numpy(np.ascontiguousarray(array)), label
