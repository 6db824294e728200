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


@pytest.fixture(scope="session")
def small_weights(tmp_path_factory, model_small) -> Path:
    """``model_small`` saved as a checkpoint: what users hand to ``tsm-export --weights``."""
    from online_tsm.checkpoint import save_checkpoint

    return save_checkpoint(model_small, tmp_path_factory.mktemp("weights") / "small.pt")


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory):
    """``get(name, weights, target, **options)``: an artifact folder built once per session.

    An export costs 10-60 s (the Jetson build most), and the export, runtime
    and emulation tests need the same few; whichever module asks first builds
    it.  Tests must copy a folder before changing it.
    """
    from online_tsm.export.api import export_artifact

    root = tmp_path_factory.mktemp("exports")
    built: dict[str, Path] = {}

    def get(name: str, weights, target: str, **options) -> Path:
        if name not in built:
            built[name] = Path(export_artifact(weights, target, root / name, progress=False, **options))
        return built[name]

    return get
