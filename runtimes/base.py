"""The streaming protocol every backend implements.

A *runtime* owns a loaded model; a *stream* owns one video's shift buffers.
Backends implement two hooks, ``_zero_state`` and ``_run``, and may override
``_run_many`` with a real batch; everything else -- frame checks, counting,
``reset``, ``step_many`` -- lives here once, so the benchmark and the demo never
care which backend runs.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import cv2
import numpy as np

from online_tsm.errors import FrameError, OnlineTSMError
from online_tsm.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess_frame
from online_tsm.preprocess import check_frame as check_image


class RuntimeOpenError(OnlineTSMError, ValueError):
    """A runtime could not be opened: wrong source, unusable library, unknown backend."""


class BackendUnavailable(RuntimeOpenError):
    """The backend's packages or hardware are missing on this machine; the message says how to get them."""


class RuntimeClosedError(OnlineTSMError, RuntimeError):
    """A stream was stepped, reset or created after its runtime was closed."""


__all__ = ["BackendUnavailable", "FrameError", "Runtime", "RuntimeClosedError", "RuntimeOpenError", "Stream"]


class Stream:
    """One video's state: the shift buffers carried from frame to frame.

    ``state`` is whatever the backend keeps (torch tensors, OrtValues, TVM
    tensors, device allocations); it never leaves the backend between steps.
    """

    def __init__(self, runtime: "Runtime") -> None:
        self.runtime = runtime
        runtime._check_open()
        self.state: Any = runtime._zero_state()
        self.frames_seen = 0

    def step(self, frame: np.ndarray) -> np.ndarray:
        """Feed one frame (see :meth:`Runtime.check_frame`) and return float32 logits ``[n_class]``.

        A frame that is refused (:class:`FrameError`) leaves the stream's buffers as they were.
        """
        self.runtime._check_open()
        x = self.runtime.check_frame(frame)
        logits, self.state = self.runtime._run(x, self.state)
        self.frames_seen += 1
        return logits[0]

    def reset(self) -> None:
        """Back to zero buffers, e.g. after a scene cut or a camera reconnect."""
        self.runtime._check_open()
        self.state = self.runtime._zero_state()
        self.frames_seen = 0


class Runtime(ABC):
    """A loaded per-frame model plus what is needed to feed it."""

    backend: str = "?"
    closed: bool = False  # set by close(); every later step, reset or new stream says so

    def __init__(self, *, labels: Sequence[str], input_size: int, frame_shape: Sequence[int],
                 frame_dtype: str = "float32", mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, color_order: str = "rgb", folded_preprocess: bool = False,
                 layout: str = "NCHW", description: str = "") -> None:
        self.labels = list(labels)
        self.n_class = len(self.labels)
        self.input_size = int(input_size)
        self.frame_shape = tuple(int(d) for d in frame_shape)  # with the leading batch dimension of 1
        self.frame_dtype = np.dtype(frame_dtype)
        self.mean, self.std = tuple(mean), tuple(std)
        self.color_order = color_order
        self.folded_preprocess = folded_preprocess
        self.layout = layout.upper()
        self.description = description

    # -- public API -------------------------------------------------------------------------
    def new_stream(self) -> Stream:
        return Stream(self)

    def preprocess(self, image: np.ndarray, color_order: str = "bgr") -> np.ndarray:
        """Raw uint8 HxWx3 camera image -> what :meth:`Stream.step` takes for this runtime.

        With pre-processing folded into the graph the image only needs the
        graph's colour order and camera size (a camera of another size is
        resized to it first).
        """
        if not self.folded_preprocess:
            return preprocess_frame(image, self.input_size, color_order, self.mean, self.std)
        check_image(image)
        if color_order != self.color_order:
            image = image[:, :, ::-1]
        height, width = self.frame_shape[1:3] if self.layout == "NHWC" else self.frame_shape[2:4]
        if image.shape[:2] != (height, width):
            shrink = image.shape[0] > height or image.shape[1] > width
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        return np.ascontiguousarray(image)

    def check_frame(self, frame: np.ndarray) -> np.ndarray:
        """Return ``frame`` with the batch dimension added, or raise :class:`FrameError`."""
        per_frame = list(self.frame_shape[1:])
        if not isinstance(frame, np.ndarray):
            raise FrameError(f"expected a numpy {self.frame_dtype} frame of shape {per_frame} "
                             f"({self._layout_hint()}), got {type(frame).__name__}")
        if frame.dtype != self.frame_dtype:
            hint = "; pass camera images through runtime.preprocess(image)" if frame.dtype == np.uint8 else ""
            raise FrameError(f"expected a {self.frame_dtype} frame of shape {per_frame} ({self._layout_hint()}), "
                             f"got dtype {frame.dtype}{hint}")
        if frame.shape == self.frame_shape[1:]:
            frame = frame[None]
        if frame.shape != self.frame_shape:
            raise FrameError(self._shape_message(list(frame.shape)))
        # One NaN would spread through the shift buffers into the next frames' logits: refuse it
        # before it reaches them, so the stream keeps its state.
        if frame.dtype.kind == "f" and not np.isfinite(frame).all():
            bad = int(frame.size - np.count_nonzero(np.isfinite(frame)))
            raise FrameError(f"expected finite values in the frame, got {bad} NaN or infinite value(s); "
                             "the stream's buffers are unchanged")
        return np.ascontiguousarray(frame)

    @property
    def batches_streams(self) -> bool:
        """Whether :meth:`step_many` runs its streams as one batch (a batched graph), not one after another.

        Both give the same logits; a report that times ``step_many`` says which it measured.
        """
        return type(self)._run_many is not Runtime._run_many

    def step_many(self, streams: Sequence[Stream], frames: Sequence[np.ndarray]) -> np.ndarray:
        """Run N streams as one batch; logits ``[N, n_class]`` equal N separate ``step`` calls."""
        self._check_open()
        if len(streams) != len(frames):
            raise ValueError(f"step_many needs one frame per stream: got {len(streams)} streams "
                             f"but {len(frames)} frames")
        if not streams:
            return np.zeros((0, self.n_class), np.float32)
        if any(s.runtime is not self for s in streams):
            raise ValueError("step_many: all streams must come from this runtime (runtime.new_stream())")
        if len({id(s) for s in streams}) != len(streams):
            raise ValueError("step_many: a stream appears twice; each stream takes one frame per step")
        batch = np.concatenate([self.check_frame(f) for f in frames], axis=0)
        logits, states = self._run_many(batch, [s.state for s in streams])
        for stream, state in zip(streams, states):
            stream.state = state
            stream.frames_seen += 1
        return logits

    def close(self) -> None:
        """Release backend resources (sessions, remote connections); the runtime says "closed" from then on."""
        self.closed = True
        self._release()

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeClosedError(f"this {self.backend} runtime is closed; open a new one with "
                                     "open_runtime(...) to stream again")

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.backend}: {self.description}>"

    # -- backend hooks ----------------------------------------------------------------------
    @abstractmethod
    def _zero_state(self) -> Any:
        """Zero shift buffers for one stream, in the backend's own containers."""

    @abstractmethod
    def _run(self, frames: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        """One step of one stream: ``(logits [1, n_class] float32 numpy, new_state)``."""

    def _release(self) -> None:
        """Free sessions, VMs, device memory or connections (backends that hold any override this)."""

    def _run_many(self, frames: np.ndarray, states: list[Any]) -> tuple[np.ndarray, list[Any]]:
        """One step of N streams (``frames`` ``[N, ...]``); backends with a batched graph override this."""
        results = [self._run(frames[i:i + 1], state) for i, state in enumerate(states)]
        return np.concatenate([r[0] for r in results], axis=0), [r[1] for r in results]

    # -- messages ---------------------------------------------------------------------------
    def _layout_hint(self) -> str:
        if self.folded_preprocess:
            return f"uint8 HWC {self.color_order.upper()} image"
        return f"normalised {self.frame_dtype} {self.layout[1:]}, see runtime.preprocess"

    def _shape_message(self, got: list[int]) -> str:
        per_frame = list(self.frame_shape[1:])
        message = (f"expected a frame of shape {per_frame} or {list(self.frame_shape)} ({self._layout_hint()}), "
                   f"got {got}")
        core = got[1:] if len(got) == len(per_frame) + 1 and got[0] == 1 else got
        want = self.layout[1:]
        if len(per_frame) == 3 and want in ("CHW", "HWC") and core != per_frame:
            other, order, fix = (("HWC", (1, 2, 0), "frame.transpose(2, 0, 1)") if want == "CHW"
                                 else ("CHW", (2, 0, 1), "frame.transpose(1, 2, 0)"))
            if core == [per_frame[i] for i in order]:
                message += f": that is {other} layout, this model takes {want} ({fix}, or use runtime.preprocess)"
        return message
