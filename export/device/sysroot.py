"""An aarch64 Python with the TVM runtime, runnable here under qemu user-mode emulation.

An artifact for a Raspberry Pi or a phone that was only *built* is a promise.
To check it numerically on an x86-64 machine we need an aarch64 interpreter,
the aarch64 TVM runtime and numpy.  They are assembled without root and
without a chroot: Debian's own arm64 packages (``debootstrap --download-only``,
then ``dpkg -x`` of each ``.deb``) give the interpreter and the C/C++ runtime
libraries; PyPI's ``manylinux_2_28_aarch64`` wheels of exactly the host's
apache-tvm, apache-tvm-ffi and numpy versions are unpacked into ``opt/site``.
``qemu-aarch64-static -L SYSROOT`` then runs ``SYSROOT/usr/bin/python3.X``.

Preparing it downloads ~130 MB and takes about a minute; it is cached under
``online_tsm.weights.cache_dir()/emulation/<key>`` (the key changes when the
pinned versions do), guarded by a file lock so that two processes never
prepare it at the same time, and built in a scratch folder that is renamed
into place only when complete, so an interrupted preparation leaves no
half-ready sysroot behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Iterator

from online_tsm.errors import UserError
from online_tsm.fileio import file_lock as shared_file_lock
from online_tsm.console.progress import Say, stderr_progress
from online_tsm.weights import cache_dir

DEBIAN_SUITE = "bookworm"
DEBIAN_ARCH = "arm64"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
MIRROR_ENV = "ONLINE_TSM_DEBIAN_MIRROR"
WHEEL_PLATFORM = "manylinux_2_28_aarch64"   # manylinux2014_aarch64 finds no apache-tvm wheel
#: pip does not take a manylinux_2_28 platform to cover 2_27 wheels (ai-edge-litert's aarch64 wheel is 2_27 only)
WHEEL_PLATFORMS = (WHEEL_PLATFORM, "manylinux_2_27_aarch64")
#: Python distributions unpacked into the sysroot, at the versions installed on the host.
WHEELS = ("apache-tvm", "apache-tvm-ffi", "numpy", "ml_dtypes", "typing_extensions")
#: Added when installed on the host (the litert extra): LiteRT's runtime, for run_litert.py.
OPTIONAL_WHEELS = ("ai-edge-litert",)
LAYOUT_VERSION = 1        # bump when the way the sysroot is assembled changes
READY_FILE = "online-tsm-sysroot.json"
#: Parts of the Debian packages that the emulated interpreter never reads.
PRUNE = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
         "var/cache", "var/lib/dpkg", "debootstrap")


class EmulationUnavailable(UserError):
    """The emulation environment cannot be prepared or run on this machine (one line names the fix)."""


@dataclass(frozen=True)
class Sysroot:
    """A prepared aarch64 sysroot: ``python`` runs under ``qemu`` with ``site`` on its path."""

    root: Path
    python: Path        # absolute host path of SYSROOT/usr/bin/python3.X
    site: Path          # SYSROOT/opt/site (the wheels)
    qemu: str           # path of qemu-aarch64-static
    info: dict          # versions recorded at preparation

    def command(self, script: str | os.PathLike, *args: str, cpu: str | None = None) -> list[str]:
        """qemu running ``script`` on the aarch64 Python; ``cpu``: qemu's ``-cpu`` model (the device's core)."""
        return [self.qemu, *(["-cpu", cpu] if cpu else []), "-L", str(self.root), str(self.python), str(script),
                *args]

    def environment(self) -> dict[str, str]:
        """A clean environment for the emulated interpreter (no host Python paths leak in)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "LD_LIBRARY_PATH"}
        env.update(PYTHONPATH=str(self.site), PYTHONNOUSERSITE="1", PYTHONHASHSEED="0", LC_ALL="C.UTF-8")
        env.setdefault("TVM_NUM_THREADS", "1")  # a numerical check; spinning worker threads only slow qemu down
        return env


# -- system tools ------------------------------------------------------------------------------
#: debootstrap lives in /usr/sbin, which is not on an ordinary user's PATH.
EXTRA_TOOL_DIRS = ("/usr/sbin", "/sbin")


def require_tool(command: str, package: str, why: str) -> str:
    """Path of ``command`` or one error line naming the Debian package that provides it."""
    path = shutil.which(command) or next(
        (str(Path(d) / command) for d in EXTRA_TOOL_DIRS if (Path(d) / command).is_file()), None)
    if path is None:
        raise EmulationUnavailable(f"{command} not found: install the Debian/Ubuntu package {package} "
                                   f"(apt-get install {package}) {why}")
    return path


def qemu_path() -> str:
    return require_tool("qemu-aarch64-static", "qemu-user-static", "to run aarch64 code under emulation")


def missing_system_packages() -> list[str]:
    """Debian packages still needed to prepare and run the emulator ([] when all are present)."""
    missing = []
    for command, package in (("qemu-aarch64-static", "qemu-user-static"), ("debootstrap", "debootstrap"),
                             ("dpkg", "dpkg")):
        try:
            require_tool(command, package, "")
        except EmulationUnavailable:
            missing.append(package)
    return missing


# -- versions and cache key -------------------------------------------------------------------
def wheel_pins() -> dict[str, str]:
    """``name -> version`` for the wheels: the versions installed here, so both sides run the same TVM."""
    pins = {}
    for name in WHEELS:
        try:
            pins[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            raise EmulationUnavailable(f"Python package {name} is not installed on the host; install online-tsm "
                                       "with its constraints (make setup) so the emulator can match its version") \
                from None
    for name in OPTIONAL_WHEELS:
        try:
            pins[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return pins


def sysroot_key(pins: dict[str, str] | None = None) -> str:
    pins = pins or wheel_pins()
    spec = json.dumps({"layout": LAYOUT_VERSION, "suite": DEBIAN_SUITE, "arch": DEBIAN_ARCH, "wheels": pins},
                      sort_keys=True)
    return (f"{DEBIAN_ARCH}-{DEBIAN_SUITE}-tvm{pins['apache-tvm']}-"
            f"{hashlib.sha256(spec.encode()).hexdigest()[:10]}")


def emulation_dir() -> Path:
    return cache_dir() / "emulation"


# -- locking ---------------------------------------------------------------------------------
@contextlib.contextmanager
def file_lock(path: Path, progress: Say | None = None) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``: a second process waits (and says so) instead of racing."""
    def waiting() -> None:
        if progress:
            progress(f"waiting for another process that is preparing the emulator ({path})")

    with shared_file_lock(path, waiting):
        yield


def remove_stale_scratch(base: Path) -> list[Path]:
    """Delete the scratch folders of builds that were killed (SIGKILL, power loss): ~600 MB each.

    Call only while holding the preparation lock: then no other process is
    writing a scratch folder, so every one found is left over.
    """
    stale = [p for p in base.glob("*.partial-*") if p.is_dir()]
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


# -- preparation -----------------------------------------------------------------------------
def _run(cmd: list[str], what: str, package: str | None = None, env: dict | None = None) -> None:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    if proc.returncode != 0:
        lines = [line for line in proc.stdout.strip().splitlines()
                 if line.strip() and not line.startswith("WARNING: Location")]
        detail = lines[-1].strip() if lines else f"exit code {proc.returncode}"
        hint = f" (is {package} installed and the network reachable?)" if package else ""
        raise EmulationUnavailable(f"{what} failed{hint}: {detail[:300]}")


def _python_in(root: Path) -> Path:
    found = sorted(p for p in (root / "usr" / "bin").glob("python3.*") if re.fullmatch(r"python3\.\d+", p.name))
    if not found:
        raise EmulationUnavailable(f"the Debian {DEBIAN_ARCH} packages unpacked into {root} contain no python3.X")
    return found[-1]


def _prepare(root: Path, pins: dict[str, str], progress: Say) -> dict:
    """Assemble a sysroot in ``root`` (an empty scratch folder); return the facts to record."""
    debootstrap = require_tool("debootstrap", "debootstrap", "to download Debian's arm64 packages")
    dpkg = require_tool("dpkg", "dpkg", "to unpack Debian packages")
    keyring = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
    if not keyring.is_file():
        raise EmulationUnavailable(f"{keyring} not found: install the package debian-archive-keyring "
                                   "(apt-get install debian-archive-keyring) to verify Debian's packages")
    mirror = os.environ.get(MIRROR_ENV, DEFAULT_MIRROR)
    downloads = root.parent / (root.name + ".debs")
    shutil.rmtree(downloads, ignore_errors=True)
    started = time.monotonic()
    progress(f"  1/3 downloading Debian {DEBIAN_SUITE} {DEBIAN_ARCH} packages (python3 and its libraries, "
             f"~85 MB) from {mirror}")
    _run([debootstrap, f"--arch={DEBIAN_ARCH}", "--variant=minbase", "--download-only", "--include=python3",
          f"--keyring={keyring}", DEBIAN_SUITE, str(downloads), mirror],
         "debootstrap --download-only", package="debootstrap")
    debs = sorted((downloads / "var" / "cache" / "apt" / "archives").glob("*.deb"))
    if not debs:
        raise EmulationUnavailable(f"debootstrap downloaded no packages into {downloads}")
    progress(f"  2/3 unpacking {len(debs)} packages with dpkg -x")
    for deb in debs:
        _run([dpkg, "-x", str(deb), str(root)], f"dpkg -x {deb.name}", package="dpkg")
    shutil.rmtree(downloads, ignore_errors=True)
    for part in PRUNE:
        shutil.rmtree(root / part, ignore_errors=True)
    python = _python_in(root)
    major, minor = python.name[len("python"):].split(".")
    tag = f"cp{major}{minor}"
    progress(f"  3/3 downloading the aarch64 wheels ({', '.join(f'{k}=={v}' for k, v in pins.items())}) "
             f"for {python.name}, ~130 MB")
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
          "--target", str(root / "opt" / "site"), *[f"--platform={p}" for p in WHEEL_PLATFORMS],
          "--python-version", f"{major}.{minor}", "--implementation", "cp", "--abi", tag, "--only-binary=:all:",
          *[f"{name}=={version}" for name, version in pins.items()]],
         f"pip download of the aarch64 wheels for {tag}", env=env)
    if sys.version_info[:2] == (int(major), int(minor)):
        # Bytecode is the same on every architecture: compiling here spares the first emulated import
        # (~10 s under qemu).  Skipped when the host Python is another version.
        progress("  compiling the Python files to bytecode on the host")
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-q", str(root / "usr" / "lib" / python.name),
                        str(root / "opt" / "site")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return {"suite": DEBIAN_SUITE, "arch": DEBIAN_ARCH, "mirror": mirror, "python": python.name,
            "wheels": pins, "layout": LAYOUT_VERSION, "debs": len(debs),
            "prepared_in_s": round(time.monotonic() - started, 1)}


def _load_ready(root: Path) -> dict | None:
    try:
        return json.loads((root / READY_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def ensure_sysroot(progress: Say | None = stderr_progress) -> Sysroot:
    """The cached aarch64 sysroot, prepared first if needed (a progress message says so).

    Raises :class:`EmulationUnavailable` (one line naming the missing package)
    when qemu-user-static, debootstrap or the network are missing.
    """
    say = progress or (lambda message: None)
    qemu = qemu_path()
    pins = wheel_pins()
    base = emulation_dir()
    root = base / sysroot_key(pins)
    info = _load_ready(root)
    if info is None:
        with file_lock(base / ".prepare.lock", say):
            info = _load_ready(root)       # another process may have finished while we waited
            if info is None:
                say(f"preparing the aarch64 emulation environment in {root} (first time only: ~130 MB download, "
                    "about a minute, ~600 MB on disk)")
                if root.exists():          # a folder without READY_FILE is garbage from an old crash
                    shutil.rmtree(root)
                for folder in remove_stale_scratch(base):
                    say(f"removed {folder.name}, left over by an interrupted preparation")
                scratch = base / f"{root.name}.partial-{os.getpid()}"
                shutil.rmtree(scratch, ignore_errors=True)
                scratch.mkdir(parents=True)
                try:
                    info = _prepare(scratch, pins, say)
                    (scratch / READY_FILE).write_text(json.dumps(info, indent=1) + "\n")
                    os.rename(scratch, root)
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
                    shutil.rmtree(base / f"{scratch.name}.debs", ignore_errors=True)
                say(f"aarch64 emulation environment ready ({info['prepared_in_s']} s)")
    return Sysroot(root=root, python=root / "usr" / "bin" / info["python"], site=root / "opt" / "site",
                   qemu=qemu, info=info)
