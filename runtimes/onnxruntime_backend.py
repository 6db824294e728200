"""ONNX Runtime backend: the artifact's ``model.onnx`` on the CPU, buffers kept as OrtValues.

Each stream owns two sets of buffer OrtValues and two pre-built I/O bindings:
step *t* reads set A and writes set B, step *t+1* reads B and writes A.  So a
step copies the frame into its bound OrtValue, runs, and copies out the
logits; the shift buffers never pass through numpy and nothing is allocated
per frame.

``step_many`` runs a batch-N twin of the graph (see :mod:`.onnx_batch`),
built lazily on first use; each stream's buffers are gathered into the
batched inputs and the outputs scattered back (memory copies inside ORT's
CPU buffers).  If the graph cannot be batched, streams are stepped one after
another, with a warning.

``profile=`` (a file prefix) turns on ONNX Runtime's own profiler for the
single-stream session; :meth:`OnnxRuntimeRuntime.end_profiling` stops it and
returns the JSON trace (one "model_run" Session event per step, one
"*_kernel_time" Node event per node executed).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from online_tsm.runtimes.artifact import open_artifact
from online_tsm.runtimes.base import BackendUnavailable, Runtime
from online_tsm.runtimes.onnx_batch import BatchingError, make_batch_dynamic


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable("backend onnxruntime needs the onnxruntime package: pip install onnxruntime "
                                 "(on a Jetson: the onnxruntime-gpu wheel for your JetPack)") from None
    return onnxruntime


class _Buffers:
    """CPU tensors owned by numpy and seen by ORT as OrtValues over the same memory."""

    def __init__(self, ort: Any, shapes: list[tuple[int, ...]], dtypes: list[str]) -> None:
        self.arrays = [np.zeros(s, np.dtype(d)) for s, d in zip(shapes, dtypes)]
        self.values = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.arrays]


class _StreamState:
    """One stream: frame and logits slots, two buffer sets, a binding per direction."""

    def __init__(self, rt: "OnnxRuntimeRuntime", session: Any, batch: int = 1) -> None:
        shapes = [(batch, *s[1:]) for s in rt._buffer_shapes]
        self.frame = _Buffers(rt._ort, [(batch, *rt.frame_shape[1:])], [str(rt.frame_dtype)])
        self.logits = _Buffers(rt._ort, [(batch, rt.n_class)], [rt._logits_dtype])
        self.sets = [_Buffers(rt._ort, shapes, rt._buffer_dtypes) for _ in range(2)]
        self.phase = 0  # index of the set holding the current buffers
        self.bindings = []
        for src, dst in ((0, 1), (1, 0)):
            binding = session.io_binding()
            binding.bind_ortvalue_input(rt._frame_name, self.frame.values[0])
            binding.bind_ortvalue_output(rt._logits_name, self.logits.values[0])
            for k, (name_in, name_out) in enumerate(rt._buffer_names):
                binding.bind_ortvalue_input(name_in, self.sets[src].values[k])
                binding.bind_ortvalue_output(name_out, self.sets[dst].values[k])
            self.bindings.append(binding)

    @property
    def current(self) -> list[np.ndarray]:
        return self.sets[self.phase].arrays


def _warn_if_int8_overflows_here(model: dict[str, Any]) -> None:
    """An 8-bit int8 model on a CPU whose int8 kernels saturate: its stored agreement does not hold here."""
    from online_tsm.machine.cpuinfo import int8_kernels, int8_kernels_saturate

    quantization = model.get("quantization")
    if model.get("precision") != "int8" or not quantization or quantization.get("weight_bits", 8) != 8:
        return   # float, 7-bit weights, or an export's own half-made model (measured where it is made)
    if int8_kernels_saturate():
        warnings.warn(f"this int8 model has 8-bit weights, which overflow ONNX Runtime's int8 kernels on this CPU "
                      f"({int8_kernels()}); its predictions agree with float32 far less here than its manifest "
                      "says. Re-export it on this machine (tsm-export --precision int8 then uses 7-bit weights) "
                      "or use the float32 export", RuntimeWarning, stacklevel=3)


class OnnxRuntimeRuntime(Runtime):
    backend = "onnxruntime"

    def __init__(self, source: str | os.PathLike, *, threads: int | None = None, batched: bool = True,
                 profile: str | os.PathLike | None = None) -> None:
        self._ort = import_onnxruntime()
        self.artifact = open_artifact(source, self.backend)
        self._onnx_path = self.artifact.file("onnx", self.backend)
        m = self.artifact.manifest
        self._frame_name, self._logits_name = m.frame_input, m.logits_output
        self._logits_dtype = m.spec(m.logits_output).dtype
        self._buffer_names = [(b.input, b.output) for b in m.buffers]
        self._buffer_shapes = [tuple(b.shape) for b in m.buffers]
        self._buffer_dtypes = [b.dtype for b in m.buffers]
        self._threads = threads
        _warn_if_int8_overflows_here(m.model)
        self._sessions: dict[str, Any] = {"single": self._make_session(str(self._onnx_path), profile)}
        self._batched_ok = batched
        self._batch_states: dict[int, _StreamState] = {}
        super().__init__(**self.artifact.runtime_fields(),
                         description=f"ONNX Runtime {self._ort.__version__} CPU, {self._onnx_path.name} "
                                     f"({threads or 'default'} threads)")

    def _make_session(self, model: str | bytes, profile: str | os.PathLike | None = None) -> Any:
        options = self._ort.SessionOptions()
        if profile is not None:
            options.enable_profiling = True
            options.profile_file_prefix = str(profile)
        options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if self._threads:
            options.intra_op_num_threads = int(self._threads)
            options.inter_op_num_threads = 1
        return self._ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def end_profiling(self) -> Path:
        """Stop the profiler asked for with ``profile=`` and return its JSON trace (ORT writes it only now)."""
        self._check_open()
        session = self._sessions["single"]
        if not session.get_session_options().enable_profiling:
            raise RuntimeError("end_profiling needs a runtime opened with profile=<file prefix>")
        return Path(session.end_profiling())

    # -- hooks ------------------------------------------------------------------------------
    def _zero_state(self) -> _StreamState:
        return _StreamState(self, self._sessions["single"])

    def _run(self, frames: np.ndarray, state: _StreamState) -> tuple[np.ndarray, _StreamState]:
        np.copyto(state.frame.arrays[0], frames)
        self._sessions["single"].run_with_iobinding(state.bindings[state.phase])
        state.phase ^= 1
        return state.logits.arrays[0].copy(), state

    def _run_many(self, frames: np.ndarray, states: list[_StreamState]) -> tuple[np.ndarray, list[Any]]:
        if not self._ensure_batched():
            return super()._run_many(frames, states)
        n = len(states)
        batch = self._batch_states.get(n)
        if batch is None:
            batch = self._batch_states[n] = _StreamState(self, self._sessions["batched"], n)
        np.copyto(batch.frame.arrays[0], frames)
        inputs = batch.current
        for k, gathered in enumerate(inputs):  # gather: each stream's buffer k into row i
            np.stack([s.current[k][0] for s in states], out=gathered)
        self._sessions["batched"].run_with_iobinding(batch.bindings[batch.phase])
        outputs = batch.sets[batch.phase ^ 1].arrays
        for i, s in enumerate(states):       # scatter: row i back into the stream's current buffers
            for mine, out in zip(s.current, outputs):
                mine[0] = out[i]
        return batch.logits.arrays[0].copy(), states

    @property
    def batches_streams(self) -> bool:
        """True once :meth:`step_many` has built its batch-N twin of the graph (on first use); False before, with
        ``batched=False``, or when the graph could not be batched (streams then run one after another)."""
        return "batched" in self._sessions

    def _ensure_batched(self) -> bool:
        if "batched" in self._sessions:
            return True
        if not self._batched_ok:
            return False
        import onnx

        try:
            model = make_batch_dynamic(onnx.load(str(self._onnx_path)))
        except BatchingError as exc:
            warnings.warn(f"step_many steps streams one after another: {exc}", RuntimeWarning, stacklevel=3)
            self._batched_ok = False
            return False
        self._sessions["batched"] = self._make_session(model.SerializeToString())
        return True

    def _release(self) -> None:
        self._sessions.clear()
        self._batch_states.clear()
