"""tests/gpu/check.py (what tests/gpu/run.sh runs on a GPU machine), checked here without a GPU, with fakes."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "gpu" / "check.py"
SMI = "NVIDIA H100 80GB HBM3, 550.54.15, 9.0, 81559 MiB\n"


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


def test_run_sh_calls_the_check_and_is_executable():
    run_sh = SCRIPT.with_name("run.sh")
    assert run_sh.stat().st_mode & 0o111 and "tests/gpu/check.py" in run_sh.read_text()


def test_gpu_is_read_from_nvidia_smi(check):
    assert check.parse_gpus(SMI) == [{"name": "NVIDIA H100 80GB HBM3", "driver": "550.54.15",
                                      "compute_capability": "9.0", "memory": "81559 MiB"}]

    def fake_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 0, stdout=SMI, stderr="")

    gpu = check.find_gpu(run=fake_run)
    assert check.gpu_label(gpu) == "NVIDIA H100 80GB HBM3 (compute capability 9.0, driver 550.54.15, 81559 MiB)"


def test_no_gpu_is_exit_2_and_one_line(check, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(check, "find_gpu", lambda: None)
    assert check.main(["--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "no NVIDIA GPU here (nvidia-smi found none): nothing checked\n"


def _result(passed: bool = True, stage: str | None = None) -> dict:
    if stage:
        return {"status": "failed", "verification": None, "error": {"stage": stage, "message": f"{stage} missing"}}
    return {"status": "ok" if passed else "failed", "settings": {"precision": "fp32"},
            "machine": {"engine": "TVM 0.27.0.post1 Relax VM on cuda (NVIDIA H100)"},
            "verification": {"passed": passed, "max_abs_diff": 3e-5 if passed else 2.0, "tolerance": 6e-4,
                             "top1_agreement": 1.0, "rule": "max(0.0001, 0.0001 x max |reference logit|)"},
            "timing": {"p50_ms": 1.25, "fps": 790.0} if passed else None}


def test_rows_say_passed_failed_or_skipped_with_why(check):
    assert check.row_from_run("a", _result())["status"] == "passed"
    assert check.row_from_run("b", _result(passed=False))["status"] == "failed"
    skipped = check.row_from_run("c", _result(stage="package"))
    assert skipped["status"] == "skipped" and skipped["why"] == "package missing"
    rows = [check.row_from_run("a", _result()), skipped]
    assert check.exit_status(rows) == 0
    assert check.exit_status(rows + [check.row_from_run("b", _result(passed=False))]) == 1


def test_whole_run_with_a_fake_gpu_labels_every_timing_and_skips_tensorrt_when_absent(check, monkeypatch, tmp_path,
                                                                                          capsys):
    import online_tsm.export.api as api

    monkeypatch.setattr(check, "find_gpu", lambda: check.parse_gpus(SMI)[0])
    monkeypatch.setattr(check, "_importable", lambda name: False)
    monkeypatch.setenv("LD_LIBRARY_PATH", os.environ.get("LD_LIBRARY_PATH", ""))   # main() extends it; restored
    exported, runs = [], []

    def fake_export(model, target, out, **kwargs):
        exported.append((target, kwargs["precision"]))
        Path(out).mkdir(parents=True, exist_ok=True)
        return Path(out)

    def fake_run(folder, args, result, env):
        runs.append(args)
        return _result()

    monkeypatch.setattr(api, "export_artifact", fake_export)
    monkeypatch.setattr(check, "run_script", fake_run)
    assert check.main(["--out", str(tmp_path)]) == 0
    assert exported == [("cuda", "fp32"), ("cuda", "fp16")]
    assert all(a[:4] == ["--engine", "tvm", "--device", "cuda"] for a in runs) and len(runs) == 2
    report = (tmp_path / "gpu-check.md").read_text()
    assert "GPU: NVIDIA H100 80GB HBM3 (compute capability 9.0" in report
    assert "Timings measured on NVIDIA H100 80GB HBM3" in report
    data = json.loads((tmp_path / "gpu-check.json").read_text())
    assert [r["status"] for r in data["rows"]] == ["passed", "skipped", "skipped", "skipped", "skipped", "passed"]
    assert all(r["why"] == "the tensorrt package is not installed" for r in data["rows"] if r["status"] == "skipped")
    assert "| 1.250 |" in capsys.readouterr().out
