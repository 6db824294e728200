"""The streaming protocol every backend implements.

A *runtime* owns a loaded model; a *stream* owns one video's shift buffers.
Backends implement three hooks (``_zero_state``, ``_run`` and, for batching,
``_gather``/``_scatter``); everything else -- frame checks, counting,
``reset``, ``step_many`` -- lives here once, so the benchmark and the demo never
care which backend runs.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np

from online_tsm.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess_frame


class RuntimeError_(RuntimeError):
    """Base class: a runtime could not be opened or was fed the wrong thing."""


class FrameError(ValueError):
    """A frame of the wrong shape, dtype or layout."""


class Stream:
    """One video's state: the shift buffers carried from frame to frame.

    ``state`` is whatever the backend keeps (torch tensors, OrtValues, TVM
    NDArrays); it never leaves the backend between steps.
    """

    def __init__(self, runtime: "Runtime") -> None:
        self.runtime = runtime
        self.state: Any = runtime._zero_state(1)
        self.frames_seen = 0

    def step(self, frame: np.ndarray) -> np.ndarray:
        """Feed one frame (see :meth:`Runtime.check_frame`) and return float32 logits ``[n_class]``."""
        x = self.runtime.check_frame(frame)
        logits, self.state = self.runtime._run(x, self.state)
        self.frames_seen += 1
        return logits[0]

    def reset(self) -> None:
        """Back to zero buffers, e.g. after a scene cut or a camera reconnect."""
        self.state = self.runtime._zero_state(1)
        self.frames_seen = 0


class Runtime(ABC):
    """A loaded per-frame model plus what is needed to feed it."""

    backend: str = "?"

    def __init__(self, *, labels: Sequence[str], input_size: int, frame_shape: Sequence[int],
                 frame_dtype: str = "float32", mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, color_order: str = "rgb", folded_preprocess: bool = False,
                 description: str = "") -> None:
        self.labels = list(labels)
        self.n_class = len(self.labels)
        self.input_size = int(input_size)
        self.frame_shape = tuple(int(d) for d in frame_shape)  # with the leading batch dimension of 1
        self.frame_dtype = np.dtype(frame_dtype)
        self.mean, self.std = tuple(mean), tuple(std)
        self.color_order = color_order
        self.folded_preprocess = folded_preprocess
        self.description = description

    # -- public API -------------------------------------------------------------------------
    def new_stream(self) -> Stream:
        return Stream(self)

    def preprocess(self, image: np.ndarray, color_order: str = "bgr") -> np.ndarray:
        """Raw uint8 HxWx3 camera image -> what :meth:`Stream.step` takes for this runtime."""
        if self.folded_preprocess:
            return image if color_order == self.color_order else np.ascontiguousarray(image[:, :, ::-1])
        return preprocess_frame(image, self.input_size, color_order, self.mean, self.std)

    def check_frame(self, frame: np.ndarray) -> np.ndarray:
        """Return ``frame`` with the batch dimension added, or raise :class:`FrameError`."""
        expected = self.frame_shape
        if not isinstance(frame, np.ndarray):
            raise FrameError(f"expected a numpy {self.frame_dtype} frame of shape {list(expected[1:])}, "
                             f"got {type(frame).__name__}")
        if frame.dtype != self.frame_dtype:
            raise FrameError(f"expected a {self.frame_dtype} frame of shape {list(expected[1:])} "
                             f"({self._layout_hint()}), got dtype {frame.dtype}")
        if frame.shape == expected[1:]:
            frame = frame[None]
        if frame.shape != expected:
            raise FrameError(f"expected a frame of shape {list(expected[1:])} or {list(expected)} "
                             f"({self._layout_hint()}), got {list(frame.shape)}")
        return np.ascontiguousarray(frame)

    def step_many(self, streams: Sequence[Stream], frames: Sequence[np.ndarray]) -> np.ndarray:
        """Run N streams as one batch; logits ``[N, n_class]`` equal N separate ``step`` calls."""
        if len(streams) != len(frames):
            raise ValueError(f"got {len(streams)} streams but {len(frames)} frames")
        if not streams:
            return np.zeros((0, self.n_class), np.float32)
        if any(s.runtime is not self for s in streams):
            raise ValueError("all streams must come from this runtime")
        batch = np.concatenate([self.check_frame(f) for f in frames], axis=0)
        logits, state = self._run(batch, self._gather([s.state for s in streams]))
        for stream, part in zip(streams, self._scatter(state, len(streams))):
            stream.state = part
            stream.frames_seen += 1
        return logits

    def close(self) -> None:
        """Release backend resources (sessions, remote connections)."""

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- backend hooks ----------------------------------------------------------------------
    @abstractmethod
    def _zero_state(self, batch: int) -> Any:
        """Zero shift buffers for ``batch`` streams, in the backend's own containers."""

    @abstractmethod
    def _run(self, frames: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        """One step for a batch: ``(logits [B, n_class] float32 numpy, new_state)``."""

    def _gather(self, states: Sequence[Any]) -> Any:
        raise NotImplementedError(f"backend {self.backend} does not support step_many")

    def _scatter(self, state: Any, n: int) -> list[Any]:
        raise NotImplementedError(f"backend {self.backend} does not support step_many")

    def _layout_hint(self) -> str:
        if self.folded_preprocess:
            return f"uint8 HWC {self.color_order.upper()} image"
        return "normalised float32 CHW, see online_tsm.preprocess_frame"
