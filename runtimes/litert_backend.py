"""LiteRT backend (formerly TensorFlow Lite): the artifact's ``model.tflite`` on the CPU with XNNPACK.

The model has one signature whose inputs and outputs carry the manifest's
names (``frame``, ``shift_k`` in; ``logits``, ``shift_out_k`` out), so every
tensor is fed and read *by name*: LiteRT lists a signature's names sorted as
strings (``shift_10`` before ``shift_2``), and nothing here depends on an
order.  A stream's buffers are the numpy arrays the previous step returned
(``state.current``, in the manifest's buffer order, which is what
:func:`online_tsm.export.precision.quantize.record_feeds` reads to calibrate).

The interpreter of the ``ai-edge-litert`` package is the same runtime a phone
runs, with XNNPACK as its CPU delegate; ``threads`` sets XNNPACK's thread
pool (default: the cores this process may use).
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator

import numpy as np

from online_tsm.runtimes.artifact import open_artifact
from online_tsm.runtimes.base import BackendUnavailable, Runtime, RuntimeOpenError

INSTALL = "pip install 'online-tsm[litert]' (the runtime alone: pip install ai-edge-litert)"


def import_litert() -> Any:
    """LiteRT's ``Interpreter`` class, or one line saying what to install."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise BackendUnavailable(f"backend litert needs the ai-edge-litert package: {INSTALL}") from None
    return Interpreter


@contextlib.contextmanager
def quiet_native() -> Iterator[None]:
    """Silence what LiteRT's C++ code prints on file descriptors 1 and 2 ("INFO: Created TensorFlow Lite XNNPACK
    delegate", absl's log lines): noise around a program's own output.  Errors still arrive as exceptions."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def default_threads() -> int:
    """The cores this process may use (XNNPACK's pool otherwise defaults to one thread)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class _State:
    """One stream's shift buffers: numpy arrays in the manifest's buffer order."""

    __slots__ = ("current",)

    def __init__(self, current: list[np.ndarray]) -> None:
        self.current = current


def signature_problems(inputs: dict[str, dict], outputs: dict[str, dict], manifest: Any) -> list[str]:
    """Where a signature's tensors differ from the manifest's (names, shapes, dtypes); [] when they agree."""
    problems = []
    for what, have, specs in (("input", inputs, manifest.inputs), ("output", outputs, manifest.outputs)):
        want = {s.name: s for s in specs}
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        if missing:
            problems.append(f"{what}s {', '.join(missing)} missing")
        if extra:
            problems.append(f"unexpected {what}s {', '.join(extra)}")
        for name in sorted(set(want) & set(have)):
            shape = [int(d) for d in have[name]["shape"]]
            dtype = np.dtype(have[name]["dtype"]).name
            if shape != list(want[name].shape) or dtype != want[name].dtype:
                problems.append(f"{what} {name} is {dtype}{shape}, the manifest says {want[name].dtype}"
                                f"{list(want[name].shape)}")
    return problems


class LiteRtRuntime(Runtime):
    backend = "litert"

    def __init__(self, source: str | os.PathLike, *, threads: int | None = None) -> None:
        interpreter_class = import_litert()
        self.artifact = open_artifact(source, self.backend)
        path = self.artifact.file("tflite", self.backend)
        m = self.artifact.manifest
        self._threads = int(threads or default_threads())
        try:
            with quiet_native():
                self._interpreter = interpreter_class(model_path=str(path), num_threads=self._threads)
            signatures = self._interpreter.get_signature_list()
            key = (m.model.get("litert") or {}).get("signature") or next(iter(signatures), None)
            if key not in signatures:
                raise RuntimeOpenError(f"{path.name} has no signature {key!r} (it has {', '.join(signatures)})")
            self._runner = self._interpreter.get_signature_runner(key)
        except (ValueError, RuntimeError) as exc:
            if isinstance(exc, RuntimeOpenError):
                raise
            raise RuntimeOpenError(f"LiteRT could not load {path}: {str(exc).strip().splitlines()[-1][:300]}") \
                from None
        problems = signature_problems(self._runner.get_input_details(), self._runner.get_output_details(), m)
        if problems:
            raise RuntimeOpenError(f"{path.name} does not match {m.target.get('name', '?')}'s manifest.json: "
                                   f"{'; '.join(problems[:3])}")
        self._frame_name, self._logits_name = m.frame_input, m.logits_output
        self._buffers = [(b.input, b.output, tuple(b.shape), np.dtype(b.dtype)) for b in m.buffers]
        frame = m.spec(m.frame_input)
        with quiet_native():   # XNNPACK is applied on the first call, which announces it on stderr
            self._runner(**{frame.name: np.zeros(frame.shape, frame.dtype)},
                         **{name: np.zeros(shape, dtype) for name, _, shape, dtype in self._buffers})
        import ai_edge_litert

        version = getattr(ai_edge_litert, "__version__", None) or _distribution_version()
        super().__init__(**self.artifact.runtime_fields(),
                         description=f"LiteRT {version} XNNPACK CPU, {path.name} "
                                     f"({m.model.get('precision', 'fp32')}, {self._threads} threads)")

    # -- hooks ------------------------------------------------------------------------------
    def _zero_state(self) -> _State:
        return _State([np.zeros(shape, dtype) for _, _, shape, dtype in self._buffers])

    def _run(self, frames: np.ndarray, state: _State) -> tuple[np.ndarray, _State]:
        feeds = {name: array for (name, _, _, _), array in zip(self._buffers, state.current)}
        feeds[self._frame_name] = frames
        out = self._runner(**feeds)
        return np.array(out[self._logits_name], np.float32), _State([out[o] for _, o, _, _ in self._buffers])

    def _release(self) -> None:
        self._runner = None
        self._interpreter = None


def _distribution_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("ai-edge-litert")
    except metadata.PackageNotFoundError:
        return "?"
