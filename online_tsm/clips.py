"""Clips of frames from disk: a video file or a folder of frames, read the same way everywhere.

Training, int8 calibration and the demo's sources all read what a user
recorded; one reader means one list of suffixes, one frame order (natural:
``1.png, 2.png, ..., 10.png``) and one set of reasons a clip is skipped.  A
:class:`Clip` is a label and a way to read some of its frames (uint8 BGR
HxWx3), so that sampling never cares where the frames live; clips that
cannot be read are collected in a :class:`DataReport`, never silently dropped.
"""
from __future__ import annotations

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
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class DataError(UserError):
    """Clips or a data set that cannot be used as given (one line for the user)."""


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


def image_files(folder: Path) -> tuple[Path, ...]:
    """The frames of a frame folder in natural order (``1.png, 2.png, ..., 10.png``): the order they were shot."""
    return tuple(sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                        key=natural_key))


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


def clip_from_path(path: Path, label: int, report: DataReport) -> Clip | None:
    """A readable clip at ``path`` (a video file, or a folder of frames), or ``None`` with the reason in ``report``."""
    if path.is_dir():
        files = image_files(path)
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
