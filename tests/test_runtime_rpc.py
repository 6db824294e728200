"""The tvm-rpc backend against a TVM RPC server on 127.0.0.1 matches the local tvm backend."""
from __future__ import annotations

import numpy as np
import pytest

from online_tsm.export.formats.onnx import deterministic_frames
from online_tsm.runtimes import open_runtime
from runtime_artifacts import rpc_server, small_artifact  # noqa: F401 -- fixtures

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def remote(small_artifact, rpc_server):
    with open_runtime(small_artifact, "tvm-rpc", address=rpc_server) as rt:
        yield rt


def test_remote_streaming_matches_local_tvm_including_reset(remote, small_artifact):
    frames = deterministic_frames(32, 96)
    with open_runtime(small_artifact, "tvm") as local:
        want = np.stack(_stream(local.new_stream(), frames))
    stream = remote.new_stream()
    got = np.stack(_stream(stream, frames))
    assert remote.backend == "tvm-rpc" and "127.0.0.1" in remote.description
    assert np.abs(got - want).max() <= TOLERANCE
    stream.reset()
    assert np.abs(np.stack(_stream(stream, frames[:8])) - want[:8]).max() <= TOLERANCE


def test_remote_step_many_and_interleaving_match_separate_streams(remote):
    frames = deterministic_frames(6, 96, seed=3)
    batched = [remote.new_stream() for _ in range(2)]
    alone = [remote.new_stream() for _ in range(2)]
    for t in range(3):
        pair = [frames[t], frames[5 - t]]
        got = remote.step_many(batched, pair)
        want = np.stack([s.step(f) for s, f in zip(alone, pair)])
        assert np.abs(got - want).max() <= TOLERANCE


def test_remote_time_reports_device_timing(remote):
    timing = remote.remote_time(n=3, repeat=2)
    assert timing.number == 3 and timing.repeat == 2
    assert 0 < timing.min_ms <= timing.mean_ms <= timing.max_ms
    assert "ms/frame" in str(timing)


def _stream(stream, frames):
    return [stream.step(f) for f in frames]
