"""Per-frame ONNX export with the shift buffers as named inputs and outputs.

The graph takes ``frame`` and ``shift_0..shift_{K-1}`` and returns ``logits``
and ``shift_out_0..shift_out_{K-1}``; ``shift_out_k`` feeds ``shift_k`` on the
next frame.  After export the graph is simplified with onnxslim (constant
folding, BN fusion) and checked against PyTorch over streamed frames, because
a simplifier bug would otherwise only show up on the device.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from online_tsm.checkpoint import model_info
from online_tsm.console.messages import first_line
from online_tsm.errors import OnlineTSMError
from online_tsm.manifest import BufferPair, Manifest, TensorSpec
from online_tsm.models import MobileNetV2TSM
from online_tsm.preprocess import resize_size

FRAME_INPUT = "frame"
LOGITS_OUTPUT = "logits"


class ExportError(OnlineTSMError, RuntimeError):
    """The model could not be exported or the exported graph disagrees with PyTorch."""


def buffer_names(n: int) -> tuple[list[str], list[str]]:
    return [f"shift_{k}" for k in range(n)], [f"shift_out_{k}" for k in range(n)]


PACE_KEYS = ("frame_stride", "segments")


def build_manifest(model: MobileNetV2TSM, name: str = "online-tsm", shift: str = "causal") -> Manifest:
    """The manifest of a per-frame graph of ``model`` (files and target are filled in later)."""
    info = model_info(model)
    size = model.input_size
    shapes = [list(s) for s in model.buffer_shapes(1)]
    ins, outs = buffer_names(len(shapes))
    return Manifest(
        model={"name": name, "arch": info.arch, "n_class": info.n_class, "labels": info.labels,
               "width_mult": info.width_mult, "shift_blocks": list(info.shift_blocks), "fold_div": info.fold_div,
               "shift": shift if shapes else "none",
               # How the model was trained to be paced when streamed (online_tsm.streaming.pacing); absent if unknown.
               **{k: info.extra[k] for k in PACE_KEYS if k in info.extra},
               # Which of a class folder's clips the model was validated on: int8 calibration holds out the same.
               **({"training_split": info.extra["split"]} if isinstance(info.extra.get("split"), dict) else {})},
        preprocess={"input_size": size, "resize_shorter": resize_size(size), "mean": list(info.mean),
                    "std": list(info.std), "color_order": "rgb", "layout": "NCHW", "folded": False},
        inputs=[TensorSpec(FRAME_INPUT, [1, 3, size, size])] + [TensorSpec(n, s) for n, s in zip(ins, shapes)],
        outputs=[TensorSpec(LOGITS_OUTPUT, [1, info.n_class])] + [TensorSpec(n, s) for n, s in zip(outs, shapes)],
        buffers=[BufferPair(i, o, s) for i, o, s in zip(ins, outs, shapes)],
    )


def export_onnx(model: torch.nn.Module, path: str | os.PathLike, *, opset: int | None = None,
                simplify: bool = True, verbose: bool = False) -> Path:
    """Write the per-frame graph of ``model`` to ``path``; return the path.

    ``model`` is a :class:`MobileNetV2TSM` or a
    :class:`~online_tsm.export.formats.folded.FoldedPreprocess` around one.
    ``opset=None`` uses the exporter's default (torch's dynamo exporter, opset 20).
    """
    kwargs = {"opset_version": opset} if opset else {}
    path = torch_export(model, path, verbose=verbose, dynamo=True, external_data=False, **kwargs)
    if simplify:
        simplify_and_check(path)
    else:
        onnx.checker.check_model(str(path), full_check=True)
    return path


def torch_export(model: torch.nn.Module, path: str | os.PathLike, *, verbose: bool = False,
                 what: str = "torch.onnx.export", **export_options: Any) -> Path:
    """``torch.onnx.export`` of the per-frame graph with the contract's names, quiet unless ``verbose``.

    Both exporters (dynamo for opset 18+, the legacy one for TensorRT's opset 13) go through here, so the
    inputs and outputs are named alike; a failure is one line naming ``what`` failed.
    """
    path = Path(path)
    model = model.eval()
    example = _example_inputs(model)
    ins, outs = buffer_names(len(example) - 1)
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    logging.getLogger("torch.onnx").setLevel(logging.INFO if verbose else logging.ERROR)
    try:
        with warnings.catch_warnings(), quiet:
            warnings.simplefilter("ignore")
            torch.onnx.export(model, example, str(path), input_names=[FRAME_INPUT, *ins],
                              output_names=[LOGITS_OUTPUT, *outs], **export_options)
    except Exception as exc:  # noqa: BLE001 -- the exporter raises many types; one line for the user
        raise ExportError(f"{what} failed: {first_line(exc)[:300]}") from exc
    return path


def simplify_and_check(path: str | os.PathLike) -> None:
    """Fold constants and fuse BatchNorm with onnxslim, run ONNX's full checker, and save the graph in place."""
    import onnxslim

    with contextlib.redirect_stdout(io.StringIO()):   # onnxslim prints its summary
        graph = onnxslim.slim(onnx.load(str(path)))
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, str(path))


def _example_inputs(model: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    """Zero frame and zero buffers; a folded-preprocessing wrapper takes a uint8 NHWC camera frame."""
    camera_hw = getattr(model, "camera_hw", None)
    core = getattr(model, "model", model) if camera_hw is not None else model
    if camera_hw is not None:
        frame = torch.zeros(1, camera_hw[0], camera_hw[1], 3, dtype=torch.uint8)
    else:
        frame = torch.zeros(1, 3, model.input_size, model.input_size)
    return (frame, *core.init_buffers(1))


def stream_torch(model: torch.nn.Module, frames: np.ndarray) -> np.ndarray:
    """Reference logits ``[T, n_class]`` of ``frames`` ``[T, 3, H, W]`` streamed with buffers carried.

    With a folded-preprocessing wrapper the frames are uint8 ``[T, H, W, 3]``.
    """
    buffers = getattr(model, "model", model).init_buffers(1) if hasattr(model, "camera_hw") else model.init_buffers(1)
    out = []
    with torch.inference_mode():
        for frame in frames:
            logits, *buffers = model(torch.from_numpy(frame)[None], *buffers)
            out.append(logits[0].numpy())
    return np.stack(out)


def stream_onnxruntime(path: str | os.PathLike, manifest: Manifest, frames: np.ndarray) -> np.ndarray:
    """Logits of ``frames`` streamed through ONNX Runtime, buffers carried by the manifest's names."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    state = {b.input: np.zeros(b.shape, np.dtype(b.dtype)) for b in manifest.buffers}
    out = []
    names = [manifest.logits_output] + [b.output for b in manifest.buffers]
    for frame in frames:
        results = session.run(names, {manifest.frame_input: frame[None], **state})
        out.append(results[0][0])
        state = {b.input: r for b, r in zip(manifest.buffers, results[1:])}
    return np.stack(out)


def deterministic_frames(n: int, input_size: int, seed: int = 0) -> np.ndarray:
    """``n`` normalised frames ``[n, 3, S, S]`` for verification, the same on every machine.

    A closed-form pattern rather than a random generator, so that an aarch64
    interpreter with another numpy build regenerates the very same frames
    (up to libm rounding, far below any verification tolerance).
    """
    t, c, y, x = np.meshgrid(np.arange(n), np.arange(3), np.arange(input_size), np.arange(input_size),
                             indexing="ij")
    phase = 0.05 * (x + 1) * (c + 1) + 0.07 * y + 0.3 * t + 0.5 * seed
    return (2.0 * np.sin(phase) * np.cos(0.013 * x * y / (c + 1) + 0.2 * t)).astype(np.float32)
