"""Where the demo's frames come from: a camera, a video file, a folder of images, or generated frames.

Every source has the same small interface (``read() -> frame | None``,
``fps``, ``dropped``, ``close()``), so the demo loop never asks which one it
has.  The camera is the only *live* source: it is read on its own thread into
a bounded queue that throws away the oldest frame when the loop falls behind,
because on the Jetson demo camera IO, not the network, was the bottleneck and
a blocking read made inference wait for the camera.  Files and folders are read
in order without dropping, so a recorded clip gives reproducible predictions.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import cv2
import numpy as np

from online_tsm.errors import UserError
from online_tsm.clips import IMAGE_SUFFIXES, image_files
from online_tsm.synthetic import synthetic_frames

# Motions the continuous synthetic stream cycles through (names of online_tsm.synthetic).
SYNTHETIC_CYCLE = ("swipe-left", "swipe-right", "swipe-up", "swipe-down", "zoom-in", "zoom-out", "still", "jitter")
SOURCE_HELP = "a camera index (0), a video file, a folder of frames, or 'synthetic'"


class SourceError(UserError):
    """A source that cannot be opened or read; reported as one line."""


class Capture(Protocol):
    """What the threaded reader needs from ``cv2.VideoCapture`` (tests pass fakes)."""

    def read(self) -> tuple[bool, Any]: ...

    def release(self) -> None: ...


@contextlib.contextmanager
def quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own warnings while probing devices, so the user reads our one line instead."""
    logging = cv2.utils.logging
    old = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        logging.setLogLevel(old)


class FrameSource(ABC):
    """A stream of uint8 BGR frames ``[H, W, 3]``."""

    description: str = "?"
    fps: float = 30.0       # nominal rate: the output video's rate and the pace of window playback
    live: bool = False      # True for a camera: frames arrive in real time and may be dropped

    @property
    def dropped(self) -> int:
        """Frames the source produced that the demo never saw (only a live source drops)."""
        return 0

    @abstractmethod
    def read(self) -> np.ndarray | None:
        """The next frame, or ``None`` at the end of the stream."""

    def close(self) -> None:
        """Release the device or file."""

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ThreadedReader:
    """Reads ``capture`` on a daemon thread into a queue of at most ``maxsize`` frames.

    When the queue is full the *oldest* frame is discarded and counted in
    ``dropped``: the consumer always gets the freshest frames, a slow consumer
    never makes the camera's driver buffer go stale, and a slow camera only
    delays the consumer until the next frame exists.  The reader ends after
    ``max_failures`` consecutive failed reads (camera unplugged) or ``stop()``.
    """

    def __init__(self, capture: Capture, maxsize: int = 1, max_failures: int = 10,
                 retry_delay: float = 0.01) -> None:
        if maxsize < 1:
            raise ValueError(f"queue size must be >= 1, got {maxsize}")
        self.capture = capture
        self.maxsize = maxsize
        self.max_failures = max_failures
        self.retry_delay = retry_delay
        self.dropped = 0
        self.produced = 0
        self._queue: deque[np.ndarray] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._ended = False
        self._thread = threading.Thread(target=self._loop, name="tsm-demo-capture", daemon=True)

    def start(self) -> "ThreadedReader":
        if not self._thread.is_alive() and not self._ended:
            self._thread.start()
        return self

    @property
    def ended(self) -> bool:
        with self._cond:
            return self._ended

    def _loop(self) -> None:
        failures = 0
        try:
            while not self._stop.is_set():
                ok, frame = self.capture.read()
                if not ok or frame is None:
                    failures += 1
                    if failures >= self.max_failures:
                        break
                    time.sleep(self.retry_delay)
                    continue
                failures = 0
                with self._cond:
                    self.produced += 1
                    if len(self._queue) >= self.maxsize:
                        self._queue.popleft()
                        self.dropped += 1
                    self._queue.append(frame)
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def get(self, timeout: float | None = None) -> np.ndarray | None:
        """The oldest queued frame; waits for one; ``None`` once the reader has ended and the queue is empty.

        Raises :class:`TimeoutError` if no frame arrives within ``timeout`` seconds.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._queue or self._ended, timeout=timeout):
                raise TimeoutError(f"no frame within {timeout} s")
            return self._queue.popleft() if self._queue else None

    def stop(self, join_timeout: float = 2.0) -> bool:
        """Stop reading and wake any waiting consumer; False if a hung read kept the thread alive."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(join_timeout)
        with self._cond:
            self._ended = True
            self._cond.notify_all()
        return not self._thread.is_alive()


class CameraLostError(SourceError):
    """A camera that stopped delivering and could not be reopened: not the end of a stream (exit code 3)."""

    exit_code = 3


def open_camera(index: int, width: int = 320, height: int = 240) -> Capture:
    """``cv2.VideoCapture(index)`` asking for ``width`` x ``height`` and a one-frame driver buffer."""
    with quiet_opencv():
        capture = cv2.VideoCapture(index)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"cannot open camera {index}: no such camera, or it is in use "
                              f"(--source takes {SOURCE_HELP})")
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    return capture


class CameraSource(FrameSource):
    """A local camera, read on its own thread (see :class:`ThreadedReader`).

    A camera that stops delivering (unplugged, a driver reset, a hung read) is
    not the end of a stream.  It is reopened with growing pauses for up to
    ``reconnect`` seconds; each reopening bumps :attr:`generation`, which tells
    the demo loop to reset the model's stream, as the scene has changed.  When
    that fails, or with ``reconnect=0``, :meth:`read` raises
    :class:`CameraLostError`.
    """

    live = True
    first_pause = 0.25       # seconds before the second attempt to reopen; doubles up to max_pause
    max_pause = 2.0

    def __init__(self, index: int, width: int = 320, height: int = 240, queue_size: int = 1,
                 frame_timeout: float = 5.0, capture: Capture | None = None, reconnect: float = 0.0,
                 opener: Callable[[], Capture] | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.index = index
        self.frame_timeout = frame_timeout
        self.queue_size = queue_size
        self.reconnect = reconnect
        self.generation = 0          # how many times the camera was reopened
        self._opener = opener or (lambda: open_camera(index, width, height))
        self._clock, self._sleep = clock, sleep
        self._cancelled = False
        self._dropped_before = 0     # drops counted by readers of earlier generations
        if capture is None:
            capture = self._opener()
        reported = capture.get(cv2.CAP_PROP_FPS) if hasattr(capture, "get") else 0.0
        self.fps = float(reported) if reported and 1 <= reported <= 240 else 30.0
        ok, first = capture.read()
        if not ok or first is None:
            capture.release()
            raise SourceError(f"camera {index} opened but delivered no frame (is another program using it?)")
        self.description = f"camera {index} ({first.shape[1]}x{first.shape[0]})"
        self._first: np.ndarray | None = first
        self._reader = ThreadedReader(capture, maxsize=queue_size)

    @property
    def dropped(self) -> int:
        return self._dropped_before + self._reader.dropped

    def read(self) -> np.ndarray | None:
        if self._first is not None:  # the probe frame; the thread starts only when the loop does
            frame, self._first = self._first, None
            self._reader.start()
            return frame
        try:
            frame = self._reader.get(timeout=self.frame_timeout)
            problem = "stopped delivering frames (unplugged?)"
        except TimeoutError:
            frame, problem = None, f"delivered no frame for {self.frame_timeout:g} s"
        if frame is not None or self._cancelled:
            return frame
        return self._reopen(problem)

    def cancel(self) -> None:
        """Give up waiting for the camera (a stop was requested): :meth:`read` returns ``None``."""
        self._cancelled = True

    def _reopen(self, problem: str) -> np.ndarray | None:
        self._release_reader()
        lost = self._reader
        if self.reconnect <= 0:
            raise CameraLostError(f"camera {self.index} {problem}; pass --reconnect SECONDS to keep trying")
        print(f"tsm-demo: camera {self.index} {problem}; reopening it for up to {self.reconnect:g} s",
              file=sys.stderr, flush=True)
        start = self._clock()
        deadline = start + self.reconnect
        pause = self.first_pause
        last_error = problem
        while not self._cancelled:
            try:
                capture = self._opener()
                ok, first = capture.read()
                if ok and first is not None:
                    self._dropped_before += lost.dropped
                    self._reader = ThreadedReader(capture, maxsize=self.queue_size).start()
                    self.generation += 1
                    print(f"tsm-demo: camera {self.index} is back after {self._clock() - start:.1f} s; "
                          "predictions start over", file=sys.stderr, flush=True)
                    return first
                capture.release()
                last_error = "it opened but delivered no frame"
            except SourceError as exc:
                last_error = str(exc).split(" (--source")[0]
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            self._sleep(min(pause, remaining))
            pause = min(pause * 2, self.max_pause)
        if self._cancelled:
            return None
        raise CameraLostError(f"camera {self.index} {problem} and could not be reopened within "
                              f"{self.reconnect:g} s (last try: {last_error})")

    def _release_reader(self) -> None:
        # Releasing a capture while its thread is still inside read() can crash the driver; a read hung
        # that long belongs to a dead camera, and the daemon thread goes with the process.
        if self._reader.stop():
            self._reader.capture.release()

    def close(self) -> None:
        self._release_reader()


class VideoFileSource(FrameSource):
    """A video file decoded by OpenCV (FFmpeg), every frame in order."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"no such video file or folder: {self.path} (--source takes {SOURCE_HELP})")
        with quiet_opencv():
            self._cap = cv2.VideoCapture(str(self.path))
            ok, first = self._cap.read() if self._cap.isOpened() else (False, None)
        if not ok or first is None:
            self._cap.release()
            raise SourceError(f"cannot read {self.path} as a video (OpenCV/FFmpeg could not decode a frame)")
        self._first: np.ndarray | None = first
        reported = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(reported) if reported and 1 <= reported <= 240 else 30.0
        self.description = f"video {self.path.name} ({first.shape[1]}x{first.shape[0]}, {self.fps:g} fps)"

    def read(self) -> np.ndarray | None:
        if self._first is not None:
            frame, self._first = self._first, None
            return frame
        ok, frame = self._cap.read()
        return frame if ok else None

    def close(self) -> None:
        self._cap.release()


class FolderSource(FrameSource):
    """Image files of a folder in natural order (``1.jpg, 2.jpg, ..., 10.jpg``), as extracted frames are stored."""

    def __init__(self, path: str | Path, fps: float = 30.0) -> None:
        self.path = Path(path)
        self.files = image_files(self.path)
        if not self.files:
            raise SourceError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {self.path}")
        self.fps = fps
        self._next = 0
        self.description = f"folder {self.path.name} ({len(self.files)} images)"

    def read(self) -> np.ndarray | None:
        if self._next >= len(self.files):
            return None
        path = self.files[self._next]
        self._next += 1
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise SourceError(f"cannot read image {path} (corrupt, or a format OpenCV does not decode)")
        return frame


class SyntheticSource(FrameSource):
    """Endless generated gestures: ``clip_frames`` frames of each motion of :data:`SYNTHETIC_CYCLE` in turn."""

    def __init__(self, width: int = 320, height: int = 240, seed: int = 0, clip_frames: int = 32,
                 fps: float = 30.0) -> None:
        if width < 16 or height < 16:
            raise SourceError(f"synthetic frames must be at least 16x16, got {width}x{height}")
        self.width, self.height, self.seed, self.clip_frames, self.fps = width, height, seed, clip_frames, fps
        self.description = f"synthetic ({width}x{height}, {len(SYNTHETIC_CYCLE)} motions of {clip_frames} frames)"
        self._frames = self._generate()

    def _generate(self) -> Iterator[np.ndarray]:
        clip = 0
        while True:
            motion = SYNTHETIC_CYCLE[clip % len(SYNTHETIC_CYCLE)]
            yield from synthetic_frames(self.clip_frames, self.height, self.width, motion, self.seed + clip)
            clip += 1

    def read(self) -> np.ndarray | None:
        return next(self._frames)


def open_source(spec: str, *, width: int = 320, height: int = 240, fps: float = 30.0, queue_size: int = 1,
                seed: int = 0, reconnect: float = 0.0) -> FrameSource:
    """``spec`` is ``synthetic``, a camera index, a folder of frames or a video file (checked in that order)."""
    spec = str(spec).strip()
    if spec.lower() == "synthetic":
        return SyntheticSource(width, height, seed=seed, fps=fps)
    if spec.isdigit():
        return CameraSource(int(spec), width, height, queue_size=queue_size, reconnect=reconnect)
    path = Path(spec).expanduser()
    if path.is_dir():
        return FolderSource(path, fps=fps)
    return VideoFileSource(path)
