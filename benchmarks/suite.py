"""One benchmark run: every backend, TSM and TSN side by side, end to end and batched.

The work is organised per backend: build (or take from the cache) the TSM
and TSN artifacts, open both runtimes, time them in interleaved rounds, then
time the camera loop (pre-processing + step + smoothing) and the batched
``step_many`` against the same number of streams stepped one after another.
A backend that cannot run here becomes a row with a status and a reason,
never a silent gap.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from online_tsm.benchmarks import facts
from online_tsm.benchmarks.artifacts import cached_artifact, model_hash
from online_tsm.benchmarks.backends import (BACKEND_PLANS, HOST_TVM_TARGET, ONNX_TARGET, BackendPlan, RemoteSpec,
                                            backend_availability, default_bench_backends, export_for_plan,
                                            open_for_plan, tuning_fingerprint)
from online_tsm.machine.interleave import interleaved_samples
from online_tsm.benchmarks.latency import Contestant, LatencyStats, cycle_frames, measure_interleaved, measure_stages
from online_tsm.benchmarks.models import BenchModel, resolve_bench_model
from online_tsm.benchmarks.results import BackendResult, BenchConfig, BenchReport
from online_tsm.benchmarks.paper import PAPER_ROWS, roofline_rows
from online_tsm.errors import UserError
from online_tsm.console.messages import first_line
from online_tsm.runtimes.base import Runtime
from online_tsm.runtimes.tvm_backend import default_threads as tvm_default_threads
from online_tsm.streaming.smoothing import PredictionSmoother
from online_tsm.synthetic import synthetic_frames

CAMERA_SHAPE = (480, 640)  # what a webcam delivers; pre-processing resizes and crops it


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _progress(total: int, desc: str, enabled: bool) -> Iterator[Callable[[], None]]:
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="frame", file=sys.stderr, leave=False, disable=not enabled,
               dynamic_ncols=True)
    try:
        yield lambda: bar.update(1)
    finally:
        bar.close()


def camera_images(n: int = 8, seed: int = 0) -> list[np.ndarray]:
    """``n`` synthetic 640x480 BGR camera images (a moving textured hand-sized patch)."""
    return list(synthetic_frames(n, *CAMERA_SHAPE, motion="swipe-left", seed=seed))


def _measure_backend(result: BackendResult, tsm_rt: Runtime, tsn_rt: Runtime, cfg: BenchConfig,
                     images: list[np.ndarray], n_class: int) -> None:
    frames_tsm = np.stack([tsm_rt.preprocess(img) for img in images])
    frames_tsn = np.stack([tsn_rt.preprocess(img) for img in images])
    tsm_stream, tsn_stream = tsm_rt.new_stream(), tsn_rt.new_stream()
    next_tsm, next_tsn = cycle_frames(frames_tsm), cycle_frames(frames_tsn)
    e2e_samples = max(10, cfg.frames // 2) if cfg.end_to_end else 0
    total = 2 * cfg.frames + e2e_samples
    with _progress(total, f"{result.backend:>12s}", cfg.progress) as tick:
        stats = measure_interleaved(
            [Contestant("tsm", lambda: tsm_stream.step(next_tsm())),
             Contestant("tsn", lambda: tsn_stream.step(next_tsn()))],
            samples=cfg.frames, warmup=cfg.warmup, round_size=cfg.round_size, on_sample=tick)
        result.tsm, result.tsn = stats["tsm"], stats["tsn"]
        if e2e_samples:
            result.end_to_end = _end_to_end(tsm_rt, images, e2e_samples, cfg.warmup, n_class, tick)
            tsm_p50, tsn_p50 = result.tsm.p50, result.tsn.p50
            result.end_to_end["state_handling_ms"] = tsm_p50 - tsn_p50
    if cfg.streams >= 2 and not result.baseline:
        result.streams = _streams(tsm_rt, frames_tsm, cfg)


REMOTE_FRAMES_PER_SAMPLE = 10


def _measure_remote(result: BackendResult, tsm_rt: Any, tsn_rt: Any, cfg: BenchConfig,
                    images: list[np.ndarray]) -> None:
    """On the device: TVM's ``time_evaluator`` (no network in the figure), TSM and TSN alternating.

    Each sample is the mean of ``REMOTE_FRAMES_PER_SAMPLE`` frames timed on the
    device, so p99 is over such means, not over single frames.  The frames
    streamed over the network (buffers carried on the device) are timed too,
    as what a remote camera loop would see.
    """
    rounds = max(3, cfg.frames // REMOTE_FRAMES_PER_SAMPLE)
    stats = {"tsm": LatencyStats([]), "tsn": LatencyStats([])}
    with _progress(2 * rounds, f"{result.backend:>12s}", cfg.progress) as tick:
        for name, rt in (("tsm", tsm_rt), ("tsn", tsn_rt)):
            stats[name].cold_ms = rt.device_time(n=1, repeat=1).mean_ms
            if cfg.warmup:
                rt.device_time(n=cfg.warmup, repeat=1)
        timed = interleaved_samples(
            {name: (lambda rt=rt: rt.device_time(n=REMOTE_FRAMES_PER_SAMPLE, repeat=1).mean_ms)
             for name, rt in (("tsm", tsm_rt), ("tsn", tsn_rt))},
            lambda turn: 1 if turn < rounds else 0, on_sample=tick)
        for name, values in timed.items():
            stats[name].samples_ms.extend(values)
    result.tsm, result.tsn = stats["tsm"], stats["tsn"]
    frames = np.stack([tsm_rt.preprocess(img) for img in images])
    stream, next_frame = tsm_rt.new_stream(), cycle_frames(frames)
    over_network = measure_interleaved([Contestant("rpc", lambda: stream.step(next_frame()))],
                                       samples=max(5, cfg.frames // 5), warmup=min(cfg.warmup, 3))["rpc"]
    result.remote = {"timing": f"TVM time_evaluator on the device, each sample the mean of "
                               f"{REMOTE_FRAMES_PER_SAMPLE} frames (buffers zero, compute unchanged)",
                     "streamed_over_network": over_network.summary()}


def _end_to_end(rt: Runtime, images: list[np.ndarray], samples: int, warmup: int, n_class: int,
                tick: Callable[[], None]) -> dict[str, Any]:
    stream = rt.new_stream()
    smoother = PredictionSmoother(n_class)
    stage_times = measure_stages(
        {"preprocess": rt.preprocess, "step": stream.step, "smoothing": smoother.update},
        cycle_frames(np.stack(images)), samples=samples, warmup=warmup, on_sample=tick)
    total = stage_times.total
    return {"camera": f"{CAMERA_SHAPE[1]}x{CAMERA_SHAPE[0]} BGR uint8", "stages_p50_ms": stage_times.p50(),
            "total": total.summary()}


def _streams(rt: Runtime, frames: np.ndarray, cfg: BenchConfig) -> dict[str, Any]:
    """``step_many`` over N streams against the same N streams stepped one after another."""
    n = cfg.streams
    batched = [rt.new_stream() for _ in range(n)]
    sequential = [rt.new_stream() for _ in range(n)]
    next_frame = cycle_frames(frames)

    def run_batched() -> None:
        rt.step_many(batched, [next_frame() for _ in range(n)])

    def run_sequential() -> None:
        for stream in sequential:
            stream.step(next_frame())

    samples = max(6, cfg.frames // 10)  # each sample is already N frames
    with _progress(2 * samples, f"{rt.backend:>9s} x{n}", cfg.progress) as tick:
        stats = measure_interleaved([Contestant("batched", run_batched, n), Contestant("sequential", run_sequential, n)],
                                    samples=samples, warmup=max(2, cfg.warmup // 4), round_size=5, on_sample=tick)
    b, s = stats["batched"], stats["sequential"]
    # Asked after the runs: ONNX Runtime builds its batch graph on first use and falls back to a loop without one.
    mode = "one batch" if rt.batches_streams else "one after another (no batched graph)"
    return {"n": n, "status": "ok", "step_many": mode, "batched": b.summary(), "sequential": s.summary(),
            "total_fps_batched": 1000.0 * n / b.p50, "total_fps_sequential": 1000.0 * n / s.p50,
            "per_stream_fps_batched": 1000.0 / b.p50, "speedup": s.p50 / b.p50}


def _artifact(bench: BenchModel, target: str, shift: str, cfg: BenchConfig, digest: str,
              precision: str = "fp32", tuned: bool = True) -> Path:
    """The cached artifact of the benchmark model for ``target`` (``shift="none"``: TSN), built if absent."""
    extra: dict[str, Any] = {"tuning": tuning_fingerprint(target) if tuned else None}
    if precision != "fp32":
        extra["precision"] = precision
    return cached_artifact(bench.tsm, target, shift,
                           lambda out: export_for_plan(bench.tsm, target, out, shift, precision, tuned),
                           root=cfg.cache_root, model_digest=digest, log=_say, extra=extra)


def _run_one(plan: BackendPlan, bench: BenchModel, cfg: BenchConfig, machine_label: str, digest: str,
             remote: RemoteSpec | None, images: list[np.ndarray]) -> tuple[BackendResult, Any]:
    """The backend's row, and what its TSM runtime was opened from (for the head-to-head pass)."""
    result = BackendResult(plan.name, baseline=plan.baseline, precision=plan.precision)
    result.source = remote.source_label() if (plan.remote and remote) else f"measured here on {machine_label}"
    sources: dict[str, Any] = {}
    try:
        target = remote.target if (plan.remote and remote) else plan.target
        for variant, model in (("causal", bench.tsm), ("none", bench.tsn)):
            if target is None:
                sources[variant] = model
            else:
                sources[variant] = _artifact(bench, target, variant, cfg, digest, plan.precision, plan.tuned)
        if target is not None:
            result.size_bytes = facts.folder_size_bytes(sources["causal"])
        if plan.precision == "int8":
            from online_tsm.manifest import load_manifest

            result.agreement = load_manifest(sources["causal"]).model.get("quantization", {}).get("agreement")
        rss0 = facts.current_rss_bytes()
        start = time.perf_counter()
        tsm_rt = open_for_plan(plan, sources["causal"], cfg.threads, remote)
        result.open_s = time.perf_counter() - start
        tsn_rt = open_for_plan(plan, sources["none"], cfg.threads, remote)
        result.description = tsm_rt.description
        if target is None:
            result.size_bytes = 4 * sum(p.numel() for p in bench.tsm.parameters())  # float32 weights in memory
        try:
            if plan.remote:
                _measure_remote(result, tsm_rt, tsn_rt, cfg, images)
            else:
                _measure_backend(result, tsm_rt, tsn_rt, cfg, images, bench.tsm.n_class)
            result.rss_delta_mb = (facts.current_rss_bytes() - rss0) / 2**20
        finally:
            tsm_rt.close()
            tsn_rt.close()
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 -- one backend failing must not hide the others
        result.status = "error"
        result.reason = first_line(exc)[:300]
        _say(f"{plan.name}: error: {result.reason}")
    return result, sources.get("causal")


def _ships_default_schedules(source: Any) -> bool:
    """True for a TVM host artifact whose export found this CPU's tuning records slower than the defaults."""
    if not isinstance(source, Path) or not (source / "manifest.json").is_file():
        return False
    from online_tsm.manifest import load_manifest

    tuning = (load_manifest(source).target or {}).get("tuning") or {}
    return tuning.get("schedules") == "default"


def _head_to_head(contenders: list[tuple[BackendPlan, Any]], cfg: BenchConfig,
                  images: list[np.ndarray]) -> dict[str, Any] | None:
    """The TSM runtime of every backend measured here, opened again and timed in the same rounds."""
    from online_tsm.benchmarks.head_to_head import time_head_to_head

    _say(f"timing {', '.join(plan.name for plan, _ in contenders)} against each other in the same rounds ...")
    opened: list[tuple[str, Runtime]] = []
    try:
        for plan, source in contenders:
            opened.append((plan.name, open_for_plan(plan, source, cfg.threads, None)))
        with _progress(len(opened) * cfg.frames, "head to head", cfg.progress) as tick:
            return time_head_to_head(opened, images, samples=cfg.frames, warmup=cfg.warmup,
                                     round_size=cfg.round_size, on_sample=tick)
    except Exception as exc:  # noqa: BLE001 -- the rows are already measured; say why this part is missing
        _say(f"head-to-head timing skipped: {first_line(exc)[:200]}")
        return None
    finally:
        for _, rt in opened:
            rt.close()


def model_facts(bench: BenchModel, cfg: BenchConfig, digest: str) -> dict[str, Any]:
    """Parameters, MACs/FLOPs per frame counted from the ONNX graph, buffers: the model's side of the report."""
    tsm = bench.tsm
    onnx_folder = _artifact(bench, ONNX_TARGET, "causal", cfg, digest)
    cost = facts.count_graph_cost(onnx_folder / "model.onnx")
    buffers = tsm.buffer_shapes(1)
    return {
        "weights": bench.weights, "weights_source": bench.description, "arch": "mobilenetv2-tsm",
        "input_size": tsm.input_size, "width_mult": tsm.width_mult, "n_class": tsm.n_class,
        "paper_setting": bench.paper_setting, "trained_weights": bench.trained, "hash": digest[:16],
        "params": facts.count_parameters(tsm), "graph": cost.to_dict(),
        "macs_per_frame": cost.macs, "flops_per_frame": cost.flops,
        "shift_buffers": len(buffers), "buffer_bytes": 4 * int(sum(np.prod(s) for s in buffers)),
        "flops_convention": "1 MAC = 2 FLOPs; FLOPs also count elementwise ops; counted from the ONNX graph",
    }


def _profile(bench: BenchModel, cfg: BenchConfig, digest: str, images: list[np.ndarray],
             with_tvm: bool) -> dict[str, Any]:
    """Per-operator profiles of TSM and TSN, and their difference op by op: ONNX Runtime's, and TVM's host build's."""
    from online_tsm.benchmarks.profile import compare_profiles, profile_onnxruntime, profile_tvm, shift_movement
    from online_tsm.preprocess import preprocess_frame

    _say("profiling TSM and TSN with ONNX Runtime's profiler ...")
    folders = {v: _artifact(bench, ONNX_TARGET, v, cfg, digest) for v in ("causal", "none")}
    size = bench.tsm.input_size
    frames = np.stack([preprocess_frame(img, size) for img in images])
    n = max(8, min(cfg.frames, 40))
    frames = np.concatenate([frames] * (n // len(frames) + 1))[:n]
    tsm = profile_onnxruntime(folders["causal"], frames, warmup=cfg.warmup, threads=cfg.threads)
    tsn = profile_onnxruntime(folders["none"], frames, warmup=cfg.warmup, threads=cfg.threads)
    out = {"tool": tsm["tool"], "frames": tsm["frames"], "tsm": tsm, "tsn": tsn, "by_op": compare_profiles(tsm, tsn),
           "shift_movement": shift_movement(tsm, tsn)}
    if with_tvm:
        _say("profiling TSM and TSN of the TVM host build (VM instrument) ...")
        try:
            libs = {v: _artifact(bench, HOST_TVM_TARGET, v, cfg, digest) for v in ("causal", "none")}
            threads = cfg.threads or tvm_default_threads()
            t_tsm = profile_tvm(libs["causal"], frames, warmup=cfg.warmup, threads=threads)
            t_tsn = profile_tvm(libs["none"], frames, warmup=cfg.warmup, threads=threads)
            out["tvm"] = {"tool": t_tsm["tool"], "frames": t_tsm["frames"], "tsm": t_tsm, "tsn": t_tsn,
                          "by_op": compare_profiles(t_tsm, t_tsn)}
        except Exception as exc:  # noqa: BLE001 -- a profile must not sink the report
            _say(f"TVM profile skipped: {first_line(exc)[:200]}")
    return out


def run_benchmark(cfg: BenchConfig, command: str = "tsm-bench") -> BenchReport:
    """Run the whole benchmark described by ``cfg`` and return the report (nothing printed but progress)."""
    cfg.check()
    started = time.perf_counter()
    remote = RemoteSpec.parse(cfg.rpc, cfg.target) if cfg.rpc else None
    names = cfg.backends or default_bench_backends(remote is not None)
    unknown = [n for n in names if n not in BACKEND_PLANS]
    if unknown:
        raise UserError(f"unknown backend(s) {', '.join(unknown)}; expected any of {', '.join(BACKEND_PLANS)}")
    if "tvm-rpc" in names and remote is None:
        raise UserError("backend tvm-rpc needs --rpc HOST:PORT and --target NAME")
    if remote is not None and "tvm-rpc" not in names:
        names = [*names, "tvm-rpc"]
    if remote is not None:
        remote.refuse_emulation()
    emulated = facts.emulation_evidence()
    if emulated:
        raise UserError(f"refusing to time under emulation: {emulated}; emulated timings are meaningless -- run "
                        "tsm-bench on the device itself, or time it from here with --rpc HOST:PORT --target NAME")
    machine = facts.machine_description()
    label = facts.machine_label(machine)
    bench = resolve_bench_model(cfg.weights, cfg.input_size, cfg.seed)
    _say(f"model: MobileNetV2 TSM {bench.tsm.input_size}x{bench.tsm.input_size}, width {bench.tsm.width_mult}; "
         f"{bench.description}")
    digest = model_hash(bench.tsm)
    model = model_facts(bench, cfg, digest)
    images = camera_images()
    availability = backend_availability()
    rows = []
    contenders: list[tuple[BackendPlan, Any]] = []
    row_notes: list[str] = []
    for name in names:
        plan = BACKEND_PLANS[name]
        if availability[name]:
            rows.append(BackendResult(name, status="skipped", reason=str(availability[name]), baseline=plan.baseline))
            continue
        result, source = _run_one(plan, bench, cfg, label, digest, remote, images)
        rows.append(result)
        if result.status == "ok" and not plan.remote:
            contenders.append((plan, source))
        if result.status == "ok" and plan.tuned and _ships_default_schedules(source):
            row_notes.append(f"{plan.name}: this CPU's --tune records ran slower than the default schedules when "
                               "the library was built, so it runs the default schedules (more --tune trials may "
                               "find faster ones)")
    head_to_head = _head_to_head(contenders, cfg, images) if cfg.head_to_head and len(contenders) >= 2 else None
    tvm_ran = any(r.backend == "tvm" and r.status == "ok" for r in rows)
    profile = _profile(bench, cfg, digest, images, with_tvm=tvm_ran) if cfg.profile else None
    cost = model["graph"]
    bounds = roofline_rows(cost["flops"], cost["compulsory_bytes"]) if cfg.roofline else []
    notes = [f"peak resident memory of the benchmark process: {facts.peak_rss_bytes() / 2**20:.0f} MB "
             "(all backends loaded one after another)", *row_notes]
    if cfg.threads is None and tvm_ran:
        notes.append(f"TVM ran {tvm_default_threads()} threads (this machine's physical cores): its own default on "
                     "x86 is half the logical CPUs, which assumes hyper-threading")
    if not bench.paper_setting:
        notes.append(f"the paper rows are MobileNetV2 width 1.0 at 224x224; the model measured here is width "
                     f"{bench.tsm.width_mult:g} at {bench.tsm.input_size}x{bench.tsm.input_size} "
                     "(tsm-bench --weights paper measures the paper's setting)")
    return BenchReport(config=cfg, machine=machine, model=model, rows=rows,
                       reference=[r.to_dict() for r in PAPER_ROWS], bounds=bounds, command=command,
                       created=_dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                       wall_s=time.perf_counter() - started, notes=notes, profile=profile,
                       head_to_head=head_to_head)
