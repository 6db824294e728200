"""Streaming runtimes over several backends -- ``online_tsm.runtimes``.

``open_runtime(source, backend=...)`` returns a :class:`Runtime`; its
``new_stream()`` gives a :class:`Stream` with ``step(frame) -> logits``,
``reset()`` and ``frames_seen``; ``runtime.step_many(streams, frames)`` batches
many streams.  Backends are imported lazily, so a missing optional package
only matters when that backend is asked for.
"""
from __future__ import annotations

import importlib
import os
from typing import Any

from online_tsm.runtimes.base import FrameError, Runtime, Stream

# backend name -> (module, class); data, not branches.
BACKENDS: dict[str, tuple[str, str]] = {
    "torch": ("online_tsm.runtimes.torch_backend", "TorchRuntime"),
}


def open_runtime(source: Any, backend: str = "torch", **options: Any) -> Runtime:
    """Open ``source`` (export folder, or weights for ``torch``) with ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    module_name, class_name = BACKENDS[backend]
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(source, **options)


__all__ = ["open_runtime", "Runtime", "Stream", "FrameError", "BACKENDS"]
