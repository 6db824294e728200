"""The LiteRT phone artifact (``--target android-litert``), its runtime backend, its device script, its emulated
check on the phone's CPU model, and ``tsm-bench --import`` of ``benchmark_model`` logs.

Contracts and numerics only: names, shapes, dtypes and roles against the manifest; logits against the PyTorch
reference under the manifest's own rules.  The conversion tests need the ``litert`` extra; without it they
skip, saying what to install (in CI, where ``make`` installs it, a missing extra is a set-up error).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from online_tsm.errors import UserError
from online_tsm.export.reference import REFERENCE_FRAMES, frames_for, read_reference
from online_tsm.export.targets import get_target
from online_tsm.manifest import load_manifest, write_manifest
from online_tsm.verification import FP32

INSTALL = "pip install 'online-tsm[litert]' && pip install --no-deps litert-torch==0.10.0 litert-converter==0.5.0"


def _require_litert() -> None:
    missing = [m for m in ("litert_torch", "ai_edge_litert", "ai_edge_quantizer") if importlib.util.find_spec(m) is None]
    if not missing:
        return
    message = f"the litert extra is not installed ({', '.join(missing)} missing): {INSTALL}"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; make (run by .ci/run) installs it, so in CI this is a set-up error")
    pytest.skip(message)


def _tflite_signature(path: Path) -> tuple[dict, dict]:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    return runner.get_input_details(), runner.get_output_details()


def _stream(runtime, frames: np.ndarray) -> np.ndarray:
    stream = runtime.new_stream()
    return np.stack([stream.step(frame) for frame in frames])


# -- the row and what needs no converter ------------------------------------------------------------------
def test_row_is_data_with_its_aliases_precisions_and_cpu_model():
    row = get_target("tflite")
    assert row is get_target("litert") and row.name == "android-litert"
    assert row.kind == "litert" and row.qemu_cpu == "cortex-a53" and row.precisions == ("fp32", "fp16", "int8")
    assert row.runs_here and row.emulated and not row.needs_ndk
    assert "benchmark_model --graph=" in row.device_steps and "--use_gpu=true" in row.device_steps
    assert "--import phone-cpu.txt --import phone-gpu.txt" in row.device_steps
    assert "--num_threads=4" in row.device_steps and "--use_xnnpack=true" in row.device_steps
    assert get_target("raspberry-pi-4").qemu_cpu == "cortex-a72" and get_target("jetson-nano").qemu_cpu == \
        "cortex-a57" and get_target("android-arm64").qemu_cpu == "cortex-a53"


def test_targets_table_shows_a_portable_model_file(capsys):
    from online_tsm.export.cli import main as export_main

    assert export_main(["--list-targets"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("android-litert"))
    assert "model.tflite" in line and "model.so" not in line and "this machine" not in line


def test_row_refuses_options_it_does_not_take():
    from online_tsm.export.options import ExportOptions, check_options

    row = get_target("android-litert")
    with pytest.raises(UserError, match="--tune"):
        check_options(row, ExportOptions(tune=5))
    with pytest.raises(UserError, match="--library"):
        check_options(row, ExportOptions(library="so"))
    check_options(row, ExportOptions(precision="fp16"))


def test_missing_converter_is_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    from online_tsm.export.cli import main as export_main
    from online_tsm.export.formats import litert

    monkeypatch.setitem(sys.modules, "litert_torch", None)   # import litert_torch -> ImportError
    with pytest.raises(UserError) as info:
        litert.require_converter()
    message = str(info.value)
    assert "\n" not in message and "pip install 'online-tsm[litert]'" in message and "--no-deps" in message
    assert export_main(["--target", "tflite", "-o", str(tmp_path / "phone")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'online-tsm[litert]'" in err and not (tmp_path / "phone").exists()


def test_missing_runtime_is_one_line_naming_the_extra(monkeypatch, tmp_path):
    from online_tsm.runtimes import BackendUnavailable, open_runtime

    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(BackendUnavailable, match=r"pip install 'online-tsm\[litert\]'"):
        open_runtime(tmp_path, "litert")


def test_fake_cpuinfo_names_the_row_core():
    from online_tsm.export.device.qemu_cpu import cpuinfo_text, is_arm_cpuinfo, with_cpuinfo

    text = cpuinfo_text("cortex-a53", cores=4)
    assert is_arm_cpuinfo(text) and text.count("CPU part\t: 0xd03") == 4 and "asimddp" not in text
    assert "0xd08" in cpuinfo_text("cortex-a72") and "0xd07" in cpuinfo_text("cortex-a57")
    assert not is_arm_cpuinfo("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t: avx2\n")
    command = with_cpuinfo(["qemu-aarch64-static", "-cpu", "cortex-a53", "python3"], Path("/tmp/fake"))
    assert "--mount" in command and command[command.index("-c") + 2] == "/tmp/fake"
    assert command[-4:] == ["qemu-aarch64-static", "-cpu", "cortex-a53", "python3"]
    with pytest.raises(ValueError, match="no CPU part number"):
        cpuinfo_text("pentium")


def test_emulated_cpu_model_comes_from_the_row_even_for_older_manifests(tmp_path):
    from online_tsm.export.device.emulate import row_cpu
    from online_tsm.manifest import Manifest

    manifest = Manifest(model={}, preprocess={}, inputs=[], outputs=[], buffers=[])
    manifest.target = {"name": "raspberry-pi-4"}                  # written before rows named a CPU model
    assert row_cpu(manifest) == "cortex-a72"
    manifest.target = {"name": "android-litert", "qemu_cpu": "cortex-a53"}
    assert row_cpu(manifest) == "cortex-a53"
    manifest.target = {"name": "somewhere-else"}
    assert row_cpu(manifest) is None


# -- benchmark_model logs -------------------------------------------------------------------------------
# The two shapes LiteRT's benchmark_model prints (public logs: TF 2.x without a prefix; newer builds with INFO:,
# percentiles and %g numbers); times in microseconds.
OLD_LOG = """STARTING!
Num threads: [4]
Graph: [/data/local/tmp/model.tflite]
Use xnnpack: [1]
Loaded model /data/local/tmp/model.tflite
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=1 curr=3512391

Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=50 first=2990275 curr=2913402 min=2727568 max=3189954 avg=2.95034e+06 std=109798

Inference timings in us: Init: 17187, First inference: 3512391, Warmup (avg): 3.51239e+06, Inference (avg): 2.95034e+06
Peak memory footprint (MB): init=4.92969 overall=138.809
"""
NEW_LOG = """INFO: Graph: [/data/local/tmp/model.tflite]
INFO: Use gpu: [1]
INFO: Running benchmark for at least 5 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=9 first=87112 curr=51629 min=51629 max=87112 avg=58147.4 std=11478 p5=51629 median=51962 p95=87112

INFO: Running benchmark for at least 1000 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=1000 first=52162 curr=49785 min=49088 max=686105 avg=63743.2 std=60716 p5=49620 median=51891 p95=68628

INFO: Inference timings in us: Init: 119515, First inference: 87112, Warmup (avg): 58147.4, Inference (avg): 63743.2
"""


def test_benchmark_model_logs_parse_in_both_shapes():
    from online_tsm.benchmarks.device_results.benchmark_model import benchmark_model_timing, parse_benchmark_model

    old = parse_benchmark_model(OLD_LOG)
    assert old["summary"] == {"init_us": 17187.0, "first_us": 3512391.0, "warmup_avg_us": 3.51239e6,
                              "inference_avg_us": 2.95034e6}
    assert old["timed"]["count"] == 50 and old["timed"]["avg"] == 2.95034e6 and old["warmup"]["count"] == 1
    timing = benchmark_model_timing(old, "old.txt")
    assert timing["p50_ms"] == pytest.approx(2950.34) and timing["min_ms"] == pytest.approx(2727.568)
    assert timing["frames"] == 50 and "average" in timing["how"]
    new = parse_benchmark_model(NEW_LOG.replace("\n", "\r\n"))
    assert new["timed"]["count"] == 1000 and new["timed"]["median"] == 51891 and new["parameters"]["Use gpu"] == "1"
    timing = benchmark_model_timing(new, "new.txt")
    assert timing["p50_ms"] == pytest.approx(51.891) and timing["mean_ms"] == pytest.approx(63.7432)
    assert "median" in timing["how"]
    logcat = "\n".join(f"I tflite  : {line}" for line in NEW_LOG.splitlines())
    assert parse_benchmark_model(logcat)["timed"]["median"] == 51891
    assert parse_benchmark_model("count=5 curr=1\nno summary line here\n") is None


def test_import_puts_a_benchmark_model_log_beside_the_note8_labelled_not_verified(tmp_path, capsys):
    from online_tsm.benchmarks.cli import main as bench_main
    from online_tsm.benchmarks.device_results.reader import import_results

    folder = tmp_path / "phone"
    folder.mkdir()
    manifest = {"format": "online-tsm-artifact", "format_version": 1, "frame_input": "frame",
                "inputs": [{"name": "frame", "shape": [1, 3, 224, 224], "dtype": "float32"}],
                "preprocess": {"input_size": 224}, "target": {"name": "android-litert"},
                "model": {"arch": "mobilenet_v2_tsm", "width_mult": 1.0, "shift": "causal", "name": "jester"}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "phone-cpu.txt").write_text(OLD_LOG)
    (folder / "phone-gpu.txt").write_text(NEW_LOG)
    cpu, gpu = import_results([folder / "phone-cpu.txt", folder / "phone-gpu.txt"])
    for row in (cpu, gpu):
        assert row["status"] == "not verified" and row["verification"] is None
        assert row["unverified_label"] == "benchmark_model on the device, not verified"
        assert row["paper"]["device"] == "Samsung Galaxy Note8" and row["paper"]["latency_ms"] == 35
        assert row["target"] == "android-litert" and row["same_model_as_paper"]
    assert cpu["engine"].startswith("LiteRT XNNPACK CPU, 4 threads") and gpu["engine"].startswith("LiteRT GPU")
    assert gpu["ratio_to_paper"] == pytest.approx(51.891 / 35)
    assert bench_main(["--import", str(folder / "phone-cpu.txt")]) == 0
    out = capsys.readouterr().out
    assert "benchmark_model on the device, not verified" in out and "Samsung Galaxy Note8" in out


def test_import_of_an_unrelated_text_file_is_one_line(tmp_path, capsys):
    from online_tsm.benchmarks.cli import main as bench_main

    (tmp_path / "notes.txt").write_text("hello\n")
    assert bench_main(["--import", str(tmp_path / "notes.txt")]) != 0
    assert "is not JSON" in capsys.readouterr().err


# -- exports of the shipped default model ---------------------------------------------------------------
@pytest.fixture(scope="module")
def litert_fp32(export_cache) -> Path:
    _require_litert()
    return export_cache("default-android-litert", "default", "android-litert")


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory) -> Path:
    """A tsm-train class folder of the synthetic gestures the default model was trained on (mp4 clips)."""
    from online_tsm.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("litert-calib") / "data", 16, seed=3, height=96, width=96,
                         n_frames=(12, 16))


@pytest.fixture(scope="module")
def litert_fp16(export_cache) -> Path:
    _require_litert()
    return export_cache("default-android-litert-fp16", "default", "android-litert", precision="fp16")


@pytest.fixture(scope="module")
def litert_int8(export_cache, class_folder) -> Path:
    _require_litert()
    return export_cache("default-android-litert-int8", "default", "android-litert", precision="int8",
                        calibration=str(class_folder), min_agreement=0.9, drift_frames=200)


def test_fp32_keeps_the_contract_in_the_tflite_signature(litert_fp32):
    m = load_manifest(litert_fp32)
    roles = {name: meta["role"] for name, meta in m.files.items()}
    assert roles == {"model.tflite": "tflite", "reference.npz": "reference", "README.txt": "readme",
                     "run_litert.py": "script"}
    assert m.target["name"] == "android-litert" and m.target["qemu_cpu"] == "cortex-a53"
    assert m.model["precision"] == "fp32" and m.model["litert"]["signature"] == "serving_default"
    inputs, outputs = _tflite_signature(litert_fp32 / "model.tflite")
    for specs, details in ((m.inputs, inputs), (m.outputs, outputs)):
        assert set(details) == {s.name for s in specs}
        for spec in specs:
            assert list(details[spec.name]["shape"]) == list(spec.shape)
            assert np.dtype(details[spec.name]["dtype"]).name == spec.dtype == "float32"
    assert [s.name for s in m.inputs][:3] == ["frame", "shift_0", "shift_1"]
    assert m.model["litert"]["fp32_check"]["passed"]
    readme = (litert_fp32 / "README.txt").read_text()
    assert "benchmark_model --graph=/data/local/tmp/model.tflite --num_threads=4" in readme
    assert "run_litert.py" in readme and "--emulate" in readme


def test_fp32_matches_pytorch_within_the_other_machine_rule_and_verify_passes(litert_fp32):
    from online_tsm.export.verify import verify_artifact

    result = verify_artifact(litert_fp32)
    reference = read_reference(litert_fp32 / "reference.npz")
    assert result.passed and result.mode == "numerical (litert)"
    assert result.max_abs_diff <= FP32.tolerance(reference, same_machine=False) == result.tolerance


def test_runtime_streams_the_verify_logits_reset_included(litert_fp32):
    from online_tsm.export.formats.litert import stream_litert
    from online_tsm.runtimes import available_backends, open_runtime

    m = load_manifest(litert_fp32)
    frames = frames_for(m, REFERENCE_FRAMES)
    reference = read_reference(litert_fp32 / "reference.npz")
    with open_runtime(litert_fp32, "litert", threads=1) as rt:
        assert rt.backend == "litert" and "XNNPACK" in rt.description
        stream = rt.new_stream()
        first = np.stack([stream.step(f) for f in frames])
        stream.reset()
        again = np.stack([stream.step(f) for f in frames])
        other = rt.new_stream()           # streams carry their own buffers
        other.step(frames[0])
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(first, stream_litert(litert_fp32 / "model.tflite", m, frames), rtol=0, atol=1e-5)
    assert np.abs(first - reference).max() <= FP32.tolerance(reference, same_machine=False)
    status = available_backends(litert_fp32)
    assert status["litert"] is None and "no onnx file" in status["onnxruntime"]


def test_auto_picks_litert_for_the_phone_artifact(litert_fp32):
    from online_tsm.runtimes import open_runtime

    with open_runtime(litert_fp32) as rt:
        assert rt.backend == "litert" and rt.auto_choice.backend == "litert"


def test_runtime_refuses_a_tflite_whose_signature_differs_from_the_manifest(litert_fp32, tmp_path):
    import shutil

    from online_tsm.runtimes import RuntimeOpenError, open_runtime

    folder = Path(shutil.copytree(litert_fp32, tmp_path / "renamed"))
    m = load_manifest(folder)
    m.buffers[0].input = "state_0"
    m.inputs[1].name = "state_0"
    write_manifest(folder, m)
    with pytest.raises(RuntimeOpenError, match="inputs state_0 missing"):
        open_runtime(folder, "litert")


def test_run_litert_verifies_and_times_on_this_machine(litert_fp32, tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(litert_fp32 / "run_litert.py"), "--frames", "5", "--warmup", "1",
                           "--threads", "1", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["status"] == "ok" and result["settings"]["engine"] == "litert"
    assert result["verification"]["passed"] and result["verification"]["buffers"] == 10
    assert set(result["artifact"]["files"]) == {"model.tflite", "reference.npz", "README.txt", "run_litert.py"}
    assert {"p50_ms", "p90_ms", "p99_ms"} <= set(result["timing"])


def test_run_litert_refuses_a_changed_model(litert_fp32, tmp_path):
    import shutil

    folder = Path(shutil.copytree(litert_fp32, tmp_path / "tampered"))
    data = bytearray((folder / "model.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "model.tflite").write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, str(folder / "run_litert.py"), "--no-timing"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1 and "model.tflite does not match manifest.json" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_fp16_has_half_weights_and_holds_the_fp16_rule(litert_fp16, litert_fp32):
    from online_tsm.export.verify import verify_artifact

    m = load_manifest(litert_fp16)
    assert m.model["precision"] == "fp16" and m.verification["precision"] == "fp16"
    assert m.model["fp16_check"]["passed"] and m.model["fp16_check"]["top1_agreement"] == 1.0
    assert (litert_fp16 / "model.tflite").stat().st_size < 0.7 * (litert_fp32 / "model.tflite").stat().st_size
    inputs, outputs = _tflite_signature(litert_fp16 / "model.tflite")
    assert all(np.dtype(d["dtype"]).name == "float32" for d in (*inputs.values(), *outputs.values()))
    result = verify_artifact(litert_fp16)
    assert result.passed and result.mode == "numerical (litert, fp16)"


def test_int8_is_full_integer_inside_float32_at_the_boundary(litert_int8):
    from ai_edge_litert.interpreter import Interpreter

    m = load_manifest(litert_int8)
    assert m.model["precision"] == "int8" and "int8" in m.verification["rules"]
    inputs, outputs = _tflite_signature(litert_int8 / "model.tflite")
    assert all(np.dtype(d["dtype"]).name == "float32" for d in (*inputs.values(), *outputs.values()))
    tensors = Interpreter(model_path=str(litert_int8 / "model.tflite")).get_tensor_details()
    int8 = [t for t in tensors if np.dtype(t["dtype"]) == np.int8]
    assert len(int8) > 50        # weights and activations of every convolution
    q = m.model["quantization"]
    assert q["calibration"]["clips"] > 0 and q["calibration"]["frames"] > 0 and "classifier" in q["float32_nodes"]


def test_int8_stores_its_agreement_and_verify_holds_it(litert_int8):
    from online_tsm.export.verify import verify_artifact

    m = load_manifest(litert_int8)
    agreement = m.model["quantization"]["agreement"]
    # measured 98.5 % on the default model; the margin holds on any CPU's int8 kernels
    assert agreement["top1_agreement_frames"] >= 0.9 and agreement["frames"] >= 16
    assert m.model["quantization"]["min_agreement"] == 0.9
    rule = m.rule()
    assert rule.min_top1_agreement == pytest.approx(m.model["quantization"]["verification"]["top1_agreement"] - 1 / 16)
    result = verify_artifact(litert_int8)
    assert result.passed and result.mode == "numerical (litert, int8)"


@pytest.mark.slow
def test_int8_below_min_agreement_is_refused(small_weights, tmp_path):
    """A random-weight model has near-tied logits: its int8 agreement is far below 100 %."""
    from online_tsm.export.api import export_artifact

    _require_litert()
    with pytest.raises(UserError, match="below --min-agreement 100%"):
        export_artifact(small_weights, "android-litert", tmp_path / "refused", precision="int8",
                        calibration="synthetic", min_agreement=1.0, drift_frames=0, progress=False)
    assert not (tmp_path / "refused").exists()


# -- the paper setting ----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_paper_setting_exports_and_verifies_in_each_precision(export_cache, model_224, precision):
    """MobileNetV2 1.0 at 224 (seeded weights: agreement is not meaningful for them, so int8 is not gated)."""
    from online_tsm.export.verify import verify_artifact

    _require_litert()
    options = {"precision": precision}
    if precision == "int8":
        options.update(calibration="synthetic", min_agreement=0.0, drift_frames=0)
    folder = export_cache(f"224-android-litert-{precision}", model_224, "android-litert", **options)
    m = load_manifest(folder)
    assert m.input_size == 224 and m.model["width_mult"] == 1.0 and m.model["precision"] == precision
    inputs, _ = _tflite_signature(folder / "model.tflite")
    assert list(inputs["frame"]["shape"]) == [1, 3, 224, 224] and len(inputs) == 11
    result = verify_artifact(folder)
    assert result.passed, result.lines


# -- on the phone's CPU model, under qemu ------------------------------------------------------------------
@pytest.mark.emulation
def test_emulated_check_runs_run_litert_on_a_cortex_a53_and_names_it(litert_fp32, litert_int8):
    from helpers import require_tools

    from online_tsm.export.device.emulate import verify_emulated_many
    from online_tsm.export.device.sysroot import missing_system_packages

    missing = missing_system_packages()
    require_tools(missing, f"aarch64 emulation needs the Debian packages {', '.join(missing)}")
    checks = verify_emulated_many([litert_fp32, litert_int8])
    for check in checks:
        assert check.passed, (check.error, check.notes)
        assert check.cpu == "cortex-a53" and "cortex-a53" in check.summary()
        assert any("run_litert.py" in note for note in check.notes)
        assert any(note.startswith("CPU model: cortex-a53") for note in check.notes)
    reference = read_reference(litert_fp32 / "reference.npz")
    assert checks[0].max_abs_diff <= FP32.tolerance(reference, same_machine=False)


@pytest.mark.emulation
def test_verify_emulate_on_a_raspberry_pi_artifact_runs_its_cortex_a72(export_cache, small_weights, capsys):
    import shutil as _shutil

    from helpers import require_tools

    from online_tsm.export.cli import main as export_main
    from online_tsm.export.device.sysroot import missing_system_packages

    missing = missing_system_packages() + ([] if _shutil.which("aarch64-linux-gnu-gcc") else ["gcc-aarch64-linux-gnu"])
    require_tools(missing, f"aarch64 emulation needs the Debian packages {', '.join(missing)}")
    folder = export_cache("small-raspberry-pi-4", small_weights, "raspberry-pi-4")
    assert export_main(["verify", str(folder), "--emulate"]) == 0
    out = capsys.readouterr().out
    assert "aarch64 cortex-a72 under qemu" in out and "CPU model: cortex-a72" in out
