"""``tsm-demo`` end to end: a headless synthetic run with video and log, labels from a checkpoint, error paths."""
from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
import torch

from helpers import seeded_model
from online_tsm.checkpoint import save_checkpoint
from online_tsm.demo import cli
from online_tsm.demo.model import UNTRAINED_WARNING, load_demo_model
from online_tsm.demo.sources import SYNTHETIC_CYCLE
from online_tsm.labels import JESTER_LABELS
from online_tsm.streaming.pacing import UPSTREAM_PACE
from online_tsm.synthetic import GESTURES
from online_tsm.weights import default_weights

SMALL_LABELS = [f"gesture {c}" for c in "ABCDEFGHIJ"]


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory):
    """A 96x96, width 0.5, 10-class model with its own labels: fast, and proves labels come from metadata."""
    path = tmp_path_factory.mktemp("demo") / "small.pt"
    save_checkpoint(seeded_model(seed=3, width_mult=0.5, input_size=96, n_class=10), path, labels=SMALL_LABELS)
    return path


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: on a 2-core machine shared with other jobs, two spinning OpenMP threads made the
    120-frame run 20x slower (measured: 149 s vs 6.8 s at load 10). Speed is not under test here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def read_log(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def video_stats(path) -> tuple[int, int, int]:
    """(frames actually decoded, width, height)."""
    cap = cv2.VideoCapture(str(path))
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    frames = 0
    while cap.read()[0]:
        frames += 1
    cap.release()
    return frames, width, height


def test_headless_synthetic_run_writes_the_video_and_the_prediction_log(tmp_path, monkeypatch, capsys):
    """``tsm-demo --source synthetic --headless --output out.mp4 --log preds.jsonl --frames 120``."""
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["--source", "synthetic", "--headless", "--output", "out.mp4", "--log", "preds.jsonl",
                   "--frames", "120"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert video_stats(tmp_path / "out.mp4") == (120, 640, 480)   # 320x240 synthetic, drawn at 640 wide
    records = read_log(tmp_path / "preds.jsonl")
    assert [r["frame"] for r in records] == list(range(120))
    times = [r["time_s"] for r in records]
    assert times == sorted(times)
    every = load_demo_model("torch").pace.every   # the shipped default's training stride (4), else 1
    for r in records:
        assert r["inferred"] is (r["frame"] % every == 0) and r["dropped"] == 0
        assert not r["inferred"] or r["latency_ms"] > 0
        assert r["label"] is None or r["label"] in JESTER_LABELS
        assert len(r["top3"]) == 3 and all(t["label"] in JESTER_LABELS for t in r["top3"])
        assert r["top3"][0]["p"] >= r["top3"][1]["p"] >= r["top3"][2]["p"]
        assert r["label"] not in ("Rolling Hand Forward", "Pulling Hand In")   # Jester's default ignore list
    assert "120 frames" in err and "wrote out.mp4, preds.jsonl" in err
    assert (UNTRAINED_WARNING in err) == (default_weights() is None)


@pytest.mark.skipif(default_weights() is None, reason="needs the shipped default model")
def test_default_model_recognises_the_synthetic_gestures_at_its_pace(tmp_path, capsys):
    """With no flags the demo runs the default model at the pace it was trained at (online_tsm.streaming.pacing).

    The synthetic source plays the 8 gestures for 32 frames each, one after another with the shift buffers
    carried across; in the second half of each gesture the shown class must be that gesture on most
    inferences (measured: 0.94 over 3 cycles; at every frame instead of every 4th: 0.20).
    """
    log = tmp_path / "p.jsonl"
    assert cli.main(["--source", "synthetic", "--headless", "--frames", "512", "--log", str(log)]) == 0
    assert "inference every 4 frame(s), logits averaged over 4, debounce 1" in capsys.readouterr().err
    cycle = [GESTURES[m] for m in SYNTHETIC_CYCLE]
    late = [r for r in read_log(log) if r["inferred"] and r["frame"] % 32 >= 16]
    right = sum(r["label"] == cycle[(r["frame"] // 32) % len(cycle)] for r in late)
    assert len(late) == 64 and right / len(late) >= 0.8, (right, len(late))


def test_pace_flags_override_the_model_pace(small_checkpoint, tmp_path, capsys):
    """A checkpoint without a recorded pace keeps the upstream settings; flags win over either."""
    assert load_demo_model("torch", weights=str(small_checkpoint)).pace == UPSTREAM_PACE
    log = tmp_path / "p.jsonl"
    assert cli.main(["--source", "synthetic", "--headless", "--weights", str(small_checkpoint), "--frames", "6",
                     "--every", "3", "--log", str(log)]) == 0
    assert "inference every 3 frame(s), logits averaged over 12, debounce 2" in capsys.readouterr().err
    assert [r["inferred"] for r in read_log(log)] == [True, False, False] * 2


def test_checkpoint_labels_every_other_frame_and_ignore_by_name(tmp_path, small_checkpoint, capsys):
    log = tmp_path / "log" / "p.jsonl"     # the folder is created
    rc = cli.main(["--source", "synthetic", "--headless", "--weights", str(small_checkpoint), "--every", "2",
                   "--history", "1", "--debounce", "1", "--frames", "12", "--log", str(log)])
    assert rc == 0, capsys.readouterr().err
    records = read_log(log)
    assert [r["inferred"] for r in records] == [True, False] * 6
    assert {t["label"] for r in records for t in r["top3"]} <= set(SMALL_LABELS)
    # inference skipped on odd frames: they repeat the previous frame's prediction
    for prev, cur in zip(records[::2], records[1::2]):
        assert (cur["label"], cur["top3"]) == (prev["label"], prev["top3"])
    shown = {r["label"] for r in records}
    rc = cli.main(["--source", "synthetic", "--headless", "--weights", str(small_checkpoint), "--history", "1",
                   "--debounce", "1", "--frames", "12", "--log", str(log), "--ignore", ",".join(shown)])
    assert rc == 0
    assert not shown & {r["label"] for r in read_log(log)}


def test_headless_without_files_prints_label_changes(small_checkpoint, capsys):
    assert cli.main(["--source", "synthetic", "--headless", "--weights", str(small_checkpoint),
                     "--frames", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("frame     0") and "gesture" in out


def test_folder_of_frames_and_video_file(tmp_path, small_checkpoint, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(6):
        cv2.imwrite(str(frames / f"{i:04d}.png"), np.full((60, 80, 3), 40 * i, np.uint8))
    video = tmp_path / "annotated.avi"
    shot = tmp_path / "shot.png"
    assert cli.main(["--source", str(frames), "--headless", "--weights", str(small_checkpoint),
                     "--output", str(video), "--display-width", "0", "--screenshot", str(shot)]) == 0
    assert video_stats(video) == (6, 80, 60)
    assert cv2.imread(str(shot)).shape == (60, 80, 3)
    log = tmp_path / "again.jsonl"
    assert cli.main(["--source", str(video), "--headless", "--weights", str(small_checkpoint), "--log", str(log)]) == 0
    assert len(read_log(log)) == 6


# -- error paths: one line, non-zero exit -------------------------------------------------------

def run_error(capsys, *argv: str) -> str:
    rc = cli.main(list(argv))
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    return err


def test_missing_camera(capsys):
    assert "cannot open camera 99: no such camera" in run_error(capsys, "--source", "99", "--headless")


def test_missing_file(tmp_path, capsys):
    err = run_error(capsys, "--source", str(tmp_path / "missing.mp4"), "--headless")
    assert "no such video file or folder" in err and "missing.mp4" in err


def test_unreadable_file(tmp_path, capsys):
    bad = tmp_path / "text.mp4"
    bad.write_text("hello")
    assert "as a video" in run_error(capsys, "--source", str(bad), "--headless")


def test_empty_folder(tmp_path, capsys):
    assert "no image files" in run_error(capsys, "--source", str(tmp_path), "--headless")


def test_without_a_display_the_browser_view_starts_instead(small_checkpoint, monkeypatch, capsys):
    """No dead end: no window possible -> the live view on 127.0.0.1; no desktop, so no browser is started."""
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda url, *a, **k: opened.append(url))
    assert cli.main(["--source", "synthetic", "--weights", str(small_checkpoint), "--frames", "3"]) == 0
    err = capsys.readouterr().err
    assert "no window (no display to open a window on (DISPLAY is not set)); showing the live view in the " \
           "browser at http://127.0.0.1:" in err
    assert "3 frames" in err and opened == []


@pytest.mark.skipif(not re.search(r"GUI:\s+NONE", cv2.getBuildInformation()),
                    reason="this OpenCV has a GUI")
def test_on_a_desktop_without_opencv_gui_the_browser_view_opens(small_checkpoint, monkeypatch, capsys):
    monkeypatch.setenv("DISPLAY", ":0")
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda url, *a, **k: opened.append(url))
    assert cli.main(["--source", "synthetic", "--weights", str(small_checkpoint), "--frames", "3"]) == 0
    err = capsys.readouterr().err
    assert "no window (this OpenCV build has no GUI support (opencv-python-headless?)" in err
    url = re.search(r"browser at (http://127\.0\.0\.1:\d+/)", err).group(1)
    assert opened == [url]


def test_headless_keeps_its_meaning(small_checkpoint, monkeypatch, capsys):
    """--headless: files only, even where no window could be opened."""
    monkeypatch.delenv("DISPLAY", raising=False)
    assert cli.main(["--source", "synthetic", "--headless", "--weights", str(small_checkpoint), "--frames", "2"]) == 0
    assert "browser" not in capsys.readouterr().err


def test_bad_output_names(tmp_path, capsys):
    assert "must end in one of .mp4" in run_error(capsys, "--source", "synthetic", "--headless",
                                                  "--output", str(tmp_path / "x.gif"))
    assert "log file" in run_error(capsys, "--source", "synthetic", "--headless", "--log", str(tmp_path / "x.csv"))
    assert "screenshot" in run_error(capsys, "--source", "synthetic", "--headless",
                                     "--screenshot", str(tmp_path / "x.bmp"))


def test_unknown_class_to_ignore(small_checkpoint, capsys):
    err = run_error(capsys, "--source", "synthetic", "--headless", "--weights", str(small_checkpoint),
                    "--ignore", "Waving")
    assert "unknown class name(s) to ignore: 'Waving'" in err and "gesture A" in err


def test_backend_errors(tmp_path, capsys):
    assert "unknown backend 'nope'" in run_error(capsys, "--source", "synthetic", "--headless", "--backend", "nope")
    err = run_error(capsys, "--source", "synthetic", "--headless", "--backend", "torch", "--artifact", str(tmp_path))
    assert "runs a checkpoint (--weights), not an exported folder" in err


def test_untrained_fallback_is_labelled(monkeypatch):
    monkeypatch.setattr("online_tsm.demo.model.default_weights", lambda: None)
    demo = load_demo_model("torch")
    assert demo.untrained and "random weights" in demo.source
    assert demo.runtime.labels == list(JESTER_LABELS)


@pytest.fixture(scope="session")
def small_onnx_folder(tmp_path_factory):
    """An export folder with only the ONNX graph (no compiled library): cheap, and ``auto`` must pick onnxruntime."""
    from online_tsm.checkpoint import model_info
    from online_tsm.manifest import write_manifest
    from online_tsm.export.formats.onnx import build_manifest, export_onnx

    model = seeded_model(seed=3, width_mult=0.5, input_size=96, n_class=10)
    model.info = model_info(model, labels=SMALL_LABELS)
    folder = tmp_path_factory.mktemp("demo-artifact") / "export"
    folder.mkdir()
    export_onnx(model, folder / "model.onnx")
    write_manifest(folder, build_manifest(model), {"model.onnx": "onnx"})
    return folder


def test_artifact_on_auto_matches_the_checkpoint_on_torch(tmp_path, small_onnx_folder, small_checkpoint, capsys):
    """Labels from the manifest; the same frames through ONNX Runtime and PyTorch give the same predictions."""
    common = ["--source", "synthetic", "--headless", "--frames", "8", "--history", "1", "--threads", "1"]
    assert cli.main(common + ["--artifact", str(small_onnx_folder), "--backend", "auto",
                              "--log", str(tmp_path / "ort.jsonl")]) == 0
    assert "-> onnxruntime" in capsys.readouterr().err
    assert cli.main(common + ["--weights", str(small_checkpoint), "--log", str(tmp_path / "torch.jsonl")]) == 0
    ort, ref = read_log(tmp_path / "ort.jsonl"), read_log(tmp_path / "torch.jsonl")
    assert [r["label"] for r in ort] == [r["label"] for r in ref]
    for a, b in zip(ort, ref):
        assert [t["label"] for t in a["top3"]] == [t["label"] for t in b["top3"]]
        assert [t["p"] for t in a["top3"]] == pytest.approx([t["p"] for t in b["top3"]], abs=2e-3)
    assert {t["label"] for r in ort for t in r["top3"]} <= set(SMALL_LABELS)


def test_artifact_errors(tmp_path, small_onnx_folder, capsys):
    assert "no such export folder" in run_error(capsys, "--source", "synthetic", "--headless",
                                                "--backend", "onnxruntime", "--artifact", str(tmp_path / "none"))
    assert "runs an exported folder: pass --artifact DIR" in run_error(
        capsys, "--source", "synthetic", "--headless", "--backend", "onnxruntime")
    assert "does not take option(s) address" in run_error(
        capsys, "--source", "synthetic", "--headless", "--artifact", str(small_onnx_folder),
        "--backend", "onnxruntime", "--address", "1.2.3.4:9090")


def test_console_script_is_installed():
    from importlib.metadata import entry_points

    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("tsm-demo") == "online_tsm.demo.cli:main"
