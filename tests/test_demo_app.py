"""The demo loop and overlay, with a scripted runtime (no model): inference stride, sinks, stopping."""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pytest

from online_tsm.demo.app import DemoOptions, RateMeter, run_demo
from online_tsm.demo.overlay import OverlayState, draw_overlay, fit_width
from online_tsm.demo.sinks import ScreenshotSink, VideoSink
from online_tsm.demo.sources import FrameSource, SyntheticSource
from online_tsm.runtimes.base import Runtime
from online_tsm.streaming.smoothing import PredictionSmoother

LABELS = ["zero", "one", "two", "three"]


class ScriptedRuntime(Runtime):
    """Returns the next scripted logits on each step, whatever the frame; counts the steps and fresh states."""

    backend = "scripted"

    def __init__(self, script: list[int]) -> None:
        super().__init__(labels=LABELS, input_size=16, frame_shape=(1, 3, 16, 16))
        self.script = list(script)
        self.steps = 0
        self.zero_states = 0

    def _zero_state(self, batch: int = 1) -> Any:  # works with and without the batch argument
        self.zero_states += 1
        return None

    def _run(self, frames: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        logits = np.zeros((1, len(LABELS)), np.float32)
        logits[0, self.script[self.steps % len(self.script)]] = 4.0
        self.steps += 1
        return logits, state


class ListSink:
    def __init__(self, stop_after: int | None = None) -> None:
        self.images: list[np.ndarray] = []
        self.records: list[dict] = []
        self.closed = False
        self.stop_after = stop_after

    def write(self, image, record) -> bool:
        self.images.append(image)
        self.records.append(record)
        return self.stop_after is None or len(self.records) < self.stop_after

    def close(self) -> None:
        self.closed = True


class InterruptedSource(FrameSource):
    """Ctrl-C after ``n`` frames, like a user stopping a camera run."""

    def __init__(self, n: int) -> None:
        self.inner, self.n, self.i = SyntheticSource(64, 48), n, 0

    def read(self):
        if self.i == self.n:
            raise KeyboardInterrupt
        self.i += 1
        return self.inner.read()


def test_inference_every_other_frame_while_drawing_every_frame():
    runtime = ScriptedRuntime([1, 1, 2, 2, 2, 2])
    sink = ListSink()
    summary = run_demo(runtime, SyntheticSource(64, 48), PredictionSmoother(4, history=1, debounce=2), [sink],
                       DemoOptions(every=2, max_frames=9, display_width=128))
    assert summary.frames == 9 and summary.inferences == 5 == runtime.steps
    assert [r["inferred"] for r in sink.records] == [True, False] * 4 + [True]
    assert [r["frame"] for r in sink.records] == list(range(9))
    # steps see 1,1,2,2,2 -> shown 1 from the first step, 2 after two consecutive steps (the 4th)
    assert [r["label"] for r in sink.records] == ["one"] * 6 + ["two"] * 3
    assert all(r["latency_ms"] is None for r in sink.records if not r["inferred"])
    assert all(img.shape == (96, 128, 3) for img in sink.images)   # drawn at the display width
    assert sink.closed


def test_a_sink_can_stop_the_loop_and_all_sinks_are_closed():
    first, second = ListSink(stop_after=3), ListSink()
    summary = run_demo(ScriptedRuntime([0]), SyntheticSource(64, 48), PredictionSmoother(4), [first, second],
                       DemoOptions(display_width=0))
    assert summary.frames == 3 and len(second.records) == 3
    assert second.images[0].shape == (48, 64, 3)
    assert first.closed and second.closed


def test_ctrl_c_ends_the_run_cleanly():
    sink = ListSink()
    summary = run_demo(ScriptedRuntime([3]), InterruptedSource(5), PredictionSmoother(4), [sink])
    assert summary.frames == 5 and sink.closed and summary.last_label == "three"


class ReopenedSource(FrameSource):
    """A camera that was reopened before frame ``at`` (what CameraSource does after an unplug)."""

    live = True

    def __init__(self, at: int) -> None:
        self.inner, self.at, self.i, self.generation = SyntheticSource(64, 48), at, 0, 0

    def read(self):
        if self.i == self.at:
            self.generation += 1
        self.i += 1
        return self.inner.read()


def test_a_reopened_camera_resets_the_stream_and_the_smoother():
    """After a reconnect the scene is new: no shift buffer or averaged logit from before may leak into it."""
    runtime = ScriptedRuntime([1, 1, 1, 2, 2, 2])
    sink = ListSink()
    summary = run_demo(runtime, ReopenedSource(at=3), PredictionSmoother(4, history=3, debounce=1), [sink],
                       DemoOptions(max_frames=6, display_width=0))
    assert runtime.zero_states == 2 and summary.reconnects == 1      # new_stream, then one reset
    # frame 3 sees only its own logits (class 2); without the reset the average of 1,1,2 would still show "one"
    assert [r["label"] for r in sink.records] == ["one"] * 3 + ["two"] * 3


def test_smoother_must_match_the_model():
    with pytest.raises(ValueError, match="smoother expects 5 classes but the model has 4"):
        run_demo(ScriptedRuntime([0]), SyntheticSource(64, 48), PredictionSmoother(5), [])


def test_overlay_draws_on_a_copy_at_any_size():
    image = np.full((240, 320, 3), 100, np.uint8)
    state = OverlayState("Swiping Left", 0.83, [("Swiping Left", 0.83), ("Swiping Right", 0.1), ("Stop Sign", 0.02)],
                         video_fps=29.5, model_fps=40.2, backend="torch", dropped=3, every=2,
                         warning="untrained weights")
    out = draw_overlay(image, state)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (image == 100).all() and not np.array_equal(out, image)
    assert draw_overlay(fit_width(image, 1280), OverlayState(None)).shape == (960, 1280, 3)
    assert fit_width(image, 0) is image


def test_rate_meter():
    meter = RateMeter(alpha=0.5)
    assert meter.rate == 0.0
    meter.add(0.1)
    meter.add(0.1)
    assert meter.rate == pytest.approx(10.0)


def test_live_video_is_written_at_the_measured_rate(tmp_path):
    """A camera shown at 10 fps (drops, slow model) must not play back at its nominal 30 fps."""
    sink = VideoSink(tmp_path / "live.mp4", fps=30.0, measure_fps=True, measure_frames=5)
    for i in range(12):
        sink.write(np.full((48, 64, 3), 20 * i, np.uint8), {"time_s": 0.1 * i})
    sink.close()
    cap = cv2.VideoCapture(str(tmp_path / "live.mp4"))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0, rel=0.01)
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12 == sink.frames


def test_short_live_run_still_writes_every_frame(tmp_path):
    sink = VideoSink(tmp_path / "short.avi", fps=30.0, measure_fps=True, measure_frames=30)
    for i in range(3):
        sink.write(np.zeros((48, 64, 3), np.uint8), {"time_s": 0.5 * i})
    sink.close()
    cap = cv2.VideoCapture(str(tmp_path / "short.avi"))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(2.0, rel=0.01) and sink.frames == 3


def test_screenshot_keeps_the_last_frame(tmp_path):
    sink = ScreenshotSink(tmp_path / "shot.png")
    for i in range(3):
        sink.write(np.full((8, 8, 3), i, np.uint8), {})
    sink.close()
    assert (cv2.imread(str(tmp_path / "shot.png")) == 2).all()
