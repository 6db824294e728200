"""The main job of ``make run``: the whole toolkit once, on the built-in default model.

1. stream a synthetic "swiping left" clip through the online model in PyTorch,
   frame by frame with the shift buffers carried, and print what it predicts;
2. export it for this machine's CPU (ONNX + a TVM library + manifest);
3. verify the export numerically against PyTorch, then open it with
   ``backend="auto"`` (the faster of ONNX Runtime and TVM here, measured once
   and cached) and say which backend runs it and why;
4. end with the ``tsm-bench`` report (the paper's setting, beside the paper's figures).

A new user sees in a few minutes that every stage works here, and where the
artifact and the numbers came from.  ``--stream-only`` keeps stage 1 alone.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from online_tsm.checkpoint import load_model
from online_tsm.console.cli_util import add_debug_flag, run_cli
from online_tsm.errors import UserError
from online_tsm.labels import default_labels
from online_tsm.models import MobileNetV2TSM
from online_tsm.streaming.pacing import pace_from_metadata
from online_tsm.runtimes import open_runtime
from online_tsm.streaming.smoothing import PredictionSmoother, softmax
from online_tsm.synthetic import GESTURES, MOTIONS, synthetic_frames
from online_tsm.weights import DEFAULT_ASSET, DEFAULT_NAME, default_weights

STAGES = 4


def build_model(weights: str | None, seed: int = 0) -> tuple[MobileNetV2TSM, str]:
    """The model to stream and a phrase saying where its weights came from."""
    if weights:
        return load_model(weights), weights
    if default_weights() is not None:
        return load_model(DEFAULT_NAME), f"built-in default ({DEFAULT_ASSET.name}, trained on synthetic gestures)"
    from online_tsm.demo.model import random_model  # logits of order 1, so that verification means something

    return random_model(seed), f"random weights (seed {seed}), not a trained model"


def model_labels(model: MobileNetV2TSM) -> list[str]:
    info = getattr(model, "info", None)
    if info is not None and info.labels:
        return list(info.labels)
    return default_labels(model.n_class)


def stream(model: MobileNetV2TSM, n_frames: int, labels: list[str], motion: str = "swipe-left") -> str:
    """Stream one synthetic clip at the model's training pace; prints each step, returns the smoothed class.

    The pace (every how many frames to infer, how many steps to average) is
    the demo's (:mod:`online_tsm.streaming.pacing`): a model streamed faster than it
    was trained sees motion it never learned.
    """
    pace = pace_from_metadata(getattr(getattr(model, "info", None), "extra", None))
    smoother = PredictionSmoother(len(labels), history=pace.history, debounce=pace.debounce)
    print(f"inference on every {pace.every} frame(s), logits averaged over {pace.history} steps ({pace.reason})")
    runtime = open_runtime(model, "torch")
    video = runtime.new_stream()
    shown = ""
    for t, frame in enumerate(synthetic_frames(n_frames, motion=motion)):
        if t % pace.every:
            continue
        start = time.perf_counter()
        logits = video.step(runtime.preprocess(frame))
        elapsed = (time.perf_counter() - start) * 1e3
        prob = softmax(logits)
        top = int(prob.argmax())
        prediction = smoother.update(logits)
        shown = labels[prediction.index] if prediction.index is not None else ""
        print(f"frame {t:3d}  top-1 {labels[top]:<28s} p={float(prob[top]):.3f}  smoothed {shown:<28s} "
              f"{elapsed:6.1f} ms")
    return shown


def _stage(n: int, text: str) -> None:
    print(f"\n[{n}/{STAGES}] {text}", flush=True)


def export_and_verify(model: MobileNetV2TSM) -> Path:
    """Export ``model`` for this CPU (cached between runs) and verify it; raises UserError on a mismatch."""
    from online_tsm.benchmarks.artifacts import cached_artifact
    from online_tsm.export.api import export_artifact
    from online_tsm.export.verify import verify_artifact

    _stage(2, "export for this machine's CPU: ONNX + TVM library + manifest (cached after the first run)")
    folder = cached_artifact(model, "host", "causal",
                             lambda out: export_artifact(model, "host", out, progress=True),
                             log=lambda message: print(message, flush=True))
    print(f"artifact: {folder}")
    _stage(3, "verify the export against PyTorch (16 streamed frames, buffers carried by manifest names)")
    result = verify_artifact(folder)
    for line in result.lines:
        print(f"  {line}")
    if not result.passed:
        raise UserError(f"the exported artifact {folder} does not reproduce PyTorch (see above)")
    print("PASS")
    _open_auto(folder)
    return folder


def _open_auto(folder: Path) -> None:
    """Open the artifact as the demo does (``backend="auto"``) and print what was picked and what was measured."""
    from online_tsm.runtimes import open_runtime

    print("opening it with backend=auto (first time on this machine: a few seconds measuring each backend)")
    with open_runtime(folder) as runtime:
        print(f"  {runtime.description}")


def _main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    model, source = build_model(args.weights)
    labels = model_labels(model)
    print(f"online TSM MobileNetV2 x{model.width_mult:g}, {model.input_size}x{model.input_size}, "
          f"{len(model.shift_blocks)} shift buffers; weights: {source}")
    _stage(1, f"stream a synthetic '{GESTURES[args.motion]}' clip in PyTorch eager "
              "(per-frame time of a single run, not a benchmark)")
    last = stream(model, args.frames, labels, args.motion)
    print(f"after {args.frames} frames: {last or 'nothing shown'} (the clip shows {GESTURES[args.motion]})")
    if args.stream_only:
        return 0
    export_and_verify(model)
    _stage(4, "tsm-bench with its defaults (measured here; paper rows are labelled as such)")
    from online_tsm.benchmarks.cli import run_default_report

    run_default_report()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m online_tsm.apps.quickstart", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="checkpoint path or weights name (default: the built-in default model)")
    parser.add_argument("--frames", type=int, default=32,
                        help="frames of the streamed clip (default 32, about one gesture at 30 fps)")
    parser.add_argument("--motion", default="swipe-left", choices=MOTIONS, help="synthetic gesture to stream")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: library default)")
    parser.add_argument("--stream-only", action="store_true", help="stage 1 only: no export, verify or benchmark")
    add_debug_flag(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
