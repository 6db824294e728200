"""Check aarch64 artifacts numerically on this machine, under qemu user-mode emulation.

``tsm-export verify DIR --emulate`` calls :func:`verify_emulated`: the
artifact's compiled library is loaded by the *aarch64* TVM runtime (see
``online_tsm.export.sysroot``), the deterministic verification frames are
streamed through it with the shift buffers carried, and the logits are
compared here with the PyTorch reference stored in the artifact
(``reference.npz``).  This catches a wrong target triple, a broken cross
link, a bad NEON code path or a mis-ordered buffer before anyone copies the
files to a device.

What it does not do: measure speed.  Emulation is ~20x slower than a device
and says nothing about it, so no timing is ever returned.

Several artifacts are checked in one emulated process
(:func:`verify_emulated_many`) because importing TVM alone costs seconds.
"""
from __future__ import annotations

import json
import math
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

from online_tsm.cli_util import UserError
from online_tsm.export import elf
from online_tsm.export.manifest import Manifest, ManifestError, load_manifest
from online_tsm.export.reference import frames_for, read_reference
from online_tsm.export.sysroot import (EmulationUnavailable, Progress, Sysroot, ensure_sysroot, require_tool,
                                      stderr_progress)

__all__ = ["EmulatedCheck", "EmulationCheckError", "EmulationUnavailable", "verify_emulated",
           "verify_emulated_many", "tolerance_for", "EMULATED_TIMING_NOTE"]

CHECK_SCRIPT = Path(__file__).with_name("emulated_check.py")
RELATIVE_TOLERANCE = 1e-4
ABSOLUTE_TOLERANCE_FLOOR = 1e-4
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
    passed: bool | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    emulated: bool = True

    def summary(self) -> str:
        """One line for a terminal."""
        head = f"{self.artifact_dir} [{self.target}, aarch64 under qemu]"
        if self.error:
            return f"{head}: FAILED: {self.error}"
        if self.max_abs_diff is None:
            return f"{head}: NOT CHECKED: {self.notes[0] if self.notes else 'no numbers'}"
        verdict = "OK" if self.passed else "MISMATCH"
        return (f"{head}: {verdict}: max abs diff vs PyTorch {self.max_abs_diff:.3g} over {self.n_frames} frames "
                f"(tolerance {self.tolerance:.3g} = max({ABSOLUTE_TOLERANCE_FLOOR:g}, {RELATIVE_TOLERANCE:g} x max "
                f"|reference logit| {self.max_abs_reference:.3g}))")


def tolerance_for(reference: np.ndarray) -> float:
    """``max(1e-4, 1e-4 x max |reference logit|)``.

    Looser in its relative part than the host check (``reference.tolerance_for``,
    1e-5): here PyTorch on x86-64 is compared with LLVM's aarch64 code, which
    contracts multiply-adds into fused NEON FMAs and sums in another order, so
    float32 round-off differs more (measured ~1e-5 of the largest logit).  Still
    far below what a wrong buffer order or a broken kernel produces (order 1).
    """
    return max(ABSOLUTE_TOLERANCE_FLOOR, RELATIVE_TOLERANCE * float(np.max(np.abs(reference))))


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


def _is_android(manifest: Manifest) -> bool:
    return "android" in str(manifest.target.get("triple") or "") or "android" in _target_name(manifest)


# -- one artifact, host side -------------------------------------------------------------------------
@dataclass
class _Plan:
    result: EmulatedCheck
    manifest: Manifest
    reference: np.ndarray
    check: dict          # the job entry for emulated_check.py
    needs_cuda: bool


def _plan(artifact_dir: Path, n_frames: int, workdir: Path, index: int, frames_cache: dict[str, Path]) -> _Plan:
    """Validate the artifact on the host and prepare its job entry; raises EmulationCheckError."""
    manifest = load_manifest(artifact_dir)
    result = EmulatedCheck(artifact_dir=artifact_dir, target=_target_name(manifest), n_frames=n_frames)
    library_name = manifest.file_with_role("library")
    if library_name is None:
        raise EmulationCheckError(f"{artifact_dir} has no compiled library (a file with role 'library' in "
                                  f"manifest.json); emulation checks compiled aarch64 artifacts (raspberry-pi-4, "
                                  f"android-arm64, jetson-nano)")
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
    if library.suffix == ".tar":
        library = _link_for_glibc(library, workdir / f"{index}-objects")
        note = (f"linked the object files of {library_name} against glibc with {CROSS_GCC} for this check only")
        if _is_android(manifest):
            note += " (an Android .so needs the NDK's linker; the compiled code checked is the same)"
        result.notes.append(note)
    elif library.suffix != ".so":
        raise EmulationCheckError(f"{library_name}: expected a .so or a .tar of object files")
    frames = frames_for(manifest, n_frames)   # normalised floats, or uint8 camera frames for a folded graph
    key = f"{frames.dtype}-{'x'.join(map(str, frames.shape))}"
    if key not in frames_cache:
        frames_cache[key] = workdir / f"frames-{key}.npy"
        np.save(frames_cache[key], frames)
    check = {"id": str(index), "library": str(library.resolve()), "frames": str(frames_cache[key]),
             "output": str(workdir / f"logits-{index}.npy"), "inputs": [s.name for s in manifest.inputs],
             "outputs": [s.name for s in manifest.outputs], "frame_input": manifest.frame_input,
             "logits_output": manifest.logits_output,
             "buffers": [{"input": b.input, "output": b.output, "shape": list(b.shape), "dtype": b.dtype}
                         for b in manifest.buffers]}
    needs_cuda = _needs_cuda(manifest)
    return _Plan(result, manifest, reference, check, needs_cuda)


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


def _link_for_glibc(tar_path: Path, folder: Path) -> Path:
    """A glibc ``.so`` from the object files in ``tar_path``, for the emulated check only."""
    gcc = require_tool(CROSS_GCC, CROSS_GCC_PACKAGE, f"to link {tar_path.name} for the emulated check")
    folder.mkdir(parents=True)
    with tarfile.open(tar_path) as tar:
        objects = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".o")]
        for member in objects:
            member.name = Path(member.name).name      # no paths from the archive
            tar.extract(member, folder, filter="data")
    out = folder / (tar_path.stem + "-glibc.so")
    proc = subprocess.run([gcc, "-shared", "-fPIC", "-o", str(out), *[str(folder / m.name) for m in objects], "-lm"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise EmulationCheckError(f"linking the object files of {tar_path.name} with {CROSS_GCC} failed: {detail}")
    return out


# -- the emulated process ---------------------------------------------------------------------------
def _run_emulated(sysroot: Sysroot, checks: list[dict], workdir: Path) -> dict[str, dict]:
    """Run the checks, in as many processes as crashes require; ``id -> {"status", "message"}``."""
    job_path, results_path = workdir / "job.json", workdir / "results.json"
    script = workdir / CHECK_SCRIPT.name     # run from a folder of its own: nothing beside it can shadow tvm
    shutil.copyfile(CHECK_SCRIPT, script)
    job_path.write_text(json.dumps({"results": str(results_path), "checks": checks}))
    statuses: dict[str, dict] = {}
    for _ in range(len(checks) + 1):
        timeout = 120 + 120 * sum(1 for c in checks if c["id"] not in statuses)
        try:
            # cwd: a core dump of a crashing library lands in the scratch folder, not in the user's.
            proc = subprocess.run(sysroot.command(script, str(job_path)), env=sysroot.environment(),
                                  capture_output=True, text=True, timeout=timeout, cwd=workdir)
            code, stderr = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as exc:
            code, stderr = None, (exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) \
                else (exc.stderr or "")
        before = len(statuses)
        if results_path.is_file():
            statuses = json.loads(results_path.read_text()).get("checks", {})
        how = _how_it_ended(code, timeout)
        for status in statuses.values():
            if status["status"] == "started":    # this check took the whole process down with it
                status.update(status="error", message=f"the emulated process {how} while loading or running "
                                                      f"this library: {_tail(stderr)}")
        if results_path.is_file():
            data = json.loads(results_path.read_text())
            data["checks"] = statuses
            results_path.write_text(json.dumps(data))
        if all(c["id"] in statuses for c in checks):
            return statuses
        if len(statuses) == before:
            raise EmulationUnavailable(f"the emulated aarch64 Python ({sysroot.python.name} under qemu) {how} "
                                       f"before checking anything: {_tail(stderr)} (if it persists, delete "
                                       f"{sysroot.root} so that it is prepared again)")
    return statuses


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


def _compare(plan: _Plan, status: dict, logits_path: Path) -> None:
    result = plan.result
    if status["status"] == "ok":
        logits = np.load(logits_path)
        if logits.shape != plan.reference.shape:
            result.error = f"emulated logits have shape {list(logits.shape)}, expected {list(plan.reference.shape)}"
            result.passed = False
            return
        result.max_abs_reference = float(np.max(np.abs(plan.reference)))
        result.tolerance = tolerance_for(plan.reference)
        diff = float(np.max(np.abs(logits.astype(np.float64) - plan.reference)))
        result.max_abs_diff = diff if math.isfinite(diff) else float("inf")
        result.passed = bool(result.max_abs_diff <= result.tolerance)
        result.notes.append(f"compared {plan.result.n_frames} streamed frames (buffers carried) with the PyTorch "
                            "reference in the artifact")
        return
    message = status.get("message", "unknown failure")
    if plan.needs_cuda or status["status"] == "needs_cuda":
        # Honest partial result: the architecture was checked on the host; the numbers need a GPU.
        result.passed = None
        result.notes.insert(0, "not checked numerically: the library needs the CUDA runtime to load, which the "
                               "emulator does not have; only its architecture (aarch64) was checked. Numbers need "
                               f"the Jetson itself (e.g. its TVM runtime over RPC, see tsm-bench). ({message})")
        return
    result.error = message
    result.passed = False


def verify_emulated_many(artifact_dirs: Iterable[str | Path], n_frames: int = 16, *,
                         progress: Progress | None = stderr_progress) -> list[EmulatedCheck]:
    """Check several aarch64 artifacts in one emulated process; one result per folder, in order.

    A problem with one artifact (wrong architecture, a library that does not
    load) is recorded in its result (``error``, ``passed=False``) and does not
    stop the others.  A machine that cannot emulate raises
    :class:`EmulationUnavailable` (one line naming the missing package).
    """
    dirs = [Path(d) for d in artifact_dirs]
    say = progress or (lambda message: None)
    results: list[EmulatedCheck | None] = [None] * len(dirs)
    with tempfile.TemporaryDirectory(prefix="tsm-emulate-") as tmp:
        workdir = Path(tmp)
        plans: dict[str, _Plan] = {}
        frames_cache: dict[str, Path] = {}
        for i, directory in enumerate(dirs):
            try:
                plan = _plan(directory, n_frames, workdir, i, frames_cache)
            except (EmulationCheckError, ManifestError) as exc:
                results[i] = EmulatedCheck(artifact_dir=directory, target=_target_of(directory), n_frames=n_frames,
                                           passed=False, error=str(exc), notes=[EMULATED_TIMING_NOTE])
                continue
            plans[plan.check["id"]] = plan
            results[i] = plan.result
        if plans:
            sysroot = ensure_sysroot(say)
            say(f"checking {len(plans)} artifact(s) with the aarch64 TVM runtime under qemu (slow by design)")
            statuses = _run_emulated(sysroot, [p.check for p in plans.values()], workdir)
            runtime = (f"aarch64 TVM {sysroot.info['wheels'].get('apache-tvm', '?')} runtime under "
                       f"{Path(sysroot.qemu).name}, Debian {sysroot.info['suite']} {sysroot.info['python']}")
            for check_id, plan in plans.items():
                _compare(plan, statuses[check_id], Path(plan.check["output"]))
                plan.result.notes.extend([runtime, EMULATED_TIMING_NOTE])
    return [r for r in results if r is not None]


def verify_emulated(artifact_dir: str | Path, n_frames: int = 16, *,
                    progress: Progress | None = stderr_progress) -> EmulatedCheck:
    """Check one aarch64 artifact under emulation against its PyTorch reference.

    Returns the comparison (``passed`` False on a numerical mismatch, None when
    it could not be made, e.g. a Jetson library that needs CUDA to load, with
    the reason in ``notes``).  Raises :class:`EmulationCheckError` when no
    logits could be produced (wrong architecture, a library that does not
    load), :class:`~online_tsm.export.manifest.ManifestError` for a broken
    folder, and :class:`EmulationUnavailable` when this machine cannot emulate.
    """
    directory = Path(artifact_dir)
    load_manifest(directory)     # a broken folder is reported as such, before any emulation
    (result,) = verify_emulated_many([directory], n_frames, progress=progress)
    if result.error:
        raise EmulationCheckError(f"{directory}: {result.error}")
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m online_tsm.export.emulate DIR...``: a stop-gap until ``tsm-export verify --emulate``."""
    import argparse

    from online_tsm.cli_util import add_debug_flag, run_cli

    parser = argparse.ArgumentParser(prog="python -m online_tsm.export.emulate",
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
