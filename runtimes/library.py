"""Which CPU a compiled library is for, read from its ELF header before loading it.

Loading an aarch64 ``.so`` on an x86-64 machine fails deep inside ``dlopen``
with a message about "wrong ELF class" or "cannot open shared object"; the
header says plainly which machine the library wants, so runtimes check it
first and name both architectures in one line.
"""
from __future__ import annotations

import tarfile
from pathlib import Path

from online_tsm.machine.elf import elf_machine, host_arch, is_elf, machine_name
from online_tsm.runtimes.base import RuntimeOpenError

__all__ = ["LibraryError", "check_runs_here", "elf_arch", "host_arch"]


class LibraryError(RuntimeOpenError):
    """A compiled library that cannot run here (other architecture, not a shared library)."""


def elf_arch(path: str | Path) -> str:
    """Architecture a shared library is built for; :class:`LibraryError` if it is no ELF file."""
    path = Path(path)
    with open(path, "rb") as fh:
        header = fh.read(20)
    if not is_elf(header):
        if tarfile.is_tarfile(path):
            raise LibraryError(f"{path.name} is a tar of object files, not a shared library: link it into a .so "
                               "on (or for) the device first, e.g. with the NDK's clang for Android")
        raise LibraryError(f"{path.name} is not an ELF shared library (expected a .so built by tsm-export)")
    return machine_name(elf_machine(header))


def check_runs_here(path: str | Path) -> str:
    """Raise :class:`LibraryError` unless ``path`` is built for this machine's CPU; return the architecture."""
    actual, expected = elf_arch(path), host_arch()
    if actual != expected:
        raise LibraryError(f"{Path(path).name} is built for {actual}, but this machine is {expected}: run it on an "
                           f"{actual} device (or through backend tvm-rpc), or export for target 'host' here")
    return actual
