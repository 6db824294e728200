"""ONNX -> TVM Relax -> compiled library, for one row of the targets table.

How to load and run an exported library (the runtimes do exactly this)::

    import numpy as np, tvm
    from tvm import relax
    from online_tsm.manifest import load_manifest

    manifest = load_manifest(folder)
    lib = tvm.runtime.load_module(str(folder / manifest.file_with_role("library")))
    dev = tvm.cpu()                      # tvm.cuda() for jetson-nano
    vm = relax.VirtualMachine(lib, dev)
    state = {b.input: tvm.runtime.tensor(np.zeros(b.shape, b.dtype), dev) for b in manifest.buffers}
    for frame in frames:                 # float32 [1, 3, S, S] (uint8 HWC if manifest.preprocess["folded"])
        feeds = {manifest.frame_input: tvm.runtime.tensor(frame, dev), **state}
        results = vm["main"](*[feeds[s.name] for s in manifest.inputs])   # inputs in manifest order
        outputs = dict(zip((s.name for s in manifest.outputs), results))  # named as the manifest names them
        logits = outputs[manifest.logits_output].numpy()
        state = {b.input: outputs[b.output] for b in manifest.buffers}

The function is always called ``"main"``; buffers stay on the device between
frames (no numpy round trip).  A ``.tar`` library is a set of object files:
link it first (``tvm.support.cc.create_shared`` or the NDK's clang) or load it
with ``tvm.runtime.load_module`` on a machine that has a compiler.

Pipelines: CPU targets go through the NHWC layout with 1x1 weights packed in
vector-wide panels, fusion, and the default schedules of
:mod:`online_tsm.export.tvm.cpu_schedules` (plus MetaSchedule records when tuned,
:mod:`online_tsm.export.tvm.tuning`); CUDA targets through TVM's GPU pipeline (fusion + dlight default
GPU rules), compiled in a worker process (:mod:`online_tsm.export.tvm.cuda_build`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from online_tsm.errors import UserError

from online_tsm.console.messages import first_line
from online_tsm.errors import OnlineTSMError
from online_tsm.manifest import Manifest
from online_tsm.export.options import LIBRARY_CHOICES
from online_tsm.export.targets import ExportTarget
from online_tsm.console.progress import Say



class CompileError(OnlineTSMError, RuntimeError):
    """TVM could not compile or link the model for the target."""


@dataclass
class CompiledLibrary:
    """What :func:`compile_library` produced."""

    filename: str
    tvm_target: dict[str, Any]
    tvm_host: dict[str, Any] | None = None
    linker: str | None = None
    device_code: dict[str, Any] = field(default_factory=dict)
    tuning: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _quiet(message: str) -> None:
    pass


def resolve_tvm_target(row: ExportTarget) -> dict[str, Any]:
    """The row's TVM target dict with ``mcpu=native`` replaced by this CPU's name.

    TVM 0.27's LLVM rejects ``-mcpu=native`` and silently falls back to a
    generic CPU (no AVX); asking LLVM for the host CPU gets the real one.
    """
    from tvm.target.codegen import llvm_get_system_cpu

    target = dict(row.tvm_target or {})
    if target.get("mcpu") == "native":
        target["mcpu"] = llvm_get_system_cpu()
        target["num-cores"] = os.cpu_count() or 1
    return target


def tvm_target_object(row: ExportTarget):  # noqa: ANN201 -- tvm.target.Target
    import tvm

    target = resolve_tvm_target(row)
    return tvm.target.Target(target, host=row.tvm_host) if row.tvm_host else tvm.target.Target(target)


def input_specs(manifest: Manifest) -> dict[str, tuple[list[int], str]]:
    """``{input name: (shape, dtype)}`` in manifest order."""
    return {s.name: (list(s.shape), s.dtype) for s in manifest.inputs}


def relax_from_onnx(onnx_path: str | Path, inputs: dict[str, tuple[list[int], str]]):  # noqa: ANN201
    """Import the per-frame graph with its weights as constants and the fixed input shapes given."""
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    from online_tsm.export.tvm.relax_passes import clip_to_relax_ops

    model = onnx.load(str(onnx_path))
    shapes = {name: list(shape) for name, (shape, _) in inputs.items()}
    dtypes = {name: dtype for name, (_, dtype) in inputs.items()}
    mod = from_onnx(model, shape_dict=shapes, dtype_dict=dtypes, keep_params_in_input=False)
    return clip_to_relax_ops(mod)


# -- CPU -----------------------------------------------------------------------------------

def cpu_pipeline(target, database=None):  # noqa: ANN001, ANN201 -- TVM objects
    """Fusion + legalisation + (tuning records) + default CPU schedules + VM lowering."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    from tvm.s_tir import dlight as dl

    from online_tsm.export.tvm.cpu_schedules import default_cpu_rules

    @tvm.transform.module_pass(opt_level=0, name="OnlineTSMCPUPipeline")
    def _pipeline(mod, _ctx):  # noqa: ANN001, ANN202
        mod = cpu_graph_rewrites(mod, target)
        with target:
            mod = tvm.transform.Sequential(cpu.library_dispatch_passes(target) + cpu.legalize_passes(target))(mod)
            if database is not None:
                with database:
                    mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
            mod = dl.ApplyDefaultSchedule(*default_cpu_rules())(mod)
            mod = tvm.transform.Sequential(cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))(mod)
        return mod

    return _pipeline


def cpu_graph_rewrites(mod, target):  # noqa: ANN001, ANN201 -- TVM objects
    """The Relax rewrites before legalisation: NHWC layout, 1x1 weights packed in vector-wide panels.

    Shared by the build and by ``--tune``, so that tuning records describe
    exactly the functions the build schedules.
    """
    from online_tsm.export.tvm.cpu_schedules import vector_lanes
    from online_tsm.export.tvm.relax_passes import pack_pointwise_weights, to_channels_last

    return pack_pointwise_weights(to_channels_last(mod), vector_lanes(target))


def _export(executable, path: Path, row: ExportTarget, linker: str | None) -> None:  # noqa: ANN001
    from tvm.support import cc, ndk

    if path.suffix == ".tar" or not row.cross:
        executable.export_library(str(path))
    elif row.linker_env and os.environ.get(row.linker_env) and not row.library_glibc:
        executable.export_library(str(path), fcompile=ndk.create_shared)
    else:
        executable.export_library(str(path), fcompile=cc.cross_compiler(linker))


def compile_cpu(onnx_path: Path, manifest: Manifest, row: ExportTarget, out_dir: Path, *, library: str = "auto",
                tune: int = 0, progress: Say = _quiet, tuning_records: bool = True) -> CompiledLibrary:
    """Build a CPU target into ``out_dir/model.so`` (or ``model.tar``).

    ``tuning_records=False`` builds with the default schedules even when
    ``--tune`` records exist for this CPU, so that tuned and untuned builds
    can be compared.
    """
    import tvm

    linker = row.find_linker()
    suffix = _choose_suffix(row, linker, library)
    target = tvm_target_object(row)
    target_dict = resolve_tvm_target(row)
    start = time.perf_counter()
    mod = relax_from_onnx(onnx_path, input_specs(manifest))
    notes: list[str] = []
    tuning: dict[str, Any] = {"trials_per_task": tune}
    from online_tsm.export.tvm.tuning import faster_of_tuned_and_default, open_database, tune_cpu

    if tune > 0:
        tune_cpu(mod, row, target, tune, progress)
    database, used = open_database(row, target_dict) if tuning_records else (None, [])
    tuning["record_databases"] = used
    if not tuning_records:
        tuning["records"] = "not used (default schedules asked for)"
    progress(f"compiling for {row.name} ({target_dict.get('mcpu', 'generic')}"
             f"{', with tuning records' if used else ', default schedules'})")
    executable = tvm.compile(mod, target, relax_pipeline=cpu_pipeline(target, database))
    if database is not None and not row.cross:
        executable = faster_of_tuned_and_default(executable, mod, target, manifest, tuning, progress)
    progress(f"compiled in {time.perf_counter() - start:.1f} s; {'linking' if suffix == '.so' else 'archiving'}")
    path = out_dir / f"model{suffix}"
    try:
        _export(executable, path, row, linker)
    except Exception as exc:  # noqa: BLE001 -- the linker's many failure modes, one message
        raise CompileError(f"linking {path.name} for {row.name} failed: {first_line(exc)}") from exc
    if suffix == ".tar":
        notes.append(_tar_note(row))
    return CompiledLibrary(path.name, target_dict, row.tvm_host, linker if suffix == ".so" else None,
                           tuning=tuning, notes=notes)


def _choose_suffix(row: ExportTarget, linker: str | None, library: str) -> str:
    if library not in LIBRARY_CHOICES:
        raise UserError(f"--library must be {', '.join(LIBRARY_CHOICES[:-1])} or {LIBRARY_CHOICES[-1]}, got "
                        f"{library!r}")
    if library == "tar":
        return ".tar"
    if library == "so" and row.cross and linker is None:
        how = (f"set {row.linker_env} to the Android NDK's clang (e.g. .../toolchains/llvm/prebuilt/linux-x86_64/"
               "bin/aarch64-linux-android24-clang)" if row.needs_ndk
               else "install it (Debian/Ubuntu: apt-get install gcc-aarch64-linux-gnu)")
        raise UserError(f"a .so for {row.name} needs the cross compiler "
                        f"{row.linker or row.linker_env}, which is not available: {how}; "
                        "or drop --library so to get a .tar of objects")
    return row.library_suffix(linker is not None) or ".so"


def _tar_note(row: ExportTarget) -> str:
    if row.needs_ndk:
        return (f"no {row.linker_env} set: shipped model.tar (aarch64 object files); link it with the Android "
                f"NDK's clang into model.so (see README.txt)")
    return (f"{row.linker} not found: shipped model.tar (aarch64 object files), which links on the device "
            "(see README.txt); apt-get install gcc-aarch64-linux-gnu to get a .so here")


# -- CUDA ----------------------------------------------------------------------------------

def compile_cuda(onnx_path: Path, manifest: Manifest, row: ExportTarget, out_dir: Path, *, library: str = "auto",
                 tune: int = 0, progress: Say = _quiet, precision: str = "fp32") -> CompiledLibrary:
    """Build a CUDA target in a worker process (see :mod:`online_tsm.export.tvm.cuda_build`)."""
    if tune:
        raise UserError(f"--tune is not available for {row.name}: GPU kernels use dlight's default GPU "
                        "schedules (valid without tuning); tuning needs the device")
    linker = row.find_linker()
    suffix = _choose_suffix(row, linker, library)
    path = out_dir / f"model{suffix}"
    report = out_dir / ".cuda-build.json"
    request = {"onnx": str(onnx_path), "inputs": input_specs(manifest), "output": str(path),
               "target": resolve_tvm_target(row), "host": row.tvm_host, "linker": linker if suffix == ".so" else None,
               "report": str(report), "precision": precision}
    arch = row.tvm_target.get("arch") or row.tvm_target.get("mcpu")
    progress(f"compiling CUDA kernels for {row.name} ({arch}, {row.tvm_target['kind']}) in a worker process")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "online_tsm.export.tvm.cuda_build", json.dumps(request)],
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0 or not report.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        raise CompileError(f"CUDA build for {row.name} failed: {tail[-1] if tail else 'no output'}")
    result = json.loads(report.read_text())
    report.unlink()
    progress(f"compiled and {'linked' if suffix == '.so' else 'archived'} in {time.perf_counter() - start:.1f} s")
    notes = list(result.get("notes", []))
    if suffix == ".tar":
        notes.append(_tar_note(row))
    return CompiledLibrary(path.name, request["target"], row.tvm_host, request["linker"],
                           device_code=result.get("device_code", {}), notes=notes)


def compile_library(onnx_path: Path, manifest: Manifest, row: ExportTarget, out_dir: Path, *,
                    library: str = "auto", tune: int = 0, progress: Say = _quiet,
                    precision: str = "fp32", tuning_records: bool = True) -> CompiledLibrary:
    """Compile the artifact's ``model.onnx`` for ``row`` into ``out_dir`` (``precision="fp16"``: CUDA only)."""
    if row.kind == "cuda":
        return compile_cuda(onnx_path, manifest, row, out_dir, library=library, tune=tune, progress=progress,
                            precision=precision)
    if row.kind == "cpu" and precision != "fp16":
        return compile_cpu(onnx_path, manifest, row, out_dir, library=library, tune=tune, progress=progress,
                           tuning_records=tuning_records)
    raise ValueError(f"target {row.name} (kind {row.kind}) has no {precision} compiled library")


def tvm_versions() -> dict[str, str]:
    import tvm

    from tvm.target.codegen import llvm_version_major

    return {"tvm": tvm.__version__, "llvm": str(llvm_version_major())}


def stream_tvm(library: str | Path, manifest: Manifest, frames: np.ndarray) -> np.ndarray:
    """Logits of ``frames`` through a freshly built host library, buffers carried by manifest names.

    The exporter's own build check, run before the folder (and its manifest) is complete; everything
    after export streams through :mod:`online_tsm.runtimes` instead.
    """
    import tvm
    from tvm import relax

    dev = tvm.cpu()
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), dev)
    state = {b.input: tvm.runtime.tensor(np.zeros(b.shape, np.dtype(b.dtype)), dev) for b in manifest.buffers}
    out = []
    for frame in frames:
        feeds = {manifest.frame_input: tvm.runtime.tensor(np.ascontiguousarray(frame[None]), dev), **state}
        outputs = vm["main"](*[feeds[s.name] for s in manifest.inputs])
        if not manifest.buffers and not isinstance(outputs, (tuple, list)) and not hasattr(outputs, "__len__"):
            outputs = [outputs]
        by_name = {s.name: outputs[i] for i, s in enumerate(manifest.outputs)}
        out.append(by_name[manifest.logits_output].numpy()[0])
        state = {b.input: by_name[b.output] for b in manifest.buffers}
    return np.stack(out)


def check_library(path: Path, row: ExportTarget, compiled: Any, say: Say) -> None:
    """The library's host code must be for the target's machine; CUDA ones must carry device code."""
    from online_tsm.export.device import elf

    machines = set(elf.library_machines(path).values())
    expected = row.elf_machine
    if expected is not None and machines != {expected}:
        raise CompileError(f"{path.name} holds {', '.join(elf.machine_name(m) for m in machines)} code, expected "
                          f"{elf.machine_name(expected)} for {row.name}")
    names = ", ".join(sorted(elf.machine_name(m) for m in machines))
    if row.kind == "cuda":
        code = compiled.device_code
        say(f"library: {names} host code + {code.get('kernels')} CUDA kernels as a {code.get('arch')} "
            f"{code.get('format')} ({code.get('compiler')})")
    else:
        say(f"library: {path.name}, {names} code")
