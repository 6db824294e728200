"""Several artifacts and backends timed against each other in one process, in interleaved rounds.

On a machine shared with other work, minutes apart can mean different load,
so a ratio between two things timed one after the other carries that noise.
``tsm-bench`` therefore ends with a head-to-head pass over its own backends
on its benchmark model; this tool does the same for any exports you name
(your int8 artifact against your float32 one, say): every contestant in the
same rounds (A B C, B C A, ...), each one's percentiles and its ratio to
the first, which is what a claim like "int8 is 1.5x the plain ONNX Runtime
loop" needs::

    python -m online_tsm.benchmarks.compare --threads 2 \\
        plain=EXPORT_FP32:ort-plain int8=EXPORT_INT8 fp32=EXPORT_FP32:onnxruntime

``NAME=FOLDER[:BACKEND]``; the backend defaults to ``auto`` (what
``open_runtime(FOLDER)`` picks); ``ort-plain`` is the ten-line
``InferenceSession.run`` loop with numpy buffers.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence


from online_tsm.benchmarks.head_to_head import stream_contestants
from online_tsm.benchmarks.latency import measure_interleaved
from online_tsm.console.cli_util import add_debug_flag, run_cli
from online_tsm.errors import UserError


def _open(spec: str, threads: int | None) -> tuple[str, Any]:
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise UserError(f"expected NAME=FOLDER[:BACKEND], got {spec!r}")
    folder, _, backend = rest.partition(":")
    options = {"threads": threads} if threads else {}
    if backend == "ort-plain":
        from online_tsm.benchmarks.baselines import PlainOnnxRuntime

        return name, PlainOnnxRuntime(folder, **options)
    from online_tsm.runtimes import open_runtime

    return name, open_runtime(folder, backend or "auto", **options)


def compare(specs: Sequence[str], *, threads: int | None = None, frames: int = 200, warmup: int = 20,
            round_size: int = 10) -> dict[str, Any]:
    """Open every ``NAME=FOLDER[:BACKEND]`` and time them in interleaved rounds; ratios are against the first."""
    from online_tsm.benchmarks.suite import camera_images

    opened = [_open(spec, threads) for spec in specs]
    stats = measure_interleaved(stream_contestants(opened, camera_images()), samples=frames, warmup=warmup,
                                round_size=round_size)
    first = stats[opened[0][0]].p50
    rows = [{"name": name, "description": rt.description, **stats[name].summary(),
             "speedup_vs_first_p50": first / stats[name].p50} for name, rt in opened]
    for _, rt in opened:
        rt.close()
    return {"threads": threads, "frames": frames, "round_size": round_size, "rows": rows}


def _main(args: argparse.Namespace) -> int:
    result = compare(args.contestants, threads=args.threads, frames=args.frames, warmup=args.warmup)
    for r in result["rows"]:
        print(f"{r['name']:>14s}  p50 {r['p50_ms']:7.2f} ms  p90 {r['p90_ms']:7.2f}  p99 {r['p99_ms']:7.2f}  "
              f"({r['runs']} runs)  {r['speedup_vs_first_p50']:.2f}x the first  [{r['description']}]")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m online_tsm.benchmarks.compare",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("contestants", nargs="+", help="NAME=FOLDER[:BACKEND] (backend: auto, onnxruntime, tvm, "
                                                       "ort-plain; default auto)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--frames", type=int, default=200, help="timed frames per contestant (default 200)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--json", help="write the result as JSON")
    add_debug_flag(parser)
    return run_cli(_main, parser, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
