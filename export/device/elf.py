"""Read what a compiled library really holds: ELF machine of the host code, embedded CUDA images.

``verify`` uses this for artifacts that cannot run here (aarch64, CUDA), and
the tests use it to prove that the Jetson library carries ``sm_53`` device
code, and for PTX which ISA (what decides the oldest driver that loads it) --
claims checked in the bytes, not written in a README.
"""
from __future__ import annotations

import re
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path

# The header reader and the machine names are the core's (online_tsm.machine.elf), shared with the runtimes.
from online_tsm.machine.elf import EM_AARCH64, EM_CUDA, EM_X86_64, MACHINE_NAMES, ElfError, elf_machine, machine_name

__all__ = ["EM_AARCH64", "EM_CUDA", "EM_X86_64", "MACHINE_NAMES", "CudaImage", "ElfError", "cubin_kernel_names",
           "elf_machine", "embedded_cuda_images", "library_machines", "machine_name", "ptx_kernel_names"]
# Every PTX module starts (after comments) with its ISA version and target: ".version 4.2\n.target sm_53".
_PTX_HEADER = re.compile(rb"\.version\s+(\d+\.\d+)\s+\.target\s+(sm_\d+)")
_PTX_ENTRY = re.compile(rb"\.entry\s+([A-Za-z_$][\w$]*)\s*\(")


@dataclass(frozen=True)
class CudaImage:
    """A device-code image found inside a library: a cubin (ELF, e_machine 190) or PTX text."""

    kind: str        # "cubin" or "ptx"
    arch: str        # "sm_53"
    offset: int
    size: int        # bytes; a PTX module runs from its header to the first NUL byte (it holds none)
    isa: str | None = None   # PTX ISA version from its .version line ("4.2"); None for cubins


def library_machines(path: str | Path) -> dict[str, int]:
    """``{member: e_machine}`` for a ``.so``/``.o`` (one entry) or every object inside a ``.tar``."""
    path = Path(path)
    if tarfile.is_tarfile(path):
        out = {}
        with tarfile.open(path) as archive:
            for member in archive.getmembers():
                if member.isfile():
                    data = archive.extractfile(member).read(64)  # type: ignore[union-attr]
                    out[member.name] = elf_machine(data)
        if not out:
            raise ElfError(f"{path} is an empty archive")
        return out
    with open(path, "rb") as fh:
        return {path.name: elf_machine(fh.read(64))}


def _library_bytes(path: Path) -> list[bytes]:
    if tarfile.is_tarfile(path):
        with tarfile.open(path) as archive:
            return [archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()]  # type: ignore[union-attr]
    return [path.read_bytes()]


def _cubin_arch(data: bytes, offset: int) -> tuple[str, int] | None:
    """(``sm_XX``, size) of the CUDA ELF image starting at ``offset``, or None."""
    if len(data) < offset + 64 or data[offset + 4] != 2 or data[offset + 5] != 1:  # 64-bit little-endian
        return None
    if struct.unpack_from("<H", data, offset + 18)[0] != EM_CUDA:
        return None
    flags = struct.unpack_from("<I", data, offset + 48)[0]
    shoff, = struct.unpack_from("<Q", data, offset + 40)
    shentsize, shnum = struct.unpack_from("<HH", data, offset + 58)
    size = shoff + shentsize * shnum
    # CUDA ELF ABI: the low byte of e_flags is the SM version (0x35 = 53) for ABI versions <= 7;
    # newer ABIs move it to bits 8..15.
    sm = flags & 0xFF if data[offset + 8] <= 7 else (flags >> 8) & 0xFF
    return f"sm_{sm}", size


def embedded_cuda_images(path: str | Path) -> list[CudaImage]:
    """Every cubin and PTX module embedded in a library (``.so``, ``.o`` or ``.tar`` of objects)."""
    images: list[CudaImage] = []
    for blob in _library_bytes(Path(path)):
        start = blob.find(b"\x7fELF", 1)
        while start != -1:
            found = _cubin_arch(blob, start)
            if found:
                images.append(CudaImage("cubin", found[0], start, found[1]))
            start = blob.find(b"\x7fELF", start + 4)
        for match in _PTX_HEADER.finditer(blob):
            end = blob.find(b"\0", match.start())
            size = (len(blob) if end == -1 else end) - match.start()
            images.append(CudaImage("ptx", match.group(2).decode(), match.start(), size, match.group(1).decode()))
    return images


def ptx_kernel_names(path: str | Path, image: CudaImage) -> list[str]:
    """Names of the kernels (``.entry``: what a driver can launch) in a PTX image."""
    blob = next(b for b in _library_bytes(Path(path)) if _PTX_HEADER.match(b, image.offset))
    return [m.group(1).decode() for m in _PTX_ENTRY.finditer(blob, image.offset, image.offset + image.size)]


def cubin_kernel_names(path: str | Path, image: CudaImage) -> list[str]:
    """Names of the ``__global__`` kernels in a cubin image (its ``.text.<name>`` sections)."""
    blob = next(b for b in _library_bytes(Path(path)) if len(b) >= image.offset + image.size)
    data = blob[image.offset:image.offset + image.size]
    shoff, = struct.unpack_from("<Q", data, 40)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 58)
    str_off, = struct.unpack_from("<Q", data, shoff + shstrndx * shentsize + 24)
    names = []
    for i in range(shnum):
        name_off, = struct.unpack_from("<I", data, shoff + i * shentsize)
        end = data.index(b"\0", str_off + name_off)
        name = data[str_off + name_off:end].decode(errors="replace")
        if name.startswith(".text."):
            names.append(name[len(".text."):])
    return names
