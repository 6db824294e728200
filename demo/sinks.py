"""Where the annotated frames and per-frame predictions go: a video file, a JSON-lines log, the console.

Each sink gets ``write(image, record)`` for every frame and ``close()`` once;
``write`` returns False to stop the demo (only the window does that).  The
record is the same dict that is written to the log, so what a user sees and
what is logged cannot disagree.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Protocol, TextIO

import cv2
import numpy as np

from online_tsm.errors import UserError

# OpenCV's pip wheels carry FFmpeg without an H.264 encoder (licensing), so MPEG-4 Part 2 it is.
VIDEO_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG"}
LOG_SUFFIXES = (".jsonl", ".json", ".log", ".txt")
SCREENSHOT_SUFFIXES = (".png", ".jpg", ".jpeg")


class Sink(Protocol):
    def write(self, image: np.ndarray, record: dict[str, Any]) -> bool: ...

    def close(self) -> None: ...


def check_output_path(path: str | Path, suffixes: tuple[str, ...] | dict[str, str], what: str) -> Path:
    """Fail before any work if the file could not be written: wrong suffix or an unwritable folder."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in suffixes:
        raise UserError(f"{what} {path} must end in one of {', '.join(suffixes)}")
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; expected a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the folder for {what} {path}: {exc.strerror}") from None
    return path


class VideoSink:
    """Annotated frames into a video file, whose frame size is the first frame's.

    A recorded source is written at its own rate (``fps``).  A live camera's
    nominal rate says little about how many frames the demo actually shows
    (inference may be slower; frames get dropped), so with ``measure_fps`` the
    first ``measure_frames`` frames are held back, the rate is measured from
    their timestamps, and the video then plays at the speed it was seen.
    """

    def __init__(self, path: str | Path, fps: float, measure_fps: bool = False, measure_frames: int = 30) -> None:
        self.path = check_output_path(path, VIDEO_CODECS, "output video")
        self.fps = fps
        self.frames = 0
        self._measure = measure_frames if measure_fps else 0
        self._held: list[tuple[np.ndarray, float]] = []
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None

    def write(self, image: np.ndarray, record: dict[str, Any]) -> bool:
        if self._writer is None and self._measure:
            self._held.append((image, float(record.get("time_s", 0.0))))
            if len(self._held) >= self._measure:
                self._flush_held()
            return True
        self._write(image)
        return True

    def _flush_held(self) -> None:
        times = [t for _, t in self._held]
        if len(times) >= 2 and times[-1] > times[0]:
            self.fps = min(240.0, max(1.0, (len(times) - 1) / (times[-1] - times[0])))
        held, self._held, self._measure = self._held, [], 0
        for image, _ in held:
            self._write(image)

    def _write(self, image: np.ndarray) -> None:
        if self._writer is None:
            self._size = (image.shape[1], image.shape[0])
            fourcc = cv2.VideoWriter_fourcc(*VIDEO_CODECS[self.path.suffix.lower()])
            self._writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, self._size)
            if not self._writer.isOpened():
                raise UserError(f"cannot write video {self.path} (OpenCV could not open an encoder for it)")
        if (image.shape[1], image.shape[0]) != self._size:  # a folder of frames of mixed sizes
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(image)
        self.frames += 1

    def close(self) -> None:
        if self._held:
            self._flush_held()
        if self._writer is not None:
            self._writer.release()


class JsonlSink:
    """One JSON object per frame (see :func:`online_tsm.demo.app.frame_record`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = check_output_path(path, LOG_SUFFIXES, "log file")
        self._fh: TextIO = open(self.path, "w", encoding="utf-8")

    def write(self, image: np.ndarray, record: dict[str, Any]) -> bool:
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        return True

    def close(self) -> None:
        self._fh.close()


class ScreenshotSink:
    """Keeps the latest annotated frame and saves it as an image at the end (the README's screenshot)."""

    def __init__(self, path: str | Path) -> None:
        self.path = check_output_path(path, SCREENSHOT_SUFFIXES, "screenshot")
        self._last: np.ndarray | None = None

    def write(self, image: np.ndarray, record: dict[str, Any]) -> bool:
        self._last = image
        return True

    def close(self) -> None:
        png = self.path.suffix.lower() == ".png"
        params = [cv2.IMWRITE_PNG_COMPRESSION, 9] if png else [cv2.IMWRITE_JPEG_QUALITY, 85]
        if self._last is not None and not cv2.imwrite(str(self.path), self._last, params):
            raise UserError(f"cannot write screenshot {self.path}")


class ChangePrinter:
    """Prints a line whenever the shown class changes, so a headless run without files still says something."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream  # None: whatever sys.stdout is when a line is printed
        self._last: str | None = None

    def write(self, image: np.ndarray, record: dict[str, Any]) -> bool:
        label = record.get("label")
        if label is not None and label != self._last:
            print(f"frame {record['frame']:5d}  {record['time_s']:7.2f} s  {label}  ({record['confidence']:.2f})",
                  file=self.stream or sys.stdout, flush=True)
        self._last = label
        return True

    def close(self) -> None:
        pass
