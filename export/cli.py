"""``tsm-export``: weights -> artifact folder for a device; ``tsm-export verify DIR``; ``--list-targets``.

Thin on purpose: parsing and messages here, the work in
:func:`online_tsm.export.api.export_artifact` and
:func:`online_tsm.export.verify.verify_artifact`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from online_tsm.console.cli_util import add_debug_flag, run_cli

from online_tsm.errors import UserError
from online_tsm.export.options import rows_taking
from online_tsm.verification import DEFAULT_MIN_AGREEMENT, PRECISIONS


def _export_parser() -> argparse.ArgumentParser:
    from online_tsm.export.targets import target_names

    parser = argparse.ArgumentParser(
        prog="tsm-export",
        description="Export the online TSM model for a device: model.onnx + compiled TVM library + manifest.json "
                    "+ README.txt in one folder. 'tsm-export verify DIR' checks a folder.",
        epilog="targets: " + ", ".join(target_names()) + " (tsm-export --list-targets describes them)")
    parser.add_argument("--weights", help="checkpoint path or weights name ('default', 'jester'); "
                                          "default: the built-in default model when shipped")
    parser.add_argument("--target", help="export target (see --list-targets)")
    parser.add_argument("-o", "--output", help="output folder (created; must not exist unless --force)")
    parser.add_argument("--input-size", type=int, default=None, help="frame size (multiple of 32; default: the "
                                                                      "checkpoint's, 224 for the upstream model)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's, 20)")
    parser.add_argument("--fold-preprocess", action="store_true",
                        help="graph takes uint8 HxWx3 camera frames and resizes/crops/normalises inside")
    parser.add_argument("--camera-size", default="240x320",
                        help="HEIGHTxWIDTH of the camera frames for --fold-preprocess (default 240x320)")
    parser.add_argument("--camera-order", choices=("bgr", "rgb"), default="bgr",
                        help="colour order of the camera frames for --fold-preprocess (default bgr, as OpenCV)")
    parser.add_argument("--tune", type=int, default=0, metavar="N",
                        help="MetaSchedule trials per function (host only; the default model took 11 min at 16 "
                             "on 2 cores); records are cached and reused, and the build keeps the tuned schedules "
                             "only if they run faster here than the default ones (pip install 'online-tsm[tune]' "
                             "for the cost model)")
    parser.add_argument("--no-tuning-records", dest="tuning_records", action="store_false",
                        help="build with the default schedules even if --tune records exist for this CPU "
                             "(to compare tuned and untuned builds)")
    parser.add_argument("--shift", choices=("causal", "none"), default="causal",
                        help="'none' exports the TSN baseline (same weights, no shift) for overhead measurements")
    parser.add_argument("--library", choices=("auto", "so", "tar"), default="auto",
                        help="so: fail unless a shared library can be linked here; tar: object archive; "
                             "auto (default): .so when a linker is present")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing folder written by tsm-export (any other folder is refused); the "
                             "old export stays in place until the new one is complete")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help=f"int8: a quantized model (targets {', '.join(rows_taking('int8'))}), calibrated on "
                             "--calibration and checked against float32; fp16: float16 kernels with float32 "
                             f"accumulation (targets {', '.join(rows_taking('fp16'))}), checked on this CPU "
                             "(default fp32)")
    parser.add_argument("--calibration", metavar="DATA",
                        help="int8 calibration data: a tsm-train class folder (or its train/ split), a video, a "
                             "folder of frames, or 'synthetic' (the default for the built-in default model)")
    parser.add_argument("--min-agreement", type=float, default=DEFAULT_MIN_AGREEMENT, metavar="FRACTION",
                        help="int8: fail unless top-1 agrees with float32 on this fraction of held-out frames "
                             f"(default {DEFAULT_MIN_AGREEMENT})")
    parser.add_argument("--list-targets", action="store_true", help="print the targets table and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    add_debug_flag(parser)
    return parser


def _verify_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tsm-export verify",
        description="Check an artifact folder: re-run it against the stored PyTorch reference (onnx, host), or "
                    "check sha256s, the library's architecture and device code (aarch64, CUDA targets).")
    parser.add_argument("directory", help="artifact folder written by tsm-export")
    parser.add_argument("--emulate", action="store_true",
                        help="run an aarch64 CPU artifact under qemu and compare numerically")
    add_debug_flag(parser)
    return parser


def _default_weights() -> str:
    from online_tsm.weights import default_weights

    if default_weights() is None:
        raise UserError("no --weights given and this build ships no default model; pass --weights PATH or a "
                        "weights name (e.g. --weights jester)")
    return "default"


def _export_main(args: argparse.Namespace) -> int:
    from online_tsm.export.targets import format_table, get_target

    if args.list_targets:
        print(format_table())
        return 0
    if not args.target:
        raise UserError("--target is required (one of the rows of tsm-export --list-targets)")
    row = get_target(args.target)  # unknown target: one line, before loading anything
    if not args.output:
        raise UserError("-o/--output DIR is required (the artifact folder to write)")
    import importlib

    from online_tsm.export.api import export_artifact
    from online_tsm.export.formats.folded import parse_camera_size

    camera = parse_camera_size(args.camera_size)
    export = export_artifact
    if row.packager:  # the row names a serving layout around the artifact (a Triton model repository)
        module, function = row.packager.split(":")
        export = getattr(importlib.import_module(module), function)
    out = export(args.weights or _default_weights(), args.target, args.output, input_size=args.input_size,
                 opset=args.opset, fold_preprocess=args.fold_preprocess, tune=args.tune,
                 tuning_records=args.tuning_records, force=args.force, shift=args.shift, progress=not args.quiet,
                 camera_size=camera, color_order=args.camera_order,
                 library=args.library, precision=args.precision, calibration=args.calibration,
                 min_agreement=args.min_agreement)
    print(out)
    return 0


def _verify_main(args: argparse.Namespace) -> int:
    from online_tsm.export.verify import verify_artifact

    result = verify_artifact(args.directory, emulate=args.emulate)
    print(f"{result.directory}: target {result.target}, {result.mode} verification")
    for line in result.lines:
        print(f"  {line}")
    print("PASS" if result.passed else "FAIL")
    return 0 if result.passed else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "verify":
        return run_cli(_verify_main, _verify_parser(), argv[1:])
    return run_cli(_export_main, _export_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
