"""What a trained model scores, in clip mode and streamed, as figures and as the lines ``tsm-train`` prints.

:func:`summarize` turns evaluation results into the metrics a run saves
(top-1/top-5 per mode, clip-vs-stream agreement, direction-pair accuracy on
the synthetic gestures); :func:`evaluate_checkpoint` is ``tsm-train
--evaluate``: a saved checkpoint on a data set, with its report.
"""
from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from online_tsm.checkpoint import load_model
from online_tsm.synthetic import DIRECTION_PAIRS, GESTURES
from online_tsm.machine.torch_threads import torch_threads
from online_tsm.training.augment import EvalTransform
from online_tsm.training.config import TrainConfig
from online_tsm.training.evaluate import EvalResult, evaluate, pair_accuracy, save_confusion
from online_tsm.training.loop import load_split, make_loader
from online_tsm.verification import FP32


def summarize(results: dict[str, EvalResult], labels: list[str]) -> dict[str, Any]:
    """Top-1/top-5 per mode, clip-vs-stream agreement, and direction-pair accuracy for synthetic classes."""
    metrics: dict[str, Any] = {}
    for mode, r in results.items():
        metrics[f"{mode}_top1"], metrics[f"{mode}_top5"] = r.top1, r.top5
    if "clip" in results and "stream" in results:
        a, b = results["clip"], results["stream"]
        metrics["clip_stream_max_abs_diff"] = float(np.abs(a.logits - b.logits).max()) if len(a.labels) else 0.0
        metrics["clip_stream_same_prediction"] = float(np.mean(a.logits.argmax(1) == b.logits.argmax(1)))
    pairs = {}
    clip = results.get("clip") or next(iter(results.values()))
    for m1, m2 in DIRECTION_PAIRS:
        l1, l2 = GESTURES[m1], GESTURES[m2]
        if l1 in labels and l2 in labels:
            pairs[f"{l1} / {l2}"] = pair_accuracy(clip.logits, clip.labels, labels.index(l1), labels.index(l2))
    if pairs:
        metrics["direction_pair_accuracy"] = pairs
    return metrics


def format_metrics(metrics: dict[str, Any]) -> str:
    """The metrics as one line of the training log."""
    parts = []
    for mode in ("clip", "stream"):
        if f"{mode}_top1" in metrics:
            parts.append(f"{mode} top-1 {metrics[f'{mode}_top1']:.3f} top-5 {metrics[f'{mode}_top5']:.3f}")
    if "clip_stream_max_abs_diff" in metrics:
        parts.append(f"clip vs stream: max |logit diff| {metrics['clip_stream_max_abs_diff']:.2e}, "
                     f"same prediction {metrics['clip_stream_same_prediction']:.3f}")
    for name, acc in metrics.get("direction_pair_accuracy", {}).items():
        parts.append(f"{name} {acc:.3f}")
    return "; ".join(parts)


# -- evaluation of a saved checkpoint ------------------------------------------------------

def evaluate_checkpoint(weights: str, cfg: TrainConfig, split: str = "val", shift: str | None = None,
                        confusion: str | Path | None = None) -> dict[str, Any]:
    """Top-1/top-5 of ``weights`` on ``cfg``'s data, in clip mode and streamed; prints a report.

    ``cfg.segments`` of 0 means the checkpoint's own segment count.  The
    returned metrics say ``stream_mismatch`` when a model without a
    bidirectional shift streams to other logits than its clip model.
    """
    with torch_threads(cfg.threads):
        return _evaluate_checkpoint(weights, cfg, split, shift, confusion)


def _evaluate_checkpoint(weights: str, cfg: TrainConfig, split: str, shift: str | None,
                         confusion: str | Path | None) -> dict[str, Any]:
    model = load_model(weights)
    extra = model.info.extra
    trained_shift = str(extra.get("trained_shift", "causal"))
    shift = shift or ("none" if not model.shift_blocks else trained_shift)
    segments = cfg.segments or int(extra.get("segments", 8))
    cfg = TrainConfig(**{**asdict(cfg), "segments": segments, "shift": shift})
    cfg.validate()
    data = load_split(cfg, model.input_size)
    if data.labels != list(model.info.labels):
        raise ValueError(f"the classes of {cfg.data} ({', '.join(data.labels[:4])}...) differ from the "
                         f"checkpoint's ({', '.join(model.info.labels[:4])}...); evaluate on data with the same classes")
    clips = {"val": data.val, "train": data.train, "all": data.train + data.val}[split]
    if not clips:
        raise ValueError(f"no {split} clips in {cfg.data}")
    loader = make_loader(clips, cfg, EvalTransform(model.input_size, model.info.mean, model.info.std), False)
    results = evaluate(model, loader, ("clip", "stream"), shift, cfg.progress, len(loader))
    metrics = summarize(results, data.labels)
    metrics.update(weights=str(weights), clips=len(clips), split=split, segments=segments, clip_shift=shift)
    print(f"weights: {weights} ({model.info.source_format}, width {model.width_mult}, {model.input_size}x"
          f"{model.input_size}, {len(model.shift_blocks)} shifted blocks, trained shift {trained_shift})")
    print(f"data: {data.description}; evaluating {len(clips)} {split} clips, {segments} segments (centre frames)")
    for mode, label in (("clip", f"clip mode ({shift} shift)"), ("stream", "streamed frame by frame")):
        print(f"  {label:<28s} top-1 {metrics[f'{mode}_top1']:.4f}  top-5 {metrics[f'{mode}_top5']:.4f}")
    diff = metrics["clip_stream_max_abs_diff"]
    print(f"  clip vs stream: max |logit difference| {diff:.2e}, same prediction on "
          f"{metrics['clip_stream_same_prediction']:.1%} of clips")
    for name, acc in metrics.get("direction_pair_accuracy", {}).items():
        print(f"  direction pair {name}: {acc:.4f} (chance 0.5)")
    if shift == "bidirectional":
        print("  note: trained with a bidirectional shift, the model streams one-way, so the streamed figures are "
              "lower; retrain with --shift causal for exact streaming")
    elif diff > (tolerance := _stream_tolerance(results)):
        metrics["stream_mismatch"] = True
        print(f"error: streaming disagrees with clip mode by {diff:.2e} (> {tolerance:.2g}, the float32 rule) for a "
              f"model with a {shift} shift", file=sys.stderr)
    if confusion:
        path = save_confusion(results["clip"].confusion(len(data.labels)), data.labels, confusion,
                              f"{Path(str(weights)).name}: top-1 {metrics['clip_top1']:.3f} ({split})")
        print(f"confusion matrix: {path}")
    return metrics


def _stream_tolerance(results: dict[str, EvalResult]) -> float:
    """Streaming a causal model must reproduce clip mode up to float32 round-off: the float32 verification rule,
    as between two machines, since clip mode batches the frames of a clip and streaming runs them one by one
    (other kernels, another summation order)."""
    return FP32.tolerance(results["clip"].logits, same_machine=False)
