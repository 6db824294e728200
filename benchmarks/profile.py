"""Which operators take the time: ONNX Runtime's own profiler per op type, TVM's per function class.

A latency number says *how long*; when a target is missed the question is
*where*.  ORT writes one event per node execution; summing their durations
per op type over a few streamed frames (buffers carried) gives the share of
each operator -- e.g. how much of a frame the shift's Slice/Concat cost next
to the convolutions, and how many layout conversions (ORT's NCHWc
``Reorder*``) it forces.  :func:`profile_tvm` does the same for a host TVM
library with the VM's instrument hook.  :func:`compare_profiles` puts TSM and
TSN side by side, op by op.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

# The shift as ORT runs a plain graph: Slice pairs fused into Split, then Concat.
SHIFT_OPS = ("Slice", "Split", "Concat")
# Layout conversions ORT inserts around what its blocked (NCHWc) layout cannot hold.
REORDER_OPS = ("ReorderInput", "ReorderOutput")
# The exporter's rewrite expresses the shift as small 1x1 convolutions (export/formats/shift_fold.py); their nodes are
# named after it, so the profile shows them apart from the model's own convolutions.
SHIFT_CONV = "Conv (shift as 1x1 conv)"
SHIFT_NODE_PREFIXES = ("shift_fold_", "shift_out_")


def _op_class(event: dict[str, Any]) -> str:
    op = event.get("args", {}).get("op_name", "?")
    if op == "Conv" and str(event.get("name", "")).startswith(SHIFT_NODE_PREFIXES):
        return SHIFT_CONV
    return op


def profile_onnxruntime(artifact: str | os.PathLike, frames: np.ndarray, *, warmup: int = 5,
                        threads: int | None = None) -> dict[str, Any]:
    """Per-op-type milliseconds per frame (median over frames) for ``frames`` ``[T, ...]`` streamed through the graph.

    The frames go through the onnxruntime runtime's own stream (the same
    session and bindings a user's stream gets), with ORT's profiler on.
    """
    import onnxruntime as ort

    from online_tsm.runtimes import open_runtime

    with tempfile.TemporaryDirectory() as tmp:
        with open_runtime(artifact, "onnxruntime", threads=threads, profile=Path(tmp) / "ort") as runtime:
            stream = runtime.new_stream()
            for i in range(warmup + len(frames)):
                stream.step(frames[i % len(frames)])
            events = json.loads(runtime.end_profiling().read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    timed_runs = runs[warmup:]
    # Per frame, per op class; then the median over frames: on a shared machine one preempted frame must not
    # move a class (the mean would).
    per_frame: list[dict[str, float]] = [{} for _ in timed_runs]
    starts = [r["ts"] for r in timed_runs]
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        i = int(np.searchsorted(starts, e.get("ts", 0), side="right")) - 1
        if i < 0 or e["ts"] > starts[i] + timed_runs[i].get("dur", 0):
            continue
        op = _op_class(e)
        per_frame[i][op] = per_frame[i].get(op, 0.0) + e.get("dur", 0) / 1e3
    n = max(1, len(timed_runs))
    run_ms = float(np.median([r.get("dur", 0) / 1e3 for r in timed_runs])) if timed_runs else 0.0
    classes = {op for frame in per_frame for op in frame}
    ops = sorted(((op, float(np.median([f.get(op, 0.0) for f in per_frame]))) for op in classes),
                 key=lambda kv: -kv[1])
    kernel_ms = sum(ms for _, ms in ops)
    return {
        "tool": f"onnxruntime {ort.__version__} profiler",
        "frames": n,
        "run_ms_per_frame": run_ms,
        "ops": [{"op": op, "ms_per_frame": ms, "share": ms / kernel_ms if kernel_ms else 0.0} for op, ms in ops],
        "shift_ops_ms_per_frame": sum(ms for op, ms in ops if op in SHIFT_OPS or op == SHIFT_CONV),
        "outside_kernels_ms_per_frame": max(0.0, run_ms - kernel_ms),
    }


def shift_movement(tsm: dict[str, Any], tsn: dict[str, Any]) -> dict[str, float]:
    """What the shift costs ORT in data movement: Slice/Split/Concat and layout reorders, TSM minus TSN.

    ``share`` is that over the TSM frame's kernel time; the shift's 1x1
    convolutions (the rewritten graph) are reported apart as ``shift_conv_ms``.
    """
    def ms(profile: dict[str, Any], ops: tuple[str, ...]) -> float:
        return sum(o["ms_per_frame"] for o in profile["ops"] if o["op"] in ops)

    movement = max(0.0, ms(tsm, SHIFT_OPS + REORDER_OPS) - ms(tsn, SHIFT_OPS + REORDER_OPS))
    kernels = sum(o["ms_per_frame"] for o in tsm["ops"])
    return {"movement_ms": movement, "share": movement / kernels if kernels else 0.0,
            "shift_conv_ms": ms(tsm, (SHIFT_CONV,)), "kernel_ms": kernels}


def compare_profiles(tsm: dict[str, Any], tsn: dict[str, Any]) -> list[dict[str, Any]]:
    """Per op type: ms per frame in TSM, in TSN, and the difference (what the shift costs, op by op)."""
    a = {o["op"]: o["ms_per_frame"] for o in tsm["ops"]}
    b = {o["op"]: o["ms_per_frame"] for o in tsn["ops"]}
    rows = [{"op": op, "tsm_ms": a.get(op, 0.0), "tsn_ms": b.get(op, 0.0), "delta_ms": a.get(op, 0.0) - b.get(op, 0.0)}
            for op in sorted(set(a) | set(b), key=lambda op: -max(a.get(op, 0.0), b.get(op, 0.0)))]
    rows.append({"op": "(whole run)", "tsm_ms": tsm["run_ms_per_frame"], "tsn_ms": tsn["run_ms_per_frame"],
                 "delta_ms": tsm["run_ms_per_frame"] - tsn["run_ms_per_frame"]})
    return rows


# TVM function classes, from the fused function's name and its weight's shape (NHWC build, see export/tvm/build.py).
TVM_SHIFT = "shift (slice/concat/transpose)"


def _tvm_class(symbol: str, shapes: list[tuple[int, ...]]) -> str:
    if symbol.startswith("vm.builtin"):
        return "VM (allocation, checks)"
    name = symbol.removeprefix("fused_")
    if name.startswith("conv2d"):
        weight = shapes[1] if len(shapes) > 1 else ()
        if len(weight) == 3 or tuple(weight[:2]) == (1, 1):  # packed [Cout/8, Cin, 8] or HWIO 1x1
            kind = "Conv 1x1"
        elif len(weight) == 4 and weight[2] == 1:
            kind = f"Conv depthwise {weight[0]}x{weight[1]}"
        else:
            kind = "Conv (stem)"
        # a residual is an extra input of the output's shape (the conv's own input is the first one)
        residual = len(shapes) > 3 and any(shape == shapes[-1] for shape in shapes[2:-1])
        return kind + (" + residual add" if residual else "")
    if "concatenate" in name or "strided_slice" in name:
        return TVM_SHIFT
    if name.startswith("transpose"):
        return "layout transpose (NCHW input -> NHWC)"
    if name.startswith(("mean", "matmul", "add")):
        return "pooling + classifier"
    return name.rstrip("0123456789_")


def profile_tvm(artifact: str | os.PathLike, frames: np.ndarray, *, warmup: int = 5,
                threads: int | None = None) -> dict[str, Any]:
    """Per-class milliseconds per frame of a host TVM library, timed around every VM call.

    The frames go through the tvm runtime's own stream; ``run_ms_per_frame``
    is the whole step (frame copy in, ``main``, logits copy out).

    TVM 0.27's Relax VM has no profiler; its instrument hook is called before
    and after each call, so each function is timed on its own (the hook's
    own cost stays outside the figures but inside ``run_ms_per_frame``);
    each figure is the median over frames of that class's time in a frame.
    Classes rather than ~40 function names: 1x1 / depthwise / stem
    convolutions (with their fused bias, ReLU6, residual), the shift's
    slice/concat/transpose functions, VM allocation.
    """
    import time

    import tvm

    from online_tsm.runtimes import open_runtime

    by_class: dict[str, float] = {}
    timing = {"on": False, "start": 0.0}

    def instrument(func: Any, symbol: str, before: bool, ret: Any, *args: Any) -> int:
        if not timing["on"]:
            return 0
        if before:
            timing["start"] = time.perf_counter()
        else:
            shapes = [tuple(int(d) for d in a.shape) for a in args if hasattr(a, "shape")]
            kind = _tvm_class(symbol, shapes)
            by_class[kind] = by_class.get(kind, 0.0) + (time.perf_counter() - timing["start"]) * 1e3
        return 0

    per_frame: list[dict[str, float]] = []
    runs: list[float] = []
    with open_runtime(artifact, "tvm", threads=threads) as runtime:
        runtime.set_instrument(instrument)
        stream = runtime.new_stream()
        for i in range(warmup + len(frames)):
            frame = np.ascontiguousarray(frames[i % len(frames)])
            timing["on"] = i >= warmup
            by_class.clear()
            start = time.perf_counter()
            stream.step(frame)
            if i >= warmup:
                runs.append((time.perf_counter() - start) * 1e3)
                per_frame.append(dict(by_class))
    n = len(per_frame)
    # medians over frames, not means: one frame preempted by another process must not move a class
    classes = {c for frame in per_frame for c in frame}
    medians = {c: float(np.median([frame.get(c, 0.0) for frame in per_frame])) for c in classes}
    ops = sorted(medians.items(), key=lambda kv: -kv[1])
    kernel_ms = sum(ms for _, ms in ops)
    run_ms = float(np.median(runs)) if runs else 0.0
    return {
        "tool": f"TVM {tvm.__version__} VM instrument (per call, median frame)",
        "frames": n,
        "run_ms_per_frame": run_ms,
        "ops": [{"op": op, "ms_per_frame": ms, "share": ms / kernel_ms if kernel_ms else 0.0} for op, ms in ops],
        "shift_ops_ms_per_frame": medians.get(TVM_SHIFT, 0.0),
        "outside_kernels_ms_per_frame": max(0.0, run_ms - kernel_ms),
    }
