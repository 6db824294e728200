"""``tsm-bench``: per-frame latency of the online TSM on every backend, beside the paper's figures.

Thin on purpose: argument parsing and printing; the work is in
:func:`online_tsm.benchmarks.suite.run_benchmark`.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from typing import Sequence

from online_tsm.benchmarks.backends import BACKEND_PLANS
from online_tsm.benchmarks.report import render_terminal, write_json, write_markdown, write_plot
from online_tsm.benchmarks.goals import report_dict
from online_tsm.benchmarks.results import BenchConfig, BenchReport
from online_tsm.benchmarks.suite import run_benchmark
from online_tsm.console.cli_util import add_debug_flag, run_cli
from online_tsm.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tsm-bench",
        description="Per-frame streaming latency of the online TSM (shift buffers carried) on every backend, "
                    "TSM against TSN in the same run, end to end and with batched streams; printed beside the "
                    "paper's Jetson Nano / Galaxy Note8 figures (labelled as such).",
        epilog="Default model: the small model shipped with the package (what tsm-demo runs), at its own input "
               "size; --weights paper measures the paper's setting, MobileNetV2 width 1.0 at 224x224, with the "
               "upstream Jester weights when they are in the local cache, else seeded random weights of that "
               "architecture (latency does not depend on weight values). Exported and compiled artifacts are "
               "cached, so only the first run builds them.")
    p.add_argument("--weights", help="checkpoint path or weights name ('paper': MobileNetV2 1.0 at 224, the "
                                     "paper's setting; 'jester': upstream weights, downloaded once); default: the "
                                     "shipped default model (the paper setting in a build without it)")
    p.add_argument("--input-size", type=int, help="square input size, a multiple of 32 (default: the model's, 224)")
    p.add_argument("--backends", help=f"comma-separated, from: {', '.join(BACKEND_PLANS)} "
                                      "(default: all that run here; the rest are listed as skipped)")
    p.add_argument("--frames", type=int, default=100, help="timed frames per backend and variant (default 100)")
    p.add_argument("--warmup", type=int, default=10, help="untimed warm-up frames (default 10)")
    p.add_argument("--threads", type=int, help="intra-op threads for every backend (default: library default)")
    p.add_argument("--streams", type=int, default=8,
                   help="also time step_many over N streams against N sequential streams (default 8; 0: off)")
    p.add_argument("--no-end-to-end", action="store_true", help="skip the pre-processing + step + smoothing loop")
    p.add_argument("--rpc", metavar="HOST:PORT", help="time a compiled artifact on a remote device (TVM RPC server)")
    p.add_argument("--target", help="export target of the --rpc device (e.g. jetson-nano, raspberry-pi-4)")
    p.add_argument("--import", dest="imports", action="append", metavar="RESULT.json",
                   help="add a result written on a device by the artifact's run.py --json, or the times of "
                        "trtexec --exportTimes or the log of LiteRT's benchmark_model (labelled not verified) "
                        "(repeatable); "
                        "without --backends nothing is measured here")
    p.add_argument("--json", metavar="PATH", help="write the full report (samples, machine, targets) as JSON")
    p.add_argument("--markdown", metavar="PATH", help="write the report as Markdown (to paste into an issue)")
    p.add_argument("--plot", metavar="PNG", help="write latency distributions and TSM-vs-TSN bars as a PNG")
    p.add_argument("--profile", action="store_true",
                   help="add a per-operator profile of TSM and TSN (ONNX Runtime's profiler): where the time goes")
    p.add_argument("--no-head-to-head", action="store_true",
                   help="skip the final pass that times every backend against the others in the same rounds "
                        "(the pass the comparisons between backends are read from)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-roofline", action="store_true", help="omit the roofline bound rows")
    add_debug_flag(p)
    return p


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    backends = None
    if args.backends:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        if not backends:
            raise UserError("--backends is empty; expected a comma-separated list such as torch,onnxruntime")
    for path, suffix, flag in ((args.plot, ".png", "--plot"),):
        if path and not path.lower().endswith(suffix):
            raise UserError(f"{flag} expects a {suffix} file name, got {path!r}")
    return BenchConfig(weights=args.weights, input_size=args.input_size, backends=backends, frames=args.frames,
                       warmup=args.warmup, threads=args.threads, streams=args.streams,
                       end_to_end=not args.no_end_to_end, rpc=args.rpc, target=args.target,
                       progress=not args.no_progress and sys.stderr.isatty(), roofline=not args.no_roofline,
                       profile=args.profile, head_to_head=not args.no_head_to_head)


def emit(report: BenchReport | dict, *, json_path: str | None = None, markdown_path: str | None = None,
         plot_path: str | None = None, out=None) -> dict:
    """Print the table and write the requested files; returns the report's dictionary."""
    data = report if isinstance(report, dict) else report_dict(report)
    out = out or sys.stdout
    out.write(render_terminal(data))
    for path, writer, what in ((json_path, write_json, "JSON"), (markdown_path, write_markdown, "Markdown"),
                               (plot_path, write_plot, "plot")):
        if path:
            print(f"{what} written to {writer(data, path)}", file=sys.stderr)
    return data


def _main(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    cfg = config_from_args(args)
    command = "tsm-bench" + ("" if not argv else " " + " ".join(shlex.quote(a) for a in argv))
    if args.imports:
        from online_tsm.benchmarks.device_results.reader import import_only_report, import_results

        rows = import_results(args.imports)   # a bad file is reported before anything is measured
        if not (args.backends or args.rpc):
            emit(import_only_report(rows, command), json_path=args.json, markdown_path=args.markdown,
                 plot_path=args.plot)
            return 0
        data = report_dict(run_benchmark(cfg, command=command))
        data["imported"] = rows
        emit(data, json_path=args.json, markdown_path=args.markdown, plot_path=args.plot)
        return 0
    report = run_benchmark(cfg, command=command)
    emit(report, json_path=args.json, markdown_path=args.markdown, plot_path=args.plot)
    return 0


def run_default_report(frames: int = 100, warmup: int = 10, backends: Sequence[str] | None = None,
                       out=None, **options) -> dict:
    """The default ``tsm-bench`` report, for ``make run`` to end with; returns the report's dictionary.

    Prints the same table as ``tsm-bench`` with no arguments (progress bars on
    a terminal only).  ``options`` are further :class:`BenchConfig` fields.
    """
    cfg = BenchConfig(frames=frames, warmup=warmup, backends=list(backends) if backends else None,
                      progress=sys.stderr.isatty(), **options)
    report = run_benchmark(cfg, command="tsm-bench" + (f" --frames {frames}" if frames != 100 else ""))
    return emit(report, out=out)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli(lambda args: _main(args, argv), build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
