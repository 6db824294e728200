"""Runtimes and artifact folders under faults: NaN frames, closed runtimes, manifests that point outside their
folder, a TVM RPC server that stops answering, and ``tsm-export --force`` next to folders it does not own."""
from __future__ import annotations

import json
import os
import signal
import socket

import numpy as np
import pytest

from online_tsm.errors import UserError
from online_tsm.export import api as export_api
from online_tsm.export.cli import main as export_main
from online_tsm.manifest import ManifestError
from online_tsm.runtimes import FrameError, open_runtime
from online_tsm.runtimes.base import RuntimeClosedError, RuntimeOpenError
from online_tsm.runtimes.tvm_rpc_backend import RpcTimeoutError
from runtime_artifacts import (copy_artifact, small_artifact, start_rpc_server,  # noqa: F401 -- fixture
                               stop_rpc_server)


def _frames(rt, n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(rt.frame_shape[1:]).astype(np.float32) for _ in range(n)]


# -- non-finite frames ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["onnxruntime", "tvm", "torch"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_frame_is_refused_and_the_stream_keeps_its_state(backend, bad, small_artifact, model_small):
    source = model_small if backend == "torch" else small_artifact
    with open_runtime(source, backend) as rt:
        frames = _frames(rt, 6)
        poisoned = frames[2].copy()
        poisoned[0, 3, 4] = bad
        stream, fresh = rt.new_stream(), rt.new_stream()
        for frame in frames[:2]:
            stream.step(frame)
            fresh.step(frame)
        with pytest.raises(FrameError, match=r"expected finite values in the frame, got 1 NaN or infinite value"):
            stream.step(poisoned)
        assert stream.frames_seen == 2
        for frame in frames[2:]:  # the stream goes on exactly as one that never saw the bad frame
            np.testing.assert_allclose(stream.step(frame), fresh.step(frame), rtol=0, atol=1e-6)
        assert np.isfinite(stream.step(frames[0])).all()


def test_step_many_refuses_a_nan_frame_without_touching_any_stream(small_artifact):
    with open_runtime(small_artifact, "onnxruntime") as rt:
        a, b, ref = rt.new_stream(), rt.new_stream(), rt.new_stream()
        frames = _frames(rt, 2)
        bad = frames[1].copy()
        bad[...] = np.nan
        with pytest.raises(FrameError, match="expected finite values"):
            rt.step_many([a, b], [frames[0], bad])
        assert a.frames_seen == b.frames_seen == 0
        np.testing.assert_allclose(a.step(frames[0]), ref.step(frames[0]), rtol=0, atol=1e-6)


# -- degenerate images ------------------------------------------------------------------------------------------
def test_a_zero_height_camera_image_is_a_frame_error(small_artifact):
    with open_runtime(small_artifact, "onnxruntime") as rt:
        with pytest.raises(FrameError, match=r"with H and W >= 1, got shape \(0, 640, 3\)"):
            rt.preprocess(np.zeros((0, 640, 3), np.uint8))


# -- closed runtimes --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["onnxruntime", "tvm", "torch"])
def test_a_closed_runtime_says_closed(backend, small_artifact, model_small):
    rt = open_runtime(model_small if backend == "torch" else small_artifact, backend)
    stream = rt.new_stream()
    frame = _frames(rt, 1)[0]
    stream.step(frame)
    rt.close()
    for action in (lambda: stream.step(frame), stream.reset, rt.new_stream,
                   lambda: rt.step_many([stream], [frame])):
        with pytest.raises(RuntimeClosedError, match=rf"this {backend} runtime is closed; open a new one"):
            action()
    rt.close()  # closing twice is harmless


# -- manifests that point outside their folder ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["../model.onnx", "/tmp/model.onnx"])
def test_a_manifest_naming_a_file_outside_the_folder_is_refused_on_open(small_artifact, tmp_path, name):
    folder = copy_artifact(small_artifact, tmp_path / "artifact")
    (tmp_path / "model.onnx").write_bytes((folder / "model.onnx").read_bytes())  # sha256 would match
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name] = manifest["files"].pop("model.onnx")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=rf"field 'files' names '{name}': expected a plain file name inside"):
        open_runtime(folder, "onnxruntime")


# -- tvm-rpc timeouts -------------------------------------------------------------------------------------------
def test_tvm_rpc_connect_times_out_on_a_server_that_never_answers(small_artifact):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the connection (the kernel does) but never speaks RPC
    port = silent.getsockname()[1]
    try:
        with pytest.raises(RpcTimeoutError, match=rf"the TVM RPC server at 127.0.0.1:{port} did not answer "
                                                  r"connecting within 1 s"):
            open_runtime(small_artifact, "tvm-rpc", address=f"127.0.0.1:{port}", timeout=1)
    finally:
        silent.close()


def test_tvm_rpc_timeout_must_be_positive(small_artifact):
    with pytest.raises(RuntimeOpenError, match=r"backend tvm-rpc expects timeout in seconds > 0, got 0"):
        open_runtime(small_artifact, "tvm-rpc", address="127.0.0.1:9", timeout=0)


def test_tvm_rpc_step_times_out_when_the_device_stops_answering(small_artifact, tmp_path):
    proc, port = start_rpc_server(tmp_path / "server.log")
    try:
        rt = open_runtime(small_artifact, "tvm-rpc", address=f"127.0.0.1:{port}", timeout=8)
        stream = rt.new_stream()
        frame = _frames(rt, 1)[0]
        assert np.isfinite(stream.step(frame)).all()
        os.killpg(proc.pid, signal.SIGSTOP)  # the device hangs (or the network drops everything)
        try:
            with pytest.raises(RpcTimeoutError, match=rf"127.0.0.1:{port} did not answer a step within 8 s"):
                stream.step(frame)
            with pytest.raises(RpcTimeoutError, match="open a new runtime once it is reachable"):
                stream.step(frame)  # the connection is in an unknown state: refused at once
        finally:
            os.killpg(proc.pid, signal.SIGCONT)
    finally:
        stop_rpc_server(proc)


def test_tvm_rpc_upload_is_under_a_time_limit_too(small_artifact, tmp_path, monkeypatch):
    import time

    from tvm.rpc.client import RPCSession

    from online_tsm.runtimes import tvm_rpc_backend

    proc, port = start_rpc_server(tmp_path / "server.log")
    try:
        monkeypatch.setattr(tvm_rpc_backend, "UPLOAD_BYTES_PER_S", 1e12)   # the limit: the timeout itself
        monkeypatch.setattr(RPCSession, "upload", lambda self, *args, **kwargs: time.sleep(5))  # a stalled link
        with pytest.raises(RpcTimeoutError, match=rf"127.0.0.1:{port} did not answer uploading and loading "
                                                  r"model.so within 1 s"):
            open_runtime(small_artifact, "tvm-rpc", address=f"127.0.0.1:{port}", timeout=1)
    finally:
        stop_rpc_server(proc)


# -- tsm-export --force -------------------------------------------------------------------------------------------
def test_force_leaves_a_folder_with_a_foreign_manifest_alone(small_weights, tmp_path, capsys):
    web_app = tmp_path / "web"
    web_app.mkdir()
    (web_app / "manifest.json").write_text('{"name": "My PWA", "start_url": "/"}')
    (web_app / "index.html").write_text("<html></html>")
    rc = export_main(["--weights", str(small_weights), "--target", "onnx", "-o", str(web_app), "--force"])
    assert rc == 2
    assert "refusing to replace" in capsys.readouterr().err
    assert sorted(p.name for p in web_app.iterdir()) == ["index.html", "manifest.json"]
    assert json.loads((web_app / "manifest.json").read_text())["name"] == "My PWA"


def test_force_replaces_an_export_only_once_the_new_one_is_complete(small_weights, tmp_path, monkeypatch):
    out = tmp_path / "artifact"
    export_api.export_artifact(small_weights, "onnx", out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_export = export_api._export
    seen_during = {}

    def fails_late(job, **kwargs):
        real_export(job, **kwargs)
        seen_during["old"] = sorted(p.name for p in out.iterdir())  # the old export is still in place
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_api, "_export", fails_late)
    with pytest.raises(RuntimeError, match="disk full"):
        export_api.export_artifact(small_weights, "onnx", out, force=True, progress=False)
    assert seen_during["old"] == sorted(before)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # a failed --force loses nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]  # and leaves no staging folder

    monkeypatch.setattr(export_api, "_export", real_export)
    (out / "stale.txt").write_text("from the old export")
    assert export_api.export_artifact(small_weights, "onnx", out, force=True, progress=False) == out
    assert not (out / "stale.txt").exists() and (out / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]
    assert open_runtime(out, "onnxruntime").new_stream() is not None


def test_export_into_an_empty_existing_folder(small_weights, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert export_api.export_artifact(small_weights, "onnx", out, progress=False) == out
    assert (out / "manifest.json").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["empty"]



def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def test_an_export_killed_outright_is_cleared_and_the_previous_artifact_put_back(small_weights, tmp_path):
    out = tmp_path / "artifact"
    export_api.export_artifact(small_weights, "onnx", out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # what SIGKILL leaves in the middle of publishing a --force export: the old artifact moved aside, the new one
    # staged, the folder owned by a process that is gone
    killed = tmp_path / ".artifact.tsm-export-killed"
    killed.mkdir()
    (killed / "owner.pid").write_text(f"{_dead_pid()}\n")
    os.rename(out, killed / "artifact.old")
    (killed / "artifact").mkdir()
    running = tmp_path / ".artifact.tsm-export-running"      # another export still at work: not ours to touch
    running.mkdir()
    (running / "owner.pid").write_text(f"{os.getpid()}\n")
    unowned = tmp_path / ".artifact.tsm-export-unowned"      # no owner file: left alone
    unowned.mkdir()

    with pytest.raises(UserError, match="already exists and is not empty; pass --force"):
        export_api.export_artifact(small_weights, "onnx", out, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before   # the previous export is back
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".artifact.tsm-export-running",
                                                                 ".artifact.tsm-export-unowned", "artifact"])


def test_sigterm_during_an_export_leaves_no_staging_folder(small_weights, tmp_path):
    import subprocess
    import sys
    import time
    from pathlib import Path

    out = tmp_path / "artifact"
    tool = Path(sys.executable).parent / "tsm-export"
    proc = subprocess.Popen([str(tool), "--weights", str(small_weights), "--target", "onnx", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".artifact.tsm-export-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the export ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "terminated"
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []   # neither the artifact nor its staging folder
