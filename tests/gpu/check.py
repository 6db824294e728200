"""The numerical check on a real NVIDIA GPU, in one call: ``tests/gpu/run.sh [--paper] [--out DIR]``.

The Jetson Nano's kernels are ``sm_53`` PTX, which any newer NVIDIA GPU JIT-compiles; the ``cuda`` target row
builds that very PTX with this machine's host code.  On a GPU machine this script:

1. exports ``cuda`` in fp32 and fp16 (a seeded model: the default size, or the paper's 224 with ``--paper``);
2. runs each library with TVM on the GPU through the artifact's own ``run.py`` against PyTorch's reference,
   by the manifest's rule for what it computes (fp32: the float32 rule for another machine; fp16: the fp16 rule);
3. where the ``tensorrt`` package is installed, builds TensorRT fp32 and fp16 engines from ``model.onnx`` and
   streams them (``run.py --tensorrt [--fp16]``), and streams online-tsm's ``tensorrt`` backend (needs pycuda)
   against the same reference;
4. prints a table with every figure labelled with the GPU, and writes it as JSON and Markdown into ``--out``.

Exit status: 0 when every check that could run passed, 1 when one failed, 2 when there is no GPU here.  What
could not run (no TensorRT, no pycuda, TVM's CUDA runtime missing its CUDA 13 libraries) is listed with why,
never counted as a pass.  Timings are what this GPU measured, for this model; they say nothing about a Nano.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

SMI_QUERY = ["nvidia-smi", "--query-gpu=name,driver_version,compute_cap,memory.total", "--format=csv,noheader"]


def parse_gpus(text: str) -> list[dict[str, str]]:
    """``nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader`` lines."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4 and parts[0]:
            gpus.append({"name": parts[0], "driver": parts[1], "compute_capability": parts[2], "memory": parts[3]})
    return gpus


def find_gpu(run: Callable[..., Any] = subprocess.run) -> dict[str, str] | None:
    """The first GPU nvidia-smi reports, or None (no nvidia-smi, no driver, no GPU)."""
    if shutil.which(SMI_QUERY[0]) is None and run is subprocess.run:
        return None
    try:
        proc = run(SMI_QUERY, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = parse_gpus(proc.stdout) if proc.returncode == 0 else []
    return gpus[0] if gpus else None


def gpu_label(gpu: dict[str, str]) -> str:
    return (f"{gpu['name']} (compute capability {gpu['compute_capability']}, driver {gpu['driver']}, "
            f"{gpu['memory']})")


def library_path_env() -> dict[str, str]:
    """The environment for the scripts: the pip wheels' CUDA libraries (libcudart) on the loader path."""
    import site

    folders = []
    for root in site.getsitepackages() + [site.getusersitepackages()]:
        folders += sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib")))
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(folders + [env.get("LD_LIBRARY_PATH", "")]).strip(os.pathsep)
    return env


def run_script(folder: Path, args: list[str], result: Path, env: dict[str, str]) -> dict[str, Any]:
    """The artifact's run.py with ``args``; its JSON result, or the failure as a row."""
    proc = subprocess.run([sys.executable, str(folder / "run.py"), *args, "--json", str(result)],
                          capture_output=True, text=True, env=env, timeout=1800)
    data = json.loads(result.read_text()) if result.is_file() else {}
    tail = (proc.stderr or proc.stdout).strip().splitlines()
    if not data:
        data = {"status": "failed", "error": {"message": tail[-1] if tail else f"exit {proc.returncode}"}}
    return data


def row_from_run(check: str, data: dict[str, Any]) -> dict[str, Any]:
    """A table row from a run.py result: passed / failed / skipped (a missing package or runtime is a skip)."""
    verification, timing, error = data.get("verification") or {}, data.get("timing") or {}, data.get("error") or {}
    status = "passed" if verification.get("passed") else "failed"
    if not verification and error.get("stage") in ("package", "device"):
        status = "skipped"
    return {"check": check, "status": status, "engine": (data.get("machine") or {}).get("engine"),
            "precision": (data.get("settings") or {}).get("precision"),
            "max_abs_diff": verification.get("max_abs_diff"), "tolerance": verification.get("tolerance"),
            "top1_agreement": verification.get("top1_agreement"), "rule": verification.get("rule"),
            "p50_ms": timing.get("p50_ms"), "fps": timing.get("fps"), "why": error.get("message", "")}


def backend_row(check: str, folder: Path, fp16: bool) -> dict[str, Any]:
    """online-tsm's tensorrt backend streamed over the verification frames, by the manifest's rule."""
    import numpy as np

    from online_tsm.export.reference import frames_for, read_reference
    from online_tsm.manifest import load_manifest
    from online_tsm.runtimes import open_runtime
    from online_tsm.runtimes.base import BackendUnavailable

    manifest = load_manifest(folder)
    reference = read_reference(folder / "reference.npz")
    frames = frames_for(manifest)
    try:
        with open_runtime(folder, "tensorrt", fp16=fp16) as runtime:
            stream = runtime.new_stream()
            logits = np.stack([stream.step(frame) for frame in frames])
            start = time.perf_counter()
            for frame in frames:
                stream.step(frame)
            ms = (time.perf_counter() - start) * 1e3 / len(frames)
            engine = runtime.description
    except BackendUnavailable as exc:
        return {"check": check, "status": "skipped", "why": str(exc)}
    rule = manifest.rule("fp16" if fp16 else "fp32")
    result = rule.check(logits, reference, same_machine=False)
    return {"check": check, "status": "passed" if result["passed"] else "failed", "engine": engine,
            "precision": "fp16" if fp16 else "fp32", "max_abs_diff": result["max_abs_diff"],
            "tolerance": result["tolerance"], "top1_agreement": result["top1_agreement"], "rule": result["rule"],
            "p50_ms": ms, "fps": 1000.0 / ms if ms else None,
            "why": "mean over the 16 verification frames, after one pass (not run.py's 200-frame p50)"}


def table(rows: list[dict[str, Any]], gpu: str) -> str:
    """The Markdown table, every timing labelled with the GPU it was measured on."""
    def num(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    lines = [f"GPU: {gpu}", "",
             "| check | status | engine | precision | max abs diff | tolerance | top-1 | p50 (ms) | FPS | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['check']} | {r['status']} | {r.get('engine') or '-'} | {r.get('precision') or '-'} | "
                     f"{num(r.get('max_abs_diff'), '.2e')} | {num(r.get('tolerance'), '.2e')} | "
                     f"{num(r.get('top1_agreement'), '.0%')} | {num(r.get('p50_ms'), '.3f')} | "
                     f"{num(r.get('fps'), '.0f')} | {(r.get('why') or '').replace('|', '/')[:160]} |")
    lines += ["", f"Timings measured on {gpu} by tests/gpu/run.sh; the Nano's kernels JIT-compiled for this GPU. They "
                  "say nothing about a Jetson Nano's speed."]
    return "\n".join(lines) + "\n"


def exit_status(rows: list[dict[str, Any]]) -> int:
    return 1 if any(r["status"] == "failed" for r in rows) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-check", help="folder for the artifacts and the report (gpu-check)")
    parser.add_argument("--paper", action="store_true", help="the paper's model size (MobileNetV2 1.0, 224x224)")
    parser.add_argument("--frames", type=int, default=200, help="timed frames per run.py (200)")
    args = parser.parse_args(argv)
    gpu = find_gpu()
    if gpu is None:
        print("no NVIDIA GPU here (nvidia-smi found none): nothing checked", file=sys.stderr)
        return 2
    label = gpu_label(gpu)
    print(f"GPU: {label}", flush=True)
    from online_tsm.export.api import export_artifact
    from online_tsm.models import seeded_model

    model = (seeded_model(seed=0) if args.paper
             else seeded_model(seed=1, width_mult=0.5, input_size=96, n_class=10))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = library_path_env()
    os.environ["LD_LIBRARY_PATH"] = env["LD_LIBRARY_PATH"]   # the export's build worker loads TVM's CUDA runtime too
    have_trt = _importable("tensorrt")
    rows: list[dict[str, Any]] = []
    timed = ["--frames", str(args.frames), "--warmup", "20"]
    for precision in ("fp32", "fp16"):
        folder = export_artifact(model, "cuda", out / f"cuda-{precision}", force=True, precision=precision)
        rows.append(row_from_run(f"TVM, cuda row ({precision} library)",
                                 run_script(folder, ["--engine", "tvm", "--device", "cuda", *timed],
                                            out / f"tvm-{precision}.json", env)))
        if precision != "fp32":
            continue
        for fp16 in (False, True):
            name = f"TensorRT run.py ({'fp16' if fp16 else 'fp32'} engine)"
            if not have_trt:
                rows.append({"check": name, "status": "skipped", "why": "the tensorrt package is not installed"})
                rows.append({"check": name.replace("run.py", "backend"), "status": "skipped",
                             "why": "the tensorrt package is not installed"})
                continue
            rows.append(row_from_run(name, run_script(folder, ["--tensorrt", *(["--fp16"] if fp16 else []), *timed],
                                                      out / f"trt-{'fp16' if fp16 else 'fp32'}.json", env)))
            rows.append(backend_row(name.replace("run.py", "backend"), folder, fp16))
    report = table(rows, label)
    print(report)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    (out / "gpu-check.md").write_text(f"Measured {stamp}\n\n{report}")
    (out / "gpu-check.json").write_text(json.dumps({"gpu": gpu, "created": stamp, "rows": rows}, indent=1))
    return exit_status(rows)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    sys.exit(main())
