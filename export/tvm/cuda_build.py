"""Worker process: compile a CUDA target on a machine with no GPU, into real device code.

Run as ``python -m online_tsm.export.tvm.cuda_build REQUEST_JSON`` by
:func:`online_tsm.export.tvm.build.compile_cuda`.  Two obstacles, two choices:

1. TVM's CUDA code generator lives in ``libtvm_runtime_cuda.so``, which links
   the driver library ``libcuda.so.1``.  Without a GPU driver that library does
   not load, and TVM silently keeps the kernels as CUDA *source* -- the export
   "succeeds" and the artifact cannot run on any GPU.  When no driver is
   present, this worker loads a stub ``libcuda.so.1`` (built here with the C
   compiler; every function returns CUDA_ERROR_NO_DEVICE) before TVM, so the
   code generator loads.  Nothing here ever runs a kernel.
2. Two kernel routes, chosen by the row's TVM target kind.  ``nvptx``: LLVM's
   NVPTX back end writes PTX of an ISA old drivers JIT-compile (the Nano's CUDA
   10.2 among them), with the mends of :mod:`online_tsm.export.tvm.nvptx`.
   ``cuda``: TVM's CUDA C, compiled to cubins by NVRTC 12.9
   (:mod:`online_tsm.export.tvm.nvrtc`) -- the CUDA 13 toolkit cannot target
   ``sm_5x``; right for boards with a CUDA 12 driver (JetPack 6).

The result is checked in the bytes (:mod:`online_tsm.export.device.elf`): a library
without device code for the target's architecture is an error, not a warning;
PTX must also assemble with ``ptxas`` and declare its kernels as entries.
A separate process is needed because the stub must be in place before TVM's
runtime libraries load, which in a long-lived process (tests, notebooks) has
already happened.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

_STUB_SOURCE = """/* online-tsm: stand-in for the CUDA driver so TVM's CUDA code generator can load on a machine
   without a GPU.  Every entry point reports CUDA_ERROR_NO_DEVICE (100); nothing ever runs. */
#define STUB(name) int name(void) { return 100; }
STUB(cuInit) STUB(cuDriverGetVersion) STUB(cuDeviceGet) STUB(cuDeviceGetCount) STUB(cuDeviceGetName)
STUB(cuDeviceGetAttribute) STUB(cuFuncSetAttribute) STUB(cuGetErrorName) STUB(cuGetErrorString)
STUB(cuLaunchKernel) STUB(cuLaunchKernelEx) STUB(cuModuleGetFunction) STUB(cuModuleGetGlobal)
STUB(cuModuleLoadData) STUB(cuModuleUnload) STUB(cuTensorMapEncodeTiled) STUB(cuGetProcAddress)
"""


def _driver_loads() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
        return True
    except OSError:
        return False


def stub_driver() -> Path:
    """Build (once, into the cache) and return the stub ``libcuda.so.1``."""
    from online_tsm.weights import cache_dir

    folder = cache_dir() / "cuda-driver-stub"
    path = folder / "libcuda.so.1"
    if path.is_file():
        return path
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc/gcc) to build the CUDA driver stub; install gcc")
    from online_tsm.fileio import atomic_path, atomic_write, file_lock

    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / ".build.lock"):  # two exports at once: one builds, the other waits and reuses it
        if path.is_file():
            return path
        source = atomic_write(folder / "libcuda_stub.c", _STUB_SOURCE)
        with atomic_path(path) as tmp:  # a killed compiler never leaves a truncated libcuda.so.1
            subprocess.run([compiler, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(tmp),
                            str(source)], check=True, capture_output=True)
    return path


def build(request: dict) -> dict:
    """Compile, export and inspect; return the report."""
    notes = []
    if not _driver_loads():
        ctypes.CDLL(str(stub_driver()), mode=ctypes.RTLD_GLOBAL)
        notes.append("no CUDA driver here: TVM's CUDA code generator was loaded against a stub libcuda.so.1 "
                     "(kernels are compiled, never run, on this machine)")
    import tvm
    import tvm.support.nvcc  # noqa: F401 -- registers TVM's own compile hooks, which are replaced below
    import tvm_ffi
    from tvm.relax.backend.cuda import get_default_pipeline

    from online_tsm.export.tvm.build import relax_from_onnx

    ptx_route = request["target"]["kind"] == "nvptx"
    arch = request["target"]["mcpu"] if ptx_route else request["target"]["arch"]
    route = _PtxRoute(tvm_ffi, tvm.tirx, arch) if ptx_route else _NvrtcRoute(tvm_ffi, arch)
    target = tvm.target.Target(request["target"], host=request["host"])
    mod = relax_from_onnx(request["onnx"], {k: (v[0], v[1]) for k, v in request["inputs"].items()})
    if request.get("precision") == "fp16":
        from online_tsm.export.tvm.mixed_precision import to_mixed_precision

        mod = to_mixed_precision(mod)
    with target:  # TVM's compile hook reads the current target
        executable = tvm.compile(mod, target, relax_pipeline=get_default_pipeline(target))
    output = Path(request["output"])
    if output.suffix == ".so" and request.get("linker"):
        from tvm.support import cc

        executable.export_library(str(output), fcompile=cc.cross_compiler(request["linker"]))
    else:
        executable.export_library(str(output))   # a .tar of objects, or a .so linked by this machine's compiler
    code = route.inspect(output)
    code.update(precision=request.get("precision", "fp32"),
                schedules="dlight default GPU rules (Matmul, GEMV, Reduction, GeneralReduction, Fallback); no tuning")
    return {"notes": notes, "device_code": code}


class _NvrtcRoute:
    """CUDA C from TVM, compiled to a cubin by NVRTC 12 (a CUDA 12 driver loads it)."""

    def __init__(self, tvm_ffi, arch: str) -> None:  # noqa: ANN001 -- the tvm_ffi module
        from online_tsm.export.tvm import nvrtc

        self.arch, self.nvrtc, self.compiled = arch, nvrtc, []
        if nvrtc.find_nvrtc() is None:
            raise nvrtc.NvrtcError(f"NVRTC 12 not found: pip install {nvrtc.NVRTC_PACKAGE} (CUDA 13's nvcc cannot "
                                   f"target {arch}, and without a compiler TVM would keep the kernels as source)")

        @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
        def _compile(code: str) -> bytes:  # noqa: ANN202 -- called by TVM's C++ code generator
            cubin = nvrtc.compile_cuda(code, arch)
            self.compiled.append((len(code), len(cubin)))
            return cubin

    def inspect(self, output: Path) -> dict:
        from online_tsm.export.device import elf

        cubins = [i for i in elf.embedded_cuda_images(output) if i.kind == "cubin" and i.arch == self.arch]
        if not self.compiled or not cubins:
            raise RuntimeError(f"the CUDA build produced no {self.arch} cubin (TVM kept the kernels as CUDA source); "
                               "the library would not run on a GPU")
        version = self.nvrtc.nvrtc_version() or "12"
        return {"format": "cubin", "arch": self.arch, "ptx_isa": None, "compiler": f"NVRTC {version}",
                # CUDA 12's minor-version compatibility: a cubin from a 12.x compiler loads on any 12.x driver
                "min_cuda_driver": f"{version.split('.')[0]}.0",
                "kernels": len(elf.cubin_kernel_names(output, cubins[0])), "cubin_bytes": cubins[0].size}


class _PtxRoute:
    """PTX from LLVM's NVPTX back end, JIT-compiled by the driver (:mod:`online_tsm.export.tvm.nvptx`)."""

    def __init__(self, tvm_ffi, tirx, arch: str) -> None:  # noqa: ANN001 -- TVM modules
        from online_tsm.export.tvm import nvptx

        self.arch, self.nvptx = arch, nvptx
        if nvptx.find_ptxas() is None:
            raise nvptx.PtxError(f"ptxas is needed to check the PTX kernels: pip install {nvptx.NVCC_PACKAGE}")
        self.build = nvptx.install(tvm_ffi, tirx)

    def inspect(self, output: Path) -> dict:
        from tvm.target.codegen import llvm_version_major

        import tvm
        from online_tsm.export.device import elf

        images = [i for i in elf.embedded_cuda_images(output) if i.kind == "ptx"]
        if not self.build.ptx or not images:
            raise RuntimeError("the CUDA build produced no PTX (TVM kept the kernels as CUDA source); the library "
                               "would not run on a GPU")
        if {i.arch for i in images} != {self.arch} or len({i.isa for i in images}) != 1:
            raise RuntimeError(f"the library's PTX is for {sorted({i.arch for i in images})}, ISA "
                               f"{sorted({str(i.isa) for i in images})}; expected {self.arch} and one ISA")
        kernels = sum(len(elf.ptx_kernel_names(output, image)) for image in images)
        if kernels != self.build.kernels:
            raise RuntimeError(f"the library's PTX declares {kernels} kernel entries, the build made "
                               f"{self.build.kernels}: some kernels could not be launched")
        for text in self.build.ptx:
            self.nvptx.assemble(text, self.arch)
        isa = images[0].isa
        return {"format": "ptx", "arch": self.arch, "ptx_isa": isa,
                "compiler": f"LLVM {llvm_version_major()} NVPTX via TVM {tvm.__version__}",
                "min_cuda_driver": self.nvptx.min_cuda_for_isa(isa), "kernels": kernels,
                "ptx_bytes": sum(i.size for i in images),
                "checked": f"ptxas {self.nvptx.ptxas_version() or '?'} assembles it for {self.arch}; every kernel "
                           "an .entry"}


def main(argv: list[str]) -> int:
    request = json.loads(argv[0])
    try:
        report = build(request)
    except Exception as exc:  # noqa: BLE001 -- reported to the parent as one line
        from online_tsm.console.messages import first_line  # nothing of TVM: the stub libcuda must still come first

        print(f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__,
              file=sys.stderr)
        return 1
    Path(request["report"]).write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
