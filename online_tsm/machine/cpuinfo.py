"""What the OS says about this machine's CPU: its name, and the fields of its first processor (Linux).

One reader of ``/proc/cpuinfo`` for the benchmark's machine line, its int8-kernel and
emulation checks, and the key under which ``backend="auto"`` caches its
measured choice.  Read once per process: the fields used here do not change.
"""
from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import AbstractSet

CPUINFO = Path("/proc/cpuinfo")
_NAME_KEYS = ("model name", "hardware", "processor\t: arm")   # x86, then ARM boards and old ARM kernels


@functools.lru_cache(maxsize=1)
def cpuinfo_text() -> str:
    """``/proc/cpuinfo`` as text (empty where there is none)."""
    try:
        return CPUINFO.read_text()
    except OSError:
        return ""


def cpu_name() -> str:
    """The CPU's marketing name (``AMD EPYC 9R14``, ``BCM2835``), else what ``platform`` knows."""
    for line in cpuinfo_text().splitlines():
        if line.lower().startswith(_NAME_KEYS):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def first_processor() -> dict[str, str]:
    """``key: value`` fields of the first processor block (empty where there is no ``/proc/cpuinfo``)."""
    fields: dict[str, str] = {}
    for line in cpuinfo_text().splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if fields:
                break
            continue
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags() -> frozenset[str]:
    """The first processor's feature flags (x86 ``flags``, ARM ``Features``); empty where the OS lists none."""
    fields = first_processor()
    return frozenset((fields.get("flags") or fields.get("Features") or "").split())


# -- int8: whether ONNX Runtime's uint8 x int8 kernels are exact on this CPU, and what that means for a model
# ONNX Runtime multiplies uint8 activations by int8 weights with VNNI's
# ``vpdpbusd`` where the CPU has it: exact int32 sums.  On x86 CPUs with AVX2
# (or AVX-512BW) but no VNNI it uses ``vpmaddubsw``, which adds each pair of
# products into a *saturating* int16; with full 8-bit weights two products of
# up to 255 x 127 overflow it.  CPUs with neither (SSE4.1 only) widen to
# 16 bits first and are exact again.  Measured on the default model fine-tuned
# on a class folder, 64 held-out clips (the AVX2 and SSE4.1 CPUs under QEMU,
# which runs the same instructions; numerics only):
#
# * 8-bit weights: top-1 agreement with float32 98.9 % of frames with VNNI and
#   with SSE4.1, **80.7 %** on AVX2 without VNNI (Zen 3 and Haswell alike);
# * 7-bit weights (ORT's ``reduce_range``): 97.8 % on every one of them, the
#   logits bit for bit equal, since no pair can overflow.
#
# So an int8 export made on a CPU whose kernels saturate quantizes its weights
# to 7 bits, and an 8-bit model opened on such a CPU says that its measured
# agreement does not hold there.


VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})
SATURATING_FLAGS = frozenset({"avx2", "avx512bw"})   # vpmaddubsw: what ORT uses for U8S8 without VNNI


def int8_kernels_saturate(flags: AbstractSet[str] | None = None) -> bool:
    """True where ONNX Runtime's U8S8 kernels add products into saturating int16 (x86 AVX2 without VNNI)."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & SATURATING_FLAGS) and not flags & VNNI_FLAGS


def has_vnni(flags: AbstractSet[str] | None = None) -> bool:
    """True when the CPU multiplies uint8 x int8 natively (AVX-512 VNNI or AVX-VNNI)."""
    return bool((cpu_flags() if flags is None else flags) & VNNI_FLAGS)


def int8_kernels(flags: AbstractSet[str] | None = None) -> str:
    """ONNX Runtime's uint8 x int8 path on this CPU, in words (recorded in an int8 artifact's manifest)."""
    flags = cpu_flags() if flags is None else flags
    if has_vnni(flags):
        return "VNNI (exact int32 sums)"
    if int8_kernels_saturate(flags):
        return "AVX2 without VNNI (pairs of products summed in saturating int16)"
    return "no VNNI or AVX2 here (products widened before summing)"
