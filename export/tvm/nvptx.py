"""CUDA kernels as PTX through TVM's LLVM NVPTX back end: what a CUDA 10.2 driver (JetPack 4.6) still loads.

Why: NVRTC/nvcc 12 write cubins a CUDA 10.2 driver does not load and PTX of
ISA 8.x, which it cannot JIT-compile (it reads ISA <= 6.5).  LLVM's NVPTX back
end writes PTX ISA 4.2 for ``sm_53``, which every driver since CUDA 7.0
compiles -- on the Nano, and on any newer NVIDIA GPU.

TVM 0.27 with its LLVM 22 needs three mends to get there, each made here
before the build (in the build worker only, :mod:`.cuda_build`):

1. its block barrier (``tvm_storage_sync("shared")``) is emitted as an LLVM
   intrinsic call without the barrier id that LLVM 22 requires, and the module
   fails LLVM's verifier: the barrier is lowered here to the intrinsic with id
   0 (PTX ``bar.sync 0``); a warp-level sync is lowered to nothing, as TVM's own
   NVPTX code generator does: the last steps of a reduction then rely on the warp
   running in lock-step over volatile shared memory, which holds on the Nano's
   Maxwell GPU.  Volta and newer GPUs schedule a warp's threads independently and
   would want ``bar.warp.sync`` (PTX ISA 6.0), which LLVM emits only for a
   ``+ptx60`` feature that TVM's ``nvptx`` target cannot pass; so the ``cuda``
   row's check on a newer GPU (tests/gpu/run.sh) tests this assumption too;
2. LLVM 22 no longer reads TVM's ``nvvm.annotations`` kernel marks, so every
   kernel comes out as a ``.func`` that no driver can launch: the PTX is mended
   as TVM wraps it into its CUDA module, ``.func`` -> ``.entry`` for exactly
   the kernels in the module's function table;
3. the kernels call CUDA's libdevice (``__nv_fmaf``); TVM looks for it next to
   an ``nvcc`` that this machine does not need: it is taken from the
   ``nvidia-cuda-nvcc-cu12`` wheel (which has libdevice and ``ptxas`` but no
   ``nvcc``).

The PTX is then checked in the bytes: header ``.version``/``.target``, every
kernel an ``.entry``, and ``ptxas`` from the same wheel must assemble it for
the target's architecture -- a PTX file that does not assemble would only fail
on the device.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from online_tsm.errors import OnlineTSMError

NVCC_PACKAGE = "nvidia-cuda-nvcc-cu12"   # libdevice.10.bc and ptxas (no nvcc driver inside)

#: PTX ISA version -> the first CUDA release whose driver JIT-compiles it (NVIDIA's PTX ISA release history).
PTX_ISA_CUDA = {"4.0": "6.0", "4.1": "6.5", "4.2": "7.0", "4.3": "7.5", "5.0": "8.0", "6.0": "9.0", "6.1": "9.1",
                "6.2": "9.2", "6.3": "10.0", "6.4": "10.1", "6.5": "10.2", "7.0": "11.0", "7.1": "11.1",
                "7.2": "11.2", "7.3": "11.3", "7.4": "11.4", "7.5": "11.5", "7.6": "11.6", "7.7": "11.7",
                "7.8": "11.8", "8.0": "12.0", "8.1": "12.1", "8.2": "12.2", "8.3": "12.3", "8.4": "12.4",
                "8.5": "12.5", "8.6": "12.7", "8.7": "12.8", "8.8": "12.9"}
_HEADER = re.compile(rb"\.version\s+(\d+\.\d+)\s+\.target\s+(sm_\d+)")


class PtxError(OnlineTSMError, RuntimeError):
    """The PTX route is missing a tool or produced PTX that would not load."""


def version_key(text: str) -> tuple[int, ...]:
    """``"10.2"`` -> ``(10, 2)``, for comparing CUDA and PTX ISA versions."""
    return tuple(int(part) for part in str(text).split("."))


def min_cuda_for_isa(isa: str) -> str:
    """The oldest CUDA driver that JIT-compiles PTX of ISA ``isa``."""
    if isa not in PTX_ISA_CUDA:
        raise PtxError(f"PTX ISA {isa} is not in the table of CUDA releases (online_tsm.export.tvm.nvptx)")
    return PTX_ISA_CUDA[isa]


def _package_file(*parts: str) -> Path | None:
    try:
        import nvidia.cuda_nvcc as package  # type: ignore[import-not-found]
    except ImportError:
        return None
    for root in getattr(package, "__path__", []):
        path = Path(root, *parts)
        if path.is_file():
            return path
    return None


def find_libdevice() -> Path | None:
    """CUDA's ``libdevice.10.bc`` from the ``nvidia-cuda-nvcc-cu12`` wheel, or None."""
    return _package_file("nvvm", "libdevice", "libdevice.10.bc")


def find_ptxas() -> Path | None:
    """``ptxas`` from the ``nvidia-cuda-nvcc-cu12`` wheel, or None."""
    return _package_file("bin", "ptxas")


@dataclass
class PtxBuild:
    """What the mends saw during one build (reported in the manifest's device_code)."""

    ptx: list[str] = field(default_factory=list)       # each PTX module, as mended
    kernels: int = 0
    barriers: int = 0


def install(tvm_ffi: Any, tirx: Any) -> PtxBuild:
    """Register the three mends in this process (TVM's global functions); returns what they record."""
    libdevice = find_libdevice()
    if libdevice is None:
        raise PtxError(f"CUDA's libdevice is needed for PTX kernels: pip install {NVCC_PACKAGE}")
    build = PtxBuild()

    def lower_sync(call):  # noqa: ANN001, ANN202 -- a TIR Call of tvm_storage_sync
        scope = call.args[0].value
        if scope == "warp":
            return tirx.const(0, "int32")
        if scope not in ("shared", "shared.dyn"):
            raise PtxError(f"no PTX barrier for a {scope!r} sync")
        build.barriers += 1
        return tirx.call_llvm_intrin("void", "llvm.nvvm.barrier.cta.sync.aligned.all", tirx.const(0, "int32"))

    tirx.register_intrin_lowering("tirx.tvm_storage_sync", target="nvptx", f=lower_sync, level=99)
    tvm_ffi.register_global_func("tvm_callback_libdevice_path", lambda arch: str(libdevice), override=True)
    create = tvm_ffi.get_global_func("ffi.Module.create.cuda", allow_missing=True)
    if create is None:
        raise PtxError("TVM's CUDA module support did not load (tvm/lib/libtvm_runtime_cuda.so needs CUDA 13's "
                       "libcudart.so.13 and a libcuda.so.1): install the CUDA 13 runtime (pip install "
                       "'nvidia-cuda-runtime==13.*') and put its lib folder on LD_LIBRARY_PATH")

    def create_module(data, fmt, fmap, source):  # noqa: ANN001, ANN202 -- called by TVM's code generator
        if fmt == "ptx":
            text = data if isinstance(data, str) else bytes(data).decode()
            text, count = mark_kernels(text, list(fmap.keys()))
            build.kernels += count
            build.ptx.append(text)
            data = text.encode()
        return create(data, fmt, fmap, source)

    tvm_ffi.register_global_func("ffi.Module.create.cuda", create_module, override=True)
    return build


def mark_kernels(ptx: str, kernels: list[str]) -> tuple[str, int]:
    """``ptx`` with each of ``kernels`` declared ``.entry`` (launchable) instead of ``.func``; and how many."""
    count = 0
    for name in kernels:
        func, entry = f".visible .func {name}(", f".visible .entry {name}("
        if func in ptx:
            ptx = ptx.replace(func, entry)
            count += 1
        elif entry in ptx:
            count += 1
    return ptx, count


def ptx_header(ptx: bytes | str) -> tuple[str, str]:
    """``(ISA, arch)`` from a PTX module's ``.version``/``.target`` lines, e.g. ``("4.2", "sm_53")``."""
    data = ptx.encode() if isinstance(ptx, str) else ptx
    match = _HEADER.search(data)
    if match is None:
        raise PtxError("no .version/.target header in the PTX")
    return match.group(1).decode(), match.group(2).decode()


def assemble(ptx: str, arch: str, ptxas: Path | None = None) -> None:
    """Run ``ptxas`` on ``ptx`` for ``arch``; :class:`PtxError` with its first message when it refuses."""
    ptxas = ptxas or find_ptxas()
    if ptxas is None:
        raise PtxError(f"ptxas is needed to check the PTX: pip install {NVCC_PACKAGE}")
    with tempfile.TemporaryDirectory(prefix="online-tsm-ptx-") as tmp:
        source = Path(tmp) / "kernels.ptx"
        source.write_text(ptx)
        proc = subprocess.run([str(ptxas), f"-arch={arch}", str(source), "-o", os.devnull],
                              capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        raise PtxError(f"ptxas refused the {arch} PTX: {lines[0] if lines else f'exit {proc.returncode}'}")


def ptxas_version(ptxas: Path | None = None) -> str | None:
    ptxas = ptxas or find_ptxas()
    if ptxas is None:
        return None
    out = subprocess.run([str(ptxas), "--version"], capture_output=True, text=True).stdout
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else None


__all__ = ["NVCC_PACKAGE", "PTX_ISA_CUDA", "PtxBuild", "PtxError", "assemble", "find_libdevice", "find_ptxas",
           "install", "mark_kernels", "min_cuda_for_isa", "ptx_header", "ptxas_version", "version_key"]

