"""Opening an export folder for a backend: manifest (sha256-checked), the file a backend needs, feeding details.

Every artifact backend goes through here, so that a wrong source gives the
same clear line whatever the backend, and no backend hard-codes a tensor
name or shape: all of it comes from ``manifest.json``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from online_tsm.manifest import MANIFEST_NAME, Manifest, load_manifest
from online_tsm.labels import default_labels
from online_tsm.runtimes.base import RuntimeOpenError

ROLE_WORDS = {"onnx": "ONNX model", "library": "compiled TVM library", "reference": "reference logits",
              "tflite": "LiteRT model (model.tflite)"}


@dataclass
class Artifact:
    directory: Path
    manifest: Manifest

    def file(self, role: str, backend: str) -> Path:
        """Path of the file with ``role``; a clear error when the export did not write one."""
        name = self.manifest.file_with_role(role)
        if name is None:
            target = self.manifest.target.get("name", "?") if self.manifest.target else "?"
            raise RuntimeOpenError(f"backend {backend} needs a {ROLE_WORDS.get(role, role)} (role {role!r}), but "
                                   f"{self.directory} (target {target}) has none; export for a target that "
                                   "writes one")
        return self.directory / name

    @property
    def buffer_specs(self) -> list[tuple[str, str, tuple[int, ...], str]]:
        """``(input name, output name, shape, dtype)`` per shift buffer, in manifest order."""
        return [(b.input, b.output, tuple(b.shape), b.dtype) for b in self.manifest.buffers]

    def runtime_fields(self) -> dict[str, Any]:
        """Keyword arguments for :class:`~online_tsm.runtimes.base.Runtime` from the manifest."""
        m = self.manifest
        frame = m.spec(m.frame_input)
        n_class = int(m.spec(m.logits_output).shape[-1])
        labels = m.labels if len(m.labels) == n_class else default_labels(n_class)
        pre = m.preprocess
        return dict(labels=labels, input_size=m.input_size, frame_shape=frame.shape, frame_dtype=frame.dtype,
                    mean=pre.get("mean", (0.485, 0.456, 0.406)), std=pre.get("std", (0.229, 0.224, 0.225)),
                    color_order=pre.get("color_order", "rgb"), folded_preprocess=bool(pre.get("folded", False)),
                    layout=pre.get("layout", "NCHW"))

    def target_kind(self) -> str:
        """The export target's ``kind`` as the manifest records it: ``cpu`` (a TVM LLVM library), ``cuda`` (TVM
        CUDA kernels plus host code) or ``onnx`` (no library); ``cpu`` when the manifest does not say."""
        target = self.manifest.target or {}
        return str(target.get("kind") or "cpu").lower()


def open_artifact(source: Any, backend: str) -> Artifact:
    """Read the export folder ``source`` (or its ``manifest.json``) for ``backend``, verifying every sha256."""
    if not isinstance(source, (str, os.PathLike)):
        raise RuntimeOpenError(f"backend {backend} runs an export folder written by tsm-export; got a "
                               f"{type(source).__name__} (a PyTorch model runs with backend torch)")
    path = Path(source).expanduser()
    if path.is_file() and path.name == MANIFEST_NAME:
        path = path.parent
    if path.is_file():
        raise RuntimeOpenError(f"backend {backend} runs an export folder (with {MANIFEST_NAME}), got the file "
                               f"{path}; a checkpoint runs with backend torch")
    if not path.exists():
        raise RuntimeOpenError(f"no such export folder: {path} (tsm-export writes one)")
    return Artifact(path, load_manifest(path))  # ManifestError: missing manifest, sha256 mismatch, ...
