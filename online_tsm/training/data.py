"""Where training clips come from: a class-per-folder tree, the Jester layout, or the synthetic set.

Each source is turned into a list of :class:`Clip` (a label and a way to read
some of its frames) so that sampling and augmentation never care where the
frames live.  Clips that cannot be read are collected in a
:class:`DataReport` and reported, never silently dropped.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from online_tsm import synthetic
from online_tsm.errors import UserError
from online_tsm.fileio import natural_key

VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mov", ".mkv", ".m4v")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DATA_FORMATS = ("auto", "folder", "jester", "synthetic")
JESTER_FRAME_DIRS = ("20bn-jester-v1", "frames")


class DataError(UserError):
    """A data set that cannot be used as given (one line for the user)."""


# -- clips ---------------------------------------------------------------------------------

@dataclass
class Clip:
    """One labelled clip.  ``load(indices)`` returns those frames, uint8 BGR HxWx3."""

    label: int
    name: str

    @property
    def n_frames(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, indices: Sequence[int]) -> list[np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class VideoClip(Clip):
    path: Path = Path()
    frame_count: int = 0

    @property
    def n_frames(self) -> int:
        return self.frame_count

    def load(self, indices: Sequence[int]) -> list[np.ndarray]:
        wanted = sorted(set(indices))
        cap = cv2.VideoCapture(str(self.path))
        frames: dict[int, np.ndarray] = {}
        last: np.ndarray | None = None
        try:
            i = 0
            while i <= wanted[-1]:
                ok, frame = cap.read()
                if not ok:
                    break
                last = frame
                if i in wanted:
                    frames[i] = frame
                i += 1
        finally:
            cap.release()
        if last is None:
            raise DataError(f"cannot decode video {self.path} any more (it was readable when the data was scanned)")
        # Frame counts in containers can be optimistic; past the last decodable frame, repeat it.
        return [frames.get(i, last) for i in indices]


@dataclass
class FrameFolderClip(Clip):
    files: tuple[Path, ...] = ()

    @property
    def n_frames(self) -> int:
        return len(self.files)

    def load(self, indices: Sequence[int]) -> list[np.ndarray]:
        out = []
        for i in indices:
            frame = cv2.imread(str(self.files[i]), cv2.IMREAD_COLOR)
            if frame is None:
                raise DataError(f"cannot read image {self.files[i]} (corrupt, or a format OpenCV does not decode)")
            out.append(frame)
        return out


@dataclass
class SyntheticClip(Clip):
    params: synthetic.GestureParams | None = None
    height: int = 128
    width: int = 128

    @property
    def n_frames(self) -> int:
        assert self.params is not None
        return self.params.n_frames

    def load(self, indices: Sequence[int]) -> list[np.ndarray]:
        assert self.params is not None
        return synthetic.render_clip(self.params, self.height, self.width, indices)


# -- what was found ------------------------------------------------------------------------

@dataclass
class DataReport:
    """Clips skipped while scanning, with the reason for each."""

    skipped: list[tuple[str, str]] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)

    def skip(self, name: str | os.PathLike, reason: str) -> None:
        self.skipped.append((str(name), reason))

    def empty_class(self, folder: str | os.PathLike) -> None:
        self.empty_classes.append(str(folder))

    def summary(self, limit: int = 5) -> str | None:
        parts = []
        if self.skipped:
            shown = "; ".join(f"{n} ({r})" for n, r in self.skipped[:limit])
            more = f"; ... and {len(self.skipped) - limit} more" if len(self.skipped) > limit else ""
            parts.append(f"skipped {len(self.skipped)} unreadable clip(s): {shown}{more}")
        if self.empty_classes:
            parts.append(f"{len(self.empty_classes)} class folder(s) without a readable clip: "
                         f"{', '.join(self.empty_classes[:limit])} (the model will never learn them)")
        return "; ".join(parts) or None


@dataclass
class DataSplit:
    labels: list[str]
    train: list[Clip]
    val: list[Clip]
    report: DataReport
    description: str


def probe_video(path: Path) -> int:
    """Number of frames of a readable video; raises ``ValueError`` saying why it is unreadable."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise ValueError("OpenCV cannot open it")
        ok, frame = cap.read()
        if not ok or frame is None:
            raise ValueError("no decodable frame")
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if count <= 0:  # some containers do not store it: count by decoding
            count = 1
            while cap.read()[0]:
                count += 1
        return count
    finally:
        cap.release()


def _image_files(folder: Path) -> tuple[Path, ...]:
    """The frames of a frame folder in natural order (``1.png, 2.png, ..., 10.png``): the order they were shot."""
    return tuple(sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key))


def probe_frames(files: Sequence[Path]) -> None:
    """Raise ``ValueError`` saying why a frame folder is unreadable: empty files, or a first frame that does not decode.

    Cheap enough for every clip of a large set (one ``stat`` per file, one
    decode per clip); a bad frame further in is caught when it is loaded.
    """
    empty = [p for p in files if p.stat().st_size == 0]
    if empty:
        raise ValueError(f"{len(empty)} empty image file(s), e.g. {empty[0].name}")
    if cv2.imread(str(files[0]), cv2.IMREAD_COLOR) is None:
        raise ValueError(f"{files[0].name} does not decode (corrupt, or a format OpenCV does not read)")


def _clip_from_path(path: Path, label: int, report: DataReport) -> Clip | None:
    if path.is_dir():
        files = _image_files(path)
        if not files:
            report.skip(path, "frame folder without images")
            return None
        try:
            probe_frames(files)
        except (ValueError, OSError) as exc:
            report.skip(path, str(exc))
            return None
        return FrameFolderClip(label=label, name=str(path), files=files)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        try:
            count = probe_video(path)
        except ValueError as exc:
            report.skip(path, str(exc))
            return None
        return VideoClip(label=label, name=str(path), path=path, frame_count=count)
    return None


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
            clip = _clip_from_path(entry, label, report)
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
            clip = _clip_from_path(folder, labels.index(label), report)
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

def detect_format(data: str) -> str:
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
