"""The device script on a Jetson: TensorRT 8.2 and 10.x engines, the driver check, the rule each engine is held to.

TensorRT and a GPU are not available here: the engine runs against ``fake_tensorrt`` (the documented APIs of
8.2 and 10.x, nothing more), whose "GPU" computes with ONNX Runtime -- so the script's buffer ping-pong is
checked numerically against PyTorch's reference, through the artifact's own model.onnx.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

from fake_tensorrt import FakeCuda, engine_specs, make_tensorrt
from online_tsm.export.device import run_template as template


@pytest.fixture(scope="module")
def nano(export_cache, small_weights) -> Path:
    return export_cache("small-jetson-nano", small_weights, "jetson-nano")


@pytest.fixture()
def folder(nano, tmp_path) -> Path:
    return Path(shutil.copytree(nano, tmp_path / "nano"))    # the engine cache is written into the folder


def _install_fake(monkeypatch, folder: Path, version: str) -> list:
    manifest = json.loads((folder / "manifest.json").read_text())
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]

    def compute(feeds):
        return dict(zip(outputs, session.run(outputs, feeds)))

    calls: list = []
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt(version, engine_specs(manifest), compute, calls))
    monkeypatch.setattr(template, "_CudaRuntime", FakeCuda)
    return calls


@pytest.mark.parametrize("version, api", [("8.2.1.8", "execute_v2"), ("10.3.0", "execute_async_v3")])
@pytest.mark.parametrize("fp16", [False, True])
def test_tensorrt_engine_streams_the_nano_model_with_either_api(folder, monkeypatch, tmp_path, version, api, fp16):
    calls = _install_fake(monkeypatch, folder, version)
    result = tmp_path / "trt.json"
    argv = ["--artifact", str(folder), "--tensorrt", "--frames", "5", "--warmup", "1", "--json", str(result)]
    assert template.main(argv + (["--fp16"] if fp16 else [])) == 0
    data = json.loads(result.read_text())
    assert data["status"] == "ok" and data["verification"]["passed"]
    assert data["verification"]["max_abs_diff"] <= 1e-3          # the buffers really went round the "GPU"
    assert data["settings"]["precision"] == ("fp16" if fp16 else "fp32")
    assert "fp16" in data["verification"]["rule_reason"] if fp16 else "fp32" in data["verification"]["rule_reason"]
    assert any(c[0] == api for c in calls)
    if version.startswith("8."):
        assert ("create_network", 1) in calls and ("max_workspace_size", 1 << 28) in calls
    else:
        assert ("create_network", 0) in calls and ("set_memory_pool_limit", "WORKSPACE", 1 << 28) in calls
    assert (("set_flag", "FP16") in calls) == fp16
    assert f"TensorRT {version} {'fp16' if fp16 else 'fp32'} engine" in data["machine"]["engine"]
    assert list((folder / "tensorrt-cache").iterdir())          # built once, cached on the device


def test_fp16_engine_is_held_to_the_manifest_s_fp16_rule(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    assert template.run_precision(manifest, "tensorrt", fp16=True) == "fp16"
    absolute, relative, min_top1, why = template.tolerance_rule(manifest, False, precision="fp16")
    rule = manifest["verification"]["rules"]["fp16"]
    assert (absolute, relative, min_top1) == (rule["absolute"], rule["relative_other_machine"],
                                              rule["min_top1_agreement"])


def test_fp16_library_is_verified_by_the_fp16_rule_with_tvm_and_fp32_with_model_onnx(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["verification"]["precision"] = "fp16"     # what a --precision fp16 jetson-nano export writes
    assert template.run_precision(manifest, "tvm") == "fp16"              # the fp16 kernels
    assert template.run_precision(manifest, "onnxruntime") == "fp32"      # model.onnx stays float32
    assert template.run_precision(manifest, "tensorrt") == "fp32"
    int8 = dict(manifest, verification={"precision": "int8", "rules": manifest["verification"]["rules"]})
    assert template.run_precision(int8, "onnxruntime") == "int8"          # a QDQ model.onnx


def test_run_refuses_a_cuda_driver_older_than_the_kernels_need(folder, monkeypatch, capsys, tmp_path):
    data = json.loads((folder / "manifest.json").read_text())
    assert data["target"]["device_code"]["min_cuda_driver"] == "7.0"
    data["target"]["device_code"]["min_cuda_driver"] = "10.2"
    (folder / "manifest.json").write_text(json.dumps(data))   # not in the sha256 list: the manifest itself
    monkeypatch.setattr(template, "cuda_driver_version", lambda: "10.0")
    result = tmp_path / "r.json"
    assert template.main(["--artifact", str(folder), "--engine", "tvm", "--json", str(result)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: this CUDA driver reports CUDA 10.0, older than the 10.2 "
                                                   "the library's kernels need (sm_53 ptx, PTX ISA 4.2")
    assert json.loads(result.read_text())["error"]["stage"] == "cuda"


def test_a_new_enough_driver_passes_the_check(folder):
    target = json.loads((folder / "manifest.json").read_text())["target"]
    assert template.check_cuda_driver(dict(target, device_code=dict(target["device_code"], min_cuda_driver="1.0"))) \
        in (None, template.cuda_driver_version())


def test_nano_without_tvm_defaults_to_tensorrt_and_run_onnx_py_to_onnxruntime(folder, monkeypatch):
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (folder / "run.py").read_bytes() == (folder / "run_onnx.py").read_bytes()
    monkeypatch.setattr(template, "_importable", lambda name: name == "tensorrt")   # JetPack 4.6 as shipped
    monkeypatch.setattr(sys, "argv", [str(folder / "run.py")])
    assert template._defaults(manifest) == ("tensorrt", "cuda")
    monkeypatch.setattr(template, "_importable", lambda name: True)
    assert template._defaults(manifest) == ("tvm", "cuda")
    monkeypatch.setattr(sys, "argv", [str(folder / "run_onnx.py")])
    assert template._defaults(manifest) == ("onnxruntime", "cpu")


def test_engine_with_other_tensor_names_is_refused(folder, monkeypatch, capsys):
    manifest = json.loads((folder / "manifest.json").read_text())
    specs = engine_specs(manifest)
    specs["renamed"] = specs.pop("logits")
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt("8.2.1.8", specs, lambda feeds: {}, []))
    monkeypatch.setattr(template, "_CudaRuntime", FakeCuda)
    assert template.main(["--artifact", str(folder), "--tensorrt", "--no-timing"]) == 1
    assert "the TensorRT engine's tensors" in capsys.readouterr().err
