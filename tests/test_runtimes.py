"""Streaming runtimes agree: torch, onnxruntime and tvm over streamed frames, reset, interleaving, step_many."""
from __future__ import annotations

import os

import numpy as np
import pytest

from online_tsm.export.formats.onnx import deterministic_frames, stream_torch
from online_tsm.runtimes import available_backends, open_runtime, resolve_auto
from runtime_artifacts import copy_artifact, small_artifact  # noqa: F401 -- fixture

TOLERANCE = 1e-4  # max abs logit difference between backends (float32, different kernels)
N_FRAMES = 32
ARTIFACT_BACKENDS = ("onnxruntime", "tvm")


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return deterministic_frames(N_FRAMES, 96)


@pytest.fixture(scope="module")
def reference(model_small, frames) -> np.ndarray:
    """Independent reference: the model called directly, buffers carried by hand."""
    return stream_torch(model_small, frames)


@pytest.fixture(scope="module", params=("torch", *ARTIFACT_BACKENDS))
def runtime(request, model_small, small_artifact):
    source = model_small if request.param == "torch" else small_artifact
    rt = open_runtime(source, request.param)
    yield rt
    rt.close()


def stream_all(stream, frames: np.ndarray) -> np.ndarray:
    return np.stack([stream.step(f) for f in frames])


def test_backends_match_reference_over_streamed_frames_and_after_reset(runtime, frames, reference):
    stream = runtime.new_stream()
    first = stream_all(stream, frames)
    assert first.dtype == np.float32 and first.shape == (N_FRAMES, 10)
    assert stream.frames_seen == N_FRAMES
    assert np.abs(first - reference).max() <= TOLERANCE, runtime.backend
    stream.reset()
    assert stream.frames_seen == 0
    again = stream_all(stream, frames)
    assert np.abs(again - reference).max() <= TOLERANCE, runtime.backend
    # The buffers matter: without them (each frame a fresh stream) the logits differ.
    fresh = np.stack([runtime.new_stream().step(f) for f in frames[:4]])
    assert np.abs(fresh[1:] - reference[1:4]).max() > 100 * TOLERANCE


def test_interleaved_streams_match_streams_stepped_alone(runtime, frames, reference):
    other_frames = frames[::-1].copy()
    other_reference = stream_all(runtime.new_stream(), other_frames[:8])
    a, b = runtime.new_stream(), runtime.new_stream()
    out_a, out_b = [], []
    for t in range(8):
        out_a.append(a.step(frames[t]))
        out_b.append(b.step(other_frames[t]))
    assert np.abs(np.stack(out_a) - reference[:8]).max() <= TOLERANCE
    assert np.abs(np.stack(out_b) - other_reference).max() <= TOLERANCE


def test_step_many_matches_separate_streams(runtime, frames):
    n = 3
    batched = [runtime.new_stream() for _ in range(n)]
    alone = [runtime.new_stream() for _ in range(n)]
    for t in range(6):
        if t == 3:  # a stream that resets mid-way, and single steps mixed with batched ones
            batched[1].reset()
            alone[1].reset()
            batched[2].step(frames[20])
            alone[2].step(frames[20])
        chosen = [frames[(t + 7 * i) % N_FRAMES] for i in range(n)]
        got = runtime.step_many(batched, chosen)
        want = np.stack([s.step(f) for s, f in zip(alone, chosen)])
        assert got.shape == (n, 10) and got.dtype == np.float32
        assert np.abs(got - want).max() <= TOLERANCE, (runtime.backend, t)
    assert [s.frames_seen for s in batched] == [s.frames_seen for s in alone] == [6, 3, 7]
    assert runtime.step_many([], []).shape == (0, 10)


def test_step_many_accepts_a_changing_number_of_streams(runtime, frames):
    streams = [runtime.new_stream() for _ in range(4)]
    twins = [runtime.new_stream() for _ in range(4)]
    for count in (4, 2, 4, 1):
        got = runtime.step_many(streams[:count], list(frames[:count]))
        want = np.stack([s.step(f) for s, f in zip(twins[:count], frames[:count])])
        assert np.abs(got - want).max() <= TOLERANCE


def test_preprocess_turns_a_camera_image_into_a_frame(runtime):
    image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    frame = runtime.preprocess(image)
    assert frame.shape == (3, 96, 96) and frame.dtype == np.float32
    assert runtime.new_stream().step(frame).shape == (10,)


def test_runtime_reads_labels_and_sizes_from_the_manifest(small_artifact):
    with open_runtime(small_artifact, "onnxruntime") as rt:
        assert rt.labels == [f"class_{i}" for i in range(10)]
        assert rt.input_size == 96 and rt.n_class == 10
        assert rt.backend == "onnxruntime" and "ONNX Runtime" in rt.description


@pytest.mark.parametrize("backend", ARTIFACT_BACKENDS)
def test_artifact_backends_reproduce_the_exported_reference(small_artifact, backend):
    reference = np.load(small_artifact / "reference.npz")["logits"]
    with open_runtime(small_artifact, backend) as rt:
        got = stream_all(rt.new_stream(), deterministic_frames(len(reference), rt.input_size))
    assert np.abs(got - reference).max() <= TOLERANCE


def test_onnxruntime_step_many_runs_one_batch(small_artifact, frames):
    with open_runtime(small_artifact, "onnxruntime") as rt:
        assert not rt.batches_streams  # the batch-N graph is built on first use
        rt.step_many([rt.new_stream() for _ in range(2)], list(frames[:2]))
        assert rt.batches_streams  # a real batch-N graph, not a loop
    with open_runtime(small_artifact, "onnxruntime", batched=False) as rt:
        rt.step_many([rt.new_stream() for _ in range(2)], list(frames[:2]))
        assert not rt.batches_streams
    with open_runtime(small_artifact, "tvm") as rt:
        assert not rt.batches_streams  # the library fixes batch 1


def test_tvm_device_time_is_measured_without_touching_streams(small_artifact, frames):
    with open_runtime(small_artifact, "tvm") as rt:
        stream = rt.new_stream()
        first = stream.step(frames[0])
        timing = rt.device_time(n=2, repeat=1)
        assert timing.mean_ms > 0 and timing.number == 2
        second = stream.step(frames[1])
        alone = rt.new_stream()
        alone.step(frames[0])
        assert np.array_equal(second, alone.step(frames[1]))
        assert first.shape == (10,)



@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs a Linux process allowed on at least two cores")
def test_opening_tvm_leaves_the_callers_cores_alone(small_artifact, frames, monkeypatch):
    """TVM's thread binding used to pin the calling thread to one core, halving every runtime opened after it."""
    monkeypatch.delenv("TVM_BIND_THREADS", raising=False)
    cores = os.sched_getaffinity(0)
    with open_runtime(small_artifact, "tvm", threads=2) as rt:
        rt.new_stream().step(frames[0])
        assert os.sched_getaffinity(0) == cores

# -- auto and availability --------------------------------------------------------------------------
def test_auto_picks_a_measured_backend_for_a_host_library_and_torch_for_weights(small_artifact, model_small,
                                                                                   tmp_path, monkeypatch):
    monkeypatch.setenv("ONLINE_TSM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ONLINE_TSM_AUTO", raising=False)
    picked = resolve_auto(small_artifact)  # measured once (tests/test_auto.py checks the rule with a fake clock)
    assert picked in ("tvm", "onnxruntime")
    assert resolve_auto(model_small) == "torch"
    assert resolve_auto("jester") == "torch"
    with open_runtime(small_artifact) as rt:  # backend="auto" is the default; the cached choice
        assert rt.backend == picked


def test_auto_falls_back_to_onnxruntime_without_a_library(small_artifact, tmp_path):
    from online_tsm.manifest import load_manifest, write_manifest

    folder = copy_artifact(small_artifact, tmp_path / "onnx-only")
    manifest = load_manifest(folder)
    library = manifest.file_with_role("library")
    (folder / library).unlink()
    write_manifest(folder, manifest)
    status = available_backends(folder)
    assert status["onnxruntime"] is None
    assert "no library file" in status["tvm"]
    assert resolve_auto(folder) == "onnxruntime"


def test_available_backends_says_why_not(small_artifact):
    for_folder = available_backends(small_artifact)
    assert for_folder["onnxruntime"] is None and for_folder["tvm"] is None and for_folder["tvm-rpc"] is None
    assert for_folder["torch"] == "runs a checkpoint, not an export folder"
    for_weights = available_backends("jester")
    assert for_weights["torch"] is None
    assert "runs an export folder" in for_weights["onnxruntime"]
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert "online-tsm[jetson]" in available_backends()["tensorrt"]


@pytest.mark.parametrize("tuning, said", [
    (None, ""),
    ({"trials_per_task": 0, "record_databases": []}, ""),
    ({"schedules": "tuned"}, ", tuned schedules"),
    ({"schedules": "default"}, ", default schedules (this CPU's tuning records ran slower at export)"),
])
def test_a_tvm_runtime_says_which_schedules_its_library_runs(tuning, said):
    from online_tsm.runtimes.tvm_backend import _schedules_note

    assert _schedules_note({"tuning": tuning} if tuning is not None else {}) == said
