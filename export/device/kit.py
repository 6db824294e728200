"""What an artifact carries to run on the device by itself: ``run.py`` / ``run_onnx.py``.

The script is :mod:`online_tsm.export.device.run_template`, a template that
imports only numpy and one runtime, copied verbatim into the folder: the file
that ``tsm-export verify --emulate`` runs under qemu is the file the user runs
on the device.  It reads everything from ``manifest.json``, including the
verification rules the export wrote there (:mod:`online_tsm.verification`),
so the device, ``tsm-export verify`` and the emulated check apply one rule.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from online_tsm.manifest import Manifest
from online_tsm.export.targets import ExportTarget

TEMPLATE = Path(__file__).with_name("run_template.py")
RUN_SCRIPT = "run.py"           # artifacts with a TVM library
RUN_ONNX_SCRIPT = "run_onnx.py"  # the onnx artifact (ONNX Runtime or TensorRT)
RUN_LITERT_SCRIPT = "run_litert.py"  # the LiteRT artifact (model.tflite)
SCRIPT_ROLE = "script"


def script_name(row: ExportTarget, library: str | None) -> str | None:
    """``run.py`` for a TVM library a glibc Python can load (a ``.tar`` once linked), ``run_onnx.py`` for onnx.

    An Android library needs an app around it (no Python TVM wheel for bionic),
    so its artifact gets a script only when the export linked a ``.so``.
    """
    if row.kind == "onnx":
        return RUN_ONNX_SCRIPT
    if row.kind == "litert":
        return RUN_LITERT_SCRIPT
    if library and (library.endswith(".so") or row.library_glibc):
        return RUN_SCRIPT
    return None


def script_names(row: ExportTarget, library: str | None) -> list[str]:
    """Every script the artifact carries: :func:`script_name`, and ``run_onnx.py`` too where ``model.onnx`` is made
    for the device's own runtime (``onnx_profile``: a Jetson's TensorRT), to run it without the library."""
    name = script_name(row, library)
    names = [name] if name else []
    if row.onnx_profile and RUN_ONNX_SCRIPT not in names:
        names.append(RUN_ONNX_SCRIPT)
    return names


def add_device_kit(out: Path, manifest: Manifest, row: ExportTarget) -> dict[str, str]:
    """Copy the scripts into ``out``; return ``{file: role}``."""
    roles = {}
    for name in script_names(row, manifest.target.get("library")):
        # ``out`` is the export's staging folder, published as a whole: the copy needs no atomic rename of its own
        shutil.copyfile(TEMPLATE, out / name)
        os.chmod(out / name, 0o755)
        roles[name] = SCRIPT_ROLE
    return roles
