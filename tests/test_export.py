"""tsm-export: artifacts for every target, their parity with PyTorch, device code, and verify.

Every artifact is built once per session (session fixtures); the small model
(width 0.5, 96x96, 10 classes) serves most checks, the full 224 model saved as
an upstream-format checkpoint serves the checks at the paper's setting.
"""
from __future__ import annotations

import json
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from helpers import seeded_model
from online_tsm.checkpoint import load_model, save_checkpoint
from online_tsm.export.device import elf
from online_tsm.export.cli import main as cli_main
from online_tsm.manifest import ManifestError, load_manifest, write_manifest
from online_tsm.export.formats.onnx import deterministic_frames, stream_onnxruntime, stream_torch
from online_tsm.export.reference import deterministic_camera_frames, read_reference, write_reference
from online_tsm.export.targets import TARGETS, get_target
from online_tsm.export.tvm.build import stream_tvm
from online_tsm.preprocess import preprocess_frame

PARITY = 1e-4  # max abs diff of logits over 16 streamed frames: the float32 rule's floor (same machine)
HAS_CROSS_GCC = shutil.which("aarch64-linux-gnu-gcc") is not None


@pytest.fixture(scope="session")
def full_weights(tmp_path_factory) -> Path:
    """The full 224 model with seeded weights, as an upstream online-demo checkpoint."""
    return save_checkpoint(seeded_model(seed=0), tmp_path_factory.mktemp("full") / "mobilenetv2_online.pth.tar",
                           fmt="upstream-online")


def _stream_manifest_names(folder: Path, runner: str) -> np.ndarray:
    manifest = load_manifest(folder)
    frames = deterministic_frames(16, manifest.input_size)
    if runner == "onnxruntime":
        return stream_onnxruntime(folder / manifest.file_with_role("onnx"), manifest, frames)
    return stream_tvm(folder / manifest.file_with_role("library"), manifest, frames)


# -- done-when: the upstream-format checkpoint, 224x224 -------------------------------------------

@pytest.mark.parametrize("target,runner", [("onnx", "onnxruntime"), ("host", "tvm")])
def test_full_model_export_reproduces_pytorch(export_cache, full_weights, target, runner):
    folder = export_cache(f"full-{target}", full_weights, target)
    expected = stream_torch(load_model(full_weights), deterministic_frames(16, 224))
    actual = _stream_manifest_names(folder, runner)
    assert actual.shape == (16, 27)
    assert np.abs(actual - expected).max() <= PARITY
    assert np.abs(expected).max() > 1.0  # the comparison is not between near-zero logits
    reference = read_reference(folder / "reference.npz")
    np.testing.assert_allclose(reference, expected, atol=1e-6)


# -- the artifact folder ---------------------------------------------------------------------------

def test_onnx_artifact_folder_and_manifest(export_cache, small_weights):
    folder = export_cache("small-onnx", small_weights, "onnx")
    manifest = load_manifest(folder)  # verifies every sha256
    assert sorted(p.name for p in folder.iterdir()) == ["README.txt", "manifest.json", "model.onnx", "reference.npz",
                                                        "run_onnx.py"]
    assert {n: m["role"] for n, m in manifest.files.items()} == {
        "model.onnx": "onnx", "reference.npz": "reference", "README.txt": "readme", "run_onnx.py": "script"}
    assert [s.name for s in manifest.inputs] == ["frame"] + [f"shift_{k}" for k in range(10)]
    assert [s.name for s in manifest.outputs] == ["logits"] + [f"shift_out_{k}" for k in range(10)]
    assert [(b.input, b.output, b.init) for b in manifest.buffers] == [
        (f"shift_{k}", f"shift_out_{k}", "zeros") for k in range(10)]
    assert manifest.target["name"] == "onnx" and manifest.target["kind"] == "onnx"
    assert manifest.target["library"] is None and manifest.target["runs_here"] is True
    assert {"torch", "onnx", "onnxslim", "onnxruntime"} <= set(manifest.compiler)
    reference = read_reference(folder / "reference.npz")
    assert reference.shape == (16, 10) and reference.dtype == np.float32
    readme = (folder / "README.txt").read_text()
    assert "Files: README.txt, model.onnx, reference.npz, run_onnx.py and manifest.json" in readme
    assert "Pace:" not in readme   # a checkpoint without a recorded training pace: nothing to say


def test_small_onnx_and_host_reproduce_pytorch(export_cache, small_weights, model_small):
    expected = stream_torch(model_small, deterministic_frames(16, 96))
    for target, runner in (("onnx", "onnxruntime"), ("host", "tvm")):
        actual = _stream_manifest_names(export_cache(f"small-{target}", small_weights, target), runner)
        assert np.abs(actual - expected).max() <= PARITY, target


def test_host_manifest_records_the_target_row_and_compiler(export_cache, small_weights):
    manifest = load_manifest(export_cache("small-host", small_weights, "host"))
    assert manifest.file_with_role("library") == "model.so"
    row = manifest.target
    assert row["name"] == "host" and row["kind"] == "cpu" and row["runs_here"] and row["triple"] is None
    assert row["tvm_target"] == {"kind": "llvm", "mcpu": "native"}
    assert row["tvm_target_resolved"]["mcpu"] not in ("native", "generic")  # TVM 0.27 ignores "native"
    assert {"tvm", "llvm", "torch", "onnx", "onnxslim"} <= set(manifest.compiler)
    machines = elf.library_machines(export_cache("small-host", small_weights, "host") / "model.so")
    assert set(machines.values()) <= {elf.EM_X86_64, elf.EM_AARCH64} and len(machines) == 1


def test_tsn_baseline_has_no_buffers_and_the_same_weights(export_cache, small_weights, model_small):
    folder = export_cache("small-tsn-onnx", small_weights, "onnx", shift="none")
    manifest = load_manifest(folder)
    assert manifest.buffers == [] and [s.name for s in manifest.inputs] == ["frame"]
    assert manifest.model["shift"] == "none" and manifest.model["shift_blocks"] == []
    frames = deterministic_frames(4, 96)
    tsn = model_small.forward_clip(__import__("torch").from_numpy(frames)[None], shift="none")
    actual = stream_onnxruntime(folder / "model.onnx", manifest, frames)
    assert np.abs(actual - tsn[0].detach().numpy()).max() <= PARITY


# -- cross targets ---------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["raspberry-pi-4", "android-arm64", "jetson-nano"])
def test_cross_targets_build_aarch64_objects(export_cache, small_weights, target):
    folder = export_cache(f"small-{target}", small_weights, target)
    manifest = load_manifest(folder)
    library = folder / manifest.file_with_role("library")
    machines = elf.library_machines(library)
    assert machines and set(machines.values()) == {elf.EM_AARCH64}  # e_machine 183 in every object
    if target == "android-arm64":
        assert library.name == "model.tar" and tarfile.is_tarfile(library)  # bionic needs the NDK's clang
        assert any("TVM_NDK_CC" in note for note in manifest.target["notes"])
    elif HAS_CROSS_GCC:
        assert library.name == "model.so"
    assert manifest.target["triple"].startswith("aarch64")
    assert manifest.target["runs_here"] is False


def test_jetson_artifact_holds_sm53_ptx_a_cuda_10_2_driver_loads(export_cache, small_weights):
    folder = export_cache("small-jetson-nano", small_weights, "jetson-nano")
    manifest = load_manifest(folder)
    library = folder / manifest.file_with_role("library")
    ptx = [i for i in elf.embedded_cuda_images(library) if i.kind == "ptx"]
    assert ptx and {i.arch for i in ptx} == {"sm_53"}       # read from the PTX's own .target line
    isa = {i.isa for i in ptx}
    assert len(isa) == 1 and tuple(map(int, isa.pop().split("."))) <= (6, 5)   # what a CUDA 10.2 driver JITs
    kernels = [k for image in ptx for k in elf.ptx_kernel_names(library, image)]
    assert any(k.startswith("fused_conv2d") for k in kernels) and len(kernels) >= 20   # launchable .entry kernels
    # the host code (outside the PTX) launches the very kernels that the PTX defines
    if library.suffix == ".so":
        blobs = [library.read_bytes()]
    else:
        with tarfile.open(library) as archive:
            blobs = [archive.extractfile(m).read() for m in archive.getmembers()]
    image = ptx[0]
    blob = next(b for b in blobs if b[image.offset:image.offset + 8] == b".version")
    outside = blob[:image.offset] + blob[image.offset + image.size:]
    assert all(k.encode() in outside for k in kernels)
    code = manifest.target["device_code"]
    assert code["format"] == "ptx" and code["arch"] == "sm_53" and code["ptx_isa"] == ptx[0].isa
    assert code["compiler"].startswith("LLVM") and code["kernels"] == len(kernels)
    assert tuple(map(int, code["min_cuda_driver"].split("."))) <= (10, 2)
    assert manifest.compiler["cuda_compiler"] == code["compiler"]


# -- folded pre-processing ---------------------------------------------------------------------------

# OpenCV resizes uint8 images with fixed-point weights and rounds every resized pixel to an integer level;
# the folded graph keeps the float value (rounding in the graph would flip at .5 between runtimes and make
# verification loose).  Stated bound on the network input: one grey level, 1 / (255 * min std) ~ 0.0175
# (measured here: 0.013 max, 0.005 mean).  This seeded random network amplifies such input noise strongly, so
# its logits are compared against OpenCV + the unfolded model with a bound of 15 % of the largest logit
# (measured: 9 %); the graph itself is verified against PyTorch with the normal 1e-4 tolerance.
FOLDED_INPUT_VS_OPENCV = 1.0 / (255.0 * 0.225)
FOLDED_LOGITS_VS_OPENCV = 0.15


def test_folded_preprocess_matches_preprocess_frame(export_cache, small_weights, model_small):
    import torch

    from online_tsm.export.formats.folded import FoldedPreprocess

    folder = export_cache("small-folded-onnx", small_weights, "onnx", fold_preprocess=True)
    manifest = load_manifest(folder)
    frame_spec = manifest.spec("frame")
    assert frame_spec.shape == [1, 240, 320, 3] and frame_spec.dtype == "uint8"
    pre = manifest.preprocess
    assert pre["folded"] is True and pre["color_order"] == "bgr" and pre["raw_input_shape"] == [1, 240, 320, 3]
    camera = deterministic_camera_frames(16, 240, 320)

    class Identity(torch.nn.Module):
        input_size = 96

        def forward(self, x, *buffers):
            return x

    front = FoldedPreprocess(Identity(), (240, 320), "bgr")
    for frame in camera[:4]:
        graph_input = front(torch.from_numpy(frame[None]))[0].numpy()
        assert np.abs(graph_input - preprocess_frame(frame, 96, "bgr")).max() <= FOLDED_INPUT_VS_OPENCV

    folded = stream_onnxruntime(folder / "model.onnx", manifest, camera)
    unfolded = stream_torch(model_small, np.stack([preprocess_frame(f, 96, "bgr") for f in camera]))
    assert np.abs(folded - unfolded).max() <= FOLDED_LOGITS_VS_OPENCV * np.abs(unfolded).max()
    assert np.abs(unfolded).max() > 1.0
    assert cli_main(["verify", str(folder)]) == 0  # the graph against PyTorch, 1e-4


# -- verify ------------------------------------------------------------------------------------------

def test_verify_passes_for_runnable_and_static_targets(export_cache, small_weights, capsys):
    for target in ("onnx", "host", "raspberry-pi-4", "jetson-nano"):
        folder = export_cache(f"small-{target}", small_weights, target)
        assert cli_main(["verify", str(folder)]) == 0, target
        out = capsys.readouterr().out
        if target in ("onnx", "host"):
            assert "max abs diff" in out and "tolerance" in out
        else:
            assert "aarch64" in out and "needs the device" in out
        if target == "jetson-nano":
            assert "sm_53 PTX, ISA 4.2 (in the bytes)" in out


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def test_verify_fails_on_a_tampered_file(export_cache, small_weights, tmp_path, capsys):
    folder = _copy(export_cache("small-onnx", small_weights, "onnx"), tmp_path)
    with open(folder / "reference.npz", "ab") as fh:
        fh.write(b"x")
    assert cli_main(["verify", str(folder)]) == 2
    assert "does not match manifest.json" in capsys.readouterr().err


def test_verify_fails_on_a_wrong_reference(export_cache, small_weights, tmp_path, capsys):
    folder = _copy(export_cache("small-host", small_weights, "host"), tmp_path)
    reference = read_reference(folder / "reference.npz")
    write_reference(folder / "reference.npz", reference + 1e-2)
    write_manifest(folder, load_manifest(folder, verify_files=False))  # consistent sha256, wrong numbers
    assert cli_main(["verify", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and re.search(r"max abs diff 1\.0\d\de-02", out)


def test_verify_fails_on_a_library_of_the_wrong_architecture(export_cache, small_weights, tmp_path, capsys):
    folder = _copy(export_cache("small-raspberry-pi-4", small_weights, "raspberry-pi-4"), tmp_path)
    host_lib = export_cache("small-host", small_weights, "host") / "model.so"
    library = load_manifest(folder).file_with_role("library")
    if library.endswith(".tar"):
        with tarfile.open(folder / library, "w") as archive:
            archive.add(host_lib, arcname="lib0.o")
    else:
        shutil.copy(host_lib, folder / library)
    write_manifest(folder, load_manifest(folder, verify_files=False))
    assert cli_main(["verify", str(folder)]) == 1
    assert "expected aarch64: FAIL" in capsys.readouterr().out


def test_verify_of_a_folder_without_manifest(tmp_path, capsys):
    assert cli_main(["verify", str(tmp_path)]) == 2
    assert "has no manifest.json" in capsys.readouterr().err


def test_manifest_sha256_is_checked(export_cache, small_weights, tmp_path):
    folder = _copy(export_cache("small-host", small_weights, "host"), tmp_path)
    (folder / "model.so").write_bytes(b"\x7fELF corrupted")
    with pytest.raises(ManifestError, match="model.so does not match"):
        load_manifest(folder)


# -- CLI ---------------------------------------------------------------------------------------------

def test_list_targets_prints_the_table(capsys):
    assert cli_main(["--list-targets"]) == 0
    out = capsys.readouterr().out
    for row in TARGETS:
        assert row.name in out
    assert "aarch64-linux-gnu" in out and "sm_53" in out


def test_target_rows_carry_what_code_used_to_branch_on():
    """NDK need, expected ELF machine, emulation support and README steps are data of the row, and survive the
    manifest: a row rebuilt from ``manifest.target`` answers the same."""
    from online_tsm.export.targets import ExportTarget

    for row in TARGETS:
        rebuilt = ExportTarget.from_manifest(json.loads(json.dumps(row.to_manifest(library="model.so"))))
        assert (rebuilt.needs_ndk, rebuilt.elf_machine, rebuilt.emulated) == (row.needs_ndk, row.elf_machine,
                                                                             row.emulated)
        assert "device_steps" not in row.to_manifest(library=None)   # README.txt text stays out of manifests
    by_name = {row.name: row for row in TARGETS}
    assert [name for name, row in by_name.items() if row.needs_ndk] == ["android-arm64"]
    assert {name for name, row in by_name.items() if row.elf_machine == elf.EM_AARCH64} >= {
        "jetson-nano", "jetson-orin-nano", "android-arm64", "raspberry-pi-4"}
    assert by_name["host"].elf_machine is None and not by_name["onnx"].emulated
    assert all(row.device_steps for row in TARGETS if row.packager is None)


def test_unknown_target_is_one_line(capsys, small_weights, tmp_path):
    assert cli_main(["--weights", str(small_weights), "--target", "toaster", "-o", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown target 'toaster'" in err and "jetson-nano" in err
    with pytest.raises(ValueError, match="known targets: host, jetson-nano"):
        get_target("toaster")


def test_unreadable_weights_is_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert cli_main(["--weights", str(bad), "--target", "onnx", "-o", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read weights" in err and "Traceback" not in err
    assert not (tmp_path / "a").exists()


def test_missing_weights_file_is_one_line(capsys, tmp_path):
    assert cli_main(["--weights", str(tmp_path / "nope.pt"), "--target", "onnx", "-o", str(tmp_path / "a")]) == 2
    assert "no such checkpoint file" in capsys.readouterr().err


def test_existing_output_folder_needs_force(capsys, small_weights, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "something.txt").write_text("mine")
    assert cli_main(["--weights", str(small_weights), "--target", "onnx", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err
    assert cli_main(["--weights", str(small_weights), "--target", "onnx", "-o", str(out), "--force"]) == 2
    assert "not a tsm-export artifact folder" in capsys.readouterr().err
    assert (out / "something.txt").read_text() == "mine"  # --force never wipes a folder that is not an artifact


def test_missing_cross_compiler_when_so_required(capsys, small_weights, tmp_path, monkeypatch):
    monkeypatch.delenv("TVM_NDK_CC", raising=False)
    assert cli_main(["--weights", str(small_weights), "--target", "android-arm64", "--library", "so",
                     "-o", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs the cross compiler" in err and "TVM_NDK_CC" in err
    monkeypatch.setenv("PATH", str(tmp_path))  # no aarch64-linux-gnu-gcc anywhere
    assert cli_main(["--weights", str(small_weights), "--target", "raspberry-pi-4", "--library", "so",
                     "-o", str(tmp_path / "b")]) == 2
    assert "gcc-aarch64-linux-gnu" in capsys.readouterr().err


def test_no_weights_and_no_default_model(capsys, tmp_path, monkeypatch):
    import online_tsm.weights

    monkeypatch.setattr(online_tsm.weights, "default_weights", lambda: None)
    assert cli_main(["--target", "onnx", "-o", str(tmp_path / "a")]) == 2
    assert "pass --weights" in capsys.readouterr().err


def test_tune_is_refused_for_cross_targets(capsys, small_weights, tmp_path):
    assert cli_main(["--weights", str(small_weights), "--target", "raspberry-pi-4", "--tune", "4",
                     "-o", str(tmp_path / "a")]) == 2
    assert "so it works for host only (not raspberry-pi-4)" in capsys.readouterr().err


def test_tune_and_no_tuning_records_are_refused_together(capsys, small_weights, tmp_path):
    assert cli_main(["--weights", str(small_weights), "--target", "host", "--tune", "4", "--no-tuning-records",
                     "-o", str(tmp_path / "a")]) == 2
    assert "give one of the two" in capsys.readouterr().err and not (tmp_path / "a").exists()


def test_default_schedules_can_be_asked_for_when_tuning_records_exist(export_cache, small_weights, tmp_path,
                                                                     monkeypatch):
    """tsm-bench's untuned tvm row: the build must not read this CPU's --tune records even when they exist."""
    from online_tsm.export.tvm import build as export_tvm
    from online_tsm.export.tvm import tuning
    artifact = export_cache("small-host", small_weights, "host")
    manifest = load_manifest(artifact)
    opened = []
    monkeypatch.setattr(tuning, "open_database",
                        lambda row, target: opened.append(row.name) or (None, ["/records/for/this/cpu"]))
    row = get_target("host")
    (tmp_path / "tuned").mkdir()
    (tmp_path / "untuned").mkdir()
    tuned = export_tvm.compile_cpu(artifact / "model.onnx", manifest, row, tmp_path / "tuned")
    untuned = export_tvm.compile_cpu(artifact / "model.onnx", manifest, row, tmp_path / "untuned",
                                     tuning_records=False)
    assert tuned.tuning["record_databases"] == ["/records/for/this/cpu"] and "records" not in tuned.tuning
    assert untuned.tuning["record_databases"] == [] and untuned.tuning["records"].startswith("not used")
    assert opened == ["host"]


@pytest.mark.parametrize("tuned_ms, kept", [(1.0, "tuned"), (2.0, "default")])
def test_a_tuned_host_build_ships_only_if_it_is_faster_than_the_default_schedules(export_cache, small_weights,
                                                                                  tmp_path, monkeypatch, tuned_ms,
                                                                                  kept):
    """A short --tune can find schedules slower than the defaults; the export then keeps the defaults and says so."""
    from tvm.s_tir import meta_schedule as ms

    from online_tsm.export.tvm import build as export_tvm
    from online_tsm.export.tvm import tuning
    artifact = export_cache("small-host", small_weights, "host")
    monkeypatch.setattr(tuning, "open_database",
                        lambda row, target: (ms.database.MemoryDatabase(), ["/records/for/this/cpu"]))
    timed = []

    def fake_timing(executables, inputs):
        timed.append(sorted(executables))
        assert set(inputs) == {s.name for s in load_manifest(artifact).inputs}
        return {"tuned": tuned_ms, "default": 1.5}

    monkeypatch.setattr(tuning, "time_executables", fake_timing)
    said: list[str] = []
    built = export_tvm.compile_cpu(artifact / "model.onnx", load_manifest(artifact), get_target("host"), tmp_path,
                                   progress=said.append)
    assert timed == [["default", "tuned"]] and built.tuning["schedules"] == kept
    assert built.tuning["ms_per_frame_here"] == {"tuned": tuned_ms, "default": 1.5}
    assert any(line.startswith(f"{kept} schedules kept: {tuned_ms:.2f} ms/frame tuned vs 1.50 ms") for line in said)
    assert ("records" in built.tuning) == (kept == "default")
    if kept == "default":
        assert built.tuning["records"].startswith("not used: slower than the default schedules")
    from online_tsm.export.readme import artifact_readme
    from online_tsm.manifest import Manifest

    manifest = load_manifest(artifact)
    shipped = Manifest(**{**vars(manifest), "target": {**manifest.target, "tuning": built.tuning}})
    assert f"Schedules: {kept} (timed on the exporting CPU: {tuned_ms:.2f} ms/frame" in artifact_readme(
        shipped, get_target("host"))


def test_builds_are_timed_against_each_other_on_this_cpu(export_cache, small_weights):
    import tvm

    from online_tsm.export.tvm import build as export_tvm
    from online_tsm.export.tvm import tuning
    artifact = export_cache("small-host", small_weights, "host")
    manifest = load_manifest(artifact)
    row = get_target("host")
    target = export_tvm.tvm_target_object(row)
    mod = export_tvm.relax_from_onnx(artifact / "model.onnx", export_tvm.input_specs(manifest))
    executable = tvm.compile(mod, target, relax_pipeline=export_tvm.cpu_pipeline(target))
    ms_per_frame = tuning.time_executables({"a": executable, "b": executable}, export_tvm.input_specs(manifest))
    assert set(ms_per_frame) == {"a", "b"} and all(v > 0 for v in ms_per_frame.values())


def test_readme_says_what_to_copy(export_cache, small_weights):
    text = (export_cache("small-raspberry-pi-4", small_weights, "raspberry-pi-4") / "README.txt").read_text()
    assert "scp -r" in text and "apache-tvm" in text and "python3 run.py --json" in text
    manifest = json.loads((export_cache("small-jetson-nano", small_weights, "jetson-nano") / "manifest.json").read_text())
    assert manifest["files"]["README.txt"]["role"] == "readme"


def test_tuning_progress_counts_built_and_measured_candidates_and_quiets_metaschedule(tmp_path):
    """--tune's heartbeat: candidates built (MetaSchedule's scheduler log) and measured (its records); its console
    quiet."""
    import logging
    import time

    from online_tsm.export.tvm.tuning_progress import METASCHEDULE_LOGGER, RECORDS_FILE, SCHEDULER_LOG, tuning_progress

    records = tmp_path / RECORDS_FILE
    records.write_text("an earlier run's record\n")
    scheduler_log = tmp_path / SCHEDULER_LOG
    scheduler_log.parent.mkdir()
    scheduler_log.write_text("[INFO] [task_scheduler.cc:218] Sending 4 valid sample(s) to runner\n")  # earlier run
    said: list[str] = []
    logger = logging.getLogger(METASCHEDULE_LOGGER)
    level = logger.level

    def wait_for(prefix: str) -> None:
        deadline = time.monotonic() + 10
        while not any(line.startswith(prefix) for line in said):
            assert time.monotonic() < deadline, said
            time.sleep(0.02)

    with tuning_progress(tmp_path, 8, said.append, interval_s=0.05):
        assert logger.level == logging.WARNING
        with open(scheduler_log, "a") as fh:
            fh.write("[INFO] [task_scheduler.cc:195] TaskScheduler picks Task #0\n"
                     "[INFO] [task_scheduler.cc:218] Sending 2 valid sample(s) to runner\n"
                     "[INFO] [task_scheduler.cc:218] Sending 1 valid sample(s) to runner\n")
        wait_for("tuning: 3 of 8 candidates built, 0 measured")
        with open(records, "a") as fh:
            fh.write("one\ntwo\n")
        wait_for("tuning: 3 of 8 candidates built, 2 measured")
    assert logger.level == level
    count = len(said)
    time.sleep(0.2)
    assert len(said) == count  # the heartbeat stopped with the block


def test_tuning_candidates_compile_in_metaschedules_worker_processes():
    """--tune's builder (without the stock builder's 20 s intrinsics import) compiles a candidate that computes."""
    import numpy as np
    import tvm
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    from online_tsm.export.tvm.tuning_builder import candidate_builder

    a = te.placeholder((1, 3, 3, 8), name="a")
    b = te.compute((1, 8, 3, 3), lambda n, c, h, w: a[n, h, w, c] * 2.0, name="b")
    mod = tvm.IRModule({"main": te.create_prim_func([a, b])})
    (result,) = candidate_builder().build([ms.builder.BuilderInput(mod, tvm.target.Target("llvm"))])
    assert result.error_msg is None, result.error_msg
    lib = tvm.runtime.load_module(result.artifact_path)
    x = np.random.RandomState(0).rand(1, 3, 3, 8).astype("float32")
    y = tvm.runtime.tensor(np.zeros((1, 8, 3, 3), "float32"))
    lib["main"](tvm.runtime.tensor(x), y)
    np.testing.assert_array_equal(y.numpy(), 2.0 * x.transpose(0, 3, 1, 2))


def test_tuning_uses_the_cost_model_that_is_installed(monkeypatch):
    from online_tsm.export.tvm import tuning_builder as tune_build
    monkeypatch.setattr(tune_build.importlib.util, "find_spec", lambda name: None)
    assert tune_build.cost_model_name() == "random"
    monkeypatch.setattr(tune_build.importlib.util, "find_spec", lambda name: object())
    assert tune_build.cost_model_name() == "xgb"


def test_a_second_tuning_run_on_the_same_records_waits_for_the_first(export_cache, small_weights, tmp_path,
                                                                     monkeypatch):
    """MetaSchedule's record files are appended by line number: two runs at once would interleave them."""
    import threading
    import time

    from tvm.s_tir.meta_schedule import relax_integration

    from online_tsm.export.tvm import build as export_tvm
    from online_tsm.export.tvm import tuning
    from online_tsm.fileio import file_lock

    artifact = export_cache("small-host", small_weights, "host")
    row = get_target("host")
    monkeypatch.setattr(tuning, "tuning_dir", lambda row, target: tmp_path / "records")
    events: list[str] = []
    monkeypatch.setattr(relax_integration, "tune_relax", lambda *args, **kwargs: events.append("tuned"))
    holding, release = threading.Event(), threading.Event()

    def first_run() -> None:
        with file_lock(tmp_path / "records" / ".tune.lock"):
            holding.set()
            release.wait(30)
            events.append("first run done")

    holder = threading.Thread(target=first_run)
    holder.start()
    assert holding.wait(30)
    said: list[str] = []

    def progress(line: str) -> None:
        said.append(line)
        if line.startswith("waiting for another tuning run"):
            time.sleep(0.2)
            release.set()

    mod = export_tvm.relax_from_onnx(artifact / "model.onnx", export_tvm.input_specs(load_manifest(artifact)))
    tuning.tune_cpu(mod, row, export_tvm.tvm_target_object(row), 1, progress)
    holder.join(30)
    assert events == ["first run done", "tuned"]
    assert any(line == f"waiting for another tuning run that writes to {tmp_path / 'records'}" for line in said)
