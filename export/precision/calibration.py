"""``tsm-export --precision int8 --calibration DATA``: clips that set int8 ranges, and clips held out to check them.

DATA is what ``tsm-train`` reads (a class-per-folder tree, its ``train/``
split, a Jester tree), a single video, a folder of frames, or ``synthetic``
(the synthetic gestures the shipped default model was trained on).  Each
source is split into *calibration* clips (whose activations set the int8
ranges) and *held-out* clips (streamed through the int8 and float32 models
to measure their agreement); a single video or frame folder is split in
time.  Frames are read as uint8 BGR camera images and go through the
runtime's own ``preprocess``, so folded pre-processing is calibrated on what
the graph really sees.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from online_tsm.clips import DataReport, clip_from_path, image_files
from online_tsm.errors import UserError

SYNTHETIC = "synthetic"
MAX_FRAMES_PER_CLIP = 32
CALIBRATION_FRAMES_PER_CLIP = 16   # 24 clips x 16 frames at most: ORT's percentile histograms are slow at 224


@dataclass
class CalibrationClip:
    """A clip's uint8 BGR frames (in streaming order, at the model's pace) and its label index if known."""

    name: str
    frames: list[np.ndarray]
    label: int | None = None


@dataclass
class CalibrationSet:
    calibration: list[CalibrationClip]
    held_out: list[CalibrationClip]
    description: str
    labelled: bool


def _load(clip: object, every: int, limit: int = MAX_FRAMES_PER_CLIP) -> list[np.ndarray]:
    n = int(getattr(clip, "n_frames"))
    return list(clip.load(list(range(0, n, max(1, every)))[:limit]))  # type: ignore[attr-defined]


def _label_map(data_labels: Sequence[str], model_labels: Sequence[str]) -> dict[int, int] | None:
    """Data label index -> model label index when every data class is one of the model's, else ``None``."""
    lookup = {name: i for i, name in enumerate(model_labels)}
    if not data_labels or any(name not in lookup for name in data_labels):
        return None
    return {i: lookup[name] for i, name in enumerate(data_labels)}


def _from_split(split: object, model_labels: Sequence[str], every: int, n_calibration: int,
                n_held_out: int) -> CalibrationSet:
    labels = _label_map(split.labels, model_labels)  # type: ignore[attr-defined]

    def convert(clips: list, n: int, limit: int = MAX_FRAMES_PER_CLIP) -> list[CalibrationClip]:
        picked = clips[:: max(1, len(clips) // n)][:n] if clips else []
        return [CalibrationClip(c.name, _load(c, every, limit), None if labels is None else labels[c.label])
                for c in picked]

    train, val, description = split.train, split.val, split.description  # type: ignore[attr-defined]
    if not val:
        raise UserError(f"--calibration {description}: no held-out (validation) clips to measure agreement on; "
                        "give a folder with at least two clips per class, or train/ and val/ splits")
    return CalibrationSet(convert(train, n_calibration, CALIBRATION_FRAMES_PER_CLIP), convert(val, n_held_out),
                          split.description, labels is not None)  # type: ignore[attr-defined]


def _single_stream(path: Path, every: int) -> CalibrationSet:
    """A video or a frame folder: the first two thirds calibrate, the last third is held out."""
    report = DataReport()
    clip = clip_from_path(path, 0, report)
    if clip is None:
        why = report.summary() or "not a video or a folder of images"
        raise UserError(f"--calibration {path}: cannot read it ({why})")
    frames = list(clip.load(list(range(0, clip.n_frames, max(1, every)))))
    if len(frames) < 6:
        raise UserError(f"--calibration {path}: {len(frames)} frames at the model's pace; need at least 6")
    cut = (2 * len(frames)) // 3
    chunks = [frames[i:min(i + MAX_FRAMES_PER_CLIP, cut)] for i in range(0, cut, MAX_FRAMES_PER_CLIP)]
    return CalibrationSet([CalibrationClip(f"{path.name}[{i}]", c) for i, c in enumerate(chunks)],
                          [CalibrationClip(f"{path.name}[held out]", frames[cut:])],
                          f"{path} ({len(frames)} frames: first {cut} calibrate, last {len(frames) - cut} held out)",
                          False)


def load_calibration(data: str, model_labels: Sequence[str], *, every: int = 1, n_calibration: int = 24,
                     n_held_out: int = 24, seed: int = 0, val_fraction: float | None = None) -> CalibrationSet:
    """Read ``data`` (see the module docstring) into calibration and held-out clips at the model's pace ``every``.

    A class folder without ``train/`` and ``val/`` is split as ``tsm-train``
    splits it (``val_fraction`` and ``seed``, as the checkpoint recorded
    them), so the held-out clips are the ones the model was validated on,
    never clips it was trained on.
    """
    from online_tsm.training import data as data_mod

    if data == SYNTHETIC:
        split = data_mod.synthetic_split(max(n_calibration, len(data_mod.synthetic.MOTIONS)), n_held_out, seed + 7)
        return _from_split(split, model_labels, every, n_calibration, n_held_out)
    path = Path(data).expanduser()
    if not path.exists():
        raise UserError(f"--calibration {data}: not found (expected a tsm-train class folder, a video, a folder of "
                        f"frames, or '{SYNTHETIC}')")
    if path.is_file():
        return _single_stream(path, every)
    if image_files(path):  # images directly inside: one clip as frames
        return _single_stream(path, every)
    try:
        fmt = data_mod.detect_data_format(str(path))
        split = data_mod.scan_jester(path) if fmt == "jester" else data_mod.scan_folder(
            path, data_mod.DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction, seed)
    except data_mod.DataError as exc:
        raise UserError(f"--calibration {data}: {exc}") from None
    return _from_split(split, model_labels, every, n_calibration, n_held_out)
