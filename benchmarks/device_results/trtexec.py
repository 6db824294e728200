"""``tsm-bench --import TIMES.json`` of TensorRT's ``trtexec --exportTimes``: a Nano timed with nothing installed.

``trtexec`` ships with JetPack (``/usr/src/tensorrt/bin/trtexec``) and times
``model.onnx`` without Python.  ``--exportTimes=FILE`` writes a JSON array
with one object per timed inference (``latencyMs``: host-to-device copy,
compute and device-to-host copy; ``computeMs``: the GPU part, and their
start/end stamps).  trtexec feeds random inputs and never compares outputs,
so such a row is a time, never a verification: it is labelled "trtexec, not
verified", beside the paper's figure when the artifact's ``manifest.json``
lies next to the file (the documented command writes it into the artifact
folder) and says which target and model were timed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from online_tsm.errors import UserError

TOOL = "trtexec"
LABEL = "trtexec, not verified"
_KEYS = ("latencyMs", "computeMs")


def read_trtexec_times(path: str | Path) -> list[dict[str, Any]] | None:
    """The records of a ``trtexec --exportTimes`` file, or None when ``path`` is something else (a run.py result
    or an unreadable file: :func:`online_tsm.benchmarks.device_results.reader.load_result` then says what is wrong)."""
    try:
        data = json.loads(Path(path).expanduser().read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if is_trtexec_times(data) else None


def is_trtexec_times(data: Any) -> bool:
    """Whether parsed JSON looks like ``trtexec --exportTimes`` output (a list of per-inference objects)."""
    return (isinstance(data, list) and bool(data) and all(isinstance(r, dict) for r in data)
            and all(key in data[0] for key in _KEYS))


def _stats(samples: list[float]) -> dict[str, Any]:
    values = np.asarray(samples, dtype=np.float64)
    mean = float(values.mean())
    return {"frames": int(values.size), "warmup": None, "p50_ms": float(np.percentile(values, 50)),
            "p90_ms": float(np.percentile(values, 90)), "p99_ms": float(np.percentile(values, 99)),
            "mean_ms": mean, "min_ms": float(values.min()), "max_ms": float(values.max()),
            "std_ms": float(values.std()), "fps": 1000.0 / mean if mean > 0 else float("inf"),
            "samples_ms": [round(float(v), 4) for v in values]}


def trtexec_timing(records: list[dict[str, Any]], path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(timing, device_timing)`` from the records: per-inference latency and GPU compute time, in ms."""
    try:
        latency = [float(r["latencyMs"]) for r in records]
        compute = [float(r["computeMs"]) for r in records]
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"--import {path}: a trtexec record lacks a number for {exc} (expected the JSON written "
                        "by trtexec --exportTimes)") from None
    timing = _stats(latency)
    timing["how"] = ("trtexec latencyMs per inference: input copied to the GPU, engine run, output copied back; "
                     "random inputs, buffers not carried between frames")
    device = _stats(compute)
    device["how"] = "trtexec computeMs: the engine's GPU time per inference"
    device.pop("samples_ms")
    return timing, device


def trtexec_row(records: list[dict[str, Any]], path: str | Path) -> dict[str, Any]:
    """One report row (the shape :func:`.reader.imported_row` gives) for trtexec times."""
    from online_tsm.benchmarks.device_results.reader import unverified_row

    path = Path(path)
    timing, device_timing = trtexec_timing(records, path)
    return unverified_row(path, LABEL, f"{TOOL} --exportTimes, file dated", engine="tensorrt (trtexec)",
                          device="the device trtexec ran on (not recorded by trtexec)", timing=timing,
                          device_timing=device_timing,
                          no_manifest="model not known: no manifest.json beside the file (run trtexec in the "
                                      "artifact folder)")
