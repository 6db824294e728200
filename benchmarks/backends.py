"""What the benchmark knows about each backend: which artifact it runs and how to open it.

One row per backend, as data.  ``target`` is the export target whose
artifact the backend runs (``None``: it runs the PyTorch model directly);
``baseline`` marks a yardstick rather than a backend users pick.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from online_tsm.console.address import is_loopback, parse_host_port
from online_tsm.errors import UserError
from online_tsm.machine.elf import host_arch, normalize_arch
from online_tsm.models import MobileNetV2TSM
from online_tsm.runtimes import BACKENDS, open_runtime
from online_tsm.runtimes.base import Runtime

ONNX_TARGET = "onnx"
HOST_TVM_TARGET = "host"
PLAIN_ORT = "ort-plain"


@dataclass(frozen=True)
class BackendPlan:
    name: str
    runtime: str                 # name for open_runtime, or "ort-plain" for the yardstick
    target: str | None           # export target of the artifact it runs
    baseline: bool = False
    remote: bool = False
    on_by_default: bool = True
    precision: str = "fp32"      # of the artifact it runs (tsm-export --precision)
    tuned: bool = True           # TVM builds: use this CPU's --tune records when there are any


BACKEND_PLANS: dict[str, BackendPlan] = {
    p.name: p
    for p in (
        BackendPlan("torch", "torch", None),
        BackendPlan("onnxruntime", "onnxruntime", ONNX_TARGET),
        BackendPlan("onnxruntime-int8", "onnxruntime", ONNX_TARGET, precision="int8"),
        BackendPlan(PLAIN_ORT, PLAIN_ORT, ONNX_TARGET, baseline=True),
        # TVM with its default schedules, and with this CPU's MetaSchedule records (a row only when records exist)
        BackendPlan("tvm", "tvm", HOST_TVM_TARGET, tuned=False),
        BackendPlan("tvm-tuned", "tvm", HOST_TVM_TARGET),
        BackendPlan("tensorrt", "tensorrt", ONNX_TARGET),
        # LiteRT (XNNPACK) on the phone row's model.tflite; asked for by name (its conversion takes ~15 s)
        BackendPlan("litert", "litert", "android-litert", on_by_default=False),
        # what open_runtime(folder) picks by default: the host artifact (ONNX + TVM library), measured and cached
        BackendPlan("auto", "auto", HOST_TVM_TARGET),
        BackendPlan("tvm-rpc", "tvm-rpc", None, remote=True, on_by_default=False),
    )
}


def backend_availability() -> dict[str, str | None]:
    """Backend name -> ``None`` when it can run here, else the reason it cannot (shown in the table)."""
    from online_tsm.runtimes import available_backends

    runtimes = available_backends()
    out: dict[str, str | None] = {}
    for name, plan in BACKEND_PLANS.items():
        if plan.runtime == PLAIN_ORT:
            out[name] = None if importlib.util.find_spec("onnxruntime") else "onnxruntime not installed"
        elif plan.runtime == "auto":
            out[name] = runtimes.get("tvm")  # its artifact is the host export, which needs TVM to build
        elif plan.runtime == "tvm" and plan.tuned and runtimes.get("tvm") is None \
                and tuning_fingerprint(plan.target) is None:
            out[name] = ("no tuning records for this CPU (tsm-export --target host --tune N makes them; "
                         "the tvm row uses the default schedules)")
        elif plan.runtime not in BACKENDS:
            out[name] = f"no {plan.runtime} runtime in this online-tsm build"
        else:
            out[name] = runtimes.get(plan.runtime)
    return out


def default_bench_backends(remote: bool = False) -> list[str]:
    """Every backend on by default (those that cannot run here still get a 'skipped' row)."""
    names = [n for n, p in BACKEND_PLANS.items() if p.on_by_default]
    return names + (["tvm-rpc"] if remote else [])


# int8 artifacts of the benchmark model: calibrated on the synthetic gestures whatever the weights (the paper
# setting's seeded random weights have no data of their own), never refused (the agreement is reported instead).
BENCH_CALIBRATION = "synthetic"


def export_for_plan(model: MobileNetV2TSM, target: str, out_dir: Path, shift: str, precision: str = "fp32",
                    tuned: bool = True) -> Path:
    """Write the artifact of ``model`` for ``target`` (``shift="none"``: the TSN baseline) into ``out_dir``.

    ``tuned=False`` builds a TVM library with the default schedules even when tuning records exist.
    """
    from online_tsm.export.api import export_artifact

    if precision == "int8":
        return Path(export_artifact(model, target, out_dir, shift=shift, precision="int8",
                                    calibration=BENCH_CALIBRATION, min_agreement=0.0,
                                    drift_frames=None if shift == "causal" else 0))
    return Path(export_artifact(model, target, out_dir, shift=shift, tuning_records=tuned))


def tuning_fingerprint(target: str) -> str | None:
    """Digest of the MetaSchedule records a TVM build of ``target`` would use (``None``: none apply).

    Part of the artifact cache key, so that tuning later (``tsm-export --tune``)
    leads to a fresh build instead of a stale one.
    """
    from online_tsm.export.targets import get_target

    row = get_target(target)
    if row.kind not in ("cpu", "cuda"):    # no TVM library: nothing to tune
        return None
    from online_tsm.export.tvm.build import resolve_tvm_target
    from online_tsm.export.tvm.tuning import tuning_dir

    digest = hashlib.sha256()
    found = False
    folder = tuning_dir(row, resolve_tvm_target(row))
    for file in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
        found = True
    return digest.hexdigest()[:16] if found else None


@dataclass(frozen=True)
class RemoteSpec:
    host: str
    port: int
    target: str

    @classmethod
    def parse(cls, rpc: str, target: str | None) -> "RemoteSpec":
        host, port = parse_host_port(rpc, expected="--rpc expects HOST:PORT (e.g. 192.168.1.20:9090)",
                                     error=UserError)
        if not target:
            raise UserError("--rpc HOST:PORT needs --target NAME (the device's export target)")
        return cls(host, port, target)

    def source_label(self) -> str:
        return f"measured on the device {self.target} at {self.host}:{self.port} (TVM RPC time_evaluator)"

    def is_this_machine(self) -> bool:
        """True when HOST is this machine: a loopback address or one of its own (binding to it succeeds)."""
        if is_loopback(self.host, resolve=True):
            return True
        try:
            address = socket.gethostbyname(self.host)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind((address, 0))
            return True
        except OSError:
            return False

    def refuse_emulation(self, target_arch: str | None = None) -> None:
        """An RPC server on this machine for another CPU architecture is an emulator: refuse to time it."""
        arch = target_arch or _target_arch(self.target)
        here = host_arch()
        if arch and normalize_arch(arch) != here and self.is_this_machine():
            raise UserError(f"the RPC server at {self.host}:{self.port} runs on this {here} machine but target "
                            f"{self.target} is {arch}: it can only be an emulator, whose timings are meaningless "
                            "(run the RPC server on the real device)")


def _target_arch(target: str) -> str | None:
    """CPU architecture an export target's library is built for (``None``: this machine's)."""
    from online_tsm.export.targets import get_target

    triple = get_target(target).triple
    return triple.split("-")[0] if triple else None


def open_for_plan(plan: BackendPlan, source: Any, threads: int | None, remote: RemoteSpec | None) -> Runtime:
    """Open ``source`` (a model or an artifact folder) with the plan's runtime."""
    options: dict[str, Any] = {}
    if threads:
        options["threads"] = threads
    if plan.runtime == PLAIN_ORT:
        from online_tsm.benchmarks.baselines import PlainOnnxRuntime

        return PlainOnnxRuntime(source, **options)
    if plan.remote:
        assert remote is not None
        options["address"] = f"{remote.host}:{remote.port}"
    return open_runtime(source if not isinstance(source, (str, os.PathLike)) else Path(source), plan.runtime, **options)
