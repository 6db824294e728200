"""run.py / run_onnx.py: the artifact checks and times itself with numpy and one runtime, no online-tsm.

The scripts run as the user runs them: ``python -I run.py`` in the artifact
folder, in a subprocess whose import system refuses online_tsm, torch, OpenCV,
onnx (and the runtime of the other engine), so a test passes only if the
script truly needs nothing else.  The real fresh-venv check (pip-installed
numpy + apache-tvm only) is opt-in: ``ONLINE_TSM_FRESH_VENV=1``.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from online_tsm.export.device import kit as device_kit
from online_tsm.export.device import run_template as template
from online_tsm.manifest import load_manifest, write_manifest
from online_tsm.export.reference import frames_for, read_reference
from online_tsm.verification import FP32, RULES, verification_entry
from runtime_artifacts import copy_artifact, small_artifact  # noqa: F401 -- fixture

ALWAYS_BLOCKED = ("online_tsm", "torch", "cv2", "onnx", "onnxslim", "onnxscript", "psutil")

# Runs the script as __main__ with the listed top-level packages made unimportable.
_BOOT = """
import runpy, sys
blocked = set(sys.argv[1].split(","))
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"blocked by the test: {name}")
        return None
sys.meta_path.insert(0, Blocker())
script = sys.argv[2]
sys.argv = [script] + sys.argv[3:]
runpy.run_path(script, run_name="__main__")
"""


def run_script(folder: Path, script: str, *args: str, block: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run([sys.executable, "-I", "-c", _BOOT, ",".join(ALWAYS_BLOCKED + block), script, *args],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def host(small_artifact) -> Path:
    return small_artifact


@pytest.fixture(scope="module")
def onnx_artifact(export_cache, small_weights) -> Path:
    return export_cache("small-onnx", small_weights, "onnx")


@pytest.fixture(scope="module")
def host_result(host, tmp_path_factory) -> dict:
    """``python run.py --json r.json`` in a copy of the host artifact, TVM only."""
    folder = copy_artifact(host, tmp_path_factory.mktemp("run") / "H")
    proc = run_script(folder, "run.py", "--json", "r.json", "--frames", "20", "--warmup", "2",
                      block=("onnxruntime", "tensorrt"))
    assert proc.returncode == 0, proc.stderr
    return {"proc": proc, "folder": folder, "json": json.loads((folder / "r.json").read_text())}


# -- what the export writes ------------------------------------------------------------------------
def test_host_export_ships_run_py_listed_in_the_manifest(host):
    manifest = load_manifest(host)
    assert manifest.files["run.py"]["role"] == "script"
    assert (host / "run.py").read_bytes() == Path(template.__file__).read_bytes()
    assert os.access(host / "run.py", os.X_OK)
    readme = (host / "README.txt").read_text()
    assert "python3 run.py --json result.json" in readme and "tsm-bench --import result.json" in readme
    assert "import numpy" not in readme      # no Python to copy out of the text


@pytest.mark.parametrize("target, library, expected", [
    ("host", "model.so", "run.py"), ("raspberry-pi-4", "model.so", "run.py"),
    ("raspberry-pi-4", "model.tar", "run.py"), ("jetson-nano", "model.so", "run.py"),
    ("android-arm64", "model.so", "run.py"), ("android-arm64", "model.tar", None), ("onnx", None, "run_onnx.py")])
def test_which_artifacts_get_a_script(target, library, expected):
    from online_tsm.export.targets import get_target

    assert device_kit.script_name(get_target(target), library) == expected


def test_template_is_python_3_6_and_imports_only_the_standard_library():
    """JetPack 4.6 (the Jetson Nano's last) has Python 3.6; tests/test_device_python36.py runs it there."""
    source = Path(template.__file__).read_text()
    tree = ast.parse(source, feature_version=(3, 6))
    assert not any(isinstance(node, ast.ImportFrom) and node.module == "__future__" for node in tree.body)
    top_level = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_level |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            top_level.add(node.module.split(".")[0])
    assert top_level <= set(sys.stdlib_module_names), top_level - set(sys.stdlib_module_names)
    assert "removeprefix" not in source and "removesuffix" not in source    # Python 3.9 str methods


# -- one rule, one set of frames, one ELF reading --------------------------------------------------
def test_the_tolerance_rule_is_the_package_rule(host):
    manifest = json.loads((host / "manifest.json").read_text())
    assert manifest["verification"] == verification_entry("fp32")
    assert "verification" not in manifest["target"]                      # written once, at the top level
    reference = read_reference(host / "reference.npz")
    largest = float(np.abs(reference).max())
    for precision, fp16 in (("fp32", False), ("fp16", True)):
        for same in (True, False):
            absolute, relative, min_top1, why = template.tolerance_rule(manifest, same_machine=same, fp16=fp16)
            package_rule = RULES[precision]
            assert max(absolute, relative * largest) == pytest.approx(package_rule.tolerance(reference, same),
                                                                      rel=1e-12)
            assert min_top1 == package_rule.min_top1_agreement and precision in why


def test_the_script_reads_an_older_manifest_s_rule_and_refuses_a_missing_one(host):
    manifest = json.loads((host / "manifest.json").read_text())
    del manifest["verification"]
    manifest["target"]["verification"] = {"absolute": 1e-4, "relative": 1e-5, "relative_other_machine": 1e-4}
    assert template.tolerance_rule(manifest, same_machine=False)[:3] == (1e-4, 1e-4, None)
    with pytest.raises(template.RunError, match="manifest.json has no fp16 verification rule: re-export"):
        template.tolerance_rule(manifest, same_machine=True, fp16=True)


def test_template_frames_are_the_export_frames(host):
    manifest = load_manifest(host)
    as_dict = json.loads((host / "manifest.json").read_text())
    np.testing.assert_array_equal(template.verification_frames(np, as_dict, 16), frames_for(manifest, 16))
    manifest.preprocess["folded"] = True                   # camera frames of a --fold-preprocess artifact
    manifest.inputs[0].shape = [1, 48, 64, 3]
    as_dict["preprocess"]["folded"] = True
    as_dict["inputs"][0]["shape"] = [1, 48, 64, 3]
    frames = template.verification_frames(np, as_dict, 4)
    assert frames.dtype == np.uint8 and frames.shape == (4, 48, 64, 3)
    np.testing.assert_array_equal(frames, frames_for(manifest, 4))


def test_template_names_machines_like_the_package():
    from online_tsm.machine import elf

    assert template.ELF_MACHINES == elf.MACHINE_NAMES
    assert template.MACHINE_ALIASES == elf.MACHINE_ALIASES
    assert template.host_arch() == elf.host_arch()


def test_template_reads_elf_headers_like_the_package(host, tmp_path):
    from online_tsm.runtimes.library import elf_arch

    aarch64 = tmp_path / "aarch64.so"
    aarch64.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 9 + (3).to_bytes(2, "little") + (183).to_bytes(2, "little")
                        + b"\0" * 44)
    for path in (host / "model.so", aarch64):
        assert template.elf_arch(str(path)) == elf_arch(path)
    assert template.elf_arch(str(aarch64)) == "aarch64"


# -- the user's run, on the host artifact -----------------------------------------------------------
def test_run_py_verifies_and_times_with_numpy_and_tvm_only(host_result, host):
    data, out = host_result["json"], host_result["proc"].stdout
    assert data["schema"] == "online-tsm-device-run/1" and data["status"] == "ok"
    check = data["verification"]
    reference = read_reference(host / "reference.npz")
    assert check["passed"] is True and check["frames"] == 16 and check["buffers"] == 10
    assert check["max_abs_diff"] <= check["tolerance"] == pytest.approx(FP32.tolerance(reference, same_machine=True))
    assert check["max_abs_reference"] > 1.0      # non-trivial logits
    assert "max abs diff" in out and "max(0.0001, 1e-05 x max |reference logit|)" in out and "PASS" in out
    timing = data["timing"]
    assert timing["frames"] == 20 and len(timing["samples_ms"]) == 20 and timing["warmup"] == 2
    assert timing["p50_ms"] <= timing["p90_ms"] <= timing["p99_ms"] and timing["fps"] > 0
    assert data["device_timing"]["repeat"] >= 3 and "time_evaluator" in data["device_timing"]["how"]
    machine = data["machine"]
    assert machine["cpu"] and machine["physical_cores"] >= 1 and machine["os"]
    assert machine["libraries"]["tvm"].startswith("0.27") and machine["emulated"] is None
    artifact = data["artifact"]
    assert artifact["manifest_sha256"] == hashlib.sha256((host / "manifest.json").read_bytes()).hexdigest()
    assert artifact["target"]["name"] == "host" and artifact["model"]["width_mult"] == 0.5
    assert "labels" not in artifact["model"]
    assert data["settings"] == {"engine": "tvm", "device": "cpu", "frames": 20, "warmup": 2,
                                "threads": machine["physical_cores"], "fp16": False, "precision": "fp32"}


def test_corrupted_library_is_refused_before_loading(host, tmp_path):
    folder = copy_artifact(host, tmp_path / "H")
    with open(folder / "model.so", "r+b") as fh:
        fh.seek(4096)
        fh.write(b"\0" * 64)
    # TVM is made unimportable: the refusal must come before anything is loaded.
    proc = run_script(folder, "run.py", "--json", "r.json", block=("tvm", "tvm_ffi", "onnxruntime"))
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert "model.so does not match manifest.json" in line and "refusing to load it" in line
    data = json.loads((folder / "r.json").read_text())
    assert data["status"] == "failed" and data["error"]["stage"] == "sha256"
    assert data["machine"]["cpu"] and "tvm" not in data["machine"]["libraries"]   # where it failed; nothing loaded
    assert data["timing"] is None and data["verification"] is None


def test_library_for_another_architecture_is_refused_before_loading(host, tmp_path):
    folder = copy_artifact(host, tmp_path / "H")
    (folder / "model.so").write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 9 + (3).to_bytes(2, "little")
                                      + (183).to_bytes(2, "little") + b"\0" * 4000)
    write_manifest(folder, load_manifest(folder, verify_files=False))
    proc = run_script(folder, "run.py", block=("tvm", "tvm_ffi"))
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert "model.so is built for aarch64 but this machine is x86_64" in line and "target host" in line


@pytest.mark.parametrize("missing, install", [("tvm", "pip install apache-tvm==0.27.0.post1"),
                                              ("numpy", "pip install numpy")])
def test_missing_package_names_the_install_command(host, missing, install):
    proc = run_script(host, "run.py", "--no-timing", block=(missing,))
    assert proc.returncode == 1
    assert f"Python package {missing} is missing: {install}" in one_error_line(proc)


def test_failed_verification_is_reported_and_never_timed(host, tmp_path):
    folder = copy_artifact(host, tmp_path / "H")
    reference = read_reference(folder / "reference.npz")
    with open(folder / "reference.npz", "wb") as fh:
        np.savez(fh, logits=reference + 0.01, frames=np.array("normalised"))
    write_manifest(folder, load_manifest(folder, verify_files=False))   # consistent sha256, wrong numbers
    proc = run_script(folder, "run.py", "--json", "r.json", block=("onnxruntime",))
    assert proc.returncode == 1
    assert "verification FAILED" in one_error_line(proc) and "FAIL" in proc.stdout
    data = json.loads((folder / "r.json").read_text())
    assert data["status"] == "failed" and data["verification"]["passed"] is False and data["timing"] is None
    # tsm-bench --import shows it as failed, never as a time
    from online_tsm.benchmarks.cli import main as bench_main

    assert bench_main(["--import", str(folder / "r.json"), "--json", str(tmp_path / "report.json")]) == 0
    row = json.loads((tmp_path / "report.json").read_text())["imported"][0]
    assert row["status"] == "failed" and row["timing"] is None and row["ratio_to_paper"] is None
    assert row["reason"].startswith("verification failed: max abs diff")


def test_library_shipped_as_objects_must_be_linked_first(host, tmp_path):
    folder = copy_artifact(host, tmp_path / "H")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["model.tar"] = manifest["files"].pop("model.so")
    with pytest.raises(template.RunError, match=r"model\.tar holds object files; link them into model\.so first"):
        template.library_path(str(tmp_path / "elsewhere"), manifest, "gcc ...")


def test_timing_is_refused_under_emulation(host, monkeypatch, capsys):
    monkeypatch.setattr(template, "emulation_evidence", lambda: "the process runs inside qemu-aarch64-static")
    assert template.run(["--artifact", str(host)], print) == 1
    err = capsys.readouterr().err
    assert "refusing to time under emulation" in err and "--no-timing" in err


def test_bad_arguments_are_one_line(host):
    proc = run_script(host, "run.py", "--fp16")
    assert proc.returncode == 1 and "--fp16 needs --tensorrt" in one_error_line(proc)


# -- tsm-bench --import ------------------------------------------------------------------------------
def test_import_shows_the_device_row_with_its_p50(host_result, tmp_path, capsys):
    from online_tsm.benchmarks.cli import main as bench_main

    result = host_result["folder"] / "r.json"
    p50 = host_result["json"]["timing"]["p50_ms"]
    assert bench_main(["--import", str(result), "--json", str(tmp_path / "report.json"),
                       "--plot", str(tmp_path / "report.png"), "--markdown", str(tmp_path / "report.md")]) == 0
    out = capsys.readouterr().out
    device_line = next(line for line in out.splitlines() if "measured on the device" in line)
    assert f"{p50:.2f}" in device_line and "✅" in device_line and "other model" in device_line
    assert "no paper figure" in device_line
    assert "13.0" in out and "35.0" in out and "paper, not measured here" in out   # the paper rows, labelled
    data = json.loads((tmp_path / "report.json").read_text())
    row = data["imported"][0]
    assert row["status"] == "ok" and row["timing"]["p50_ms"] == p50 and row["target"] == "host"
    assert row["source"].startswith("measured on the device ") and ", run.py 20" in row["source"]
    assert row["model_label"].startswith("another model than the paper's (width 0.5, 96x96 input")
    assert data["rows"] == [] and "nothing was measured on this machine" in data["notes"][0]
    assert (tmp_path / "report.png").stat().st_size > 0 and f"{p50:.2f}" in (tmp_path / "report.md").read_text()


def _device_record(base: dict, device_model: str | None, target: str, width: float, size: int) -> dict:
    """``base`` (a real run.py result) as if written on another device, for the pairing rules only."""
    data = json.loads(json.dumps(base))
    data["machine"]["device_model"] = device_model
    data["artifact"]["target"]["name"] = target
    data["artifact"]["model"]["width_mult"] = width
    data["artifact"]["input"]["input_size"] = size
    return data


@pytest.mark.parametrize("device_model, target, paper_ms, match", [
    ("NVIDIA Jetson Nano Developer Kit", "onnx", 13.0, "same device"),
    (None, "jetson-nano", 13.0, "the paper's device for target jetson-nano"),
    (None, "android-arm64", 35.0, "the paper's device for target android-arm64")])
def test_imported_row_sits_beside_the_papers_row_for_that_device(host_result, device_model, target, paper_ms, match):
    from online_tsm.benchmarks.device_results.reader import imported_row
    from online_tsm.benchmarks.report import imported_rows

    data = _device_record(host_result["json"], device_model, target, 1.0, 224)
    row = imported_row(data, "r.json")
    assert row["paper"]["latency_ms"] == paper_ms and row["paper_match"] == match
    assert row["ratio_to_paper"] == pytest.approx(data["timing"]["p50_ms"] / paper_ms)
    assert row["same_model_as_paper"] and row["model_label"].startswith("same model as the paper's")
    (cells,) = imported_rows({"imported": [row]})
    assert cells[8].startswith(f"{paper_ms:g} (") and cells[9] == f"{row['ratio_to_paper']:.2f}x"
    assert cells[10] == "same as paper"


def test_import_refuses_a_file_that_is_not_a_run_py_result(tmp_path, capsys):
    from online_tsm.benchmarks.cli import main as bench_main

    (tmp_path / "other.json").write_text(json.dumps({"schema": "online-tsm-bench/1"}))
    assert bench_main(["--import", str(tmp_path / "other.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --import") and "is not a run.py result" in err and len(err.splitlines()) == 1


# -- run_onnx.py ----------------------------------------------------------------------------------
def test_run_onnx_py_verifies_and_times_with_numpy_and_onnxruntime_only(onnx_artifact, tmp_path):
    folder = copy_artifact(onnx_artifact, tmp_path / "O")
    assert load_manifest(folder).files["run_onnx.py"]["role"] == "script"
    proc = run_script(folder, "run_onnx.py", "--json", "r.json", "--frames", "20", "--warmup", "2",
                      block=("tvm", "tvm_ffi", "tensorrt"))
    assert proc.returncode == 0, proc.stderr
    data = json.loads((folder / "r.json").read_text())
    assert data["status"] == "ok" and data["settings"]["engine"] == "onnxruntime"
    assert data["verification"]["passed"] and data["verification"]["max_abs_diff"] <= data["verification"]["tolerance"]
    assert data["timing"]["frames"] == 20 and data["device_timing"] is None
    assert "onnxruntime" in data["machine"]["libraries"] and "tvm" not in data["machine"]["libraries"]


def test_run_onnx_py_refuses_a_corrupted_model(onnx_artifact, tmp_path):
    folder = copy_artifact(onnx_artifact, tmp_path / "O")
    with open(folder / "model.onnx", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\xff" * 16)
    proc = run_script(folder, "run_onnx.py", block=("onnxruntime", "tvm"))
    assert proc.returncode == 1 and "model.onnx does not match manifest.json" in one_error_line(proc)


def test_tensorrt_without_tensorrt_names_the_install(onnx_artifact):
    proc = run_script(onnx_artifact, "run_onnx.py", "--tensorrt", "--no-timing", block=("tensorrt",))
    assert proc.returncode == 1
    assert "Python package tensorrt is missing" in one_error_line(proc)


# -- the real thing: a fresh venv with only numpy + apache-tvm (opt-in: installs ~300 MB) ----------------
@pytest.mark.skipif(not os.environ.get("ONLINE_TSM_FRESH_VENV"),
                    reason="opt-in (installs ~300 MB into a new venv): set ONLINE_TSM_FRESH_VENV=1")
def test_run_py_in_a_fresh_venv_with_only_numpy_and_tvm(host, tmp_path):
    constraints = Path(__file__).resolve().parents[1] / "constraints.txt"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "-c", str(constraints),
                          "numpy", "apache-tvm", "apache-tvm-ffi"], capture_output=True, text=True)
    if pip.returncode != 0:
        pytest.skip(f"cannot install numpy + apache-tvm here: {pip.stderr.strip().splitlines()[-1:]}")
    folder = copy_artifact(host, tmp_path / "H")
    proc = subprocess.run([str(venv / "bin/python"), "run.py", "--json", "r.json", "--frames", "20"], cwd=folder,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((folder / "r.json").read_text())["verification"]["passed"] is True
    freeze = subprocess.run([str(venv / "bin/python"), "-m", "pip", "freeze"], capture_output=True, text=True).stdout
    assert "torch" not in freeze and "online" not in freeze and "onnx" not in freeze
