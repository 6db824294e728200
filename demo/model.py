"""Which model the demo runs: an exported artifact, a checkpoint, the shipped default, or (last) random weights.

Random weights are a fallback for a build that does not ship the default
model, so that the demo still shows the whole pipeline working; the overlay
and the console then say "untrained weights" on every frame, because a
confident-looking label from an untrained model would mislead.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from online_tsm.checkpoint import model_info
from online_tsm.errors import UserError
from online_tsm.labels import JESTER_LABELS
from online_tsm.models import MobileNetV2TSM, seeded_model
from online_tsm.streaming.pacing import UPSTREAM_PACE, StreamPace, pace_from_metadata
from online_tsm.runtimes import BACKENDS, Runtime, open_runtime
from online_tsm.weights import DEFAULT_NAME, default_weights

UNTRAINED_WARNING = "untrained weights"
# Backends that run a checkpoint directly; every other backend runs an exported folder.
CHECKPOINT_BACKENDS = ("torch",)


def default_backend() -> str:
    """``auto``: the fastest backend that runs the model here (torch for a checkpoint)."""
    return "auto"


@dataclass
class DemoModel:
    runtime: Runtime
    source: str          # where the weights came from, in words
    untrained: bool
    pace: StreamPace = UPSTREAM_PACE  # how often to infer and how much to smooth (from the training metadata)


def random_model(seed: int = 0, n_class: int = len(JESTER_LABELS)) -> MobileNetV2TSM:
    """A reproducible untrained model with Jester's label set (logits of order 1, so the overlay moves).

    The predictions mean nothing: it stands in when no trained weights ship.
    """
    model = seeded_model(seed, n_class=n_class)
    model.info = model_info(model)
    return model


def load_demo_model(backend: str, artifact: str | Path | None = None, weights: str | None = None,
                    seed: int = 0, **options: Any) -> DemoModel:
    """Open the runtime the demo streams through (see the module docstring for the order of choices).

    ``options`` go to the backend (``threads``, ``address`` for tvm-rpc); ``None`` values are left out.
    """
    options = {k: v for k, v in options.items() if v is not None}
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if artifact is not None:
        if backend in CHECKPOINT_BACKENDS:
            others = [b for b in BACKENDS if b not in CHECKPOINT_BACKENDS]
            raise UserError(f"--backend {backend} runs a checkpoint (--weights), not an exported folder; "
                            f"for --artifact use one of: {', '.join(others)}")
        path = Path(artifact).expanduser()
        if not path.is_dir():
            raise UserError(f"no such export folder: {path} (tsm-export writes one)")
        runtime = open_runtime(str(path), backend=backend, **options)
        # The manifest the backend opened (a Triton repository keeps it inside the model's version folder).
        pace = pace_from_metadata(runtime.artifact.manifest.model)
        return DemoModel(runtime, f"artifact {path}", untrained=False, pace=pace)

    if backend not in CHECKPOINT_BACKENDS and backend != "auto":
        raise UserError(f"--backend {backend} runs an exported folder: pass --artifact DIR (written by tsm-export), "
                        f"or use --backend torch with --weights")
    name = weights or DEFAULT_NAME
    if name == DEFAULT_NAME and not Path(name).exists() and default_weights() is None:
        model = random_model(seed)
        return DemoModel(open_runtime(model, backend="torch", **options),
                         f"random weights (seed {seed}): this build ships no trained default model", untrained=True)
    # A checkpoint always runs on the PyTorch backend, also under "auto".
    runtime = open_runtime(name, backend="torch", **options)
    info = getattr(getattr(runtime, "model", None), "info", None)
    return DemoModel(runtime, f"weights {name}", untrained=False, pace=pace_from_metadata(getattr(info, "extra", None)))
