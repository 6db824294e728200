"""Which machine an ELF file is for, named the way ``platform.machine()`` names that machine.

The exporter checks that a cross-compiled library holds the target's code,
runtimes check that a library can load here before ``dlopen`` fails with
"wrong ELF class", and the benchmark compares an RPC device with this
machine.  All of them read the same two header bytes and must call the same
machine by the same name (``x86_64``, ``aarch64``), so the reader and the
names live here, once.  (``export/device/run_template.py`` runs on devices without
online-tsm and keeps a copy; the tests check that the two agree.)
"""
from __future__ import annotations

import platform
import struct

from online_tsm.errors import OnlineTSMError

EM_X86_64 = 62
EM_AARCH64 = 183
EM_CUDA = 190

# ELF e_machine -> the name ``platform.machine()`` gives on such a machine (normalised by MACHINE_ALIASES).
MACHINE_NAMES: dict[int, str] = {3: "x86", 8: "mips", 20: "ppc", 21: "ppc64", 40: "arm", EM_X86_64: "x86_64",
                                 EM_AARCH64: "aarch64", EM_CUDA: "cuda", 243: "riscv64"}
# Other spellings of the same machines (Windows, macOS, 32-bit Linux) -> the names above.
MACHINE_ALIASES: dict[str, str] = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "i386": "x86",
                                   "i686": "x86", "armv7l": "arm", "armv6l": "arm", "armv8l": "arm"}


class ElfError(OnlineTSMError, ValueError):
    """Not an ELF file (or a truncated one)."""


def is_elf(data: bytes) -> bool:
    """Whether ``data`` starts with a complete enough ELF header to name its machine."""
    return len(data) >= 20 and data[:4] == b"\x7fELF"


def elf_machine(data: bytes) -> int:
    """``e_machine`` of an ELF image from its first 20 bytes or more (183 = aarch64, 62 = x86_64, 190 = CUDA)."""
    if not is_elf(data):
        raise ElfError("not an ELF file")
    endian = "<" if data[5] == 1 else ">"
    return struct.unpack_from(endian + "H", data, 18)[0]


def machine_name(machine: int) -> str:
    """The architecture name of an ``e_machine`` code, as :func:`host_arch` would say it."""
    return MACHINE_NAMES.get(machine, f"ELF machine {machine}")


def normalize_arch(name: str) -> str:
    """One name per architecture: ``AMD64``/``x64`` -> ``x86_64``, ``arm64`` -> ``aarch64``, ..."""
    name = str(name).strip().lower()
    return MACHINE_ALIASES.get(name, name)


def host_arch() -> str:
    """This machine's CPU architecture, in the names of :data:`MACHINE_NAMES` (``x86_64``, ``aarch64``...)."""
    return normalize_arch(platform.machine())
