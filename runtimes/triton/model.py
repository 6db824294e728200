"""The Triton python-backend model: per-camera shift buffers keyed by the sequence's correlation id.

Triton's sequence batcher gives every request the control inputs of its
sequence (``CONTROL_SEQUENCE_START``/``END``/``CORRID``); with the ``oldest``
strategy one ``execute`` call holds requests of several sequences.  Here each
correlation id owns one :class:`~online_tsm.runtimes.base.Stream` of a local
runtime (ONNX Runtime by default), and one ``execute`` is one
``runtime.step_many`` over the streams it holds -- the streaming protocol of
:mod:`online_tsm.runtimes.base`, not a loop of its own.

:class:`SequenceStates` and :func:`step_requests` do not need Triton and are
tested directly; :class:`TritonPythonModel` is the thin adapter the
repository's ``model.py`` re-exports (``triton_python_backend_utils`` exists
only inside Triton's python stub).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from online_tsm.errors import OnlineTSMError
from online_tsm.runtimes.base import Runtime, Stream

# Names of the control inputs in the python model's config.pbtxt (written by online_tsm.export.formats.triton).
START, END, CORRID = "START", "END", "CORRID"


class SequenceError(OnlineTSMError, ValueError):
    """A request that cannot be served: unknown or expired sequence, bad frame."""


@dataclass
class Item:
    """One request of an ``execute`` call."""

    corrid: int
    start: bool
    end: bool
    frame: np.ndarray


class SequenceStates:
    """Correlation id -> stream; START makes a fresh stream, END and idle time free it.

    Triton drops a sequence that stays idle longer than
    ``max_sequence_idle_microseconds`` without telling the model; the same
    timeout here frees its buffers, so a camera that vanishes does not hold
    memory for ever.
    """

    def __init__(self, runtime: Runtime, idle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.runtime = runtime
        self.idle_s = float(idle_s)
        self.clock = clock
        self.streams: dict[int, Stream] = {}
        self.last_seen: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self.streams)

    def stream_for(self, item: Item) -> Stream:
        """The stream of ``item``'s sequence, fresh (zero buffers) on START."""
        if item.start or item.corrid not in self.streams:
            if not item.start:
                raise SequenceError(f"sequence {item.corrid} has no state here (never started, ended, or idle "
                                    f"longer than {self.idle_s:g} s); send it again with sequence_start=True")
            self.streams[item.corrid] = self.runtime.new_stream()
        self.last_seen[item.corrid] = self.clock()
        return self.streams[item.corrid]

    def end(self, corrid: int) -> None:
        self.streams.pop(corrid, None)
        self.last_seen.pop(corrid, None)

    def expire(self) -> list[int]:
        """Free the sequences idle for longer than the timeout; return their ids."""
        now = self.clock()
        gone = [c for c, t in self.last_seen.items() if now - t > self.idle_s]
        for corrid in gone:
            self.end(corrid)
        return gone


def step_requests(states: SequenceStates, items: list[Item]) -> list[np.ndarray | Exception]:
    """Logits ``[n_class]`` (or the error) per item, in order, batching distinct sequences with ``step_many``.

    A sequence that appears twice in one call is stepped in two rounds, in
    arrival order, so its frames are never reordered.
    """
    results: list[np.ndarray | Exception | None] = [None] * len(items)
    pending = list(range(len(items)))
    while pending:
        round_ids: list[int] = []
        seen: set[int] = set()
        later: list[int] = []
        for i in pending:
            (later if items[i].corrid in seen else round_ids).append(i)
            seen.add(items[i].corrid)
        streams, frames, rows = [], [], []
        for i in round_ids:
            try:
                stream = states.stream_for(items[i])
                frame = states.runtime.check_frame(items[i].frame)
            except ValueError as exc:
                results[i] = exc
                continue
            streams.append(stream)
            frames.append(frame)
            rows.append(i)
        if streams:
            logits = states.runtime.step_many(streams, frames)
            for row, i in enumerate(rows):
                results[i] = logits[row]
        for i in round_ids:
            if items[i].end:
                states.end(items[i].corrid)
        pending = later
    return results  # type: ignore[return-value]


class TritonPythonModel:
    """Triton's python-backend entry points (``initialize``, ``execute``, ``finalize``)."""

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils  # only inside Triton's python stub

        from online_tsm.runtimes import open_runtime

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / str(args["model_version"]) / params.get("artifact", "artifact")
        threads = int(params["threads"]) if params.get("threads") else None
        self.runtime = open_runtime(folder, backend=params.get("runtime_backend", "onnxruntime"), threads=threads)
        idle_us = int(config.get("sequence_batching", {}).get("max_sequence_idle_microseconds", 60_000_000))
        self.states = SequenceStates(self.runtime, idle_us / 1e6)
        m = self.runtime.artifact.manifest  # type: ignore[attr-defined]
        self.frame_name, self.logits_name = m.frame_input, m.logits_output

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self.pb
        self.states.expire()
        items: list[Item | Exception] = []
        for request in requests:
            try:
                items.append(Item(corrid=int(_scalar(pb, request, CORRID)), start=bool(_scalar(pb, request, START)),
                                  end=bool(_scalar(pb, request, END)),
                                  frame=_array(pb.get_input_tensor_by_name(request, self.frame_name))))
            except Exception as exc:  # noqa: BLE001 -- reported to the client of that request
                items.append(SequenceError(f"malformed request: {exc}"))
        good = [it for it in items if isinstance(it, Item)]
        results = iter(step_requests(self.states, good))
        responses = []
        for it in items:
            out = next(results) if isinstance(it, Item) else it
            if isinstance(out, Exception):
                responses.append(pb.InferenceResponse(output_tensors=[], error=pb.TritonError(str(out))))
            else:
                responses.append(pb.InferenceResponse(output_tensors=[self._tensor(out[None])]))
        return responses

    def _tensor(self, logits: np.ndarray) -> Any:
        """The logits as a response tensor, handed over through DLPack (see :func:`_array`).

        ``pb.Tensor(name, array)`` goes through the stub's numpy bindings: with
        numpy 2 the client receives the shape but no data.
        """
        import torch

        return self.pb.Tensor.from_dlpack(self.logits_name, torch.from_numpy(np.array(logits, np.float32)))

    def finalize(self) -> None:
        self.states.streams.clear()
        self.runtime.close()


def _scalar(pb: Any, request: Any, name: str) -> Any:
    tensor = pb.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise SequenceError(f"no {name} control input (the model must be served with sequence_batching)")
    return _array(tensor).reshape(-1)[0]


def _array(tensor: Any) -> np.ndarray:
    """A request tensor as a numpy copy, through DLPack.

    The stub's ``as_numpy`` is built for numpy 1.x; under numpy 2 it returns
    arrays of the right shape over the wrong bytes.
    """
    import torch

    if tensor is None:
        raise SequenceError("a request lacks the frame input")
    return torch.from_dlpack(tensor.to_dlpack()).numpy().copy()
