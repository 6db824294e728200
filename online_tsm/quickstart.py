"""The main job of ``make run``: stream a synthetic clip through the online model.

Prints, per frame, the top-1 class and how long the step took, so a new user
sees in seconds that the model, the shift buffers and the pre-processing work
together.  Later stages (export, verify, benchmark) extend this job.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from online_tsm.checkpoint import CheckpointError, load_model
from online_tsm.labels import JESTER_LABELS
from online_tsm.models import MobileNetV2TSM
from online_tsm.preprocess import preprocess_frame
from online_tsm.synthetic import synthetic_frames
from online_tsm.weights import DEFAULT_ASSET, DEFAULT_NAME, default_weights


def build_model(weights: str | None, seed: int = 0) -> tuple[MobileNetV2TSM, str]:
    """The model to stream and a phrase saying where its weights came from."""
    if weights:
        return load_model(weights), weights
    if default_weights() is not None:
        return load_model(DEFAULT_NAME), f"built-in default ({DEFAULT_ASSET.name}, trained on synthetic gestures)"
    torch.manual_seed(seed)
    return MobileNetV2TSM(n_class=len(JESTER_LABELS)).eval(), f"random weights (seed {seed}), not a trained model"


def stream(model: MobileNetV2TSM, n_frames: int, labels: list[str]) -> None:
    buffers = model.init_buffers()
    with torch.inference_mode():
        for t, frame in enumerate(synthetic_frames(n_frames)):
            start = time.perf_counter()
            x = torch.from_numpy(preprocess_frame(frame, model.input_size))[None]
            logits, *buffers = model(x, *buffers)
            elapsed = (time.perf_counter() - start) * 1e3
            prob = torch.softmax(logits[0], 0)
            top = int(prob.argmax())
            print(f"frame {t:3d}  top-1 {labels[top]:<32s} p={float(prob[top]):.3f}  {elapsed:6.1f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="checkpoint path or registry name (default: built-in)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: library default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, source = build_model(args.weights)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    labels = getattr(model, "info", None).labels if hasattr(model, "info") else list(JESTER_LABELS)
    print(f"online TSM MobileNetV2, {model.input_size}x{model.input_size}, {len(model.shift_blocks)} shift buffers; "
          f"weights: {source}")
    print("latency below is per frame (pre-processing + step) in PyTorch eager; a single run, not a benchmark")
    stream(model, args.frames, labels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
