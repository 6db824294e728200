"""The verification frames, and the PyTorch reference logits stored with an artifact.

``reference.npz`` holds ``logits`` float32 ``[16, n_class]``: PyTorch's output
over :func:`frames_for` streamed with buffers carried, computed at export
time, so that ``verify``, the runtimes and the emulation check compare
against PyTorch without needing the weights.  How close they must come is
the manifest's verification rule (:mod:`online_tsm.verification`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from online_tsm.manifest import Manifest
from online_tsm.export.formats.onnx import deterministic_frames

REFERENCE_NAME = "reference.npz"
REFERENCE_FRAMES = 16


def deterministic_camera_frames(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """``n`` uint8 ``[H, W, 3]`` camera-like frames, the same on every machine (closed form, like
    :func:`~online_tsm.export.formats.onnx.deterministic_frames`)."""
    t, y, x, c = np.meshgrid(np.arange(n), np.arange(height), np.arange(width), np.arange(3), indexing="ij")
    value = 127.5 + 100.0 * np.sin(0.045 * x * (c + 1) + 0.031 * y + 0.4 * t + 0.5 * seed) \
        * np.cos(0.017 * y - 0.011 * x * c + 0.25 * t)
    # Integer levels well inside 0..255 (no clipping, no ties): identical wherever floats round alike.
    return np.floor(value).astype(np.uint8)


def frames_for(manifest: Manifest, n: int = REFERENCE_FRAMES) -> np.ndarray:
    """The frames an artifact is verified with: normalised ``[n, 3, S, S]``, or uint8 ``[n, H, W, 3]`` if folded."""
    if manifest.preprocess.get("folded"):
        _, h, w, _ = manifest.spec(manifest.frame_input).shape
        return deterministic_camera_frames(n, h, w)
    return deterministic_frames(n, manifest.input_size)


def write_reference(path: str | Path, logits: np.ndarray, frames_kind: str = "normalised") -> Path:
    path = Path(path)
    with open(path, "wb") as fh:  # np.savez would append .npz to a name without it
        np.savez(fh, logits=np.asarray(logits, np.float32), frames=np.array(frames_kind))
    return path


def read_reference(path: str | Path) -> np.ndarray:
    """``logits`` of a ``reference.npz``; ValueError naming the file when it is unreadable."""
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            logits = np.asarray(data["logits"], np.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path} is not a readable reference (expected an .npz with 'logits'): {exc}") from None
    if logits.ndim != 2:
        raise ValueError(f"{path}: expected logits of shape [frames, n_class], got {list(logits.shape)}")
    return logits
