"""Where training clips come from: a class-per-folder tree, the Jester layout, or the synthetic set.

Each source is turned into a list of :class:`~online_tsm.clips.Clip` (read by
:mod:`online_tsm.clips`, as calibration and the demo read them), split into
training and validation clips, and described in one line.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from online_tsm import synthetic
from online_tsm.clips import IMAGE_SUFFIXES, VIDEO_SUFFIXES, Clip, DataError, DataReport, SyntheticClip, clip_from_path
from online_tsm.fileio import natural_key

DATA_FORMATS = ("auto", "folder", "jester", "synthetic")
JESTER_FRAME_DIRS = ("20bn-jester-v1", "frames")


@dataclass
class DataSplit:
    labels: list[str]
    train: list[Clip]
    val: list[Clip]
    report: DataReport
    description: str


# -- class-per-folder ----------------------------------------------------------------------

def _class_dirs(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _scan_classes(root: Path, labels: list[str], report: DataReport) -> list[Clip]:
    clips: list[Clip] = []
    for label_dir in _class_dirs(root):
        if label_dir.name not in labels:
            raise DataError(f"class folder {label_dir} is not among the training classes ({', '.join(labels)})")
        label = labels.index(label_dir.name)
        found = 0
        for entry in sorted(label_dir.iterdir(), key=natural_key):
            clip = clip_from_path(entry, label, report)
            if clip is not None:
                clips.append(clip)
                found += 1
        if not found:
            report.empty_class(label_dir)
    return clips


# Share of a class folder's clips held out per class when it has no train/ and val/ splits.  tsm-export's int8
# calibration holds out the same clips (the checkpoint records the split), so agreement is never measured on
# clips the model was trained on.
DEFAULT_VAL_FRACTION = 0.2


def _stratified_split(clips: list[Clip], val_fraction: float, seed: int) -> tuple[list[Clip], list[Clip]]:
    """Per class, a seeded ``val_fraction`` of the clips for validation (at least one when a class has two)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in sorted({c.label for c in clips}):
        members = [c for c in clips if c.label == label]
        order = rng.permutation(len(members))
        n_val = int(round(len(members) * val_fraction))
        if val_fraction > 0 and n_val == 0 and len(members) >= 2:
            n_val = 1
        val += [members[i] for i in order[:n_val]]
        train += [members[i] for i in order[n_val:]]
    return train, val


def scan_folder(root: Path, val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = 0) -> DataSplit:
    """``root/<class>/<video or frame folder>``, or ``root/train/<class>/...`` + ``root/val/<class>/...``."""
    report = DataReport()
    split_dirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    train_dir = split_dirs.get("train")
    val_dir = split_dirs.get("val") or split_dirs.get("validation")
    if train_dir is not None and val_dir is not None:
        labels = [p.name for p in _class_dirs(train_dir)]
        if not labels:
            raise DataError(f"{train_dir} has no class sub-folders")
        train, val = _scan_classes(train_dir, labels, report), _scan_classes(val_dir, labels, report)
        how = f"{train_dir.name}/ and {val_dir.name}/"
    else:
        labels = [p.name for p in _class_dirs(root)]
        if not labels:
            raise DataError(f"{root} has no class sub-folders (expected {root}/<class>/<video or frame folder>)")
        clips = _scan_classes(root, labels, report)
        train, val = _stratified_split(clips, val_fraction, seed)
        how = f"a seeded {val_fraction:.0%} validation split"
    if len(labels) < 2:
        raise DataError(f"{root} has {len(labels)} class folder(s); training needs at least 2 classes")
    if not train:
        raise DataError(f"no readable training clips under {root} (videos: {', '.join(VIDEO_SUFFIXES)}; "
                        f"or folders of {', '.join(IMAGE_SUFFIXES)} frames)")
    return DataSplit(labels, train, val, report,
                     f"folder {root}: {len(labels)} classes, {len(train)} train / {len(val)} val clips ({how})")


# -- Jester layout -------------------------------------------------------------------------

def _find_list(root: Path, word: str) -> Path | None:
    found = sorted(p for p in root.glob("*.csv") if word in p.name.lower())
    return found[0] if found else None


def read_jester_list(path: Path) -> list[tuple[str, str]]:
    """``id;label`` lines (Jester's CSV) -> ``[(id, label)]``."""
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for n, row in enumerate(csv.reader(fh, delimiter=";"), start=1):
            if not row or not row[0].strip():
                continue
            if len(row) < 2:
                raise DataError(f"{path} line {n}: expected 'id;label', got {';'.join(row)!r}")
            rows.append((row[0].strip(), row[1].strip()))
    return rows


def scan_jester(root: Path, train_list: Path | None = None, val_list: Path | None = None,
                labels_file: Path | None = None, frames_dir: Path | None = None) -> DataSplit:
    """Frame folders named by id plus ``;``-separated ``id;label`` lists, as 20BN-Jester ships them."""
    train_list = train_list or _find_list(root, "train")
    val_list = val_list or _find_list(root, "valid") or _find_list(root, "val")
    if train_list is None or val_list is None:
        raise DataError(f"Jester layout needs a train and a validation list (id;label CSV) in {root}; "
                        "pass --train-list/--val-list")
    labels_file = labels_file or _find_list(root, "labels")
    train_rows, val_rows = read_jester_list(train_list), read_jester_list(val_list)
    if labels_file is not None:
        with open(labels_file, encoding="utf-8") as fh:
            labels = [line.strip() for line in fh if line.strip()]
    else:
        labels = sorted({label for _, label in train_rows})
    if frames_dir is None:
        frames_dir = next((root / d for d in JESTER_FRAME_DIRS if (root / d).is_dir()), root)
    report = DataReport()

    def clips(rows: list[tuple[str, str]], listing: Path) -> list[Clip]:
        out: list[Clip] = []
        for clip_id, label in rows:
            if label not in labels:
                raise DataError(f"{listing}: clip {clip_id} has label {label!r}, not in the class list "
                                f"({labels_file or 'labels of the train list'})")
            folder = frames_dir / clip_id
            if not folder.is_dir():
                report.skip(folder, "missing frame folder")
                continue
            clip = clip_from_path(folder, labels.index(label), report)
            if clip is not None:
                out.append(clip)
        return out

    train, val = clips(train_rows, train_list), clips(val_rows, val_list)
    if not train:
        raise DataError(f"none of the {len(train_rows)} clips of {train_list} has a frame folder in {frames_dir}")
    return DataSplit(labels, train, val, report,
                     f"Jester layout {root}: {len(labels)} classes, {len(train)} train / {len(val)} val clips")


# -- synthetic -----------------------------------------------------------------------------

def synthetic_split(train_clips: int, val_clips: int, seed: int = 0, render_size: int = 128,
                    n_frames: tuple[int, int] = (24, 40)) -> DataSplit:
    """The synthetic gesture set generated on the fly (train and val from different seeds)."""
    if train_clips < len(synthetic.MOTIONS) or val_clips < 1:
        raise DataError(f"the synthetic set needs at least {len(synthetic.MOTIONS)} training clips and one "
                        f"validation clip, got {train_clips} and {val_clips}")
    labels = [synthetic.GESTURES[m] for m in synthetic.MOTIONS]

    def make(n: int, plan_seed: int, tag: str) -> list[Clip]:
        plan = synthetic.clip_plan(n, plan_seed, n_frames=n_frames)
        return [SyntheticClip(label=synthetic.MOTIONS.index(p.motion), name=f"synthetic-{tag}-{i}", params=p,
                              height=render_size, width=render_size) for i, p in enumerate(plan)]

    train = make(train_clips, seed * 2 + 1, "train")
    val = make(val_clips, seed * 2 + 2, "val")
    return DataSplit(labels, train, val, DataReport(),
                     f"synthetic gestures (seed {seed}): {len(labels)} classes, {len(train)} train / "
                     f"{len(val)} val clips rendered at {render_size}x{render_size}")


# -- dispatch ------------------------------------------------------------------------------

def detect_data_format(data: str) -> str:
    """``synthetic``, ``jester`` (a folder holding ``;`` lists) or ``folder``."""
    if data == "synthetic":
        return "synthetic"
    root = Path(data)
    if not root.exists():
        raise DataError(f"data not found: {root} (expected a folder of class folders, a Jester folder, "
                        "or 'synthetic')")
    if not root.is_dir():
        raise DataError(f"expected a folder for --data, got a file: {root}")
    return "jester" if _find_list(root, "train") is not None else "folder"
