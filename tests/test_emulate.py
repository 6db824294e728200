"""aarch64 artifacts checked numerically under qemu user-mode emulation.

Each artifact's own run.py runs under qemu with --no-timing, one emulated
process per artifact (importing TVM costs seconds there): a deliberately
corrupted library first (it crashes or fails only its own process), then the
raspberry-pi-4 artifact of a small model, the android-arm64 artifact (a .tar
linked against glibc for the check, checked with the run.py template since
an Android artifact ships none) and the full-size 224 model.

They skip only when qemu-user-static / debootstrap / the aarch64 cross
compiler are genuinely absent, and never in CI (``CI`` set), where
``.ci/run`` installs them.
"""
from __future__ import annotations

import shutil
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from helpers import require_tools
from online_tsm.export.device.emulate import (EMULATED_TIMING_NOTE, EmulatedCheck, EmulationCheckError,
                                       verify_emulated, verify_emulated_many)
from online_tsm.manifest import ManifestError, load_manifest, write_manifest
from online_tsm.verification import FP32
from online_tsm.export.device.sysroot import EmulationUnavailable, ensure_sysroot, file_lock, missing_system_packages

pytestmark = pytest.mark.emulation

def _require_emulator() -> None:
    missing = missing_system_packages()
    if not shutil.which("aarch64-linux-gnu-gcc"):
        missing.append("gcc-aarch64-linux-gnu")
    require_tools(missing, f"aarch64 emulation needs the Debian packages {', '.join(missing)} (apt-get install them)")


# -- artifacts ----------------------------------------------------------------------------------------
def _export_with_cli(target: str, out_dir: Path) -> Path:
    """The user's path: ``tsm-export --target T -o DIR`` on the shipped default model (width 0.5, 96)."""
    from online_tsm.export.cli import main

    assert main(["--target", target, "-o", str(out_dir), "--quiet"]) == 0
    return out_dir


def _copy_with_library(source: Path, dest: Path, library_bytes: bytes | None) -> Path:
    """A copy of ``source`` whose library is replaced (or removed, with None) and whose manifest is re-hashed."""
    shutil.copytree(source, dest)
    manifest = load_manifest(dest)
    library = manifest.file_with_role("library")
    if library_bytes is None:
        (dest / library).unlink()
        manifest.files.pop(library)
    else:
        (dest / library).write_bytes(library_bytes)
    write_manifest(dest, manifest)
    return dest


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, export_cache, small_weights, model_224) -> dict[str, Path]:
    _require_emulator()
    base = tmp_path_factory.mktemp("emulate")
    built = {"small-rpi": export_cache("small-raspberry-pi-4", small_weights, "raspberry-pi-4"),
             "small-android": _export_with_cli("android-arm64", base / "small-android"),
             "small-jetson": export_cache("small-jetson-nano", small_weights, "jetson-nano"),
             "224-rpi": export_cache("224-raspberry-pi-4", model_224, "raspberry-pi-4")}
    so = (built["small-rpi"] / "model.so").read_bytes()
    built["corrupt"] = _copy_with_library(built["small-rpi"], base / "corrupt", so[: len(so) // 3])
    return built


@pytest.fixture(scope="module")
def emulated(artifacts) -> dict[str, EmulatedCheck]:
    """All emulated checks of the session, in one call (the corrupted library first, to test recovery)."""
    ensure_sysroot()   # the first preparation is slow and reported; not part of the check below
    order = ["corrupt", "small-rpi", "small-android", "small-jetson", "224-rpi"]
    results = verify_emulated_many([artifacts[name] for name in order])
    return dict(zip(order, results))


# -- the emulated checks --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["small-rpi", "224-rpi"])
def test_raspberry_pi_artifact_matches_pytorch_under_emulation(emulated, name):
    result = emulated[name]
    assert result.error is None, result.error
    assert result.passed is True, result.summary()
    assert result.max_abs_diff <= result.tolerance
    assert result.tolerance == pytest.approx(max(1e-4, 1e-4 * result.max_abs_reference))
    assert result.max_abs_reference > 1.0        # non-trivial logits, so the comparison means something
    assert result.n_frames == 16
    assert EMULATED_TIMING_NOTE in result.notes
    assert "ran the artifact's own run.py under qemu with --no-timing" in result.notes
    assert "max abs diff vs PyTorch" in result.summary()


def test_android_object_files_are_linked_against_glibc_for_the_check_only(emulated):
    result = emulated["small-android"]
    assert result.passed is True, result.summary()
    assert result.library == "model.tar"
    assert any("against glibc" in note and "for this check only" in note and "NDK" in note
               for note in result.notes), result.notes
    assert any("has no run.py: checked with online-tsm's template" in note for note in result.notes), result.notes


def test_corrupted_library_fails_clearly_and_the_other_checks_still_run(emulated):
    result = emulated["corrupt"]
    assert result.passed is False
    assert result.max_abs_diff is None
    assert "while loading or running this library" in result.error or "could not load" in result.error
    assert "FAILED" in result.summary()
    assert emulated["small-rpi"].passed is True   # it ran in the fresh process started after the crash


def test_jetson_library_needing_cuda_is_reported_as_not_checked(emulated):
    result = emulated["small-jetson"]
    assert result.passed is None and result.max_abs_diff is None and result.error is None
    assert "not checked numerically" in result.notes[0] and "CUDA runtime" in result.notes[0]
    assert "NOT CHECKED" in result.summary()


@pytest.mark.parametrize("name", ["small-rpi", "small-android"])
def test_tsm_export_verify_emulate_prints_the_diff_and_exits_0(artifacts, name, capsys):
    from online_tsm.export.cli import main

    assert main(["verify", str(artifacts[name]), "--emulate"]) == 0
    out = capsys.readouterr().out
    assert "max abs diff" in out and "vs PyTorch" in out and "PASS" in out
    if name == "small-android":
        assert "against glibc" in out


def test_tsm_export_verify_emulate_fails_clearly_on_a_wrong_architecture(artifacts, tmp_path, capsys):
    from online_tsm.export.cli import main

    folder = _copy_with_library(artifacts["small-rpi"], tmp_path / "x86", Path(sys.executable).resolve().read_bytes())
    assert main(["verify", str(folder), "--emulate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not aarch64" in err and len(err.strip().splitlines()) == 1


def test_emulated_results_never_carry_timings(emulated):
    names = {f.name for f in fields(EmulatedCheck)}
    assert not names & {"latency", "latency_ms", "time", "timing", "fps", "seconds"}
    assert all(r.emulated for r in emulated.values())


# -- clear failures before any emulation -----------------------------------------------------------------
def test_wrong_architecture_library_fails_clearly(artifacts, tmp_path):
    from online_tsm.export.device import elf
    x86_library = Path(sys.executable).resolve().read_bytes()   # an x86-64 ELF on these machines
    folder = _copy_with_library(artifacts["small-rpi"], tmp_path / "x86", x86_library)
    expected = elf.machine_name(elf.elf_machine(x86_library))
    assert expected != "aarch64"
    with pytest.raises(EmulationCheckError, match=rf"model\.so is {expected}, not aarch64"):
        verify_emulated(folder)


def test_library_that_is_not_elf_fails_clearly(artifacts, tmp_path):
    folder = _copy_with_library(artifacts["small-rpi"], tmp_path / "text", b"this is not a shared library\n" * 10)
    with pytest.raises(EmulationCheckError, match=r"model\.so is not an ELF library"):
        verify_emulated(folder)


def test_tampered_library_is_caught_by_the_manifest(artifacts, tmp_path):
    folder = tmp_path / "tampered"
    shutil.copytree(artifacts["small-rpi"], folder)
    with open(folder / "model.so", "r+b") as fh:
        fh.seek(4096)
        fh.write(b"\0" * 64)
    with pytest.raises(ManifestError, match=r"model\.so does not match manifest\.json"):
        verify_emulated(folder)


def test_artifact_without_a_library_is_refused(artifacts, tmp_path):
    folder = _copy_with_library(artifacts["small-rpi"], tmp_path / "onnx-only", None)
    with pytest.raises(EmulationCheckError, match="has no compiled library"):
        verify_emulated(folder)


def test_too_many_frames_is_refused(artifacts):
    with pytest.raises(EmulationCheckError, match=r"n_frames must be between 1 and 16.*got 17"):
        verify_emulated(artifacts["small-rpi"], n_frames=17)


def test_folder_that_is_not_an_artifact_is_refused(tmp_path):
    with pytest.raises(ManifestError, match="has no manifest.json"):
        verify_emulated(tmp_path)


# -- the environment --------------------------------------------------------------------------------------
def test_missing_qemu_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EmulationUnavailable, match=r"qemu-aarch64-static not found: install .*qemu-user-static"):
        ensure_sysroot(progress=None)


def test_missing_debootstrap_names_the_package(tmp_path, monkeypatch):
    qemu = shutil.which("qemu-aarch64-static") or "/usr/bin/true"   # only its presence matters here
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "qemu-aarch64-static").symlink_to(qemu)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("ONLINE_TSM_CACHE", str(tmp_path / "cache"))   # nothing prepared there
    monkeypatch.setattr("online_tsm.export.device.sysroot.EXTRA_TOOL_DIRS", ())
    with pytest.raises(EmulationUnavailable, match=r"debootstrap not found: install .*package debootstrap"):
        ensure_sysroot(progress=None)
    assert not any((tmp_path / "cache" / "emulation").glob("arm64-*")), "no half-prepared sysroot may remain"


def test_second_preparer_waits_for_the_lock(tmp_path):
    lock = tmp_path / "lock"
    said: list[str] = []
    order: list[str] = []

    def second():
        with file_lock(lock, said.append):
            order.append("second")

    with file_lock(lock):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        order.append("first done")
    thread.join(5)
    assert order == ["first done", "second"]
    assert said and "waiting for another process" in said[0]


def test_tolerance_is_relative_with_a_floor():
    assert FP32.tolerance(np.array([[0.5, -0.2]]), same_machine=False) == 1e-4
    assert FP32.tolerance(np.array([[3.0, -8.0]]), same_machine=False) == pytest.approx(8e-4)


def test_emulated_python_that_cannot_start_is_reported_in_one_line(tmp_path):
    from online_tsm.export.device.emulate import _Plan, _run_emulated
    from online_tsm.export.device.sysroot import Sysroot

    fake_qemu = tmp_path / "qemu-aarch64-static"
    fake_qemu.write_text("#!/bin/sh\necho 'qemu: could not open /lib/ld-linux-aarch64.so.1' >&2\nexit 1\n")
    fake_qemu.chmod(0o755)
    sysroot = Sysroot(root=tmp_path, python=tmp_path / "usr/bin/python3.11", site=tmp_path / "opt/site",
                      qemu=str(fake_qemu), info={})
    with pytest.raises(EmulationUnavailable, match=r"exited with code 1 before checking anything: qemu: could not "
                                                   r"open /lib/ld-linux-aarch64\.so\.1 .*delete"):
        _run_emulated(sysroot, _Plan(EmulatedCheck(tmp_path, "raspberry-pi-4", n_frames=16), None, None,
                                     tmp_path / "artifact-0", "run.py", False), tmp_path)
