"""Which tools, at which versions, made an artifact (the manifest's ``compiler`` object)."""
from __future__ import annotations

import platform
import subprocess
from typing import Any

import torch

from online_tsm.export.targets import ExportTarget


def compiler_versions(row: ExportTarget, library: Any) -> dict[str, Any]:
    """The tools that made an artifact, for its manifest: a result that differs elsewhere starts from these."""
    import onnx
    import onnxruntime
    import onnxslim

    versions: dict[str, Any] = {"torch": torch.__version__, "onnx": onnx.__version__,
                                "onnxslim": getattr(onnxslim, "__version__", "?"),
                                "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}
    if row.kind != "onnx":
        from online_tsm.export.tvm.build import tvm_versions

        versions.update(tvm_versions())
        if library is not None and library.linker:
            versions["cross_compiler"] = tool_version(library.linker)
        if library is not None and library.device_code:
            versions["cuda_compiler"] = library.device_code.get("compiler")
    return versions


def tool_version(tool: str) -> str:
    """The first line of ``TOOL --version`` (the tool's name alone when it does not answer)."""
    try:
        out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=30).stdout
        return f"{tool}: {out.strip().splitlines()[0]}" if out.strip() else tool
    except (OSError, subprocess.SubprocessError):
        return tool
