"""Which CPU a compiled library is for, read from its ELF header before loading it.

Loading an aarch64 ``.so`` on an x86-64 machine fails deep inside ``dlopen``
with a message about "wrong ELF class" or "cannot open shared object"; the
header says plainly which machine the library wants, so runtimes check it
first and name both architectures in one line.
"""
from __future__ import annotations

import platform
import struct
import tarfile
from pathlib import Path

from online_tsm.runtimes.base import RuntimeOpenError

# ELF e_machine -> the name ``platform.machine()`` gives on such a machine (normalised).
ELF_MACHINES: dict[int, str] = {3: "x86", 8: "mips", 20: "ppc", 21: "ppc64", 40: "arm", 62: "x86_64",
                                183: "aarch64", 243: "riscv64"}
_MACHINE_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "i386": "x86", "i686": "x86",
                    "armv7l": "arm", "armv6l": "arm", "armv8l": "arm"}


class LibraryError(RuntimeOpenError):
    """A compiled library that cannot run here (other architecture, not a shared library)."""


def host_arch() -> str:
    """This machine's CPU architecture, in ELF terms (``x86_64``, ``aarch64``, ``arm``...)."""
    machine = platform.machine().lower()
    return _MACHINE_ALIASES.get(machine, machine)


def elf_arch(path: str | Path) -> str:
    """Architecture a shared library is built for; :class:`LibraryError` if it is no ELF file."""
    path = Path(path)
    with open(path, "rb") as fh:
        header = fh.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        if tarfile.is_tarfile(path):
            raise LibraryError(f"{path.name} is a tar of object files, not a shared library: link it into a .so "
                               "on (or for) the device first, e.g. with the NDK's clang for Android")
        raise LibraryError(f"{path.name} is not an ELF shared library (expected a .so built by tsm-export)")
    order = "<" if header[5] == 1 else ">"
    (machine,) = struct.unpack(order + "H", header[18:20])
    return ELF_MACHINES.get(machine, f"ELF machine 0x{machine:x}")


def check_runs_here(path: str | Path) -> str:
    """Raise :class:`LibraryError` unless ``path`` is built for this machine's CPU; return the architecture."""
    actual, expected = elf_arch(path), host_arch()
    if actual != expected:
        raise LibraryError(f"{Path(path).name} is built for {actual}, but this machine is {expected}: run it on an "
                           f"{actual} device (or through backend tvm-rpc), or export for target 'host' here")
    return actual
