"""What the OS says about this machine's CPU: its name, and the fields of its first processor (Linux).

One reader of ``/proc/cpuinfo`` for the benchmark's machine line, its VNNI and
emulation checks, and the key under which ``backend="auto"`` caches its
measured choice.  Read once per process: the fields used here do not change.
"""
from __future__ import annotations

import functools
import platform
from pathlib import Path

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
