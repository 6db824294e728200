"""The runtimes' profiling options: ORT's profiler on the stream's session, the TVM VM's instrument hook."""
from __future__ import annotations

import json

import numpy as np
import pytest

from online_tsm.export.formats.onnx import deterministic_frames
from online_tsm.runtimes import open_runtime
from runtime_artifacts import small_artifact  # noqa: F401 -- fixture

N_FRAMES = 4
TOLERANCE = 1e-6  # same kernels with and without profiling: logits agree to float32 rounding


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return deterministic_frames(N_FRAMES, 96)


def stream_all(runtime, frames: np.ndarray) -> np.ndarray:
    stream = runtime.new_stream()
    return np.stack([stream.step(f) for f in frames])


def test_onnxruntime_profile_has_one_run_per_step_and_kernel_events(small_artifact, frames, tmp_path):
    with open_runtime(small_artifact, "onnxruntime", batched=False) as plain:
        expected = stream_all(plain, frames)
    with open_runtime(small_artifact, "onnxruntime", profile=tmp_path / "ort") as runtime:
        got = stream_all(runtime, frames)
        trace = runtime.end_profiling()
    assert trace.parent == tmp_path and trace.name.startswith("ort")
    events = json.loads(trace.read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    kernels = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]
    assert len(runs) == N_FRAMES
    assert {e["args"]["op_name"] for e in kernels} >= {"Conv"}
    last = runs[-1]
    assert any(last["ts"] <= e["ts"] <= last["ts"] + last["dur"] for e in kernels)  # kernels inside each run
    np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)


def test_onnxruntime_end_profiling_without_profile_says_how(small_artifact):
    with open_runtime(small_artifact, "onnxruntime") as runtime:
        with pytest.raises(RuntimeError, match=r"end_profiling needs a runtime opened with profile=<file prefix>"):
            runtime.end_profiling()


def test_tvm_instrument_hook_sees_every_call_before_and_after(small_artifact, frames):
    with open_runtime(small_artifact, "tvm", threads=1) as plain:
        expected = stream_all(plain, frames)
    calls: list[tuple[str, bool]] = []

    def hook(func, symbol, before, ret, *args) -> int:
        calls.append((symbol, before))
        return 0

    with open_runtime(small_artifact, "tvm", threads=1) as runtime:
        runtime.set_instrument(hook)
        got = stream_all(runtime, frames)
        n = len(calls)
        assert n > 0 and n % 2 == 0
        assert [b for _, b in calls[:2]] == [True, False] and calls[0][0] == calls[1][0]
        assert any(s.startswith("fused_conv2d") for s, _ in calls)
        runtime.set_instrument(None)
        runtime.new_stream().step(frames[0])
        assert len(calls) == n  # removed: no more calls
    np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)
