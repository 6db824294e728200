"""``tsm-train``: train or fine-tune online TSM, evaluate a checkpoint, or write the synthetic set to disk.

    tsm-train --data DIR_OR_synthetic [options]          train (or fine-tune with --init)
    tsm-train eval --weights W --data D                   top-1/top-5, clip mode and streamed
    tsm-train make-synthetic OUT --clips N                the synthetic gestures as mp4 class folders
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Sequence

from online_tsm.console.cli_util import add_debug_flag, run_cli

from online_tsm.errors import UserError

COMMANDS = ("train", "eval", "make-synthetic")
EPILOG = ("other commands: 'tsm-train eval --help' (accuracy of a checkpoint, clip mode and streamed), "
          "'tsm-train make-synthetic --help' (write the synthetic gesture set as videos)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _data_args(parser: argparse.ArgumentParser) -> None:
    from online_tsm.training.data import DEFAULT_VAL_FRACTION

    g = parser.add_argument_group("data")
    g.add_argument("--data", required=True,
                   help="a folder with one sub-folder per class (videos or frame folders; optional train/ and val/ "
                        "splits), a Jester folder (frame folders by id + ';' CSV lists), or 'synthetic'")
    g.add_argument("--format", dest="data_format", default="auto", choices=("auto", "folder", "jester", "synthetic"),
                   help="layout of --data (default: detected)")
    g.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                   help="class folders without train/ and val/: share of clips held out, per class (default "
                        f"{DEFAULT_VAL_FRACTION:g})")
    g.add_argument("--seed", type=int, default=0, help="seed of the split, the synthetic set and training (default 0)")
    g.add_argument("--train-clips", type=_positive_int, default=4000, help="synthetic: training clips (default 4000)")
    g.add_argument("--val-clips", type=_positive_int, default=800, help="synthetic: validation clips (default 800)")
    g.add_argument("--train-list", help="Jester: the id;label training list (default: *train*.csv in --data)")
    g.add_argument("--val-list", help="Jester: the id;label validation list (default: *valid*.csv in --data)")
    g.add_argument("--labels-file", help="Jester: class names, one a line (default: *labels*.csv in --data)")
    g.add_argument("--frames-dir", help="Jester: folder of frame folders (default: --data/20bn-jester-v1 or --data)")
    g.add_argument("--workers", type=int, default=0, help="data loading processes (default 0: in the main process)")


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tsm-train", description="Train or fine-tune MobileNetV2 online TSM on clips (causal shift: the "
        "saved model streams frame by frame with the logits it was validated with).", epilog=EPILOG)
    _data_args(p)
    m = p.add_argument_group("model")
    m.add_argument("--init", help="start from a checkpoint (any supported format) or a weights name such as "
                                  "'jester'; the classifier keeps its rows when every class is one of the "
                                  "checkpoint's (matched by name), else it is replaced")
    m.add_argument("--width", type=float, help="width multiplier of a new model (default 1.0; not with --init)")
    m.add_argument("--input-size", type=int, help="input side in pixels, a multiple of 32 (default: the --init "
                                                  "model's, else 224)")
    m.add_argument("--shift", default="causal", choices=("causal", "bidirectional", "none"),
                   help="temporal shift while training: causal (streams exactly; default), bidirectional (offline "
                        "TSM, for comparison), none (TSN baseline)")
    m.add_argument("--segments", type=_positive_int, default=8, help="frames sampled per clip, one per segment "
                                                                     "(default 8)")
    m.add_argument("--freeze-backbone", action="store_true", help="train the classifier only")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=_positive_int, default=10)
    o.add_argument("--batch-size", type=_positive_int, default=8, help="clips per step (default 8)")
    o.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"), help="default sgd (momentum 0.9)")
    o.add_argument("--lr", type=float, help="peak learning rate (default 0.01 for sgd, 0.002 for adamw); "
                                            "warm-up then cosine decay")
    o.add_argument("--warmup-epochs", type=float, default=0.5,
                   help="epochs of linear learning-rate warm-up before the cosine decay (default 0.5)")
    o.add_argument("--weight-decay", type=float, default=1e-4)
    o.add_argument("--label-smoothing", type=float, default=0.0)
    o.add_argument("--hflip", action="store_true",
                   help="random horizontal flips, swapping the labels of mirrored classes (Left<->Right, "
                        "Clockwise<->Counterclockwise); refused when a mirrored class is missing")
    o.add_argument("--no-augment", action="store_true",
                   help="no random crop or brightness/contrast: frames are pre-processed as in deployment (segment "
                        "sampling stays random); converges faster on clean data such as the synthetic set")
    o.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    r = p.add_argument_group("output")
    r.add_argument("--out", default="tsm-train-out",
                   help="folder for best.pt, confusion.png and metrics.json (default tsm-train-out; when it already "
                        "holds a run, the next free tsm-train-out-2, -3, ... is used)")
    r.add_argument("--exist-ok", action="store_true", help="write into --out even if it holds a run (replaces its "
                                                          "best.pt)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_debug_flag(p)
    return p


def run_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from online_tsm.training import distributed
    from online_tsm.training.config import TrainConfig, log
    from online_tsm.training.loop import train

    world = distributed.setup()  # under torchrun: join the process group; else one process

    cfg = TrainConfig(
        data=args.data, data_format=args.data_format, out=Path(args.out), segments=args.segments, shift=args.shift,
        width=args.width, input_size=args.input_size, init=args.init, freeze_backbone=args.freeze_backbone,
        epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
        seed=args.seed, exist_ok=args.exist_ok,
        threads=args.threads, workers=args.workers, val_fraction=args.val_fraction, hflip=args.hflip,
        augment=not args.no_augment,
        train_clips=args.train_clips, val_clips=args.val_clips, train_list=args.train_list,
        val_list=args.val_list, labels_file=args.labels_file, frames_dir=args.frames_dir,
        progress=not args.no_progress and world.is_main, command="tsm-train " + shlex.join(argv))
    try:
        if world.distributed:
            log(world.describe())
            distributed.local_batch(args.batch_size)  # a batch that does not split: refused before any work
        result = train(cfg)
    finally:
        distributed.teardown()
    if world.is_main:
        print(f"best checkpoint: {result.checkpoint} (epoch {result.best_epoch}, val top-1 {result.best_top1:.3f})")
    return 0


# -- eval ----------------------------------------------------------------------------------

def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tsm-train eval", description="Top-1/top-5 of a checkpoint in clip mode and streamed frame by frame "
        "(with shift buffers); the two agree for causally trained models.")
    p.add_argument("--weights", required=True, help="checkpoint path or weights name ('default', 'jester')")
    _data_args(p)
    p.add_argument("--split", default="val", choices=("val", "train", "all"), help="which clips (default val)")
    p.add_argument("--segments", type=_positive_int, help="frames per clip (default: the checkpoint's, else 8)")
    p.add_argument("--shift", choices=("causal", "bidirectional", "none"),
                   help="clip-mode shift (default: the one the checkpoint was trained with, else causal)")
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--confusion", help="write the confusion matrix (clip mode) to this PNG")
    p.add_argument("--json", help="write the metrics to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_flag(p)
    return p


def run_eval(args: argparse.Namespace) -> int:
    from online_tsm.training.config import TrainConfig
    from online_tsm.training.report import evaluate_checkpoint

    cfg = TrainConfig(data=args.data, data_format=args.data_format, segments=args.segments or 0,
                      batch_size=args.batch_size, seed=args.seed, threads=args.threads, workers=args.workers,
                      val_fraction=args.val_fraction, train_clips=args.train_clips, val_clips=args.val_clips,
                      train_list=args.train_list, val_list=args.val_list, labels_file=args.labels_file,
                      frames_dir=args.frames_dir, progress=not args.no_progress)
    metrics = evaluate_checkpoint(args.weights, cfg, args.split, args.shift, args.confusion)
    if args.json:
        from online_tsm.fileio import atomic_write

        atomic_write(args.json, json.dumps(metrics, indent=2) + "\n")
    return 1 if metrics.get("stream_mismatch") else 0


# -- make-synthetic ------------------------------------------------------------------------

def synthetic_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tsm-train make-synthetic", description="Write the synthetic gesture set as mp4 videos in class "
        "folders named after the Jester classes (the folder format of tsm-train).")
    p.add_argument("out", help="output folder (created)")
    p.add_argument("--clips", type=_positive_int, default=400, help="number of clips, classes balanced (default 400)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="160x120", help="frame size WxH (default 160x120)")
    p.add_argument("--fps", type=float, default=12.0, help="frame rate written into the files (default 12, "
                                                           "as Jester)")
    add_debug_flag(p)
    return p


def run_synthetic(args: argparse.Namespace) -> int:
    from online_tsm import synthetic

    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise UserError(f"--size must look like 160x120 (WxH), got {args.size!r}") from None
    if width < 32 or height < 32:
        raise UserError(f"--size must be at least 32x32, got {args.size}")
    root = synthetic.write_dataset(args.out, args.clips, args.seed, height, width, args.fps)
    print(f"wrote {args.clips} clips in {len(synthetic.MOTIONS)} class folders under {root}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else "train"
    rest = argv[1:] if argv and argv[0] in COMMANDS else argv
    if command == "eval":
        return run_cli(run_eval, eval_parser(), rest)
    if command == "make-synthetic":
        return run_cli(run_synthetic, synthetic_parser(), rest)
    return run_cli(lambda args: run_train(args, rest), train_parser(), rest)


if __name__ == "__main__":
    sys.exit(main())
