"""``backend="auto"`` for an export folder: the fastest backend here, found by measuring it once.

Which backend is fastest depends on the model, the CPU and the thread count
(an untuned TVM build can be half the speed of ONNX Runtime on one x86 CPU
and the fastest choice on an ARM board), so no fixed order is right
everywhere.  The first time an artifact is opened on a machine, every
backend that can run it streams a few warm frames, in interleaved rounds so
that a burst of load from another process hurts all of them alike; the
fastest (median ms/frame) is kept and the choice is cached under the
online-tsm cache folder (``$ONLINE_TSM_CACHE``), keyed by the artifact's
manifest sha256 (which covers every file's sha256), the CPU model and the
thread count.  Later opens read the cache and measure nothing.

``ONLINE_TSM_AUTO=onnxruntime`` (or the ``choose="onnxruntime"`` option)
skips the measurement; ``remeasure=True`` ignores a cached choice.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from online_tsm.fileio import atomic_write
from online_tsm.machine.interleave import SETTLE_FRAMES, interleaved_samples
from online_tsm.runtimes.base import BackendUnavailable, Runtime, RuntimeOpenError

ENV_CHOICE = "ONLINE_TSM_AUTO"
# Backends that run an export folder on this machine, measured against each other; order breaks exact ties.
CANDIDATES = ("onnxruntime", "tvm", "litert")
BUDGET_S = 3.0          # wall-clock limit of the measurement, warm-up included
WARMUP_FRAMES = 3       # per backend, untimed (first calls allocate and page in)
ROUND_FRAMES = 4        # frames per backend per interleaved round
MIN_ROUNDS = 3
MAX_ROUNDS = 12
CACHE_VERSION = 1

Clock = Callable[[], float]


@dataclass
class AutoChoice:
    """What ``auto`` picked and why: measured ms/frame per backend, or the override that skipped measuring."""

    backend: str
    reason: str                               # "measured", "cached", "ONLINE_TSM_AUTO", "option", "only candidate"
    ms_per_frame: dict[str, float] = field(default_factory=dict)
    frames: dict[str, int] = field(default_factory=dict)
    measured: str = ""                        # ISO date of the measurement
    cpu: str = ""
    threads: str = ""

    def describe(self) -> str:
        """One phrase for ``runtime.description``: e.g. ``auto: onnxruntime 6.5 ms/frame vs tvm 11.9 ms, ...``."""
        if not self.ms_per_frame:
            return f"auto: {self.backend} ({self.reason})"
        others = [f"{name} {ms:.2f} ms" for name, ms in sorted(self.ms_per_frame.items(), key=lambda kv: kv[1])
                  if name != self.backend]
        text = f"auto: {self.backend} {self.ms_per_frame[self.backend]:.2f} ms/frame"
        if others:
            text += " vs " + ", ".join(others)
        when = self.measured[:10] or "?"
        return text + f", measured {when} ({self.threads} threads{', cached' if self.reason == 'cached' else ''})"


# -- what the key is made of ---------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name, family/model/stepping and a digest of its feature flags.

    Virtual machines often report only "AMD EPYC"; the family/model numbers and
    the flags (AVX-512, VNNI) tell a Zen 3 from a Zen 4 host under the same name.
    """
    from online_tsm.machine.cpuinfo import cpu_flags, cpu_name, first_processor

    fields = first_processor()
    ident = "/".join(fields.get(k, "") for k in ("cpu family", "model", "stepping")).strip("/")
    flags = cpu_flags()
    digest = hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:8] if flags else "-"
    return f"{cpu_name()} [{ident or platform.machine()}; flags {digest}]"


def artifact_digest(folder: Path) -> str:
    """sha256 of the folder's ``manifest.json``, which holds the sha256 of every file of the artifact."""
    from online_tsm.manifest import MANIFEST_NAME, sha256_of

    return sha256_of(folder / MANIFEST_NAME)


def cache_path(folder: Path, threads: int | None, cpu: str | None = None) -> Path:
    """Where the choice for ``folder`` on this CPU at ``threads`` is cached (``$ONLINE_TSM_CACHE/auto/``)."""
    from online_tsm.weights import cache_dir

    key = json.dumps([artifact_digest(folder), cpu or cpu_model(), str(threads or "default"), CACHE_VERSION])
    return cache_dir() / "auto" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def read_cached(path: Path, candidates: list[str]) -> AutoChoice | None:
    """The cached choice, if it exists, parses and names a backend that can still run here."""
    try:
        data = json.loads(path.read_text())
        choice = AutoChoice(**{k: v for k, v in data.items() if k in AutoChoice.__dataclass_fields__})
    except (OSError, ValueError, TypeError):
        return None
    if choice.backend not in candidates:
        return None
    choice.reason = "cached"
    return choice


def write_cached(path: Path, choice: AutoChoice) -> None:
    """Written atomically: two processes opening the same artifact never see half a file."""
    atomic_write(path, json.dumps(asdict(choice), indent=2))


# -- the measurement -------------------------------------------------------------------------------------
def probe_frame(runtime: Runtime, seed: int = 0) -> np.ndarray:
    """A frame of the runtime's shape and dtype: the compute per frame does not depend on the values."""
    rng = np.random.default_rng(seed)
    shape = runtime.frame_shape[1:]
    if runtime.frame_dtype == np.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.standard_normal(shape).astype(runtime.frame_dtype)


def measure_backends(runtimes: dict[str, Runtime], *, budget_s: float = BUDGET_S, clock: Clock = time.perf_counter,
                     warmup: int = WARMUP_FRAMES, round_frames: int = ROUND_FRAMES, min_rounds: int = MIN_ROUNDS,
                     max_rounds: int = MAX_ROUNDS, settle: int = SETTLE_FRAMES
                     ) -> tuple[dict[str, float], dict[str, int]]:
    """Median ms/frame of a warm stream per runtime, timed in interleaved rounds within ``budget_s``.

    Rounds rotate the order and each turn starts with ``settle`` untimed
    frames (see :mod:`online_tsm.machine.interleave`).  At least ``min_rounds`` rounds
    run (so a slow backend is still measured a few times), then rounds go on
    until the budget or ``max_rounds`` is spent.  Returns (ms, frames timed).
    """
    start = clock()
    streams = {name: (rt.new_stream(), probe_frame(rt)) for name, rt in runtimes.items()}
    for stream, frame in streams.values():
        for _ in range(warmup):
            stream.step(frame)

    def timed_step(name: str) -> float:
        stream, frame = streams[name]
        t0 = clock()
        stream.step(frame)
        return (clock() - t0) * 1e3

    def frames_in_round(turn: int) -> int:
        if turn >= max_rounds or turn >= min_rounds and clock() - start >= budget_s:
            return 0
        return round_frames

    samples = interleaved_samples({name: (lambda name=name: timed_step(name)) for name in runtimes}, frames_in_round,
                                  settle={name: (lambda s=s: s[0].step(s[1])) for name, s in streams.items()},
                                  settle_calls=settle)
    return ({n: float(np.median(s)) for n, s in samples.items()}, {n: len(s) for n, s in samples.items()})


# -- the rule ----------------------------------------------------------------------------------------------
def _accepts(backend: str, options: dict[str, Any]) -> bool:
    import importlib
    import inspect

    from online_tsm.runtimes import BACKENDS

    module, factory = BACKENDS[backend]
    params = inspect.signature(getattr(importlib.import_module(module), factory)).parameters
    known = {n for n, p in params.items() if p.kind == p.KEYWORD_ONLY}
    return set(options) <= known


def candidates_for(folder: Path, options: dict[str, Any] | None = None) -> tuple[list[str], dict[str, str | None]]:
    """Backends of :data:`CANDIDATES` that can run ``folder`` here and take every option given."""
    from online_tsm.runtimes.availability import available_backends

    status = available_backends(folder)
    options = options or {}
    usable = [n for n in CANDIDATES if status.get(n) is None and _accepts(n, options)]
    return usable, status


def forced_choice(choose: str | None) -> tuple[str | None, str]:
    """The backend named by the ``choose`` option, else by ``$ONLINE_TSM_AUTO`` (empty or ``measure``: none)."""
    if choose:
        return choose, "option"
    env = os.environ.get(ENV_CHOICE, "").strip()
    if env and env != "measure":
        return env, ENV_CHOICE
    return None, ""


def resolve_choice(folder: Path, *, threads: int | None = None, choose: str | None = None, remeasure: bool = False,
                   options: dict[str, Any] | None = None, clock: Clock = time.perf_counter,
                   budget_s: float = BUDGET_S,
                   opener: Callable[[str], Runtime] | None = None) -> tuple[AutoChoice, Runtime | None]:
    """The rule of ``backend="auto"`` for an export folder: the choice and, if measured, its open runtime.

    1. ``choose=`` or ``$ONLINE_TSM_AUTO`` names the backend: used as is (an error if it cannot run here).
    2. Only one of onnxruntime / tvm / litert can run the folder here (or takes the options given): that one.
    3. A cached choice for (manifest sha256, CPU model, threads): that one, nothing measured.
    4. Otherwise every candidate streams warm frames in interleaved rounds (about ``budget_s``); the
       lowest median ms/frame wins and is cached.
    """
    options = dict(options or {})
    if threads:
        options["threads"] = threads
    usable, status = candidates_for(folder, options)
    forced, why = forced_choice(choose)
    if forced:
        if forced not in CANDIDATES:
            where = "the choose option" if why == "option" else ENV_CHOICE
            raise RuntimeOpenError(f"{where} names {forced!r}; expected one of {', '.join(CANDIDATES)} (or unset "
                                   "it to measure)")
        if forced not in usable:
            reason = status.get(forced) or "it does not take the options given"
            raise BackendUnavailable(f"{ENV_CHOICE if why != 'option' else 'choose'}={forced} but {forced} cannot "
                                     f"run {folder} here: {reason}")
        return AutoChoice(forced, why), None
    if not usable:
        reasons = "; ".join(f"{n}: {status.get(n) or 'does not take the options given'}" for n in CANDIDATES)
        raise BackendUnavailable(f"no backend can run {folder} here ({reasons})")
    if len(usable) == 1:
        return AutoChoice(usable[0], "only candidate"), None
    cpu = cpu_model()
    path = cache_path(folder, threads, cpu)
    if not remeasure:
        cached = read_cached(path, usable)
        if cached is not None:
            return cached, None
    from online_tsm.runtimes import open_runtime

    open_one = opener or (lambda name: open_runtime(folder, name, **options))
    opened: dict[str, Runtime] = {}
    try:
        for name in usable:
            opened[name] = open_one(name)
        ms, frames = measure_backends(opened, budget_s=budget_s, clock=clock)
    except BaseException:
        for rt in opened.values():
            rt.close()
        raise
    best = min(usable, key=lambda n: (ms[n], usable.index(n)))
    for name, rt in opened.items():
        if name != best:
            rt.close()
    choice = AutoChoice(best, "measured", ms, frames,
                        measured=_dt.datetime.now().astimezone().isoformat(timespec="seconds"), cpu=cpu,
                        threads=str(threads or "default"))
    try:
        write_cached(path, choice)
    except OSError:
        pass  # a read-only cache folder costs a re-measurement next time, nothing else
    return choice, opened[best]


def open_measured(folder: Path, *, threads: int | None = None, choose: str | None = None, remeasure: bool = False,
                  **options: Any) -> Runtime:
    """Open ``folder`` with the backend :func:`resolve_choice` picks; ``runtime.auto_choice`` keeps the evidence."""
    from online_tsm.runtimes import open_runtime

    choice, runtime = resolve_choice(folder, threads=threads, choose=choose, remeasure=remeasure, options=options)
    if runtime is None:
        runtime = open_runtime(folder, choice.backend, **({"threads": threads} if threads else {}), **options)
    runtime.auto_choice = choice  # type: ignore[attr-defined]
    runtime.description = f"{choice.describe()}; {runtime.description}"
    return runtime
