"""The shipped default model (online_tsm/assets/default-synthetic.pt): loads, streams, exports, recognises.

It was trained by ``tsm-train`` on the synthetic gestures (command and measured
accuracy in the README and in the checkpoint's metadata).  A build without the
asset skips these tests; every other test runs without it.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from online_tsm.checkpoint import load_model
from online_tsm.export.api import export_artifact
from online_tsm.manifest import load_manifest
from online_tsm.export.formats.onnx import deterministic_frames, stream_onnxruntime, stream_torch
from online_tsm.export.tvm.build import stream_tvm
from online_tsm.preprocess import preprocess_frame
from online_tsm.synthetic import GESTURES, random_params, render_clip
from online_tsm.training.dataset import segment_indices
from online_tsm.weights import DEFAULT_ASSET, default_weights

pytestmark = pytest.mark.skipif(default_weights() is None,
                                reason=f"this build does not ship the default model ({DEFAULT_ASSET})")

PARITY = 1e-4        # max |logit difference| of 16 streamed frames, as for every export
SWIPE_SEEDS = range(100, 106)  # swipe-left clips the model never saw (training used seeds 1 and 2 of the plan)


@pytest.fixture(scope="module")
def model():
    return load_model("default")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return export_artifact("default", "host", tmp_path_factory.mktemp("default") / "host", progress=False)


def _swipe_left_frames(seed: int, segments: int) -> list[np.ndarray]:
    """A 320x240 swipe-left clip (a camera's size), one frame per segment as the model was trained."""
    params = random_params("swipe-left", 32, seed)
    return render_clip(params, 240, 320, segment_indices(params.n_frames, segments))


def _stream(model, frames: list[np.ndarray]) -> np.ndarray:
    buffers = model.init_buffers()
    out = []
    with torch.inference_mode():
        for frame in frames:
            logits, *buffers = model(torch.from_numpy(preprocess_frame(frame, model.input_size))[None], *buffers)
            out.append(logits[0].numpy())
    return np.stack(out)


def test_default_is_a_small_trained_checkpoint(model):
    assert DEFAULT_ASSET.stat().st_size < 8e6
    state = torch.load(DEFAULT_ASSET, map_location="cpu", weights_only=True)["state_dict"]
    assert {v.dtype for v in state.values() if torch.is_floating_point(v)} == {torch.float16}
    assert list(model.info.labels) == list(GESTURES.values())
    assert model.width_mult == 0.5 and len(model.shift_blocks) == 10
    extra = model.info.extra
    assert extra["trained_shift"] == "causal" and extra["command"].startswith("tsm-train ")
    assert extra["val_top1"] >= 0.9
    assert extra["frame_stride"] == 3.99   # synthetic clips of 24-40 frames, 8 segments (online_tsm.streaming.pacing)


def test_default_streams_exactly_as_its_clip_model(model):
    frames = _swipe_left_frames(SWIPE_SEEDS[0], int(model.info.extra["segments"]))
    clip = torch.from_numpy(np.stack([preprocess_frame(f, model.input_size) for f in frames]))[None]
    with torch.inference_mode():
        expected = model.forward_clip(clip, "causal")[0].numpy()
    assert np.abs(_stream(model, frames) - expected).max() < 1e-4


@pytest.mark.parametrize("seed", SWIPE_SEEDS)
def test_default_labels_a_synthetic_swipe_left_when_streamed(model, seed):
    logits = _stream(model, _swipe_left_frames(seed, int(model.info.extra["segments"])))
    assert model.info.labels[int(logits.mean(0).argmax())] == "Swiping Left"


def test_default_exports_to_onnx_and_tvm_with_parity(model, artifact):
    manifest = load_manifest(artifact)
    assert (manifest.model["frame_stride"], manifest.model["segments"]) == (3.99, 8)  # the pace travels along
    readme = (artifact / "README.txt").read_text()
    assert "Files: README.txt, model.onnx, model.so, reference.npz, run.py and manifest.json" in readme
    assert "run it on one camera frame in 4 and average the logits of the last 4 steps" in readme
    frames = deterministic_frames(16, model.input_size)
    expected = stream_torch(model, frames)
    assert np.abs(expected).max() > 1.0  # not a comparison of near-zero logits
    onnx = stream_onnxruntime(artifact / manifest.file_with_role("onnx"), manifest, frames)
    tvm = stream_tvm(artifact / manifest.file_with_role("library"), manifest, frames)
    assert np.abs(onnx - expected).max() <= PARITY
    assert np.abs(tvm - expected).max() <= PARITY


def test_exported_default_recognises_the_swipe(model, artifact):
    from online_tsm.runtimes import open_runtime

    with open_runtime(artifact, "tvm") as runtime:
        assert list(runtime.labels) == list(model.info.labels)
        stream = runtime.new_stream()
        frames = _swipe_left_frames(SWIPE_SEEDS[0], int(model.info.extra["segments"]))
        logits = np.mean([stream.step(runtime.preprocess(f)) for f in frames], axis=0)
    assert runtime.labels[int(logits.argmax())] == "Swiping Left"
