"""What one ``tsm-train`` run is told, where it writes, and what it says while it runs.

:class:`TrainConfig` is the whole request (the CLI fills it from its flags),
checked once by :meth:`TrainConfig.validate` before any data is read.  A run
writes into a folder of its own (:func:`run_folder`), so a second run never
overwrites the first's ``best.pt``.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from online_tsm.shift import SHIFT_MODES
from online_tsm.training import data as data_mod
from online_tsm.training import distributed

OPTIMIZERS = ("sgd", "adamw")
DEFAULT_LR = {"sgd": 0.01, "adamw": 0.002}
# Below this many training clips per class, a model trained from scratch learns the backgrounds rather than the
# motion (measured: 48 clips/class from scratch reached val 0.23-0.33 at train 0.99; fine-tuned, 1.000).
FEW_CLIPS_PER_CLASS = 200


@dataclass
class TrainConfig:
    """Everything one training run depends on (the CLI fills it from its flags)."""

    data: str = "synthetic"
    data_format: str = "auto"
    out: Path = Path("tsm-train-out")
    exist_ok: bool = False            # False: an existing non-empty out folder gets a free name beside it (-2, -3, ...)
    segments: int = 8
    shift: str = "causal"
    width: float | None = None        # None: the --init checkpoint's, else 1.0
    input_size: int | None = None     # None: the --init checkpoint's, else 224
    init: str | None = None
    freeze_backbone: bool = False
    epochs: int = 10
    batch_size: int = 8
    optimizer: str = "sgd"
    lr: float | None = None           # None: DEFAULT_LR of the optimizer
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.0
    seed: int = 0
    threads: int | None = None
    workers: int = 0
    val_fraction: float = data_mod.DEFAULT_VAL_FRACTION
    hflip: bool = False
    augment: bool = True              # random crop, brightness/contrast (per clip); False: deployment pre-processing
    train_clips: int = 4000           # synthetic only
    val_clips: int = 800              # synthetic only
    render_size: int | None = None    # synthetic only; None: the pre-processing's resize size
    train_list: str | None = None     # Jester layout overrides
    val_list: str | None = None
    labels_file: str | None = None
    frames_dir: str | None = None
    channels_last: bool = True
    progress: bool = True
    command: str = ""                 # recorded in the checkpoint

    def validate(self) -> None:
        if self.shift not in SHIFT_MODES:
            raise ValueError(f"unknown shift {self.shift!r}; expected one of {', '.join(SHIFT_MODES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
        if self.data_format not in data_mod.DATA_FORMATS:
            raise ValueError(f"unknown data format {self.data_format!r}; expected one of "
                             f"{', '.join(data_mod.DATA_FORMATS)}")
        for name in ("segments", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.input_size is not None and (self.input_size < 32 or self.input_size % 32):
            raise ValueError(f"input size must be a positive multiple of 32, got {self.input_size}")
        if self.width is not None and self.width <= 0:
            raise ValueError(f"width must be positive, got {self.width}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warm-up epochs must be >= 0, got {self.warmup_epochs}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val fraction must be in [0, 1), got {self.val_fraction}")


def run_folder(out: str | os.PathLike, exist_ok: bool = False) -> Path:
    """The folder this run writes to: ``out`` if it is new or empty (or ``exist_ok``), else ``out-2``, ``out-3``, ...

    A second run never overwrites the first's ``best.pt``.  The folder is
    created here, so two runs started together cannot pick the same one.
    """
    base = Path(out)
    if exist_ok:
        base.mkdir(parents=True, exist_ok=True)
        return base
    for n in range(1, 10_000):
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            if candidate.is_dir() and not any(candidate.iterdir()):
                return candidate
    raise ValueError(f"no free run folder next to {base} (tried {base.name}-2 ... -9999); pass --exist-ok or --out")


def few_clips_warning(split: data_mod.DataSplit, init: str | None) -> str | None:
    """A warning when training from scratch on too few real clips per class, or ``None``."""
    if init or not split.train or isinstance(split.train[0], data_mod.SyntheticClip):
        return None
    counts = [sum(1 for c in split.train if c.label == k) for k in range(len(split.labels))]
    if min(counts) >= FEW_CLIPS_PER_CLASS:
        return None
    return (f"training from scratch on {min(counts)}-{max(counts)} clips per class (fewer than "
            f"{FEW_CLIPS_PER_CLASS}): a model this small memorises the backgrounds; fine-tune instead with "
            "--init default (or --init jester for real hand gestures)")


def log(message: str) -> None:
    if distributed.world().is_main:  # one log for a distributed run: rank 0's
        print(message, file=sys.stderr, flush=True)
