"""The naive ONNX Runtime loop, as a yardstick for the real backends.

Performance target 2 asks that the fastest backend be at least as fast as
"a plain ONNX Runtime session that converts buffers to numpy every frame":
``session.run`` with a dict of numpy arrays, every buffer copied out and fed
back in.  That is what most users would write first, so it is what the
optimised backends must beat.  It implements the runtimes protocol, so the
same timing loop measures it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from online_tsm.manifest import load_manifest
from online_tsm.runtimes.base import Runtime


class PlainOnnxRuntime(Runtime):
    """``session.run(None, {frame, **numpy_buffers})`` per frame: no IO binding, no state kept in ORT."""

    backend = "ort-plain"

    def __init__(self, artifact: str | os.PathLike, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        folder = Path(artifact)
        self.manifest = manifest = load_manifest(folder)
        onnx_name = manifest.file_with_role("onnx") or "model.onnx"
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(folder / onnx_name), options, providers=["CPUExecutionProvider"])
        self.output_names = [manifest.logits_output] + [b.output for b in manifest.buffers]
        size = manifest.input_size
        super().__init__(labels=manifest.labels, input_size=size,
                         frame_shape=manifest.spec(manifest.frame_input).shape,
                         mean=manifest.preprocess.get("mean"), std=manifest.preprocess.get("std"),
                         description=f"ONNX Runtime {ort.__version__} plain session, numpy buffers")

    def _zero_state(self) -> dict[str, np.ndarray]:
        return {b.input: np.zeros(b.shape, np.dtype(b.dtype)) for b in self.manifest.buffers}

    def _run(self, frames: np.ndarray, state: dict[str, np.ndarray]) -> tuple[np.ndarray, Any]:
        results = self.session.run(self.output_names, {self.manifest.frame_input: frames, **state})
        return results[0], {b.input: r for b, r in zip(self.manifest.buffers, results[1:])}
