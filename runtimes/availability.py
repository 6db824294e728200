"""What can run here, and ``backend="auto"``: the fastest backend available for a source.

Checks are cheap and load nothing heavy: package presence (``find_spec``),
the manifest's file roles, and the ELF header of a compiled library.  Each
backend that cannot run gets one line saying why, for the benchmark's and
the demo's tables.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from online_tsm.export.manifest import MANIFEST_NAME, ManifestError, load_manifest
from online_tsm.runtimes.base import BackendUnavailable, Runtime
from online_tsm.runtimes.library import LibraryError, elf_arch, host_arch

# Order of preference for an export folder under backend="auto" (fastest first on a CPU).
AUTO_ARTIFACT_ORDER = ("tvm", "onnxruntime")
# What each backend needs: Python modules, and the artifact file role (None: runs a checkpoint).
NEEDS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "torch": (("torch",), None),
    "onnxruntime": (("onnxruntime",), "onnx"),
    "tvm": (("tvm",), "library"),
    "tvm-rpc": (("tvm",), "library"),
    "tensorrt": (("tensorrt", "pycuda"), "onnx"),
}
INSTALL = {"onnxruntime": "pip install onnxruntime", "tvm": "pip install apache-tvm",
           "tensorrt": "pip install 'online-tsm[jetson]' or JetPack", "pycuda": "pip install pycuda",
           "torch": "pip install torch"}


def source_kind(source: Any) -> str:
    """``"folder"`` (export folder), ``"weights"`` (checkpoint file or name, or a model object) or ``"none"``."""
    if source is None:
        return "none"
    if not isinstance(source, (str, os.PathLike)):
        return "weights"
    path = Path(source).expanduser()
    if path.is_dir() or path.name == MANIFEST_NAME:
        return "folder"
    return "weights"


def _folder_of(source: Any) -> Path:
    path = Path(source).expanduser()
    return path.parent if path.name == MANIFEST_NAME else path


def available_backends(source: Any = None) -> dict[str, str | None]:
    """Backend name -> ``None`` if it can run ``source`` here (any source if ``None``), else why not."""
    kind = source_kind(source)
    manifest = None
    if kind == "folder":
        try:
            manifest = load_manifest(_folder_of(source), verify_files=False)
        except ManifestError as exc:
            return {name: str(exc) for name in NEEDS}
    out: dict[str, str | None] = {}
    for name, (modules, role) in NEEDS.items():
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing:
            out[name] = f"{' and '.join(missing)} not installed ({'; '.join(INSTALL[m] for m in missing)})"
        elif kind == "folder" and role is None:
            out[name] = "runs a checkpoint, not an export folder"
        elif kind == "weights" and role is not None:
            out[name] = "runs an export folder (tsm-export writes one), not a checkpoint"
        elif manifest is not None and role is not None and manifest.file_with_role(role) is None:
            out[name] = f"the export folder has no {role} file (target {manifest.target.get('name', '?')})"
        elif manifest is not None and name == "tvm":
            out[name] = _library_problem(_folder_of(source) / manifest.file_with_role("library"),
                                         str((manifest.target or {}).get("kind", "llvm")))
        else:
            out[name] = None
    return out


def _library_problem(library: Path, kind: str) -> str | None:
    try:
        arch = elf_arch(library)
    except (LibraryError, OSError) as exc:
        return str(exc)
    if arch != host_arch():
        return f"its library is built for {arch}, this machine is {host_arch()} (use tvm-rpc on the device)"
    if kind == "cuda":
        import tvm

        if not tvm.cuda(0).exist:
            return "its library is compiled for CUDA and this machine has no CUDA GPU"
    return None


def resolve_auto(source: Any) -> str:
    """The backend ``backend="auto"`` picks for ``source``: torch for weights, else tvm if it runs here, else onnxruntime."""
    if source_kind(source) != "folder":
        return "torch"
    status = available_backends(source)
    for name in AUTO_ARTIFACT_ORDER:
        if status[name] is None:
            return name
    reasons = "; ".join(f"{name}: {status[name]}" for name in AUTO_ARTIFACT_ORDER)
    raise BackendUnavailable(f"no backend can run {source} here ({reasons})")


def open_auto(source: Any, **options: Any) -> Runtime:
    """``open_runtime(source, backend="auto")``: see :func:`resolve_auto`."""
    from online_tsm.runtimes import open_runtime

    return open_runtime(source, backend=resolve_auto(source), **options)
