"""TVM backend: the artifact's compiled library run by the Relax VM, buffers kept as TVM tensors.

The library's ``main`` takes the manifest's inputs in order and returns its
outputs as a tuple in order.  The output tensors of one step are passed
straight back as the next step's buffer inputs, so buffers never leave the
device; only the frame is copied in (into one tensor reused for every step)
and the logits copied out.  Streams start from one shared set of zero
tensors: the VM never writes into its inputs.

``step_many`` steps the streams one after another: the compiled library
fixes the batch at 1 and recompiling a batch-N variant at run time would
take the exporter's whole optimisation pipeline.  A runtime (its VM) serves
one thread at a time.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from online_tsm.console.messages import last_message_line
from online_tsm.runtimes.artifact import open_artifact
from online_tsm.runtimes.base import BackendUnavailable, Runtime, RuntimeOpenError
from online_tsm.runtimes.library import check_runs_here

ENTRY = "main"


def config_threadpool_keeping_affinity(tvm: Any, threads: int) -> None:
    """Size TVM's CPU thread pool without pinning the calling thread.

    TVM binds its workers to cores and, in doing so, also pins the *calling*
    thread to core 0.  That thread is the user's: ONNX Runtime sessions,
    torch and the demo opened afterwards would all run on one core (seen as
    ORT at 2x its time in the same process, and ``auto`` choosing wrongly).
    Binding is off unless the user asked for it (``TVM_BIND_THREADS``), and
    the caller's affinity is put back either way.
    """
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    saved = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    tvm.get_global_func("runtime.config_threadpool")(1, threads)
    if saved is not None and os.sched_getaffinity(0) != saved:
        os.sched_setaffinity(0, saved)


@dataclass(frozen=True)
class DeviceTiming:
    """Per-frame model time measured on the device by TVM's ``time_evaluator`` (milliseconds)."""

    mean_ms: float
    median_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    number: int     # frames averaged per repeat
    repeat: int

    def __str__(self) -> str:
        return (f"{self.mean_ms:.2f} ms/frame (median {self.median_ms:.2f}, min {self.min_ms:.2f}, "
                f"max {self.max_ms:.2f}; {self.repeat} x {self.number} frames)")


def import_tvm() -> Any:
    try:
        import tvm
        from tvm import relax  # noqa: F401 -- the VM lives here
    except ImportError:
        raise BackendUnavailable("the TVM backends need Apache TVM's Python package: pip install apache-tvm "
                                 "(on a device that only runs artifacts: pip install apache-tvm, or build TVM's "
                                 "runtime from source)") from None
    return tvm


def _schedules_note(target: dict[str, Any] | None) -> str:
    """Which schedules a host library runs when tuning records were there at export (see export.tvm)."""
    schedules = ((target or {}).get("tuning") or {}).get("schedules")
    if schedules == "tuned":
        return ", tuned schedules"
    if schedules == "default":
        return ", default schedules (this CPU's tuning records ran slower at export)"
    return ""


def default_threads() -> int:
    """Threads for TVM's CPU pool when none are asked for: this machine's physical cores.

    TVM's own default on x86 is half the logical CPUs (it assumes two
    hyper-threads per core), so on a 2-vCPU machine without SMT it would run
    one thread while ONNX Runtime and PyTorch use both cores.
    """
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


class TvmRuntime(Runtime):
    backend = "tvm"

    def __init__(self, source: str | os.PathLike, *, threads: int | None = None, device_id: int = 0) -> None:
        self._tvm = tvm = import_tvm()
        self.artifact = open_artifact(source, self.backend)
        self._library = self.artifact.file("library", self.backend)
        fields = self.artifact.runtime_fields()
        m = self.artifact.manifest
        self._input_index = {spec.name: i for i, spec in enumerate(m.inputs)}
        output_index = {spec.name: i for i, spec in enumerate(m.outputs)}
        self._logits_at = output_index[m.logits_output]
        self._buffer_from = [output_index[b.output] for b in m.buffers]  # output slot of each buffer input
        self._buffer_slots = [self._input_index[b.input] for b in m.buffers]
        self._frame_slot = self._input_index[m.frame_input]
        self.device, where = self._open(device_id, threads)
        self._frame = tvm.runtime.empty(tuple(fields["frame_shape"]), fields["frame_dtype"], self.device)
        self._zeros = [tvm.runtime.tensor(np.zeros(b.shape, np.dtype(b.dtype)), self.device) for b in m.buffers]
        super().__init__(**fields, description=f"TVM {tvm.__version__} Relax VM, {self._library.name} on {where}"
                                               f"{_schedules_note(m.target)}")

    # -- loading: local here, remote in the RPC backend ------------------------------------------
    def _open(self, device_id: int, threads: int | None) -> tuple[Any, str]:
        tvm = self._tvm
        kind = self.artifact.target_kind()
        arch = check_runs_here(self._library)
        device = tvm.cuda(device_id) if kind == "cuda" else tvm.cpu(0)
        if kind == "cuda" and not device.exist:
            raise BackendUnavailable(f"{self._library.name} is compiled for CUDA but this machine has no CUDA GPU "
                                     "(or TVM was built without CUDA)")
        if kind != "cuda":
            config_threadpool_keeping_affinity(tvm, int(threads or default_threads()))
        try:
            lib = tvm.runtime.load_module(str(self._library))
            self._vm = tvm.relax.VirtualMachine(lib, device)
        except Exception as exc:  # noqa: BLE001 -- dlopen and VM errors come in many types
            raise RuntimeOpenError(f"TVM could not load {self._library.name} ({arch}): "
                                   f"{last_message_line(exc)}") from exc
        self._main = self._vm[ENTRY]
        return device, f"{kind} ({arch}) device {device}"

    def _invoke(self, args: list[Any]) -> Any:
        return self._main(*args)

    def device_time(self, n: int = 50, repeat: int = 3) -> DeviceTiming:
        """Time ``main`` on the device with TVM's ``time_evaluator``: ``repeat`` averages of ``n`` frames.

        The frame is a fixed pseudo-random pattern and the buffers are zeros
        (a CNN's speed does not depend on the values); streams are untouched.
        """
        if n < 1 or repeat < 1:
            raise ValueError(f"device_time needs n >= 1 and repeat >= 1, got n={n}, repeat={repeat}")
        rng = np.random.default_rng(0)
        pattern = rng.integers(0, 256, self.frame_shape) if self.frame_dtype == np.uint8 \
            else rng.standard_normal(self.frame_shape)
        self._frame.copyfrom(pattern.astype(self.frame_dtype))
        self._vm.set_input(ENTRY, *self._arguments(self._zeros))
        result = self._vm.time_evaluator("invoke_stateful", self.device, number=n, repeat=repeat)(ENTRY)
        ms = np.asarray(result.results, dtype=np.float64) * 1e3
        return DeviceTiming(float(ms.mean()), float(np.median(ms)), float(ms.min()), float(ms.max()),
                            float(ms.std()), n, repeat)

    def set_instrument(self, hook: Callable[..., int] | None) -> None:
        """Call ``hook(func, symbol, before, ret, *args)`` before and after every function the VM calls.

        TVM 0.27's Relax VM has no profiler; this hook is how per-function time
        is measured (:func:`online_tsm.benchmarks.profile.profile_tvm`).  The
        hook returns 0 to go on; ``None`` removes it.  Local VM only.
        """
        self._check_open()
        self._vm.set_instrument(hook if hook is not None else (lambda *_: 0))

    # -- hooks ------------------------------------------------------------------------------
    def _zero_state(self) -> list[Any]:
        return list(self._zeros)

    def _run(self, frames: np.ndarray, state: list[Any]) -> tuple[np.ndarray, list[Any]]:
        self._frame.copyfrom(frames)
        outputs = self._invoke(self._arguments(state))
        if isinstance(outputs, self._tvm.runtime.Tensor):  # a graph without buffers returns one tensor
            outputs = (outputs,)
        return outputs[self._logits_at].numpy(), [outputs[i] for i in self._buffer_from]

    def _arguments(self, state: list[Any]) -> list[Any]:
        args: list[Any] = [None] * len(self._input_index)
        args[self._frame_slot] = self._frame
        for slot, tensor in zip(self._buffer_slots, state):
            args[slot] = tensor
        return args

    def _release(self) -> None:
        self._vm = self._main = None
        self._zeros = []



