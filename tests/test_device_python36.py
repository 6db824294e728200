"""The device scripts under a Jetson Nano's Python: 3.6 (JetPack 4.6), numpy 1.19.5 / 1.13.3, ONNX Runtime 1.10.

JetPack 4.6 ships Python 3.6.9, numpy 1.13.3 (apt; pip tops out at 1.19.5 for 3.6) and TensorRT 8.2 bindings
for Python 3.6 only, so run.py / run_onnx.py must run there as they are.  This checks it in a real 3.6
interpreter -- pyenv's (``$PYENV_ROOT/versions/3.6.*``), ``python3.6`` on PATH, or ``$ONLINE_TSM_PYTHON36`` --
with virtual environments built once into the cache (``~/.cache/online-tsm/python36``) with the last cp36
wheels: numpy 1.19.5 + onnxruntime 1.10.0 (which reads ONNX opsets <= 15), and numpy 1.13.3 alone (ONNX
Runtime needs a newer numpy; that one drives the TensorRT 8.2 code path against ``fake_tensorrt``).
Skipped, saying why, where there is no 3.6 or no package index to install from.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from online_tsm.export.device.kit import TEMPLATE

PY36_PACKAGES = {"ort": ["numpy==1.19.5", "onnxruntime==1.10.0"], "numpy113": ["numpy==1.13.3"]}
HERE = Path(__file__).parent


def find_python36() -> str | None:
    """A Python 3.6 interpreter, or None."""
    candidates = [os.environ.get("ONLINE_TSM_PYTHON36", "")]
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates += sorted(glob.glob(os.path.join(root, "versions", "3.6.*", "bin", "python3.6")), reverse=True)
    candidates.append(shutil.which("python3.6") or "")
    for candidate in filter(None, candidates):
        try:
            out = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                                 text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0 and out.stdout.strip() == "(3, 6)":
            return candidate
    return None


@pytest.fixture(scope="session")
def python36() -> str:
    found = find_python36()
    if found is None:
        pytest.skip("no Python 3.6 interpreter here (pyenv install 3.6.15, or set ONLINE_TSM_PYTHON36): the device "
                    "scripts' JetPack 4.6 check needs one")
    return found


def _venv(python36: str, name: str) -> Path:
    """The cached venv ``name`` (its packages from PY36_PACKAGES), built on first use; skip when it cannot be."""
    from online_tsm.fileio import file_lock
    from online_tsm.weights import cache_dir

    packages = PY36_PACKAGES[name]
    key = hashlib.sha256(json.dumps([os.path.realpath(python36), packages]).encode()).hexdigest()[:12]
    root = cache_dir() / "python36"
    folder = root / f"{name}-{key}"
    ready = folder / "online-tsm-ready"
    if ready.is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / f".{name}-{key}.lock"):     # two test runs at once: one builds, the other waits
        if ready.is_file():
            return folder
        shutil.rmtree(folder, ignore_errors=True)     # a build that was killed half-way
        steps = [[python36, "-m", "venv", str(folder)],
                 # pip 18 (3.6's own) does not know manylinux2014 wheels; pip 21.3 is the last for 3.6
                 [str(folder / "bin" / "python"), "-m", "pip", "install", "-q", "-U", "pip<22"],
                 [str(folder / "bin" / "python"), "-m", "pip", "install", "-q", "--only-binary=:all:", *packages]]
        for step in steps:
            proc = subprocess.run(step, capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                shutil.rmtree(folder, ignore_errors=True)
                tail = (proc.stderr or proc.stdout).strip().splitlines()
                pytest.skip(f"could not build the Python 3.6 venv with {' '.join(packages)} (no package index "
                            f"reachable?): {tail[-1] if tail else proc.returncode}")
        ready.write_text(" ".join(packages) + "\n")
    return folder


@pytest.fixture(scope="session")
def ort36(python36) -> Path:
    return _venv(python36, "ort") / "bin" / "python"


@pytest.fixture(scope="session")
def numpy113(python36) -> Path:
    return _venv(python36, "numpy113") / "bin" / "python"


@pytest.fixture(scope="module")
def nano(export_cache, small_weights) -> Path:
    return export_cache("small-jetson-nano", small_weights, "jetson-nano")


def _run(python: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return subprocess.run([str(python), *args], capture_output=True, text=True, timeout=600, env=env, cwd=cwd)


def test_every_shipped_script_compiles_under_python_36(python36, tmp_path):
    """The template (run.py and run_onnx.py are copies of it) and the fake used to drive it, byte-compiled by 3.6."""
    for source in (TEMPLATE, HERE / "fake_tensorrt.py"):
        target = tmp_path / source.name
        shutil.copyfile(source, target)
        proc = _run(Path(python36), "-m", "py_compile", str(target))
        assert proc.returncode == 0, proc.stderr


def test_every_script_in_a_nano_artifact_compiles_under_python_36(python36, nano, tmp_path):
    folder = Path(shutil.copytree(nano, tmp_path / "nano"))
    scripts = sorted(name for name, meta in json.loads((folder / "manifest.json").read_text())["files"].items()
                     if meta["role"] == "script")
    assert scripts == ["run.py", "run_onnx.py"]
    for name in scripts:
        proc = _run(Path(python36), "-m", "py_compile", str(folder / name))
        assert proc.returncode == 0, f"{name}: {proc.stderr}"


@pytest.mark.slow
@pytest.mark.network   # the first run installs the last cp36 wheels from the package index (then cached)
@pytest.mark.parametrize("command", [["run_onnx.py"], ["run.py", "--engine", "onnxruntime"]])
def test_nano_artifact_verifies_under_python_36_numpy_1_19_and_onnxruntime_1_10(ort36, nano, tmp_path, command):
    folder = Path(shutil.copytree(nano, tmp_path / "nano"))
    result = tmp_path / "result.json"
    proc = _run(ort36, str(folder / command[0]), *command[1:], "--frames", "5", "--warmup", "1",
                "--json", str(result))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(result.read_text())
    assert data["status"] == "ok" and data["verification"]["passed"], data.get("error")
    assert data["machine"]["libraries"]["python"].startswith("3.6.")
    assert data["machine"]["libraries"]["numpy"] == "1.19.5"
    assert data["machine"]["engine"].startswith("ONNX Runtime 1.10.0")
    assert data["settings"]["engine"] == "onnxruntime" and data["settings"]["precision"] == "fp32"
    assert "PASS" in proc.stdout


@pytest.mark.slow
@pytest.mark.network   # the first run installs the last cp36 wheels from the package index (then cached)
@pytest.mark.parametrize("version", ["8.2.1.8", "10.3.0"])
def test_tensorrt_path_runs_under_python_36_and_numpy_1_13(numpy113, nano, tmp_path, version):
    """JetPack 4.6's own interpreter and numpy: the TensorRT engine code (8.2's API, and 10.x's), verify and timing,
    against a replay of the reference (ONNX Runtime does not install with numpy 1.13)."""
    folder = Path(shutil.copytree(nano, tmp_path / "nano"))
    driver = tmp_path / "drive.py"
    driver.write_text(f"""
import importlib.util, json, sys
sys.path.insert(0, {str(HERE)!r})
import numpy
import fake_tensorrt
spec = importlib.util.spec_from_file_location("run", {str(folder / "run.py")!r})
run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run)
manifest = json.load(open({str(folder / "manifest.json")!r}))
with numpy.load({str(folder / "reference.npz")!r}) as data:
    reference = data["logits"]
calls = []
sys.modules["tensorrt"] = fake_tensorrt.make_tensorrt({version!r}, fake_tensorrt.engine_specs(manifest),
                                                      fake_tensorrt.replay(manifest, reference), calls)
run._CudaRuntime = fake_tensorrt.FakeCuda
code = run.main(["--tensorrt", "--fp16", "--frames", "5", "--warmup", "1", "--json", {str(tmp_path / "r.json")!r}])
print(json.dumps({{"code": code, "numpy": numpy.__version__, "calls": [c[0] for c in calls]}}))
""")
    proc = _run(numpy113, str(driver))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["code"] == 0 and report["numpy"] == "1.13.3"
    assert ("execute_v2" if version.startswith("8.") else "execute_async_v3") in report["calls"]
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["status"] == "ok" and data["verification"]["passed"] and data["verification"]["max_abs_diff"] == 0
    assert data["settings"]["precision"] == "fp16" and data["timing"]["frames"] == 5
