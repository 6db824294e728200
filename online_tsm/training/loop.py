"""The training loop of ``tsm-train``: clips in, the best checkpoint, its metrics and confusion matrix out.

The model trains on whole clips (``forward_clip``) with the *causal* shift by
default, so the weights it saves stream frame by frame with exactly the
logits it was validated with.  ``bidirectional`` (offline TSM) and ``none``
(TSN) exist for comparison; a ``none`` model is saved without shift blocks,
so it also streams exactly.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from online_tsm.checkpoint import load_model, save_checkpoint
from online_tsm.fileio import atomic_write
from online_tsm.models import MobileNetV2TSM
from online_tsm.preprocess import IMAGENET_MEAN, IMAGENET_STD, resize_size
from online_tsm.machine.torch_threads import torch_threads
from online_tsm.training import data as data_mod
from online_tsm.training import distributed
from online_tsm.training.augment import EvalTransform, TrainAugment, flip_label_map
from online_tsm.training.config import TrainConfig, few_clips_warning, log, run_folder
from online_tsm.training.dataset import ClipDataset
from online_tsm.training.evaluate import EvalResult, evaluate, save_confusion
from online_tsm.training.model_init import build_model, lr_at, make_optimizer, set_train_mode, trainable_parameters


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


# -- data ----------------------------------------------------------------------------------

def load_split(cfg: TrainConfig, input_size: int) -> data_mod.DataSplit:
    """The train/val clips named by the config, with skipped clips reported."""
    fmt = cfg.data_format if cfg.data_format != "auto" else data_mod.detect_data_format(cfg.data)
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


# -- the loop ------------------------------------------------------------------------------

def train(cfg: TrainConfig) -> TrainResult:
    """Train, validate every epoch, keep the best checkpoint, and draw the confusion matrix."""
    cfg.validate()
    with torch_threads(cfg.threads):
        return _train(cfg)


@dataclass
class _Run:
    """What the epochs of one run share."""

    cfg: TrainConfig
    out: Path
    split: data_mod.DataSplit
    model: MobileNetV2TSM
    frame_stride: float | None
    train_loader: DataLoader
    val_loader: DataLoader | None
    val_shard: Any
    params: list[nn.Parameter]
    opt: torch.optim.Optimizer
    lr: float
    forward: Callable[[torch.Tensor], torch.Tensor]
    loss_fn: nn.Module
    total_steps: int
    warmup: int
    step: int = 0
    history: list[EpochStats] = field(default_factory=list)

    @property
    def checkpoint(self) -> Path:
        return self.out / "best.pt"


def _train(cfg: TrainConfig) -> TrainResult:
    run = _prepare(cfg)
    best, best_epoch = -1.0, 0
    for epoch in range(1, cfg.epochs + 1):
        stats = _train_epoch(run, epoch)
        run.history.append(stats)
        improved = run.val_loader is None or stats.val_top1 > best
        log(f"epoch {epoch}/{cfg.epochs}: train loss {stats.train_loss:.3f} acc {stats.train_top1:.3f} | "
            f"val top-1 {stats.val_top1:.3f} top-5 {stats.val_top5:.3f} | {stats.seconds:.0f} s"
            + ("  * best" if improved else ""))
        if improved:
            best, best_epoch = (stats.val_top1 if run.val_loader is not None else best), epoch
            if distributed.world().is_main:
                _save(run.model, run.checkpoint, run.split.labels, cfg, epoch, stats.val_top1, stats.val_top5,
                      run.split.description, run.frame_stride)
    return _final_evaluation(run, best_epoch)


def _prepare(cfg: TrainConfig) -> _Run:
    """Data, run folder, model, loaders and optimiser, each said in the log."""
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
    model, how = build_model(cfg, split.labels)
    if model.input_size != input_size:
        raise ValueError(f"model input size {model.input_size} != {input_size}")
    mean = tuple(getattr(getattr(model, "info", None), "mean", IMAGENET_MEAN))
    std = tuple(getattr(getattr(model, "info", None), "std", IMAGENET_STD))
    flip_map = tuple(flip_label_map(split.labels)) if cfg.hflip else None
    train_transform = (TrainAugment(input_size, mean, std, flip_map=flip_map) if cfg.augment
                       else EvalTransform(input_size, mean, std))
    train_loader = make_loader(split.train, cfg, train_transform, True)
    val_loader = make_loader(split.val, cfg, EvalTransform(input_size, mean, std), False) if split.val else None
    train_loader = distributed.shard_train_loader(train_loader, cfg.seed)  # no-op in one process
    log(f"model: MobileNetV2 TSM width {model.width_mult}, {input_size}x{input_size}, {cfg.segments} segments, "
        f"shift {cfg.shift}, {len(model.shift_blocks)} shifted blocks; {how}"
        + ("; backbone frozen" if cfg.freeze_backbone else ""))
    if cfg.shift == "bidirectional":
        log("note: a bidirectional model streams one-way (its streaming accuracy will be lower); "
            "train with --shift causal for exact streaming")
    params = trainable_parameters(model, cfg.freeze_backbone)
    opt, lr = make_optimizer(cfg, params)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return _Run(cfg, out, split, model, training_frame_stride(split.train, cfg.segments), train_loader, val_loader,
                distributed.shard_eval_loader(val_loader), params, opt, lr,
                forward=distributed.clip_forward(model, cfg.shift),  # through DistributedDataParallel when distributed
                loss_fn=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
                total_steps=len(train_loader) * cfg.epochs,
                warmup=int(round(cfg.warmup_epochs * len(train_loader))))


def _train_epoch(run: _Run, epoch: int) -> EpochStats:
    """One pass over the training clips, then validation (summed over the ranks of a distributed run)."""
    cfg, start = run.cfg, time.perf_counter()
    run.train_loader.dataset.set_epoch(epoch)
    distributed.set_epoch(run.train_loader, epoch)
    set_train_mode(run.model, cfg.freeze_backbone)
    loss_sum, correct, seen = 0.0, 0, 0
    bar = tqdm(run.train_loader, desc=f"epoch {epoch}/{cfg.epochs}", disable=not cfg.progress, unit="batch",
               leave=False)
    for clips, y in bar:
        for group in run.opt.param_groups:
            group["lr"] = lr_at(run.step, run.total_steps, run.warmup, run.lr)
        logits = run.forward(clips).mean(1)
        loss = run.loss_fn(logits, y)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(run.params, 20.0)
        run.opt.step()
        run.step += 1
        loss_sum += float(loss.detach()) * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
    bar.close()
    loss_sum, correct, seen = distributed.sum_over_ranks(loss_sum, correct, seen)
    top1 = top5 = float("nan")
    if run.val_shard is not None:
        val = distributed.gather_result(evaluate(run.model, run.val_shard, ("clip",), cfg.shift, cfg.progress,
                                                 len(run.val_shard), desc="validation")["clip"])
        top1, top5 = val.top1, val.top5
    return EpochStats(epoch, loss_sum / max(1, seen), correct / max(1, seen), top1, top5,
                      time.perf_counter() - start)


def _final_evaluation(run: _Run, best_epoch: int) -> TrainResult:
    """The best checkpoint in clip mode and streamed: metrics.json and the confusion matrix (rank 0 only)."""
    from online_tsm.training.report import format_metrics, summarize

    cfg, labels, ckpt = run.cfg, run.split.labels, run.checkpoint
    if not distributed.world().is_main:
        return TrainResult(ckpt, labels, best_epoch, None, run.history)  # rank 0 evaluates and writes the files
    if run.val_loader is None:
        log("warning: no validation clips; saved the last epoch without accuracy figures")
        return TrainResult(ckpt, labels, best_epoch, None, run.history)
    results = evaluate(load_model(ckpt), run.val_loader, ("clip", "stream"), cfg.shift, cfg.progress,
                       len(run.val_loader), desc="final evaluation")
    val = results["clip"]
    metrics = summarize(results, labels)
    image = save_confusion(val.confusion(len(labels)), labels, run.out / "confusion.png",
                           f"validation, epoch {best_epoch}: top-1 {val.top1:.3f}")
    metrics.update(best_epoch=best_epoch, checkpoint=str(ckpt), confusion_image=str(image),
                   history=[asdict(h) for h in run.history], config=_jsonable(asdict(cfg)))
    atomic_write(run.out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    log(f"best epoch {best_epoch}: " + format_metrics(metrics))
    log(f"saved {ckpt}, {image}, {run.out / 'metrics.json'}")
    return TrainResult(ckpt, labels, best_epoch, val, run.history, metrics)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def training_frame_stride(clips: list, segments: int) -> float | None:
    """Mean source frames between two sampled frames of a training clip (``None`` without clips).

    Saved in the checkpoint so that streaming can run the model at the pace it
    learned motion at (see :mod:`online_tsm.streaming.pacing`).
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
