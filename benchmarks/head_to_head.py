"""Every backend of a run timed against the others in the same interleaved rounds.

Each backend row of a ``tsm-bench`` run is timed on its own, TSM against its
TSN twin, one backend after another.  A comparison between two rows then
carries whatever changed between their turns: other load on a shared
machine, or the process landing in a different speed mode (ONNX Runtime
sessions in one process were measured running 0.47 to 1.04 ms for the same
work, minutes apart).  The comparisons that decide something -- is the
fastest backend ahead of the plain ONNX Runtime loop, is int8 1.5x it, is
``auto`` within 5 % of the fastest -- are therefore read from a second pass:
the TSM runtime of every backend that ran here, opened again and stepped in
rotating turns (see :mod:`online_tsm.machine.interleave`), so that every backend
meets the same conditions.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from online_tsm.benchmarks.latency import Contestant, cycle_frames, measure_interleaved
from online_tsm.runtimes.base import Runtime

YARDSTICK = "ort-plain"


def stream_contestants(runtimes: Sequence[tuple[str, Runtime]], images: Sequence[np.ndarray]) -> list[Contestant]:
    """One contestant per ``(name, runtime)``: a stream of its own stepping through ``images``, buffers carried."""
    players = []
    for name, rt in runtimes:
        stream = rt.new_stream()
        next_frame = cycle_frames(np.stack([rt.preprocess(img) for img in images]))
        players.append(Contestant(name, lambda s=stream, f=next_frame: s.step(f())))
    return players


def comparable_p50(head_to_head: dict[str, Any] | None, row_p50: dict[str, float]) -> tuple[dict[str, float], str]:
    """Each backend's TSM p50 for comparing backends, and where it comes from: the head-to-head pass when the
    run made one, else the rows' own figures (``row_p50``), timed one after another."""
    if head_to_head:
        return {r["backend"]: r["p50_ms"] for r in head_to_head["rows"]}, "head to head"
    return row_p50, "rows timed one after another"


def time_head_to_head(runtimes: Sequence[tuple[str, Runtime]], images: Sequence[np.ndarray], *, samples: int,
                      warmup: int, round_size: int, on_sample: Callable[[], None] | None = None) -> dict[str, Any]:
    """Step every ``(backend, runtime)`` in interleaved rounds; each row's p50 also as a ratio to the yardstick's.

    ``speedup_vs_plain_ort`` is ``ort-plain p50 / backend p50`` (above 1: faster
    than the plain loop); it is ``None`` when ``ort-plain`` was not among them.
    """
    stats = measure_interleaved(stream_contestants(runtimes, images), samples=samples, warmup=warmup,
                                round_size=round_size, on_sample=on_sample)
    plain = stats[YARDSTICK].p50 if YARDSTICK in stats else None
    fastest = min(s.p50 for s in stats.values())
    rows = [{"backend": name, **stats[name].summary(),
             "speedup_vs_plain_ort": None if plain is None else plain / stats[name].p50,
             "vs_fastest": stats[name].p50 / fastest} for name, _ in runtimes]
    return {"timing": f"{samples} frames per backend, TSM only, every backend in the same rounds of {round_size} "
                      "frames with the order rotating each round", "rows": rows}
