"""Streaming runtimes over several backends -- ``online_tsm.runtimes``.

``open_runtime(source, backend="auto")`` returns a :class:`Runtime`; its
``new_stream()`` gives a :class:`Stream` with ``step(frame) -> logits``,
``reset()`` and ``frames_seen``; ``runtime.step_many(streams, frames)`` batches
many streams.  Backends are imported lazily, so a missing optional package
only matters when that backend is asked for; ``available_backends()`` says
which can run here and why the others cannot.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any

from online_tsm.runtimes.availability import available_backends, resolve_auto
from online_tsm.runtimes.base import (BackendUnavailable, FrameError, Runtime, RuntimeClosedError, RuntimeOpenError,
                                      Stream)

# backend name -> (module, factory); data, not branches.  "auto" resolves to one of the others.
BACKENDS: dict[str, tuple[str, str]] = {
    "auto": ("online_tsm.runtimes.availability", "open_auto"),
    "torch": ("online_tsm.runtimes.torch_backend", "TorchRuntime"),
    "onnxruntime": ("online_tsm.runtimes.onnxruntime_backend", "OnnxRuntimeRuntime"),
    "tvm": ("online_tsm.runtimes.tvm_backend", "TvmRuntime"),
    "tvm-rpc": ("online_tsm.runtimes.tvm_rpc_backend", "TvmRpcRuntime"),
    "tensorrt": ("online_tsm.runtimes.tensorrt_backend", "TensorRtRuntime"),
    "triton": ("online_tsm.runtimes.triton.backend", "TritonRuntime"),
    "litert": ("online_tsm.runtimes.litert_backend", "LiteRtRuntime"),
}


def open_runtime(source: Any, backend: str = "auto", **options: Any) -> Runtime:
    """Open ``source`` -- an export folder, or weights (file, registry name, model) for ``torch`` -- with ``backend``.

    Options go to the backend: ``threads`` (all but tensorrt, whose engine runs on the GPU),
    ``address="HOST:PORT"`` (tvm-rpc, triton; ``model``, ``timeout`` for triton),
    ``fp16``, ``engine_dir`` (tensorrt), ``batched`` (onnxruntime), ``device`` (torch).
    An option the backend does not take is refused in one line that lists the ones it does.
    """
    if backend not in BACKENDS:
        raise RuntimeOpenError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    module_name, factory_name = BACKENDS[backend]
    factory = getattr(importlib.import_module(module_name), factory_name)
    if backend != "auto":
        _check_options(backend, factory, options)
    return factory(source, **options)


def _check_options(backend: str, factory: Any, options: dict[str, Any]) -> None:
    params = inspect.signature(factory).parameters
    known = [name for name, p in params.items() if p.kind == p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise RuntimeOpenError(f"backend {backend} does not take option(s) {', '.join(unknown)}; it takes "
                               f"{', '.join(known) or 'none'}")


__all__ = ["open_runtime", "available_backends", "resolve_auto", "Runtime", "Stream", "FrameError",
           "RuntimeClosedError", "RuntimeOpenError", "BackendUnavailable", "BACKENDS"]
