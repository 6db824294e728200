"""Test helpers (not fixtures).  Seeded models come from the package (``online_tsm.models.seeded_model``)."""
from __future__ import annotations

import torch

from online_tsm.models import seeded_model

__all__ = ["seeded_model", "random_clip"]


def random_clip(batch: int, frames: int, size: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 3, size, size, generator=gen)
