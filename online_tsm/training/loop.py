"""Training and fine-tuning of the clip model: the work behind ``tsm-train``.

The model trains on whole clips (``forward_clip``) with the *causal* shift by
default, so the weights it saves stream frame by frame with exactly the
logits it was validated with.  ``bidirectional`` (offline TSM) and ``none``
(TSN) exist for comparison; a ``none`` model is saved without shift blocks,
so it also streams exactly.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from online_tsm.checkpoint import load_model, save_checkpoint
from online_tsm.fileio import atomic_write
from online_tsm.torch_threads import torch_threads
from online_tsm.models import DEFAULT_SHIFT_BLOCKS, MobileNetV2TSM
from online_tsm.preprocess import IMAGENET_MEAN, IMAGENET_STD, resize_size
from online_tsm.shift import SHIFT_MODES
from online_tsm.synthetic import DIRECTION_PAIRS, GESTURES
from online_tsm.training import data as data_mod
from online_tsm.training import distributed
from online_tsm.training.augment import EvalTransform, TrainAugment, flip_label_map
from online_tsm.training.dataset import ClipDataset
from online_tsm.training.evaluate import EvalResult, evaluate, pair_accuracy, save_confusion

OPTIMIZERS = ("sgd", "adamw")
DEFAULT_LR = {"sgd": 0.01, "adamw": 0.002}
# Below this many training clips per class, a model trained from scratch learns the backgrounds rather than the
# motion (measured: 48 clips/class from scratch reached val 0.23-0.33 at train 0.99; fine-tuned, 1.000).
FEW_CLIPS_PER_CLASS = 200


def run_folder(out: str | os.PathLike, exist_ok: bool = False) -> Path:
    """The folder this run writes to: ``out`` if it is new or empty (or ``exist_ok``), else ``out-2``, ``out-3``, ...

    A second run never overwrites the first's ``best.pt``.  The folder is
    created here, so two runs started together cannot pick the same one.
    """
    base = Path(out)
    if exist_ok:
        base.mkdir(parents=True, exist_ok=True)
        return base
    for n in range(1, 10_000):
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            if candidate.is_dir() and not any(candidate.iterdir()):
                return candidate
    raise ValueError(f"no free run folder next to {base} (tried {base.name}-2 ... -9999); pass --exist-ok or --out")


def few_clips_warning(split: data_mod.DataSplit, init: str | None) -> str | None:
    """A warning when training from scratch on too few real clips per class, or ``None``."""
    if init or not split.train or isinstance(split.train[0], data_mod.SyntheticClip):
        return None
    counts = [sum(1 for c in split.train if c.label == k) for k in range(len(split.labels))]
    if min(counts) >= FEW_CLIPS_PER_CLASS:
        return None
    return (f"training from scratch on {min(counts)}-{max(counts)} clips per class (fewer than "
            f"{FEW_CLIPS_PER_CLASS}): a model this small memorises the backgrounds; fine-tune instead with "
            "--init default (or --init jester for real hand gestures)")


@dataclass
class TrainConfig:
    """Everything one training run depends on (the CLI fills it from its flags)."""

    data: str = "synthetic"
    data_format: str = "auto"
    out: Path = Path("tsm-train-out")
    exist_ok: bool = False            # False: an existing non-empty out folder gets a free name beside it (-2, -3, ...)
    segments: int = 8
    shift: str = "causal"
    width: float | None = None        # None: the --init checkpoint's, else 1.0
    input_size: int | None = None     # None: the --init checkpoint's, else 224
    init: str | None = None
    freeze_backbone: bool = False
    epochs: int = 10
    batch_size: int = 8
    optimizer: str = "sgd"
    lr: float | None = None           # None: DEFAULT_LR of the optimizer
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.0
    seed: int = 0
    threads: int | None = None
    workers: int = 0
    val_fraction: float = data_mod.DEFAULT_VAL_FRACTION
    hflip: bool = False
    augment: bool = True              # random crop, brightness/contrast (per clip); False: deployment pre-processing
    train_clips: int = 4000           # synthetic only
    val_clips: int = 800              # synthetic only
    render_size: int | None = None    # synthetic only; None: the pre-processing's resize size
    train_list: str | None = None     # Jester layout overrides
    val_list: str | None = None
    labels_file: str | None = None
    frames_dir: str | None = None
    channels_last: bool = True
    progress: bool = True
    command: str = ""                 # recorded in the checkpoint

    def validate(self) -> None:
        if self.shift not in SHIFT_MODES:
            raise ValueError(f"unknown shift {self.shift!r}; expected one of {', '.join(SHIFT_MODES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
        if self.data_format not in data_mod.DATA_FORMATS:
            raise ValueError(f"unknown data format {self.data_format!r}; expected one of "
                             f"{', '.join(data_mod.DATA_FORMATS)}")
        for name in ("segments", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.input_size is not None and (self.input_size < 32 or self.input_size % 32):
            raise ValueError(f"input size must be a positive multiple of 32, got {self.input_size}")
        if self.width is not None and self.width <= 0:
            raise ValueError(f"width must be positive, got {self.width}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warm-up epochs must be >= 0, got {self.warmup_epochs}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_top1: float
    val_top1: float
    val_top5: float
    seconds: float


@dataclass
class TrainResult:
    checkpoint: Path
    labels: list[str]
    best_epoch: int
    val: EvalResult | None
    history: list[EpochStats] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def best_top1(self) -> float:
        return self.val.top1 if self.val is not None else float("nan")


def log(message: str) -> None:
    if distributed.world().is_main:  # one log for a distributed run: rank 0's
        print(message, file=sys.stderr, flush=True)


# -- data ----------------------------------------------------------------------------------

def load_split(cfg: TrainConfig, input_size: int) -> data_mod.DataSplit:
    """The train/val clips named by the config, with skipped clips reported."""
    fmt = cfg.data_format if cfg.data_format != "auto" else data_mod.detect_format(cfg.data)
    if fmt == "synthetic":
        split = data_mod.synthetic_split(cfg.train_clips, cfg.val_clips, cfg.seed,
                                         cfg.render_size or resize_size(input_size))
    else:
        root = Path(cfg.data)
        if not root.is_dir():
            raise data_mod.DataError(f"data folder not found: {root}")
        if fmt == "jester":
            split = data_mod.scan_jester(root, *(Path(p) if p else None for p in
                                                 (cfg.train_list, cfg.val_list, cfg.labels_file, cfg.frames_dir)))
        else:
            split = data_mod.scan_folder(root, cfg.val_fraction, cfg.seed)
    summary = split.report.summary()
    if summary:
        log(f"warning: {summary}")
    return split


def make_loader(clips: list, cfg: TrainConfig, transform: Any, train: bool) -> DataLoader:
    dataset = ClipDataset(clips, cfg.segments, transform, train=train, seed=cfg.seed)
    return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=train, num_workers=cfg.workers,
                      drop_last=train and len(dataset) > cfg.batch_size,
                      generator=torch.Generator().manual_seed(cfg.seed) if train else None,
                      worker_init_fn=_worker_init if cfg.workers else None)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not compete with the training threads


# -- model ---------------------------------------------------------------------------------

def build_model(cfg: TrainConfig, labels: list[str]) -> tuple[MobileNetV2TSM, str]:
    """A fresh or ``--init`` model for ``labels``, and a phrase saying where it came from."""
    shift_blocks = () if cfg.shift == "none" else None
    n_class = len(labels)
    if cfg.init:
        model = load_model(cfg.init, input_size=cfg.input_size, shift_blocks=shift_blocks)
        if cfg.width is not None and abs(cfg.width - model.width_mult) > 1e-9:
            raise ValueError(f"--width {cfg.width} contradicts --init {cfg.init} (width {model.width_mult}); "
                             "drop --width when fine-tuning")
        old = list(model.info.labels)
        how = f"initialised from {cfg.init}"
        if old == labels:
            how += " (classifier kept: same classes)"
        elif set(labels) <= set(old):
            # Every class is known to the checkpoint (e.g. a subset of Jester's): keep what it learnt of each.
            order = [old.index(name) for name in labels]
            rows = nn.Linear(model.classifier.in_features, n_class)
            with torch.no_grad():
                rows.weight.copy_(model.classifier.weight[order])
                rows.bias.copy_(model.classifier.bias[order])
            model.classifier, model.n_class = rows, n_class
            how += (" (classifier rows reordered to the data's classes)" if n_class == len(old) else
                    f" (classifier: the rows of {n_class} of its {len(old)} classes kept)")
        else:
            model.classifier = nn.Linear(model.classifier.in_features, n_class)
            nn.init.normal_(model.classifier.weight, 0, 0.01)
            nn.init.zeros_(model.classifier.bias)
            model.n_class = n_class
            how += f" (new classifier: {len(old)} -> {n_class} classes)"
        model.info.n_class, model.info.labels = n_class, list(labels)
    else:
        model = MobileNetV2TSM(n_class=n_class, width_mult=cfg.width or 1.0, input_size=cfg.input_size or 224,
                               shift_blocks=DEFAULT_SHIFT_BLOCKS if shift_blocks is None else shift_blocks)
        zero_init_residuals(model)
        how = "random initialisation"
    return model, how


def zero_init_residuals(model: MobileNetV2TSM) -> None:
    """Start every residual branch at zero (its last BatchNorm scale), so each block starts as identity.

    From scratch this trains markedly faster (Goyal et al. 2017's trick for
    ResNets): the signal passes the whole depth from the first step, and the
    shifted channels, which only live on residual branches, grow in as the
    loss asks for them.
    """
    from online_tsm.models.mobilenet_v2 import InvertedResidual

    for block in model.features:
        if isinstance(block, InvertedResidual) and block.use_res_connect:
            nn.init.zeros_(block.conv[-1].weight)


def _trainable(model: MobileNetV2TSM, freeze_backbone: bool) -> list[nn.Parameter]:
    for p in model.features.parameters():
        p.requires_grad_(not freeze_backbone)
    return [p for p in model.parameters() if p.requires_grad]


def _set_train_mode(model: MobileNetV2TSM, freeze_backbone: bool) -> None:
    model.train()
    if freeze_backbone:
        model.features.eval()  # frozen backbone: keep its BatchNorm statistics too


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * progress))


# -- the loop ------------------------------------------------------------------------------

def train(cfg: TrainConfig) -> TrainResult:
    """Train, validate every epoch, keep the best checkpoint, and draw the confusion matrix."""
    cfg.validate()
    with torch_threads(cfg.threads):
        return _train(cfg)


def _train(cfg: TrainConfig) -> TrainResult:
    torch.manual_seed(cfg.seed)
    # The input size decides how synthetic clips are rendered, so settle it before the data.
    input_size = cfg.input_size
    if input_size is None and cfg.init:
        input_size = load_model(cfg.init).input_size
    input_size = input_size or 224
    split = load_split(cfg, input_size)
    log(f"data: {split.description}")
    warning = few_clips_warning(split, cfg.init)
    if warning:
        log(f"warning: {warning}")
    out = run_folder(cfg.out, cfg.exist_ok)
    if out != Path(cfg.out):
        log(f"writing to {out} ({cfg.out} already holds a run; pass --exist-ok to write into it)")
    labels = split.labels
    frame_stride = training_frame_stride(split.train, cfg.segments)
    model, how = build_model(cfg, labels)
    if model.input_size != input_size:
        raise ValueError(f"model input size {model.input_size} != {input_size}")
    mean = tuple(getattr(getattr(model, "info", None), "mean", IMAGENET_MEAN))
    std = tuple(getattr(getattr(model, "info", None), "std", IMAGENET_STD))
    flip_map = tuple(flip_label_map(labels)) if cfg.hflip else None
    train_transform = (TrainAugment(input_size, mean, std, flip_map=flip_map) if cfg.augment
                       else EvalTransform(input_size, mean, std))
    train_loader = make_loader(split.train, cfg, train_transform, True)
    val_loader = make_loader(split.val, cfg, EvalTransform(input_size, mean, std), False) if split.val else None
    train_loader = distributed.shard_train_loader(train_loader, cfg.seed)  # no-op in one process
    val_shard = distributed.shard_eval_loader(val_loader)
    log(f"model: MobileNetV2 TSM width {model.width_mult}, {input_size}x{input_size}, {cfg.segments} segments, "
        f"shift {cfg.shift}, {len(model.shift_blocks)} shifted blocks; {how}"
        + ("; backbone frozen" if cfg.freeze_backbone else ""))
    if cfg.shift == "bidirectional":
        log("note: a bidirectional model streams one-way (its streaming accuracy will be lower); "
            "train with --shift causal for exact streaming")

    params = _trainable(model, cfg.freeze_backbone)
    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.optimizer]
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True,
                                                     weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = distributed.clip_forward(model, cfg.shift)  # through DistributedDataParallel when distributed
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    history: list[EpochStats] = []
    best, best_epoch = -1.0, 0
    ckpt = out / "best.pt"
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        train_loader.dataset.set_epoch(epoch)
        distributed.set_epoch(train_loader, epoch)
        _set_train_mode(model, cfg.freeze_backbone)
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{cfg.epochs}", disable=not cfg.progress, unit="batch",
                   leave=False)
        for clips, y in bar:
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total_steps, warmup, lr)
            logits = forward(clips).mean(1)
            loss = loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 20.0)
            opt.step()
            step += 1
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        bar.close()
        loss_sum, correct, seen = distributed.sum_over_ranks(loss_sum, correct, seen)
        if val_shard is not None:
            val = distributed.gather_result(evaluate(model, val_shard, ("clip",), cfg.shift, cfg.progress,
                                                     len(val_shard), desc="validation")["clip"])
            top1, top5 = val.top1, val.top5
        else:
            top1 = top5 = float("nan")
        stats = EpochStats(epoch, loss_sum / max(1, seen), correct / max(1, seen), top1, top5,
                           time.perf_counter() - start)
        history.append(stats)
        improved = val_loader is None or top1 > best
        log(f"epoch {epoch}/{cfg.epochs}: train loss {stats.train_loss:.3f} acc {stats.train_top1:.3f} | "
            f"val top-1 {top1:.3f} top-5 {top5:.3f} | {stats.seconds:.0f} s" + ("  * best" if improved else ""))
        if improved:
            best, best_epoch = (top1 if val_loader is not None else best), epoch
            if distributed.world().is_main:
                _save(model, ckpt, labels, cfg, epoch, top1, top5, split.description, frame_stride)

    if not distributed.world().is_main:
        return TrainResult(ckpt, labels, best_epoch, None, history)  # rank 0 evaluates and writes the files
    if val_loader is None:
        log("warning: no validation clips; saved the last epoch without accuracy figures")
        return TrainResult(ckpt, labels, best_epoch, None, history)
    best_model = load_model(ckpt)
    results = evaluate(best_model, val_loader, ("clip", "stream"), cfg.shift, cfg.progress, len(val_loader),
                       desc="final evaluation")
    val = results["clip"]
    metrics = summarize(results, labels)
    image = save_confusion(val.confusion(len(labels)), labels, out / "confusion.png",
                           f"validation, epoch {best_epoch}: top-1 {val.top1:.3f}")
    metrics.update(best_epoch=best_epoch, checkpoint=str(ckpt), confusion_image=str(image),
                   history=[asdict(h) for h in history], config=_jsonable(asdict(cfg)))
    atomic_write(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    log(f"best epoch {best_epoch}: " + format_metrics(metrics))
    log(f"saved {ckpt}, {image}, {out / 'metrics.json'}")
    return TrainResult(ckpt, labels, best_epoch, val, history, metrics)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def training_frame_stride(clips: list, segments: int) -> float | None:
    """Mean source frames between two sampled frames of a training clip (``None`` without clips).

    Saved in the checkpoint so that streaming can run the model at the pace it
    learned motion at (see :mod:`online_tsm.pacing`).
    """
    lengths = [c.n_frames for c in clips if c.n_frames > 0]
    return round(sum(lengths) / len(lengths) / segments, 2) if lengths else None


def _save(model: MobileNetV2TSM, path: Path, labels: list[str], cfg: TrainConfig, epoch: int, top1: float,
          top5: float, data_description: str, frame_stride: float | None = None) -> None:
    extra = {"trained_shift": cfg.shift, "segments": cfg.segments, "epoch": epoch, "val_top1": top1,
             "val_top5": top5, "data": data_description, "command": cfg.command,
             # which clips were held out, so that tsm-export --calibration holds out the same ones
             "split": {"val_fraction": cfg.val_fraction, "seed": cfg.seed}}
    if frame_stride is not None:
        extra["frame_stride"] = frame_stride
    # Weights go back to the default memory format: a checkpoint should not depend on how it was trained.
    plain = model.to(memory_format=torch.contiguous_format)
    save_checkpoint(plain, path, labels=labels, extra=extra)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)


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

# Streaming a causal model must reproduce clip mode; anything above float32 noise is a bug.
STREAM_TOLERANCE = 1e-3


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
    elif diff > STREAM_TOLERANCE:
        metrics["stream_mismatch"] = True
        print(f"error: streaming disagrees with clip mode by {diff:.2e} (> {STREAM_TOLERANCE}) for a model with a "
              f"{shift} shift", file=sys.stderr)
    if confusion:
        path = save_confusion(results["clip"].confusion(len(data.labels)), data.labels, confusion,
                              f"{Path(str(weights)).name}: top-1 {metrics['clip_top1']:.3f} ({split})")
        print(f"confusion matrix: {path}")
    return metrics
