"""Compile TVM's generated CUDA C for old GPUs (Jetson Nano, ``sm_53``) with NVRTC 12.x.

Why this exists: the CUDA 13 toolkit on build machines dropped Maxwell
(``sm_5x``), so its ``nvcc`` cannot target the Nano, and the ``nvcc`` wheel on
PyPI holds no compiler driver.  NVRTC 12.9 (``pip install
nvidia-cuda-nvrtc-cu12``, a plain shared library) still compiles ``sm_53``.
It is called through ctypes, so neither a CUDA toolkit nor ``cuda-python`` is
needed.  The two libcu++ headers TVM's kernels include under NVRTC are
supplied here in minimal form (fixed-width integers and a few type traits),
because NVRTC 12 does not bundle them and a CUDA 13 copy does not fit it.
fp16 kernels include ``cuda_fp16.h``, which ships with the CUDA 12 runtime
headers (``pip install nvidia-cuda-runtime-cu12``); its folder is passed to
NVRTC when the kernels need it.
"""
from __future__ import annotations

import ctypes
import glob
import os
from pathlib import Path

from online_tsm.errors import OnlineTSMError

NVRTC_ENV = "ONLINE_TSM_NVRTC"  # path of a libnvrtc.so.12 to use instead of the pip package's
NVRTC_PACKAGE = "nvidia-cuda-nvrtc-cu12"
HEADERS_PACKAGE = "nvidia-cuda-runtime-cu12"   # cuda_fp16.h, for fp16 kernels

_CSTDINT = """#pragma once
namespace cuda { namespace std {
typedef signed char int8_t; typedef short int16_t; typedef int int32_t; typedef long long int64_t;
typedef unsigned char uint8_t; typedef unsigned short uint16_t; typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
}}
"""
_TYPE_TRAITS = """#pragma once
namespace cuda { namespace std {
template <class T, T v> struct integral_constant { static constexpr T value = v; };
typedef integral_constant<bool, true> true_type;
typedef integral_constant<bool, false> false_type;
template <class A, class B> struct is_same : false_type {};
template <class A> struct is_same<A, A> : true_type {};
template <class A, class B> constexpr bool is_same_v = is_same<A, B>::value;
template <class T> struct is_integral : false_type {};
template <class T> struct is_signed : false_type {};
template <class T> struct is_unsigned : false_type {};
template <class T> struct is_floating_point : false_type {};
template <bool B, class T = void> struct enable_if {};
template <class T> struct enable_if<true, T> { typedef T type; };
template <bool B, class T, class F> struct conditional { typedef T type; };
template <class T, class F> struct conditional<false, T, F> { typedef F type; };
}}
"""
_HEADERS = {"cuda/std/cstdint": _CSTDINT, "cuda/std/type_traits": _TYPE_TRAITS}


class NvrtcError(OnlineTSMError, RuntimeError):
    """NVRTC is missing or refused the kernels."""


def find_nvrtc() -> Path | None:
    """Path of a ``libnvrtc.so.12`` (``$ONLINE_TSM_NVRTC``, else the pip package), or None."""
    if os.environ.get(NVRTC_ENV):
        path = Path(os.environ[NVRTC_ENV])
        return path if path.is_file() else None
    try:
        import nvidia.cuda_nvrtc as package  # type: ignore[import-not-found]
    except ImportError:
        return None
    for root in getattr(package, "__path__", []):
        hits = sorted(glob.glob(os.path.join(root, "lib", "libnvrtc.so.12*")))
        hits = [h for h in hits if ".alt." not in h]
        if hits:
            return Path(hits[0])
    return None


def cuda_include_dir() -> Path | None:
    """The folder holding the CUDA 12 ``cuda_fp16.h`` (from the runtime package), or None."""
    try:
        import nvidia.cuda_runtime as package  # type: ignore[import-not-found]
    except ImportError:
        return None
    for root in getattr(package, "__path__", []):
        if (Path(root) / "include" / "cuda_fp16.h").is_file():
            return Path(root) / "include"
    return None


def _include_options(source: str) -> list[bytes]:
    if "cuda_fp16.h" not in source:
        return []
    folder = cuda_include_dir()
    if folder is None:
        raise NvrtcError(f"fp16 kernels need cuda_fp16.h: pip install {HEADERS_PACKAGE}")
    return [f"--include-path={folder}".encode()]


def _library() -> ctypes.CDLL:
    path = find_nvrtc()
    if path is None:
        raise NvrtcError(f"NVRTC 12 not found: pip install {NVRTC_PACKAGE} (or set {NVRTC_ENV} to a "
                         "libnvrtc.so.12); it compiles the sm_53 kernels of the Jetson Nano")
    return ctypes.CDLL(str(path))


def nvrtc_version() -> str | None:
    """``"12.9"`` style version of the NVRTC that would be used, or None."""
    try:
        lib = _library()
    except (NvrtcError, OSError):
        return None
    major, minor = ctypes.c_int(), ctypes.c_int()
    if lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)) != 0:
        return None
    return f"{major.value}.{minor.value}"


def _check(lib: ctypes.CDLL, result: int, what: str, log: str = "") -> None:
    if result != 0:
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        name = lib.nvrtcGetErrorString(result).decode()
        detail = f": {log.strip().splitlines()[-1]}" if log.strip() else ""
        raise NvrtcError(f"NVRTC {what} failed ({name}){detail}")


def compile_cuda(source: str, arch: str, *, output: str = "cubin") -> bytes:
    """Compile CUDA C ``source`` for ``arch`` (``"sm_53"``) to a cubin (or PTX with ``output="ptx"``)."""
    lib = _library()
    program = ctypes.c_void_p()
    names = list(_HEADERS)
    c_names = (ctypes.c_char_p * len(names))(*[n.encode() for n in names])
    c_bodies = (ctypes.c_char_p * len(names))(*[_HEADERS[n].encode() for n in names])
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(program), source.encode(), b"tvm_kernels.cu", len(names),
                                       c_bodies, c_names), "program creation")
    try:
        gpu = arch if output == "cubin" else arch.replace("sm_", "compute_")
        options = [f"--gpu-architecture={gpu}".encode(), b"-default-device", b"--use_fast_math", b"-w",
                   *_include_options(source)]
        c_options = (ctypes.c_char_p * len(options))(*options)
        result = lib.nvrtcCompileProgram(program, len(options), c_options)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log_buffer = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(program, log_buffer)
        _check(lib, result, f"compilation for {arch}", log_buffer.value.decode(errors="replace"))
        get_size, get = ((lib.nvrtcGetCUBINSize, lib.nvrtcGetCUBIN) if output == "cubin"
                         else (lib.nvrtcGetPTXSize, lib.nvrtcGetPTX))
        _check(lib, get_size(program, ctypes.byref(size)), "output size")
        buffer = ctypes.create_string_buffer(size.value)
        _check(lib, get(program, buffer), "output")
        return buffer.raw if output == "cubin" else buffer.raw.rstrip(b"\0")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(program))
