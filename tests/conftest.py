"""Shared fixtures: deterministic models whose logits are large enough to compare meaningfully."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # lets tests import helpers.py

from helpers import seeded_model  # noqa: E402


@pytest.fixture(scope="session")
def model_224() -> torch.nn.Module:
    return seeded_model(seed=0)


@pytest.fixture(scope="session")
def model_small() -> torch.nn.Module:
    return seeded_model(seed=1, width_mult=0.5, input_size=96, n_class=10)
