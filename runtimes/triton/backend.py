"""Triton backend: each stream is one sequence on a Triton Inference Server (``tsm-serve``).

``open_runtime(REPO, backend="triton", address="HOST:PORT")`` reads the
artifact's manifest from the repository written by ``tsm-export --target
triton`` (or from an export folder of the same model) and talks gRPC to the
server.  The shift buffers live on the server, keyed by the stream's
sequence id: the first step after ``new_stream()`` or ``reset()`` carries
``sequence_start``, ``close()`` sends ``sequence_end`` (with a zero frame, as
Triton ends a sequence only with a request) so the server frees the buffers
at once instead of after its idle timeout.  ``step_many`` sends its N
requests at the same time, so the server's sequence batcher can run them as
one batch.
"""
from __future__ import annotations

import itertools
import os
import random
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from online_tsm.console.address import format_host_port, parse_host_port
from online_tsm.errors import OnlineTSMError
from online_tsm.manifest import artifact_folder
from online_tsm.runtimes.artifact import open_artifact
from online_tsm.runtimes.base import BackendUnavailable, Runtime, RuntimeOpenError, Stream

DEFAULT_MODEL = "online_tsm"
DEFAULT_TIMEOUT_S = 30.0
TRITON_TYPES = {"float32": "FP32", "float16": "FP16", "uint8": "UINT8"}


class TritonError(OnlineTSMError, RuntimeError):
    """The server did not answer in time, went away, or refused a frame; the message says which."""


def import_client() -> Any:
    try:
        import tritonclient.grpc as grpcclient
    except ImportError:
        raise BackendUnavailable("backend triton needs tritonclient: pip install 'online-tsm[serve]'") from None
    return grpcclient


@dataclass
class _Sequence:
    """A stream's server-side identity: its sequence id and whether the next step starts it."""

    sequence_id: int
    started: bool = False


class TritonStream(Stream):
    """A :class:`Stream` whose buffers live on the server under one sequence id."""

    def reset(self) -> None:
        """Zero buffers: the next step carries ``sequence_start`` (same sequence id)."""
        self.state.started = False
        self.frames_seen = 0

    def close(self) -> None:
        """End the sequence on the server (frees its buffers there)."""
        self.runtime._end([self.state])  # type: ignore[attr-defined]


class TritonRuntime(Runtime):
    backend = "triton"

    def __init__(self, source: str | os.PathLike, *, address: str | None = None, model: str = DEFAULT_MODEL,
                 timeout: float = DEFAULT_TIMEOUT_S, threads: int | None = None) -> None:
        grpcclient = import_client()
        if not address:
            raise RuntimeOpenError("backend triton needs the server's gRPC address: pass address='HOST:PORT' "
                                   "(tsm-serve prints it)")
        host, port = parse_host_port(address, error=RuntimeOpenError,
                                     expected="backend triton expects address HOST:PORT (e.g. 127.0.0.1:8001)")
        self.address, self.model, self.timeout = format_host_port(host, port), model, float(timeout)
        del threads  # the server decides; accepted so that generic callers can pass it
        self.artifact = open_artifact(artifact_folder(source), self.backend)
        m = self.artifact.manifest
        self._frame_name, self._logits_name = m.frame_input, m.logits_output
        self._exception = grpcclient.InferenceServerException
        self._grpc = grpcclient
        self._client = grpcclient.InferenceServerClient(self.address)
        self._open: dict[int, _Sequence] = {}
        self._lock = threading.Lock()
        # Sequence ids: a random 62-bit base so that several clients of one server do not collide.
        self._ids = itertools.count(random.SystemRandom().randrange(1, 1 << 62))
        super().__init__(**self.artifact.runtime_fields(), description=f"Triton at {self.address}, model {model}")
        self._check_server()

    def _check_server(self) -> None:
        try:
            live = self._client.is_server_live(client_timeout=self.timeout)
            ready = live and self._client.is_model_ready(self.model, client_timeout=self.timeout)
            meta = self._client.get_model_metadata(self.model, client_timeout=self.timeout) if ready else None
        except self._exception as exc:
            raise RuntimeOpenError(f"no Triton server answers at {self.address} ({_status(exc)}); start one with "
                                   "tsm-serve REPO") from None
        if not ready:
            raise RuntimeOpenError(f"the Triton server at {self.address} has no ready model {self.model!r}; "
                                   "serve a repository from tsm-export --target triton")
        names = {t.name for t in meta.inputs}
        if self._frame_name not in names:
            raise RuntimeOpenError(f"model {self.model!r} at {self.address} takes {', '.join(sorted(names))}, not "
                                   f"this artifact's {self._frame_name!r}: is it the same model?")

    # -- streams ------------------------------------------------------------------------------
    def new_stream(self) -> TritonStream:
        return TritonStream(self)

    def _zero_state(self) -> _Sequence:
        return _Sequence(next(self._ids))

    def _request(self, frame: np.ndarray, seq: _Sequence, end: bool = False) -> dict[str, Any]:
        tensor = self._grpc.InferInput(self._frame_name, list(frame.shape), TRITON_TYPES[str(frame.dtype)])
        tensor.set_data_from_numpy(frame)
        return dict(model_name=self.model, inputs=[tensor],
                    outputs=[self._grpc.InferRequestedOutput(self._logits_name)], sequence_id=seq.sequence_id,
                    sequence_start=not seq.started, sequence_end=end, client_timeout=self.timeout)

    def _run(self, frames: np.ndarray, state: _Sequence) -> tuple[np.ndarray, _Sequence]:
        try:
            result = self._client.infer(**self._request(frames, state))
        except self._exception as exc:
            raise self._error(exc) from None
        self._opened(state)
        return result.as_numpy(self._logits_name).astype(np.float32, copy=False), state

    def _run_many(self, frames: np.ndarray, states: list[_Sequence]) -> tuple[np.ndarray, list[Any]]:
        results = self._send_all([self._request(frames[i:i + 1], s) for i, s in enumerate(states)])
        for s in states:
            self._opened(s)
        return np.concatenate([r.as_numpy(self._logits_name) for r in results]).astype(np.float32), states

    def _send_all(self, requests: list[dict[str, Any]]) -> list[Any]:
        """Send all requests at once; their results in order, or the first error."""
        done = [threading.Event() for _ in requests]
        out: list[Any] = [None] * len(requests)
        errors: list[Any] = [None] * len(requests)

        def callback(i: int) -> Any:
            def finish(result: Any, error: Any) -> None:
                out[i], errors[i] = result, error
                done[i].set()
            return finish

        for i, request in enumerate(requests):
            self._client.async_infer(callback=callback(i), **request)
        for i, event in enumerate(done):
            if not event.wait(self.timeout + 5):
                raise TritonError(f"the Triton server at {self.address} did not answer within {self.timeout:g} s "
                                  f"(model {self.model})")
            if errors[i] is not None:
                raise self._error(errors[i])
        return out

    def _opened(self, seq: _Sequence) -> None:
        seq.started = True
        with self._lock:
            self._open[seq.sequence_id] = seq

    def _end(self, sequences: list[_Sequence]) -> None:
        """Send ``sequence_end`` (with a zero frame) for the started ``sequences``."""
        started = [s for s in sequences if s.started]
        with self._lock:
            for s in started:
                self._open.pop(s.sequence_id, None)
        if not started:
            return
        zero = np.zeros(self.frame_shape, self.frame_dtype)
        try:
            self._send_all([self._request(zero, s, end=True) for s in started])
        finally:
            for s in started:
                s.started = False

    def _error(self, exc: Any) -> TritonError:
        status = _status(exc)
        if "UNAVAILABLE" in status or "CANCELLED" in status:
            return TritonError(f"lost the Triton server at {self.address} ({status}); is tsm-serve still running?")
        if "DEADLINE" in status:
            return TritonError(f"the Triton server at {self.address} did not answer within {self.timeout:g} s "
                               f"(model {self.model})")
        return TritonError(f"the Triton server at {self.address} refused the frame: {exc.message() or status}")

    def close(self) -> None:
        """End every open sequence (best effort: the server may be gone) and close the connection."""
        with self._lock:
            open_ = list(self._open.values())
        try:
            self._end(open_)
        except TritonError:
            pass
        self._client.close()


def _status(exc: Any) -> str:
    status = exc.status() if hasattr(exc, "status") else None
    message = exc.message() if hasattr(exc, "message") else str(exc)
    return f"{status}: {message}" if status else str(message)
