"""The demo loop: read a frame, maybe run the model, smooth, draw, hand to the sinks.

It only talks to the runtimes protocol (``runtime.preprocess``,
``stream.step``, ``runtime.labels``), to a :class:`FrameSource` and to sinks,
so the same loop drives a webcam window on a laptop, a headless Jetson writing
a log, and the test suite.  Inference may run on every ``every``-th frame only
(the upstream demo ran every other frame); every frame is still drawn, with the
latest prediction.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

from online_tsm.demo.overlay import OverlayState, draw_overlay, fit_width
from online_tsm.demo.sinks import Sink
from online_tsm.demo.sources import FrameSource
from online_tsm.demo.stopping import StopRequest
from online_tsm.runtimes import Runtime
from online_tsm.streaming.smoothing import PredictionSmoother, SmoothedPrediction


@dataclass
class DemoOptions:
    every: int = 1                      # run the model on every n-th frame
    max_frames: int | None = None       # stop after this many frames (None: until the source ends)
    display_width: int = 640            # frames are drawn (and written) at this width; 0 = as captured
    pace: bool = False                  # play a recorded source at its frame rate (window mode)
    warning: str = ""                   # shown in red on every frame, e.g. "untrained weights"


@dataclass
class DemoSummary:
    frames: int
    inferences: int
    dropped: int
    seconds: float
    inference_seconds: float
    last_label: str | None
    stopped_by: str | None = None       # the signal that ended the run, e.g. "SIGTERM"
    reconnects: int = 0                 # times a lost camera was reopened (the stream was reset each time)

    @property
    def video_fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def model_fps(self) -> float:
        """Inferences per second of model time (pre-processing + step), i.e. what the model alone sustains."""
        return self.inferences / self.inference_seconds if self.inference_seconds > 0 else 0.0


class RateMeter:
    """A rate from an exponential moving average of intervals: steady on screen, quick to follow changes."""

    def __init__(self, alpha: float = 0.1) -> None:
        self.alpha = alpha
        self.mean: float | None = None

    def add(self, seconds: float) -> None:
        self.mean = seconds if self.mean is None else (1 - self.alpha) * self.mean + self.alpha * seconds

    @property
    def rate(self) -> float:
        return 1.0 / self.mean if self.mean else 0.0


def frame_record(index: int, time_s: float, prediction: SmoothedPrediction | None, labels: Sequence[str],
                 inferred: bool, latency_s: float | None, dropped: int) -> dict[str, Any]:
    """The per-frame log entry (also what the sinks receive)."""
    shown = prediction.index if prediction is not None else None
    return {
        "frame": index,
        "time_s": round(time_s, 4),                   # since the demo started (monotonic clock)
        "unix_time": round(time.time(), 4),
        "label": labels[shown] if shown is not None else None,
        "index": shown,
        "confidence": round(prediction.confidence, 4) if prediction is not None else 0.0,
        "top3": [{"label": labels[i], "index": i, "p": round(p, 4)} for i, p in prediction.top]
        if prediction is not None else [],
        "raw_label": labels[prediction.raw_index] if prediction is not None and prediction.raw_index is not None
        else None,
        "inferred": inferred,
        "latency_ms": round(latency_s * 1e3, 3) if latency_s is not None else None,
        "dropped": dropped,                           # frames the camera produced that were never shown, so far
    }


def run_demo(runtime: Runtime, source: FrameSource, smoother: PredictionSmoother, sinks: Sequence[Sink],
             options: DemoOptions | None = None, stop: StopRequest | None = None) -> DemoSummary:
    """Run until the source ends, ``max_frames`` is reached, a sink asks to stop, or a stop is requested.

    ``stop`` (installed for SIGINT/SIGTERM by the CLI) ends the run after the current frame; a bare Ctrl-C
    (:class:`KeyboardInterrupt`) ends it too.  Either way the sinks are closed, so the video and the log are
    complete.  When a live source was reopened (``source.generation`` changed) the model's stream and the
    smoother start over: the shift buffers hold motion from a scene that is gone.
    """
    opts = options or DemoOptions()
    stop = stop or StopRequest()
    if opts.every < 1:
        raise ValueError(f"--every must be >= 1, got {opts.every}")
    if smoother.n_class != runtime.n_class:
        raise ValueError(f"the smoother expects {smoother.n_class} classes but the model has {runtime.n_class}")
    labels = runtime.labels
    ignored = frozenset(labels[i] for i in smoother.ignore)
    stream = runtime.new_stream()
    video_rate, model_rate = RateMeter(), RateMeter()
    prediction: SmoothedPrediction | None = None
    frames = inferences = 0
    inference_seconds = 0.0
    generation = first_generation = getattr(source, "generation", 0)
    start = last = time.perf_counter()
    stop.armed = True
    try:
        while (opts.max_frames is None or frames < opts.max_frames) and not stop.requested:
            image = source.read()
            if image is None:
                break
            if getattr(source, "generation", 0) != generation:
                generation = source.generation
                stream.reset()
                smoother.reset()
                prediction = None
            now = time.perf_counter()
            if frames:
                video_rate.add(now - last)
            last = now
            inferred = frames % opts.every == 0
            latency = None
            if inferred:
                t0 = time.perf_counter()
                logits = stream.step(runtime.preprocess(image))
                latency = time.perf_counter() - t0
                prediction = smoother.update(logits)
                model_rate.add(latency)
                inferences += 1
                inference_seconds += latency
            record = frame_record(frames, now - start, prediction, labels, inferred, latency, source.dropped)
            state = OverlayState(
                label=record["label"], confidence=record["confidence"],
                top=[(t["label"], t["p"]) for t in record["top3"]],
                video_fps=video_rate.rate, model_fps=model_rate.rate, backend=runtime.backend,
                dropped=source.dropped, every=opts.every, warning=opts.warning, ignored=ignored)
            annotated = draw_overlay(fit_width(image, opts.display_width), state)
            frames += 1
            if not all([sink.write(annotated, record) for sink in sinks]):
                break
            if opts.pace and not source.live:
                _sleep_until(start + frames / source.fps)
    except KeyboardInterrupt:
        stop.request("SIGINT")  # Ctrl-C ends a camera run normally: the video and the log are still closed
    finally:
        try:
            for sink in sinks:
                sink.close()
        finally:
            stop.armed = False
    last_label = labels[prediction.index] if prediction is not None and prediction.index is not None else None
    return DemoSummary(frames, inferences, source.dropped, time.perf_counter() - start, inference_seconds,
                       last_label, stop.signal_name, generation - first_generation)


def _sleep_until(deadline: float) -> None:
    delay = deadline - time.perf_counter()
    if delay > 0:
        time.sleep(delay)

