"""Faults and bad input lose nothing: one error family, fields checked on load, atomic writes, safe downloads,
training that survives bad clips and never overwrites a run.  Each test fails without the fix it names."""
from __future__ import annotations

import dataclasses
import http.server
import json
import math
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from online_tsm import weights
from online_tsm.checkpoint import CheckpointError, load_model, save_checkpoint
from online_tsm.errors import FrameError, OnlineTSMError, UserError
from online_tsm.manifest import ManifestError, load_manifest, write_manifest
from online_tsm.fileio import atomic_path, atomic_write, cached_file, file_lock, natural_key
from online_tsm.models import MobileNetV2TSM
from online_tsm.preprocess import preprocess_frame
from online_tsm.training import cli as train_cli
from online_tsm.training import data as data_mod
from online_tsm.training.config import few_clips_warning, run_folder
from online_tsm.weights import WeightsError, fetch_weights, sha256_file


# -- one error family --------------------------------------------------------------------------------------
def test_every_typed_error_derives_from_one_base():
    from online_tsm.export.device.elf import ElfError
    from online_tsm.export.tvm.nvrtc import NvrtcError
    from online_tsm.export.formats.onnx import ExportError
    from online_tsm.export.tvm.build import CompileError
    from online_tsm.runtimes.base import BackendUnavailable, RuntimeClosedError, RuntimeOpenError
    from online_tsm.runtimes.onnx_batch import BatchingError
    from online_tsm.runtimes.tvm_rpc_backend import RpcTimeoutError

    typed = [CheckpointError, ManifestError, RuntimeOpenError, BackendUnavailable, FrameError, RuntimeClosedError,
             data_mod.DataError, WeightsError, ExportError, CompileError, NvrtcError, ElfError, BatchingError,
             RpcTimeoutError, UserError]
    assert [e.__name__ for e in typed if not issubclass(e, OnlineTSMError)] == []
    # the old built-in bases still hold, so existing `except ValueError` code keeps working
    assert issubclass(CheckpointError, ValueError) and issubclass(FrameError, ValueError)


# -- checkpoint fields ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> dict:
    torch.manual_seed(0)
    path = save_checkpoint(MobileNetV2TSM(n_class=3, width_mult=0.25, input_size=32),
                           tmp_path_factory.mktemp("ckpt") / "tiny.pt", extra={"frame_stride": 2.0, "segments": 8})
    return torch.load(path, weights_only=True)


def _damaged(obj: dict, change) -> dict:
    obj = {**obj, "state_dict": dict(obj["state_dict"]), "extra": dict(obj["extra"])}
    change(obj)
    return obj


@pytest.mark.parametrize("change,message", [
    (lambda o: o.update(labels=["a", "b"]), r"field 'labels': expected 3 names \(n_class\), got 2"),
    (lambda o: o.update(std=[0.229, 0.0, 0.225]), r"field 'std': expected 3 positive numbers"),
    (lambda o: o.pop("n_class"), r"field 'n_class' is missing"),
    (lambda o: o.update(n_class="3"), r"field 'n_class': expected a positive integer, got '3'"),
    (lambda o: o.update(version="1"), r"field 'version': expected an integer, got '1'"),
    (lambda o: o["state_dict"].update({"classifier.bias": [0.0, 0.0, 0.0]}),
     r"state_dict\['classifier.bias'\]: expected a tensor, got list"),
    (lambda o: o["extra"].update(frame_stride=math.inf), r"field 'extra.frame_stride': expected a finite positive"),
    (lambda o: o.update(mean=[0.5, 0.5]), r"field 'mean': expected 3 finite numbers"),
    (lambda o: o.update(input_size=33), r"field 'input_size': expected a positive multiple of 32"),
])
def test_checkpoint_fields_are_checked_on_load(tiny_checkpoint, tmp_path, change, message):
    path = tmp_path / "bad.pt"
    torch.save(_damaged(tiny_checkpoint, change), path)
    with pytest.raises(CheckpointError, match=message) as exc:
        load_model(path)
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_an_undamaged_checkpoint_still_loads(tiny_checkpoint, tmp_path):
    path = tmp_path / "good.pt"
    torch.save(tiny_checkpoint, path)
    assert load_model(path).info.extra["frame_stride"] == 2.0


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = MobileNetV2TSM(n_class=3, width_mult=0.25, input_size=32)
    path = save_checkpoint(model, tmp_path / "best.pt")
    before = path.read_bytes()

    def dies_half_way(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt  # the run is stopped while saving

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]  # no temporary file left behind


# -- manifest fields and paths ---------------------------------------------------------------------------------
@pytest.fixture()
def manifest_folder(tmp_path) -> Path:
    from online_tsm.export.formats.onnx import build_manifest

    torch.manual_seed(0)
    folder = tmp_path / "artifact"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"not really a model, but hashed like one")
    write_manifest(folder, build_manifest(MobileNetV2TSM(n_class=3, width_mult=0.25, input_size=32)),
                   {"model.onnx": "onnx"})
    load_manifest(folder)  # valid as written
    return folder


def _edit_manifest(folder: Path, change) -> None:
    data = json.loads((folder / "manifest.json").read_text())
    change(data)
    (folder / "manifest.json").write_text(json.dumps(data))


@pytest.mark.parametrize("name", ["../model.onnx", "/etc/passwd", "sub/model.onnx", ".."])
def test_manifest_file_names_must_stay_inside_the_folder(manifest_folder, name):
    outside = manifest_folder.parent / "model.onnx"
    outside.write_bytes((manifest_folder / "model.onnx").read_bytes())  # same bytes: the sha256 would pass

    def point_outside(data):
        data["files"] = {name: data["files"]["model.onnx"]}

    _edit_manifest(manifest_folder, point_outside)
    with pytest.raises(ManifestError, match=r"expected a plain file name inside the folder"):
        load_manifest(manifest_folder)
    with pytest.raises(ManifestError, match=r"expected a plain file name inside the folder"):
        load_manifest(manifest_folder, verify_files=False)


@pytest.mark.parametrize("change,message", [
    (lambda d: d.update(files=[{"model.onnx": {"sha256": "0"}}]),
     r"field 'files': expected an object mapping file name to \{sha256, role\}, got list"),
    (lambda d: d.update(format_version="1"), r"field 'format_version': expected an integer, got '1'"),
    (lambda d: d.update(inputs={"frame": [1, 3, 32, 32]}), r"field 'inputs': expected a list, got dict"),
    (lambda d: d["inputs"][0].update(shape="1x3x32x32"), r"field inputs\[0\].shape: expected a list of non-negative"),
    (lambda d: d["preprocess"].update(std=[0.2, 0, 0.2]), r"field preprocess.std: expected a list of positive"),
    (lambda d: d["preprocess"].pop("input_size"), r"field preprocess.input_size: expected a positive integer"),
    (lambda d: d.update(logits_output="scores"), r"field frame_input/logits_output names 'scores'"),
    (lambda d: d["model"].update(labels=["a", "b"]),
     r"field model.labels: expected 3 names \(the logits' size\), got 2"),
    (lambda d: d["model"].update(frame_stride=1e999), r"field model.frame_stride: expected a finite positive number"),
])
def test_manifest_fields_are_checked_on_load(manifest_folder, change, message):
    _edit_manifest(manifest_folder, change)
    with pytest.raises(ManifestError, match=message) as exc:
        load_manifest(manifest_folder)
    assert "\n" not in str(exc.value)


# -- bad images ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(0, 320, 3), (240, 0, 3)])
def test_degenerate_image_is_a_frame_error(shape):
    with pytest.raises(FrameError, match=r"expected a uint8 image of shape HxWx3 with H and W >= 1, got shape"):
        preprocess_frame(np.zeros(shape, np.uint8), 32)


# -- atomic files and locks ----------------------------------------------------------------------------------
def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path):
    path = atomic_write(tmp_path / "cache.bin", b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half of the n")
            raise RuntimeError("killed")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["cache.bin"]
    atomic_write(path, "new")
    assert path.read_text() == "new" and oct(path.stat().st_mode & 0o777) != oct(0o600)


def test_cached_files_are_built_once_and_never_left_half_written(tmp_path):
    """What the TensorRT engine cache relies on: one build for two openers, nothing left by a failed build."""
    path = tmp_path / "engines" / "model.engine"
    with pytest.raises(RuntimeError):
        cached_file(path, lambda: (_ for _ in ()).throw(RuntimeError("builder crashed")))
    assert not path.exists() and [p.name for p in path.parent.iterdir()] == ["model.engine.lock"]

    builds = []

    def slow_build() -> bytes:
        builds.append(1)
        time.sleep(0.3)
        return b"engine"

    threads = [threading.Thread(target=cached_file, args=(path, slow_build)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert path.read_bytes() == b"engine" and len(builds) == 1


def test_cuda_stub_is_never_left_half_built(tmp_path, monkeypatch):
    import subprocess

    from online_tsm.export.tvm import cuda_build
    monkeypatch.setenv("ONLINE_TSM_CACHE", str(tmp_path))

    def compiler_killed(cmd, **kwargs):
        Path(cmd[cmd.index("-o") + 1]).write_bytes(b"\x7fELF truncated")
        raise subprocess.CalledProcessError(-9, cmd)

    monkeypatch.setattr(cuda_build.subprocess, "run", compiler_killed)
    with pytest.raises(subprocess.CalledProcessError):
        cuda_build.stub_driver()
    folder = tmp_path / "cuda-driver-stub"
    assert not (folder / "libcuda.so.1").exists()
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".build")) == ["libcuda_stub.c"]


def test_killed_sysroot_preparations_are_cleaned_up(tmp_path):
    from online_tsm.export.device.sysroot import remove_stale_scratch

    (tmp_path / "arm64-bookworm-abc.partial-4242" / "usr").mkdir(parents=True)
    (tmp_path / "arm64-bookworm-abc.partial-4242.debs").mkdir()
    (tmp_path / "arm64-bookworm-abc").mkdir()  # a finished sysroot stays
    removed = remove_stale_scratch(tmp_path)
    assert len(removed) == 2 and [p.name for p in tmp_path.iterdir()] == ["arm64-bookworm-abc"]


def test_ensure_sysroot_removes_what_a_killed_preparation_left(tmp_path, monkeypatch):
    from online_tsm.export.device import sysroot
    pins = {"apache-tvm": "0.27.0"}
    stale = tmp_path / f"{sysroot.sysroot_key(pins)}.partial-4242"
    (stale / "usr").mkdir(parents=True)

    def prepare(root, pins, progress):
        (root / "usr" / "bin").mkdir(parents=True)
        (root / "usr" / "bin" / "python3.11").write_text("")
        return {"python": "python3.11", "prepared_in_s": 0.0}

    monkeypatch.setattr(sysroot, "qemu_path", lambda: Path("/usr/bin/qemu-aarch64-static"))
    monkeypatch.setattr(sysroot, "wheel_pins", lambda: pins)
    monkeypatch.setattr(sysroot, "emulation_dir", lambda: tmp_path)
    monkeypatch.setattr(sysroot, "_prepare", prepare)
    said = []
    ready = sysroot.ensure_sysroot(said.append)
    assert not stale.exists() and ready.root.is_dir()
    assert any("left over by an interrupted preparation" in line for line in said)


# -- downloads -------------------------------------------------------------------------------------------------
class _Server(http.server.ThreadingHTTPServer):
    payload = b""
    short_first = 0      # how many requests get half the body with the full Content-Length
    honour_range = True
    requests: list


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802
        server: _Server = self.server  # type: ignore[assignment]
        server.requests.append(self.headers.get("Range"))
        start = 0
        if self.headers.get("Range") and server.honour_range:
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
        else:
            self.send_response(200)
        body = server.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.short_first > 0:
            server.short_first -= 1
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture()
def http_weights(tmp_path, monkeypatch):
    server = _Server(("127.0.0.1", 0), _Handler)
    server.payload = bytes(range(256)) * 400  # 100 kB
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    entry = dataclasses.replace(weights.WEIGHTS["jester-mobilenetv2-online"], sha256=None,
                                urls=(f"http://127.0.0.1:{server.server_address[1]}/w.pth",))
    monkeypatch.setitem(weights.WEIGHTS, entry.name, entry)
    monkeypatch.setenv("ONLINE_TSM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(weights.time, "sleep", lambda s: None)
    yield server, entry, tmp_path / "cache"
    server.shutdown()
    server.server_close()


def test_a_short_body_is_never_trusted(http_weights):
    server, entry, cache = http_weights
    server.short_first = 100  # every try is cut short
    with pytest.raises(WeightsError, match=r"could not download .*got \d+ of 102400 bytes"):
        fetch_weights("jester")
    assert server.requests[1:] == ["bytes=51200-", "bytes=76800-"]  # each try resumed where the last stopped
    assert not (cache / entry.filename).exists()
    assert not (cache / (entry.filename + ".sha256")).exists()  # nothing recorded as trusted


def test_an_interrupted_download_resumes(http_weights, capsys):
    server, entry, cache = http_weights
    server.short_first = 1
    path = fetch_weights("jester")
    assert path.read_bytes() == server.payload
    assert server.requests == [None, "bytes=51200-"]  # the second try asked only for the rest
    recorded = (cache / (entry.filename + ".sha256")).read_text().strip()
    assert recorded == sha256_file(path) and "recorded" in capsys.readouterr().err
    assert not (cache / (entry.filename + ".part")).exists()


def test_a_server_that_ignores_range_restarts_cleanly(http_weights):
    server, entry, cache = http_weights
    server.short_first, server.honour_range = 1, False
    assert fetch_weights("jester").read_bytes() == server.payload


def test_incomplete_read_is_retried(http_weights, monkeypatch):
    import http.client

    server, entry, cache = http_weights
    real = weights._download
    calls = []

    def flaky(url, dest):
        calls.append(url)
        if len(calls) == 1:
            raise http.client.IncompleteRead(b"partial", 100)
        return real(url, dest)

    monkeypatch.setattr(weights, "_download", flaky)
    assert fetch_weights("jester").read_bytes() == server.payload and len(calls) == 2


def test_mismatch_says_how_to_start_over(http_weights):
    server, entry, cache = http_weights
    path = fetch_weights("jester")
    path.write_bytes(b"something else")
    with pytest.raises(WeightsError) as exc:
        fetch_weights("jester")
    message = str(exc.value)
    assert f"delete {path} and {cache / (entry.filename + '.sha256')}" in message and "\n" not in message


def test_a_second_process_waits_instead_of_sharing_the_part_file(http_weights, capsys):
    server, entry, cache = http_weights
    result, err = {}, ""
    with file_lock(cache / (entry.filename + ".lock")):   # another process is downloading
        worker = threading.Thread(target=lambda: result.update(path=fetch_weights("jester")))
        worker.start()
        deadline = time.monotonic() + 60
        while "waiting for another process downloading" not in err and time.monotonic() < deadline:
            time.sleep(0.05)
            err += capsys.readouterr().err
        assert "waiting for another process downloading" in err    # it is blocked on the lock ...
        assert server.requests == [] and not (cache / (entry.filename + ".part")).exists()  # ... writing nothing
    worker.join(60)
    assert result["path"].read_bytes() == server.payload


# -- training data ---------------------------------------------------------------------------------------------
def _png(path: Path, value: int) -> None:
    cv2.imwrite(str(path), np.full((24, 32, 3), value, np.uint8))


def test_frame_folders_load_in_natural_order(tmp_path):
    for cls in ("a", "b"):
        folder = tmp_path / cls / "clip"
        folder.mkdir(parents=True)
        for i in range(1, 13):
            _png(folder / f"{i}.png", i * 10)
    split = data_mod.scan_folder(tmp_path, val_fraction=0.0)
    clip = split.train[0]
    assert [p.name for p in clip.files] == [f"{i}.png" for i in range(1, 13)]
    assert [int(f[0, 0, 0]) for f in clip.load(range(12))] == [i * 10 for i in range(1, 13)]
    assert sorted(["10.png", "9.png", "frame_2.png", "frame_10.png"], key=natural_key) == \
        ["9.png", "10.png", "frame_2.png", "frame_10.png"]


def test_empty_class_folders_are_reported(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls / "clip").mkdir(parents=True)
        _png(tmp_path / cls / "clip" / "1.png", 0)
    (tmp_path / "c").mkdir()
    split = data_mod.scan_folder(tmp_path, val_fraction=0.0)
    assert f"1 class folder(s) without a readable clip: {tmp_path / 'c'}" in split.report.summary()


@pytest.fixture(scope="module")
def damaged_data(tmp_path_factory) -> Path:
    """Four synthetic classes plus a 0-byte video, a folder of corrupt PNGs, and a folder whose frames go bad
    after the first (it passes the scan and fails when loaded)."""
    from online_tsm import synthetic

    root = synthetic.write_dataset(tmp_path_factory.mktemp("data"), 8, seed=0, height=48, width=64,
                                   n_frames=(8, 10))
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    (classes[0] / "empty.mp4").write_bytes(b"")
    corrupt = classes[1] / "corrupt_frames"
    corrupt.mkdir()
    for i in range(1, 6):
        (corrupt / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    late = classes[2] / "goes_bad"
    late.mkdir()
    _png(late / "1.png", 128)
    for i in range(2, 13):
        (late / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    return root


def test_unreadable_clips_are_skipped_and_training_completes(damaged_data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "best.pt").write_bytes(b"an earlier run's model")  # must survive this run
    rc = train_cli.main(["--data", str(damaged_data), "--width", "0.25", "--input-size", "32", "--segments", "4",
                         "--val-fraction", "0", "--epochs", "1", "--batch-size", "4", "--threads", "1",
                         "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "skipped 2 unreadable clip(s)" in err
    assert "empty.mp4 (OpenCV cannot open it)" in err
    assert "corrupt_frames (1.png does not decode" in err
    assert "warning: skipping an unreadable clip (cannot read image" in err and "goes_bad" in err
    assert "1 of " in err and "skipped so far" in err
    assert "warning: training from scratch on 1-2 clips per class (fewer than 200)" in err
    assert (out / "best.pt").read_bytes() == b"an earlier run's model"
    assert f"writing to {tmp_path / 'run-2'} ({out} already holds a run; pass --exist-ok" in err
    assert load_model(tmp_path / "run-2" / "best.pt").info.labels == sorted(p.name for p in damaged_data.iterdir())


def test_training_from_scratch_on_few_clips_warns(damaged_data, tmp_path):
    split = data_mod.scan_folder(damaged_data, val_fraction=0.0)
    warning = few_clips_warning(split, init=None)
    assert "fewer than 200" in warning and "--init default" in warning and "--init jester" in warning
    assert few_clips_warning(split, init="default") is None
    assert few_clips_warning(data_mod.synthetic_split(8, 8), init=None) is None  # clean synthetic data


# -- run folders -----------------------------------------------------------------------------------------------
def test_run_folders_never_overwrite(tmp_path):
    base = tmp_path / "tsm-train-out"
    assert run_folder(base) == base
    (base / "best.pt").write_bytes(b"first run")
    assert run_folder(base) == tmp_path / "tsm-train-out-2"
    (tmp_path / "tsm-train-out-2" / "best.pt").write_bytes(b"second run")
    assert run_folder(base) == tmp_path / "tsm-train-out-3"
    assert run_folder(base, exist_ok=True) == base and (base / "best.pt").read_bytes() == b"first run"


def test_train_cli_has_exist_ok():
    args = train_cli.train_parser().parse_args(["--data", "synthetic", "--exist-ok"])
    assert args.exist_ok is True


def test_sigterm_ends_a_cli_as_terminated_even_when_a_library_rewraps_it(capsys):
    """TVM's FFI turns an exception raised inside its callbacks into a RuntimeError; the run still ended on SIGTERM."""
    import argparse
    import os
    import signal
    import time

    from online_tsm.console.cli_util import run_cli

    def main(args: argparse.Namespace) -> int:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises in here
        except KeyboardInterrupt:
            raise RuntimeError("error in a callback") from None
        return 0

    assert run_cli(main, argparse.ArgumentParser(), []) == 143
    assert capsys.readouterr().err.strip() == "terminated"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back for the rest of the process
