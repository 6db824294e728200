"""Stopping ``tsm-demo``: SIGINT/SIGTERM finish the frame and close the outputs; a lost camera exits with 3."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import cv2
import pytest

from helpers import seeded_model
from online_tsm.checkpoint import save_checkpoint
from online_tsm.demo import cli
from online_tsm.demo.app import DemoOptions, run_demo
from online_tsm.demo.sources import CameraSource, SyntheticSource
from online_tsm.demo.stopping import StopRequest
from online_tsm.streaming.smoothing import PredictionSmoother
from test_demo_app import ListSink, ScriptedRuntime
from test_demo_sources import BurstCapture

LABELS = [f"class {i}" for i in range(10)]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("stop") / "tiny.pt"
    save_checkpoint(seeded_model(seed=5, width_mult=0.5, input_size=96, n_class=10), path, labels=LABELS)
    return path


@pytest.fixture
def default_handlers():
    """The handlers an interactive shell gives: the run under test may have inherited an ignored SIGINT."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


class SignallingSink(ListSink):
    """Sends the process ``signals`` while frame ``at`` is being written, like `kill` arriving mid-frame."""

    def __init__(self, at: int, *signals: signal.Signals) -> None:
        super().__init__()
        self.at, self.signals = at, signals

    def write(self, image, record) -> bool:
        result = super().write(image, record)
        if record["frame"] == self.at:
            for sig in self.signals:
                signal.raise_signal(sig)
        return result


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_finishes_the_frame_then_closes_every_sink(sig, default_handlers):
    first, second = SignallingSink(4, sig), ListSink()
    before = signal.getsignal(sig)
    with StopRequest() as stop:
        summary = run_demo(ScriptedRuntime([1]), SyntheticSource(64, 48), PredictionSmoother(4), [first, second],
                           DemoOptions(display_width=0, max_frames=50), stop=stop)
    # frame 4 reached every sink (the signal arrived while the first one wrote it), then the loop ended
    assert summary.frames == 5 and len(second.records) == 5 and first.closed and second.closed
    assert summary.stopped_by == sig.name
    assert signal.getsignal(sig) is before                      # the handler is restored


def test_a_second_signal_stops_at_once_and_the_sinks_still_close(default_handlers):
    sink = SignallingSink(2, signal.SIGTERM, signal.SIGTERM)
    with StopRequest() as stop:
        summary = run_demo(ScriptedRuntime([0]), SyntheticSource(64, 48), PredictionSmoother(4), [sink],
                           DemoOptions(display_width=0, max_frames=50), stop=stop)
    assert summary.frames == 3 and sink.closed and summary.stopped_by == "SIGTERM"


def test_a_signal_outside_the_loop_interrupts(default_handlers):
    """Loading a model has nothing to finish: the signal interrupts it (the CLI then exits 130)."""
    with StopRequest(), pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGTERM)


def test_an_ignored_signal_stays_ignored(default_handlers):
    """A demo started in the background of a script (SIGINT ignored, as `&` does) is not stopped by Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with StopRequest():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL


def test_sigterm_leaves_a_playable_video_and_a_complete_log(tmp_path, tiny_checkpoint):
    """``tsm-demo --headless --output o.mp4 --log l.jsonl`` stopped by SIGTERM (systemd, timeout) mid-run."""
    video, log = tmp_path / "o.mp4", tmp_path / "l.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "online_tsm.demo.cli", "--source", "synthetic", "--headless", "--output", str(video),
         "--log", str(log), "--weights", str(tiny_checkpoint), "--threads", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120           # a bound against hanging, not a timing assertion
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and log.stat().st_size > 20_000:   # well into the run: a few dozen frames logged
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopped by SIGTERM" in err and "wrote" in err
    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert [r["frame"] for r in records] == list(range(len(records))) and len(records) > 10
    cap = cv2.VideoCapture(str(video))
    decoded = 0
    while cap.read()[0]:
        decoded += 1
    cap.release()
    assert decoded == len(records)                   # every logged frame is in the video, and it plays


def test_an_unplugged_camera_exits_with_3_and_says_why(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    """Not a normal end of stream: the outputs are closed, and the exit code and the message say it."""
    monkeypatch.setattr(cli, "open_source", lambda *a, **k: CameraSource(0, capture=BurstCapture(6), queue_size=10,
                                                                          reconnect=k["reconnect"]))
    log = tmp_path / "l.jsonl"
    rc = cli.main(["--source", "0", "--headless", "--weights", str(tiny_checkpoint), "--log", str(log)])
    err = capsys.readouterr().err
    assert rc == 3, err
    assert err.splitlines()[-1] == ("error: camera 0 stopped delivering frames (unplugged?); "
                                    "pass --reconnect SECONDS to keep trying")
    assert len(log.read_text().splitlines()) == 6


def test_reconnect_option_is_checked(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--reconnect", "-1"])
    assert "expected a number of seconds >= 0, got -1" in capsys.readouterr().err
