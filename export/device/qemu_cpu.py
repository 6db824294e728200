"""The device's own CPU under qemu: ``-cpu MODEL``, and an ARM ``/proc/cpuinfo`` that says so.

qemu-aarch64 runs the ``max`` CPU unless told otherwise: SVE, dot products
and other extensions that a Cortex-A53 (Note8-class phones' little core),
A57 (Jetson Nano) or A72 (Raspberry Pi 4) lacks.  Code or a wheel that uses
them passes under ``max`` and dies with SIGILL on the device (ONNX Runtime
1.21 did on a Raspberry Pi 4), so an emulated check runs the row's
``qemu_cpu``.

qemu before 8.1 also passes the host's x86 ``/proc/cpuinfo`` through to the
aarch64 process.  The cpuinfo library inside LiteRT's and ONNX Runtime's
aarch64 wheels parses it and crashes at import (SIGSEGV, under every ``-cpu``
model).  Where qemu does not write an ARM cpuinfo itself (8.1 and later do,
from the chosen model), an ARM one for the row's core is bind-mounted over
``/proc/cpuinfo`` in a private mount namespace for the emulated process only:
``unshare --mount`` as root, ``unshare --user --map-root-user --mount``
otherwise (needs unprivileged user namespaces).  The TVM runtime reads no
cpuinfo, so TVM artifacts still run where namespaces are not allowed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

#: MIDR part numbers (implementer 0x41, Arm) of the cores the rows name.
CPU_PARTS = {"cortex-a53": "0xd03", "cortex-a57": "0xd07", "cortex-a72": "0xd08", "cortex-a73": "0xd09",
             "cortex-a76": "0xd0b", "cortex-a78ae": "0xd42"}
#: ``Features`` of an ARMv8.0 core (A53/A57/A72/A73) and of an ARMv8.2 one (A76, A78AE).
ARMV80_FEATURES = "fp asimd evtstrm crc32 cpuid"
ARMV82_FEATURES = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop "
                   "asimddp")
V82_CORES = ("cortex-a76", "cortex-a78ae")
CORES = 4
NAMESPACE_HINT = ("allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, or on Ubuntu "
                  "kernel.apparmor_restrict_unprivileged_userns=0), run as root, or use qemu-user-static >= 8.1")


def cpuinfo_text(cpu: str, cores: int = CORES) -> str:
    """``/proc/cpuinfo`` as an aarch64 Linux kernel writes it for ``cores`` cores of model ``cpu``."""
    if cpu not in CPU_PARTS:
        raise ValueError(f"no CPU part number for {cpu!r}; known: {', '.join(CPU_PARTS)}")
    features = ARMV82_FEATURES if cpu in V82_CORES else ARMV80_FEATURES
    blocks = [f"processor\t: {i}\nBogoMIPS\t: 38.40\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
              f"CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {CPU_PARTS[cpu]}\nCPU revision\t: 4\n"
              for i in range(cores)]
    return "\n".join(blocks) + "\n"


def is_arm_cpuinfo(text: str) -> bool:
    return "CPU implementer" in text and "CPU part" in text


def _namespace_prefix() -> list[str]:
    unshare = shutil.which("unshare") or "unshare"
    if os.geteuid() == 0:
        return [unshare, "--mount"]
    return [unshare, "--user", "--map-root-user", "--mount"]


def with_cpuinfo(command: list[str], fake: Path) -> list[str]:
    """``command`` run with ``fake`` bind-mounted over ``/proc/cpuinfo`` in a mount namespace of its own."""
    script = 'mount --bind "$0" /proc/cpuinfo && exec "$@"'
    return [*_namespace_prefix(), "sh", "-c", script, str(fake), *command]


class CpuinfoPlan:
    """How emulated processes see ``/proc/cpuinfo`` on this machine, decided once per check.

    ``mode``: ``"qemu"`` (qemu writes an ARM one itself), ``"bind-mount"`` (the fake one over it) or
    ``"host"`` (neither works here: the host's x86 cpuinfo shows through; ``problem`` says why).
    """

    def __init__(self, qemu: str, sysroot: Path, workdir: Path, cpu: str | None, python: Path) -> None:
        self.cpu, self.workdir, self.problem = cpu, workdir, ""
        cat = next((p for p in (sysroot / "bin" / "cat", sysroot / "usr" / "bin" / "cat") if p.is_file()), None)
        reader = [str(cat), "/proc/cpuinfo"] if cat else [
            str(python), "-S", "-c", "import sys; sys.stdout.write(open('/proc/cpuinfo').read())"]
        probe = [qemu, *(["-cpu", cpu] if cpu else []), "-L", str(sysroot), *reader]
        if is_arm_cpuinfo(_output(probe)):
            self.mode = "qemu"
            return
        if cpu not in CPU_PARTS:
            self.mode, self.problem = "host", f"no ARM cpuinfo is known for CPU model {cpu!r}"
            return
        self.fake = workdir / f"cpuinfo-{cpu}"
        self.fake.write_text(cpuinfo_text(cpu))
        if is_arm_cpuinfo(_output(with_cpuinfo(probe, self.fake))):
            self.mode = "bind-mount"
        else:
            self.mode = "host"
            self.problem = (f"qemu passes this machine's x86 /proc/cpuinfo through and an ARM one could not be "
                            f"bind-mounted over it (unshare failed); {NAMESPACE_HINT}")

    def wrap(self, command: list[str]) -> list[str]:
        return with_cpuinfo(command, self.fake) if self.mode == "bind-mount" else command

    def describe(self) -> str:
        return {"qemu": "qemu's own ARM /proc/cpuinfo for it",
                "bind-mount": f"an ARM /proc/cpuinfo for {self.cpu} bind-mounted in a private mount namespace",
                "host": f"the host's /proc/cpuinfo ({self.problem})"}[self.mode]


def _output(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
