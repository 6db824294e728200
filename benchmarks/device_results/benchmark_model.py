"""``tsm-bench --import LOG.txt`` of LiteRT's ``benchmark_model``: a phone timed with nothing built.

Google publishes ``benchmark_model`` prebuilt for Android; pushed with
``adb``, it times ``model.tflite`` on the phone's CPU (XNNPACK,
``--num_threads``) or GPU (``--use_gpu=true``).  Its text output, all times
in microseconds, has two lines this module reads::

    count=50 first=249042 curr=250889 min=247067 max=254474 avg=249684 std=1442
    Inference timings in us: Init: 16242, First inference: 360262, Warmup (avg): 304586, Inference (avg): 249684

(newer builds prefix ``INFO:`` and append ``p5=... median=... p95=...`` to
the ``count=`` line; numbers may be printed as ``2.95034e+06``).  The first
``count=`` line is the warm-up, the last one the timed runs.  The tool feeds
random inputs and never looks at its outputs, so a row from it is a time,
never a verification: it is labelled "benchmark_model on the device, not
verified", beside the paper's Galaxy Note8 figure.  The target and model come
from a ``manifest.json`` next to the log (the documented command writes the
log into the artifact folder).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from online_tsm.errors import UserError

TOOL = "benchmark_model"
LABEL = "benchmark_model on the device, not verified"
_NUMBER = r"([0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)"
SUMMARY = re.compile(rf"Inference timings in us: Init: {_NUMBER}, First inference: {_NUMBER}, "
                     rf"Warmup \(avg\): {_NUMBER}, Inference \(avg\): {_NUMBER}")
COUNT = re.compile(rf"\bcount=(\d+)((?:\s+[a-z0-9_]+={_NUMBER})*)")
FIELD = re.compile(rf"([a-z0-9_]+)={_NUMBER}")
#: Parameters benchmark_model echoes at start (``Num threads: [4]``), kept for the row's engine label.
PARAMETER = re.compile(r"^(Graph|Num threads|Use gpu|Use xnnpack|#threads used for CPU inference|"
                       r"Min num runs|Min warmup runs): \[(.*)\]\s*$")
_PREFIX = re.compile(r"^(?:INFO:|I tflite\s*:|[IWE]/tflite\s*(?:\(\s*\d+\))?:)\s*")
MAX_BYTES = 4 << 20


def parse_benchmark_model(text: str) -> dict[str, Any] | None:
    """The figures of a ``benchmark_model`` log (µs as printed), or None when ``text`` has no summary line."""
    summary, runs, parameters = None, [], {}
    for raw in text.replace("\r", "\n").splitlines():
        line = _PREFIX.sub("", raw.strip())
        match = SUMMARY.search(line)
        if match:
            summary = dict(zip(("init_us", "first_us", "warmup_avg_us", "inference_avg_us"),
                               (float(v) for v in match.groups())))
            continue
        match = COUNT.search(line)
        if match:
            fields = {k: float(v) for k, v in FIELD.findall(match.group(2))}
            runs.append({"count": int(match.group(1)), **fields})
            continue
        match = PARAMETER.match(line)
        if match:
            parameters[match.group(1)] = match.group(2)
    if summary is None:
        return None
    timed = next((r for r in reversed(runs) if "avg" in r), None)
    return {"summary": summary, "timed": timed, "warmup": runs[0] if len(runs) > 1 else None,
            "parameters": parameters}


def read_benchmark_model(path: str | Path) -> dict[str, Any] | None:
    """The parsed log at ``path``, or None when it is something else (JSON, another tool's output)."""
    path = Path(path).expanduser()
    try:
        if path.stat().st_size > MAX_BYTES:
            return None
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return None
    return parse_benchmark_model(text)


def benchmark_model_timing(parsed: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The report's timing (ms) from a parsed log: the timed runs' average, spread and, where printed, median."""
    summary, timed = parsed["summary"], parsed["timed"] or {}
    avg_us = timed.get("avg", summary["inference_avg_us"])
    if not avg_us > 0:
        raise UserError(f"--import {path}: benchmark_model's Inference (avg) is {avg_us}; expected a time in "
                        "microseconds")
    median = timed.get("median")
    ms = (lambda key: timed[key] / 1e3 if key in timed else None)
    how = ("benchmark_model on the device: per-inference time over its timed runs (random inputs, each run "
           "independent: no buffers carried); ")
    how += ("p50 is its median" if median is not None else
            "this benchmark_model prints no median: p50 shows its average")
    return {"frames": int(timed.get("count", 0)) or None, "warmup": (parsed.get("warmup") or {}).get("count"),
            "p50_ms": (median if median is not None else avg_us) / 1e3, "p90_ms": None, "p99_ms": None,
            "mean_ms": avg_us / 1e3, "min_ms": ms("min"), "max_ms": ms("max"), "std_ms": ms("std"),
            "p5_ms": ms("p5"), "p95_ms": ms("p95"), "fps": 1e6 / avg_us, "samples_ms": [],
            "init_ms": summary["init_us"] / 1e3, "first_inference_ms": summary["first_us"] / 1e3,
            "how": how}


def _engine(parameters: dict[str, str]) -> str:
    if parameters.get("Use gpu") in ("1", "true"):
        return "LiteRT GPU delegate (benchmark_model)"
    threads = parameters.get("#threads used for CPU inference") or parameters.get("Num threads")
    return f"LiteRT XNNPACK CPU{f', {threads} threads' if threads else ''} (benchmark_model)"


def benchmark_model_row(parsed: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """One report row (the shape :func:`.reader.imported_row` gives) for a log."""
    from online_tsm.benchmarks.device_results.reader import unverified_row

    path = Path(path)
    graph = parsed["parameters"].get("Graph")
    # no manifest beside it: the phone is still what benchmark_model runs on
    return unverified_row(path, LABEL, f"{TOOL}{f' --graph={graph}' if graph else ''}, log dated",
                          engine=_engine(parsed["parameters"]), timing=benchmark_model_timing(parsed, path),
                          device="the phone benchmark_model ran on (not recorded in its log)",
                          default_target="android-litert",
                          no_manifest="model not known: no manifest.json beside the log (save the log in the "
                                      "artifact folder)")
