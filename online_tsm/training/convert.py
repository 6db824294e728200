"""``tsm-convert``: any supported checkpoint (upstream online or offline, or ours) -> our format.

Our format carries what a deployment needs besides the weights (labels,
input size, mean/std, shift blocks), so later commands need no flags.  An
offline (bidirectionally shifted) upstream checkpoint converts, but streams
one-way with lower accuracy; the warning says so and the converted file
records it, so that ``tsm-train eval`` reports it too.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Sequence

from online_tsm.checkpoint import CHECKPOINT_FORMATS, OneWayShiftWarning, load_model, save_checkpoint
from online_tsm.console.cli_util import add_debug_flag, run_cli
from online_tsm.errors import UserError
from online_tsm.labels import JESTER_LABELS


def read_labels(spec: str, n_class: int) -> list[str]:
    """``jester`` or a text file with one class name a line; the count must match the model."""
    if spec == "jester":
        labels = list(JESTER_LABELS)
    else:
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"labels file not found: {path} (expected one class name a line, or 'jester')")
        labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(labels) != n_class:
        raise UserError(f"{spec} has {len(labels)} labels but the model has {n_class} classes")
    return labels


def convert(src: str, dst: str | Path, *, labels: str | None = None, input_size: int | None = None,
            half: bool = False, fmt: str = "online-tsm") -> tuple[Path, list[str]]:
    """Convert ``src`` to ``dst``; returns the written path and the warnings met (one line each)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OneWayShiftWarning)
        model = load_model(src, input_size=input_size)
    notes = [str(w.message) for w in caught if issubclass(w.category, OneWayShiftWarning)]
    names = read_labels(labels, model.n_class) if labels else list(model.info.labels)
    extra = dict(model.info.extra)
    if model.info.source_format == "upstream-offline":
        extra.setdefault("trained_shift", "bidirectional")
    extra.setdefault("converted_from", f"{Path(str(src)).name} ({model.info.source_format})")
    if fmt != "online-tsm" and half:
        raise UserError("--half applies to the online-tsm format only")
    path = save_checkpoint(model, dst, fmt=fmt, labels=names, half=half, extra=extra)
    return path, notes


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tsm-convert", description="Convert an upstream TSM checkpoint (online demo or offline training) "
        "or one of ours into the online-tsm format (weights + labels + pre-processing).")
    p.add_argument("src", help="input checkpoint (path or weights name, e.g. 'jester')")
    p.add_argument("dst", help="output file")
    p.add_argument("--labels", help="'jester' or a text file with one class name a line (default: the input's, "
                                    "else Jester's for 27 classes, class_<i> otherwise)")
    p.add_argument("--input-size", type=int, help="input side to record (default: the input's, else 224)")
    p.add_argument("--half", action="store_true", help="store weights as float16 (half the size; the model "
                                                       "still computes in float32)")
    p.add_argument("--to", dest="fmt", default="online-tsm", choices=CHECKPOINT_FORMATS,
                   help="output format (default online-tsm)")
    add_debug_flag(p)
    return p


def run(args: argparse.Namespace) -> int:
    path, notes = convert(args.src, args.dst, labels=args.labels, input_size=args.input_size, half=args.half,
                          fmt=args.fmt)
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    model = load_model(path)
    print(f"wrote {path} ({args.fmt}): {model.n_class} classes, width {model.width_mult}, "
          f"{model.input_size}x{model.input_size}, {len(model.shift_blocks)} shifted blocks, "
          f"{path.stat().st_size / 1e6:.1f} MB")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
