"""Long runs hold: streaming many frames keeps memory flat, and a reset stream equals a fresh one.

The default suite runs a short soak per backend (sized so that it takes seconds); ``-m soak`` runs 100k frames
per backend, what an unattended demo sees in about an hour at 30 fps.  Memory is the process's resident set
(psutil), read after a warm-up so that allocator pools and lazily built sessions are not counted as growth.
"""
from __future__ import annotations

import gc

import numpy as np
import psutil
import pytest
import torch

from helpers import seeded_model
from online_tsm.runtimes import open_runtime
from runtime_artifacts import small_artifact  # noqa: F401 -- fixture

RSS_GROWTH_LIMIT_MB = 20.0
# Frames per backend in the default suite: eager PyTorch costs ~20x ORT per frame, and the TVM artifact is the
# runtime tests' (larger) one, so that no compile is added for this test.
SHORT = {"onnxruntime": 5000, "tvm": 2000, "torch": 500}
LONG = 100_000


@pytest.fixture(scope="module")
def tiny_model():
    return seeded_model(seed=3, width_mult=0.25, input_size=32, n_class=10)


@pytest.fixture(scope="module")
def sources(tmp_path_factory, export_cache, small_artifact, tiny_model):
    """What each backend streams: the tiny model itself (torch), its ONNX export, the runtime tests' host export."""
    from online_tsm.checkpoint import save_checkpoint

    weights = save_checkpoint(tiny_model, tmp_path_factory.mktemp("soak") / "tiny.pt")
    return {"torch": tiny_model, "onnxruntime": export_cache("tiny-onnx", weights, "onnx"), "tvm": small_artifact}


def _rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


@pytest.fixture()
def one_torch_thread():
    """Eager PyTorch with its default threads crawls on a loaded 2-core machine (spinning OpenMP workers)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def soak(backend: str, source, n_frames: int) -> None:
    with open_runtime(source, backend) as rt:
        rng = np.random.default_rng(0)
        pool = [rng.standard_normal(rt.frame_shape[1:]).astype(np.float32) for _ in range(17)]
        stream, other = rt.new_stream(), rt.new_stream()
        warmup = max(200, n_frames // 10)
        for i in range(warmup):
            stream.step(pool[i % len(pool)])
            if i % 7 == 0:  # a second stream and batched steps in the mix, as a multi-camera app does
                rt.step_many([stream, other], [pool[(i + 1) % len(pool)], pool[(i + 2) % len(pool)]])
        start = _rss_mb()
        for i in range(warmup, n_frames):
            logits = stream.step(pool[i % len(pool)])
            if i % 7 == 0:
                rt.step_many([stream, other], [pool[(i + 1) % len(pool)], pool[(i + 2) % len(pool)]])
        growth = _rss_mb() - start
        assert np.isfinite(logits).all()
        assert growth < RSS_GROWTH_LIMIT_MB, (f"{backend}: resident memory grew {growth:.1f} MB over "
                                              f"{n_frames - warmup} frames after warm-up")

        # After reset() the long-running stream is indistinguishable from a new one.
        stream.reset()
        fresh = rt.new_stream()
        assert stream.frames_seen == fresh.frames_seen == 0
        for frame in pool[:9]:
            np.testing.assert_allclose(stream.step(frame), fresh.step(frame), rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", sorted(SHORT))
def test_short_soak_keeps_memory_flat_and_reset_equals_fresh(backend, sources, one_torch_thread):
    soak(backend, sources[backend], SHORT[backend])


@pytest.mark.soak
@pytest.mark.parametrize("backend", sorted(SHORT))
def test_long_soak_100k_frames(backend, sources, one_torch_thread):
    soak(backend, sources[backend], LONG)
