"""Check aarch64 artifacts numerically on this machine, under qemu user-mode emulation.

``tsm-export verify DIR --emulate`` calls :func:`verify_emulated`: the
artifact's own ``run.py`` -- the file the user will run on the device -- is
run by the *aarch64* Python of ``online_tsm.export.device.sysroot`` with the aarch64
TVM runtime, with ``--no-timing``.  It checks every sha256, reads the
library's ELF header, streams the deterministic verification frames with the
shift buffers carried and compares the logits with the PyTorch reference
stored in the artifact (``reference.npz``).  This catches a wrong target
triple, a broken cross link, a bad NEON code path, a mis-ordered buffer or a
broken run.py before anyone copies the files to a device.

What it does not do: measure speed.  Emulation is ~20x slower than a device
and says nothing about it, so no timing is ever returned (run.py itself
refuses to time under an emulator).

Each artifact runs in a process of its own (``import tvm`` costs seconds
under qemu), so a library that crashes ``dlopen`` takes only its own check
down.  An artifact without a run.py (exported before it shipped one, or an
Android object archive) is checked with online-tsm's template of it.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from online_tsm.errors import UserError
from online_tsm.export.device import elf
from online_tsm.manifest import Manifest, ManifestError, load_manifest
from online_tsm.export.reference import read_reference
from online_tsm.export.device.qemu_cpu import CpuinfoPlan
from online_tsm.export.device.sysroot import EmulationUnavailable, Sysroot, ensure_sysroot, require_tool
from online_tsm.console.progress import Say, stderr_progress
from online_tsm.export.targets import TARGETS, ExportTarget

__all__ = ["EmulatedCheck", "EmulationCheckError", "EmulationUnavailable", "verify_emulated",
           "verify_emulated_many", "EMULATED_TIMING_NOTE"]

EMULATED_TIMING_NOTE = "emulated: timings are meaningless (qemu is ~20x slower than a device); none are reported"
CROSS_GCC = "aarch64-linux-gnu-gcc"
CROSS_GCC_PACKAGE = "gcc-aarch64-linux-gnu"


class EmulationCheckError(UserError):
    """The emulated check could not produce logits for an artifact (wrong architecture, load failure, ...)."""


@dataclass
class EmulatedCheck:
    """Outcome of one emulated check.  ``passed`` is None when the check could not be made (see ``notes``).

    There is deliberately no timing field: emulated timings are meaningless.
    """

    artifact_dir: Path
    target: str
    library: str | None = None
    n_frames: int = 0
    max_abs_diff: float | None = None
    max_abs_reference: float | None = None
    tolerance: float | None = None
    rule: str | None = None
    passed: bool | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    emulated: bool = True
    cpu: str | None = None         # qemu's -cpu model: the row's device core (None: qemu's default, max)

    def summary(self) -> str:
        """One line for a terminal."""
        head = f"{self.artifact_dir} [{self.target}, aarch64 {self.cpu or 'max'} under qemu]"
        if self.error:
            return f"{head}: FAILED: {self.error}"
        if self.max_abs_diff is None:
            return f"{head}: NOT CHECKED: {self.notes[0] if self.notes else 'no numbers'}"
        verdict = "OK" if self.passed else "MISMATCH"
        return (f"{head}: {verdict}: max abs diff vs PyTorch {self.max_abs_diff:.3g} over {self.n_frames} frames "
                f"(tolerance {self.tolerance:.3g} = {self.rule}, max |reference logit| "
                f"{self.max_abs_reference:.3g})")


# -- architecture of the library, read without running it -----------------------------------------
def library_architectures(path: Path) -> dict[str, str]:
    """``member -> architecture name`` for a ``.so`` (one entry) or every file in a ``.tar`` of objects."""
    try:
        return {member: elf.machine_name(machine) for member, machine in elf.library_machines(path).items()}
    except (elf.ElfError, tarfile.TarError, OSError) as exc:
        raise EmulationCheckError(f"{path.name} is not an ELF library or a tar of ELF objects ({exc})") from None


def _target_name(manifest: Manifest) -> str:
    return str(manifest.target.get("name") or manifest.target.get("target") or "unnamed target")


def _target_of(directory: Path) -> str:
    try:
        return _target_name(load_manifest(directory, verify_files=False))
    except ManifestError:
        return "unknown target"


def _needs_cuda(manifest: Manifest) -> bool:
    """A CUDA target (``kind`` in the targets table): its library cannot load without the CUDA runtime."""
    return manifest.target.get("kind") == "cuda"


def _needs_ndk(manifest: Manifest) -> bool:
    """Its ``.so`` links against another C library than glibc (Android's bionic, with the NDK's clang)."""
    return ExportTarget.from_manifest(manifest.target or {}).needs_ndk


# -- one artifact, host side -------------------------------------------------------------------------
@dataclass
class _Plan:
    result: EmulatedCheck
    manifest: Manifest
    reference: np.ndarray
    folder: Path         # a scratch folder of links to the artifact's files (+ a linked .so for a .tar)
    script: str          # run.py, or the template when the artifact has none
    needs_cuda: bool
    cpu: str | None = None   # qemu -cpu model


def row_cpu(manifest: Manifest) -> str | None:
    """The CPU model the row names for emulation (``qemu_cpu``); for a manifest older than that field, the
    current table's row of the same name."""
    cpu = (manifest.target or {}).get("qemu_cpu")
    if cpu:
        return str(cpu)
    row = next((t for t in TARGETS if t.name == _target_name(manifest)), None)
    return row.qemu_cpu if row is not None else None


def _plan(artifact_dir: Path, n_frames: int, workdir: Path, index: int) -> _Plan:
    """Validate the artifact on the host and lay out the folder run.py will check; raises EmulationCheckError."""
    from online_tsm.export.device.kit import RUN_SCRIPT, SCRIPT_ROLE, TEMPLATE

    manifest = load_manifest(artifact_dir)
    result = EmulatedCheck(artifact_dir=artifact_dir, target=_target_name(manifest), n_frames=n_frames,
                           cpu=row_cpu(manifest))
    if manifest.file_with_role("tflite"):
        return _plan_litert(artifact_dir, manifest, result, n_frames, workdir, index)
    library_name = manifest.file_with_role("library")
    if library_name is None:
        raise EmulationCheckError(f"{artifact_dir} has no compiled library (a file with role 'library' in "
                                  f"manifest.json); emulation checks compiled aarch64 artifacts "
                                  f"({', '.join(t.name for t in TARGETS if t.emulated)})")
    result.library = library_name
    library = artifact_dir / library_name
    arches = library_architectures(library)
    if not arches:
        raise EmulationCheckError(f"{library_name} contains no object files")
    wrong = {member: arch for member, arch in arches.items() if arch != "aarch64"}
    if wrong:
        member, arch = next(iter(wrong.items()))
        raise EmulationCheckError(f"{library_name}: {member} is {arch}, not aarch64; emulation checks aarch64 "
                                  f"artifacts only (target {result.target}); a host artifact is verified natively "
                                  "with `tsm-export verify DIR`")
    reference = _load_reference(artifact_dir, manifest, n_frames)
    if library.suffix not in (".so", ".tar"):
        raise EmulationCheckError(f"{library_name}: expected a .so or a .tar of object files")
    folder = workdir / f"artifact-{index}"
    folder.mkdir()
    for name in manifest.files:     # links: run.py hashes and loads the artifact's own bytes
        os.symlink((artifact_dir / name).resolve(), folder / name)
    os.symlink((artifact_dir / "manifest.json").resolve(), folder / "manifest.json")
    if library.suffix == ".tar":
        _link_for_glibc(library, workdir / f"{index}-objects", folder / (library.stem + ".so"))
        note = (f"linked the object files of {library_name} against glibc with {CROSS_GCC} for this check only")
        if _needs_ndk(manifest):
            note += " (an Android .so needs the NDK's linker; the compiled code checked is the same)"
        result.notes.append(note)
    script = next((n for n, meta in manifest.files.items() if meta.get("role") == SCRIPT_ROLE), None)
    if script is None:
        script = RUN_SCRIPT
        shutil.copyfile(TEMPLATE, folder / script)   # a copy: beside the template lies online-tsm's own tvm.py
        result.notes.append(f"{artifact_dir.name} has no {RUN_SCRIPT}: checked with online-tsm's template of it "
                            "(the file exports for glibc devices ship)")
    else:
        result.notes.append(f"ran the artifact's own {script} under qemu with --no-timing")
    return _Plan(result, manifest, reference, folder, script, _needs_cuda(manifest), result.cpu)


def _plan_litert(artifact_dir: Path, manifest: Manifest, result: EmulatedCheck, n_frames: int, workdir: Path,
                 index: int) -> _Plan:
    """A LiteRT artifact: nothing compiled to check; its own run_litert.py runs model.tflite with the aarch64
    LiteRT wheel (the runtime a phone runs)."""
    from online_tsm.export.device.kit import SCRIPT_ROLE

    script = next((n for n, meta in manifest.files.items() if meta.get("role") == SCRIPT_ROLE), None)
    if script is None:
        raise EmulationCheckError(f"{artifact_dir} has no run_litert.py (role 'script'); re-export it")
    reference = _load_reference(artifact_dir, manifest, n_frames)
    folder = workdir / f"artifact-{index}"
    folder.mkdir()
    for name in [*manifest.files, "manifest.json"]:     # links: the script hashes the artifact's own bytes
        os.symlink((artifact_dir / name).resolve(), folder / name)
    result.library = manifest.file_with_role("tflite")
    result.notes.append(f"ran the artifact's own {script} under qemu with --no-timing")
    return _Plan(result, manifest, reference, folder, script, False, result.cpu)


def _load_reference(artifact_dir: Path, manifest: Manifest, n_frames: int) -> np.ndarray:
    name = manifest.file_with_role("reference") or "reference.npz"
    path = artifact_dir / name
    if not path.is_file():
        raise EmulationCheckError(f"{artifact_dir} has no {name} (PyTorch reference logits); re-export it")
    try:
        logits = read_reference(path)
    except ValueError as exc:
        raise EmulationCheckError(str(exc)) from None
    n_class = int(manifest.model.get("n_class", logits.shape[-1]))
    if logits.ndim != 2 or logits.shape[1] != n_class:
        raise EmulationCheckError(f"{path}: expected logits of shape [frames, {n_class}], got {list(logits.shape)}")
    if not 1 <= n_frames <= logits.shape[0]:
        raise EmulationCheckError(f"n_frames must be between 1 and {logits.shape[0]} (the frames in {name}), "
                                  f"got {n_frames}")
    return logits[:n_frames]


def _link_for_glibc(tar_path: Path, folder: Path, out: Path) -> Path:
    """A glibc ``.so`` from the object files in ``tar_path``, for the emulated check only."""
    gcc = require_tool(CROSS_GCC, CROSS_GCC_PACKAGE, f"to link {tar_path.name} for the emulated check")
    folder.mkdir(parents=True)
    with tarfile.open(tar_path) as tar:
        objects = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".o")]
        for member in objects:
            member.name = Path(member.name).name      # no paths from the archive
            tar.extract(member, folder, filter="data")
    proc = subprocess.run([gcc, "-shared", "-fPIC", "-o", str(out), *[str(folder / m.name) for m in objects], "-lm"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise EmulationCheckError(f"linking the object files of {tar_path.name} with {CROSS_GCC} failed: {detail}")
    return out


# -- the emulated process ---------------------------------------------------------------------------
def _run_emulated(sysroot: Sysroot, plan: _Plan, workdir: Path,
                  cpuinfo: CpuinfoPlan | None = None) -> tuple[dict | None, str]:
    """Run the plan's script under qemu; ``(run.py's JSON or None, how it ended)``.

    Raises :class:`EmulationUnavailable` when the emulated interpreter did
    not even start the script (it prints its first line before loading anything).
    """
    out = workdir / f"result-{plan.folder.name}.json"
    args = ["--no-timing", "--device", "cpu", "--verify-frames", str(plan.result.n_frames), "--json", str(out)]
    timeout = 600      # the 224 model takes ~90 s here when the machine is quiet, several times that when not
    try:
        # cwd: a core dump of a crashing library lands in the scratch folder, not in the user's.
        command = sysroot.command(plan.folder / plan.script, *args, cpu=plan.cpu)
        command = cpuinfo.wrap(command) if cpuinfo is not None else command
        proc = subprocess.run(command, env=sysroot.environment(),
                              capture_output=True, text=True, timeout=timeout, cwd=workdir)
        code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, stdout, stderr = None, _text(exc.stdout), _text(exc.stderr)
    how = _how_it_ended(code, timeout)
    if out.is_file():
        return json.loads(out.read_text()), how
    if code is not None and code > 0 and not stdout.strip():
        raise EmulationUnavailable(f"the emulated aarch64 Python ({sysroot.python.name} under qemu) {how} "
                                   f"before checking anything: {_tail(stderr)} (if it persists, delete "
                                   f"{sysroot.root} so that it is prepared again)")
    return None, f"the emulated process {how} while loading or running this library: {_tail(stderr)}"


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def _how_it_ended(code: int | None, timeout: float) -> str:
    if code is None:
        return f"timed out after {timeout} s"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _tail(stderr: str) -> str:
    lines = [line.strip() for line in (stderr or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no message"


def _record(plan: _Plan, data: dict | None, how: str) -> None:
    """Turn run.py's JSON (or the way its process ended) into the check's result."""
    result = plan.result
    check = (data or {}).get("verification")
    if check is not None:
        result.max_abs_diff = float(check["max_abs_diff"])
        result.max_abs_reference = float(check["max_abs_reference"])
        result.tolerance = float(check["tolerance"])
        result.passed = bool(check["passed"]) and result.max_abs_diff <= result.tolerance
        rule = plan.manifest.rule()
        result.rule = rule.describe(same_machine=False)
        expected = rule.tolerance(plan.reference, same_machine=False)
        if not math.isclose(result.tolerance, expected, rel_tol=1e-9):
            result.passed = False
            result.error = (f"{plan.script} applied tolerance {result.tolerance:.3g}, the emulated check's rule gives "
                            f"{expected:.3g}: the script and this online-tsm disagree; re-export the artifact")
            return
        result.notes.append(f"compared {check['frames']} streamed frames (buffers carried) with the PyTorch "
                            f"reference in the artifact; tolerance {check['rule']} ({check['rule_reason']})")
        return
    message = ((data or {}).get("error") or {}).get("message") or how
    if plan.needs_cuda:
        # Honest partial result: the architecture was checked on the host; the numbers need a GPU.
        result.passed = None
        result.notes.insert(0, "not checked numerically: the library needs the CUDA runtime to load, which the "
                               "emulator does not have; only its architecture (aarch64) was checked. Numbers need "
                               f"the Jetson itself (python3 run.py there). ({message})")
        return
    result.error = message
    result.passed = False


def verify_emulated_many(artifact_dirs: Iterable[str | Path], n_frames: int = 16, *,
                         progress: Say | None = stderr_progress) -> list[EmulatedCheck]:
    """Check several aarch64 artifacts, each with its own run.py in its own emulated process; results in order.

    A problem with one artifact (wrong architecture, a library that does not
    load or crashes) is recorded in its result (``error``, ``passed=False``)
    and does not stop the others.  A machine that cannot emulate raises
    :class:`EmulationUnavailable` (one line naming the missing package).
    """
    dirs = [Path(d) for d in artifact_dirs]
    say = progress or (lambda message: None)
    results: list[EmulatedCheck | None] = [None] * len(dirs)
    with tempfile.TemporaryDirectory(prefix="tsm-emulate-") as tmp:
        workdir = Path(tmp)
        plans: list[_Plan] = []
        for i, directory in enumerate(dirs):
            try:
                plan = _plan(directory, n_frames, workdir, i)
            except (EmulationCheckError, ManifestError) as exc:
                results[i] = EmulatedCheck(artifact_dir=directory, target=_target_of(directory), n_frames=n_frames,
                                           passed=False, error=str(exc), notes=[EMULATED_TIMING_NOTE])
                continue
            plans.append(plan)
            results[i] = plan.result
        if plans:
            sysroot = ensure_sysroot(say)
            cpuinfo: dict[str | None, CpuinfoPlan] = {}
            for plan in plans:
                litert = plan.manifest.file_with_role("tflite") is not None
                wheel = "ai-edge-litert" if litert else "apache-tvm"
                engine = "LiteRT" if litert else "TVM"
                runtime = (f"aarch64 {engine} {sysroot.info['wheels'].get(wheel, '?')} runtime under "
                           f"{Path(sysroot.qemu).name} -cpu {plan.cpu or 'max (qemu default)'}, Debian "
                           f"{sysroot.info['suite']} {sysroot.info['python']}")
                if plan.cpu not in cpuinfo:
                    cpuinfo[plan.cpu] = CpuinfoPlan(sysroot.qemu, sysroot.root, workdir, plan.cpu, sysroot.python)
                seen = cpuinfo[plan.cpu]
                if litert and wheel not in sysroot.info["wheels"]:
                    plan.result.error, plan.result.passed = (
                        "the emulation environment has no aarch64 ai-edge-litert: install the litert extra here "
                        "(pip install 'online-tsm[litert]') so that it is added", False)
                elif litert and seen.mode == "host":
                    plan.result.error, plan.result.passed = (f"LiteRT's aarch64 wheel cannot start here: "
                                                             f"{seen.problem}", False)
                else:
                    say(f"running {plan.result.artifact_dir.name}/{plan.script} with the {runtime.split(' under')[0]} "
                        f"on a {plan.cpu or 'max'} CPU under qemu (slow by design)")
                    data, how = _run_emulated(sysroot, plan, workdir, seen)
                    _record(plan, data, how)
                plan.result.notes.extend([f"CPU model: {plan.cpu or 'max (qemu default)'}, the row's device core; "
                                          f"/proc/cpuinfo: {seen.describe()}", runtime, EMULATED_TIMING_NOTE])
    return [r for r in results if r is not None]


def verify_emulated(artifact_dir: str | Path, n_frames: int = 16, *,
                    progress: Say | None = stderr_progress) -> EmulatedCheck:
    """Check one aarch64 artifact under emulation against its PyTorch reference.

    Returns the comparison (``passed`` False on a numerical mismatch, None when
    it could not be made, e.g. a Jetson library that needs CUDA to load, with
    the reason in ``notes``).  Raises :class:`EmulationCheckError` when no
    logits could be produced (wrong architecture, a library that does not
    load), :class:`~online_tsm.manifest.ManifestError` for a broken
    folder, and :class:`EmulationUnavailable` when this machine cannot emulate.
    """
    directory = Path(artifact_dir)
    load_manifest(directory)     # a broken folder is reported as such, before any emulation
    (result,) = verify_emulated_many([directory], n_frames, progress=progress)
    if result.error:
        raise EmulationCheckError(f"{directory}: {result.error}")
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m online_tsm.export.device.emulate DIR...``: a stop-gap until ``tsm-export verify --emulate``."""
    import argparse

    from online_tsm.console.cli_util import add_debug_flag, run_cli

    parser = argparse.ArgumentParser(prog="python -m online_tsm.export.device.emulate",
                                     description="Check aarch64 artifacts numerically under qemu emulation.")
    parser.add_argument("dirs", nargs="+", help="artifact folders written by tsm-export")
    parser.add_argument("--frames", type=int, default=16, help="frames to stream (default 16)")
    add_debug_flag(parser)

    def run(args: argparse.Namespace) -> int:
        results = verify_emulated_many(args.dirs, args.frames)
        for result in results:
            print(result.summary())
            for note in result.notes:
                print(f"  - {note}")
        return 0 if all(r.passed for r in results) else 1

    return run_cli(run, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
