"""Test helpers (not fixtures).  Seeded models come from the package (``online_tsm.models.seeded_model``)."""
from __future__ import annotations

import os

import pytest
import torch

from online_tsm.models import seeded_model

__all__ = ["seeded_model", "random_clip", "require_tools"]


def require_tools(missing: list[str], message: str) -> None:
    """Skip a test whose system tools are ``missing`` -- but fail it in CI, where ``.ci/run`` installs them.

    ``message`` says what the test needs (names the ``missing`` ones and how to install them); a CI run that
    skipped it would report green without having checked anything.
    """
    if not missing:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{message}; .ci/run installs them, so in CI this is a set-up error")
    pytest.skip(message)


def random_clip(batch: int, frames: int, size: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 3, size, size, generator=gen)
