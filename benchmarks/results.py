"""What one benchmark run produced: its settings, a row per backend, and the report around them.

The schema of ``tsm-bench --json`` (``online-tsm-bench/1``).  The run that
fills it is :mod:`.suite`; the goals judged on it are :mod:`.goals`; the
terminal, Markdown and plot views are :mod:`.report`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from online_tsm.benchmarks.head_to_head import comparable_p50
from online_tsm.benchmarks.latency import LatencyStats
from online_tsm.errors import UserError


SCHEMA = "online-tsm-bench/1"


@dataclass
class BenchConfig:
    weights: str | None = None          # None: the shipped default model; "paper": 224, width 1.0 (models.py)
    input_size: int | None = None
    backends: list[str] | None = None   # None: every backend that can run here (see backends.py)
    frames: int = 100                   # timed frames per variant and backend
    warmup: int = 10
    threads: int | None = None
    streams: int = 8                    # step_many over N streams; 0 or 1 turns it off
    end_to_end: bool = True
    rpc: str | None = None              # HOST:PORT of a TVM RPC server
    target: str | None = None           # export target of the remote device
    round_size: int = 10                # frames per interleaved round
    seed: int = 0
    cache_root: str | None = None
    progress: bool = True
    roofline: bool = True
    profile: bool = False               # per-operator profile of TSM and TSN (ONNX Runtime's profiler)
    head_to_head: bool = True           # all backends again, in the same interleaved rounds (head_to_head.py)

    def check(self) -> None:
        if self.frames < 1:
            raise UserError(f"--frames must be at least 1, got {self.frames}")
        if self.warmup < 0:
            raise UserError(f"--warmup must be 0 or more, got {self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be at least 1, got {self.threads}")
        if self.streams < 0:
            raise UserError(f"--streams must be 0 or more, got {self.streams}")
        if self.input_size is not None and (self.input_size < 32 or self.input_size % 32):
            raise UserError(f"--input-size must be a positive multiple of 32, got {self.input_size}")
        if bool(self.rpc) != bool(self.target) and self.rpc:
            raise UserError("--rpc HOST:PORT needs --target NAME (the device's export target)")


@dataclass
class BackendResult:
    backend: str
    status: str = "ok"                  # ok | skipped | error
    reason: str = ""
    source: str = ""                    # where the numbers come from, in words
    description: str = ""
    size_bytes: int | None = None
    open_s: float | None = None
    rss_delta_mb: float | None = None
    tsm: LatencyStats | None = None
    tsn: LatencyStats | None = None
    end_to_end: dict[str, Any] | None = None
    streams: dict[str, Any] | None = None
    baseline: bool = False              # a yardstick (plain ORT), not a backend users pick
    precision: str = "fp32"
    agreement: dict[str, Any] | None = None  # int8 rows: agreement with float32, as stored by the export
    remote: dict[str, Any] | None = None  # how a remote device was timed, and the steps over the network

    @property
    def overhead(self) -> float | None:
        """TSM p50 / TSN p50 - 1 (a fraction), the cost of the shift and its buffers."""
        if self.tsm is None or self.tsn is None:
            return None
        return self.tsm.p50 / self.tsn.p50 - 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend, "status": self.status, "reason": self.reason, "source": self.source,
            "description": self.description, "baseline": self.baseline,
            "size_mb": None if self.size_bytes is None else self.size_bytes / 1e6,
            "open_s": self.open_s, "rss_delta_mb": self.rss_delta_mb,
            "tsm": None if self.tsm is None else {**self.tsm.summary(), "samples_ms": self.tsm.samples_ms},
            "tsn": None if self.tsn is None else {**self.tsn.summary(), "samples_ms": self.tsn.samples_ms},
            "overhead_vs_tsn": self.overhead, "end_to_end": self.end_to_end, "streams": self.streams,
            "remote": self.remote, "precision": self.precision, "agreement": self.agreement,
        }


@dataclass
class BenchReport:
    config: BenchConfig
    machine: dict[str, Any]
    model: dict[str, Any]
    rows: list[BackendResult]
    reference: list[dict[str, Any]]
    bounds: list[dict[str, Any]]
    command: str = "tsm-bench"
    created: str = ""
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    profile: dict[str, Any] | None = None
    head_to_head: dict[str, Any] | None = None

    def row(self, backend: str) -> BackendResult | None:
        return next((r for r in self.rows if r.backend == backend and r.status == "ok"), None)

    def comparable_p50s(self) -> tuple[dict[str, float], str]:
        """Each backend's TSM p50 for comparisons between backends, and where it comes from
        (:func:`online_tsm.benchmarks.head_to_head.comparable_p50`)."""
        return comparable_p50(self.head_to_head, {r.backend: r.tsm.p50 for r in self.rows
                                                  if r.status == "ok" and r.tsm is not None})

    def to_dict(self) -> dict[str, Any]:
        """The report as ``tsm-bench --json`` writes it, but for the goals (:func:`.goals.report_dict` adds them)."""
        cfg = {k: v for k, v in vars(self.config).items() if k not in ("progress", "cache_root")}
        return {"schema": SCHEMA, "created": self.created, "command": self.command, "wall_s": self.wall_s,
                "machine": self.machine, "model": self.model, "settings": cfg,
                "rows": [r.to_dict() for r in self.rows], "reference": self.reference, "bounds": self.bounds,
                "notes": self.notes, "profile": self.profile, "head_to_head": self.head_to_head}
