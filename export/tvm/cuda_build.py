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
2. The CUDA 13 toolkit cannot target the Nano's ``sm_53``; TVM's compile hook
   is pointed at NVRTC 12.9 (:mod:`online_tsm.export.tvm.nvrtc`), which can.

The result is checked in the bytes (:mod:`online_tsm.export.device.elf`): a library
without a cubin for the target's architecture is an error, not a warning.
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
    import tvm.support.nvcc  # noqa: F401 -- registers TVM's own compile hook, which is replaced below
    import tvm_ffi

    from online_tsm.export.device import elf

    from online_tsm.export.tvm import nvrtc
    from online_tsm.export.tvm.build import relax_from_onnx

    arch = request["target"]["arch"]
    compiled = []

    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def _compile(code: str) -> bytes:  # noqa: ANN202 -- called by TVM's C++ code generator
        cubin = nvrtc.compile_cuda(code, arch)
        compiled.append((len(code), len(cubin)))
        return cubin

    if nvrtc.find_nvrtc() is None:
        raise nvrtc.NvrtcError(f"NVRTC 12 not found: pip install {nvrtc.NVRTC_PACKAGE} (CUDA 13's nvcc cannot "
                               f"target {arch}, and without a compiler TVM would keep the kernels as source)")
    target = tvm.target.Target(request["target"], host=request["host"])
    mod = relax_from_onnx(request["onnx"], {k: (v[0], v[1]) for k, v in request["inputs"].items()})
    if request.get("precision") == "fp16":
        from online_tsm.export.tvm.mixed_precision import to_mixed_precision

        mod = to_mixed_precision(mod)
    with target:  # TVM's compile hook reads the current target
        executable = tvm.compile(mod, target)
    output = Path(request["output"])
    if output.suffix == ".so":
        from tvm.support import cc

        executable.export_library(str(output), fcompile=cc.cross_compiler(request["linker"]))
    else:
        executable.export_library(str(output))
    images = elf.embedded_cuda_images(output)
    cubins = [i for i in images if i.kind == "cubin" and i.arch == arch]
    if not compiled or not cubins:
        raise RuntimeError(f"the CUDA build produced no {arch} cubin (TVM kept the kernels as CUDA source); "
                           "the library would not run on a GPU")
    kernels = elf.cubin_kernel_names(output, cubins[0])
    return {"notes": notes,
            "device_code": {"format": "cubin", "arch": arch, "precision": request.get("precision", "fp32"),
                            "compiler": f"NVRTC {nvrtc.nvrtc_version()}",
                            "kernels": len(kernels), "cubin_bytes": cubins[0].size,
                            "schedules": "dlight default GPU rules (Matmul, GEMV, Reduction, "
                                         "GeneralReduction, Fallback); no tuning"}}


def main(argv: list[str]) -> int:
    request = json.loads(argv[0])
    try:
        report = build(request)
    except Exception as exc:  # noqa: BLE001 -- reported to the parent as one line
        from online_tsm.messages import first_line  # nothing of TVM: the stub libcuda must still come first

        print(f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__,
              file=sys.stderr)
        return 1
    Path(request["report"]).write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
