"""The verification frames, the PyTorch reference logits stored with an artifact, and the tolerance.

``reference.npz`` holds ``logits`` float32 ``[16, n_class]``: PyTorch's output
over :func:`frames_for` streamed with buffers carried, computed at export
time, so that ``verify``, the runtimes and the emulation check compare
against PyTorch without needing the weights.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from online_tsm.manifest import Manifest
from online_tsm.export.formats.onnx import deterministic_frames

REFERENCE_NAME = "reference.npz"
REFERENCE_FRAMES = 16
ABSOLUTE_TOLERANCE = 1e-4
RELATIVE_TOLERANCE = 1e-5                 # same machine: the reference's CPU architecture and compiler
RELATIVE_TOLERANCE_OTHER_MACHINE = 1e-4   # another architecture (aarch64 under qemu) or a GPU


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


def _tolerance(reference: np.ndarray, relative: float) -> float:
    return float(max(ABSOLUTE_TOLERANCE, relative * float(np.abs(reference).max(initial=0.0))))


def tolerance_same_machine(reference: np.ndarray) -> float:
    """Max abs diff allowed where the reference was computed: 1e-4, or 1e-5 of the largest logit if larger.

    float32 results legitimately differ in the last bits when a compiler sums in
    another order; the relative part keeps the check meaningful for models
    with large logits without loosening it for ordinary ones.
    """
    return _tolerance(reference, RELATIVE_TOLERANCE)


def tolerance_other_machine(reference: np.ndarray) -> float:
    """Max abs diff allowed on another CPU architecture or a GPU: ``max(1e-4, 1e-4 x max |reference logit|)``.

    Looser in its relative part than :func:`tolerance_same_machine`: PyTorch on
    x86-64 compared with LLVM's aarch64 code, which contracts multiply-adds
    into fused NEON FMAs and sums in another order, differs more in float32
    round-off (measured ~1e-5 of the largest logit).  Still far below what a
    wrong buffer order or a broken kernel produces (order 1).
    """
    return _tolerance(reference, RELATIVE_TOLERANCE_OTHER_MACHINE)


#: The same-machine rule under its former name, for callers not yet renamed.


def compare(actual: np.ndarray, reference: np.ndarray) -> float:
    """Max abs diff (inf on a shape mismatch or NaN, so a broken result never passes)."""
    actual, reference = np.asarray(actual), np.asarray(reference)
    if actual.shape != reference.shape:
        return float("inf")
    diff = float(np.abs(actual.astype(np.float64) - reference.astype(np.float64)).max(initial=0.0))
    return diff if np.isfinite(diff) else float("inf")


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
