"""What can run here, and ``backend="auto"``: the fastest backend available for a source.

For an export folder the choice is measured once per machine and cached
(:mod:`online_tsm.runtimes.auto`); this module holds the cheap checks.

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

from online_tsm.manifest import MANIFEST_NAME, ManifestError, load_manifest
from online_tsm.runtimes.base import BackendUnavailable, Runtime
from online_tsm.runtimes.library import LibraryError, elf_arch, host_arch

# What each backend needs: Python modules, and the artifact file role (None: runs a checkpoint).
NEEDS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "torch": (("torch",), None),
    "onnxruntime": (("onnxruntime",), "onnx"),
    "tvm": (("tvm",), "library"),
    "tvm-rpc": (("tvm",), "library"),
    "tensorrt": (("tensorrt", "pycuda"), "onnx"),
    "litert": (("ai_edge_litert",), "tflite"),
}
INSTALL = {"onnxruntime": "pip install onnxruntime", "tvm": "pip install apache-tvm",
           "tensorrt": "pip install 'online-tsm[jetson]' or JetPack", "pycuda": "pip install pycuda",
           "torch": "pip install torch", "ai_edge_litert": "pip install 'online-tsm[litert]'"}


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


def resolve_auto(source: Any, *, threads: int | None = None, choose: str | None = None,
                 remeasure: bool = False) -> str:
    """The backend ``backend="auto"`` picks for ``source``.

    The rule: ``torch`` for weights (a checkpoint, a name, a model object).  For an
    export folder, among ``onnxruntime``, ``tvm`` and ``litert``: the one named by ``choose``
    or ``$ONLINE_TSM_AUTO`` if set; the only one that can run it here if just
    one can; else the faster, measured on the first open of this artifact on this
    CPU at this thread count (a few seconds of warm frames, interleaved rounds)
    and cached under the online-tsm cache folder (``$ONLINE_TSM_CACHE``).
    """
    if source_kind(source) != "folder":
        return "torch"
    from online_tsm.runtimes.auto import resolve_choice

    choice, runtime = resolve_choice(_folder_of(source), threads=threads, choose=choose, remeasure=remeasure)
    if runtime is not None:
        runtime.close()
    return choice.backend


def open_auto(source: Any, *, threads: int | None = None, choose: str | None = None, remeasure: bool = False,
              **options: Any) -> Runtime:
    """``open_runtime(source, backend="auto")``: see :func:`resolve_auto`; ``description`` says what was measured."""
    from online_tsm.runtimes import open_runtime

    if source_kind(source) != "folder":
        if choose or remeasure:
            raise BackendUnavailable("choose/remeasure pick among the backends of an export folder; weights run "
                                     "with backend torch")
        return open_runtime(source, backend="torch", **({"threads": threads} if threads else {}), **options)
    from online_tsm.runtimes.auto import open_measured

    return open_measured(_folder_of(source), threads=threads, choose=choose, remeasure=remeasure, **options)
