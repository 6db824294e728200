"""``tsm-export --precision int8``: calibrate, quantize, measure the agreement with float32, refuse below the gate.

The steps are the same whatever the format (ONNX Runtime's QDQ model, a
LiteRT full-integer model): clips from ``--calibration`` are streamed with
the buffers carried through the float32 model to record what each input
sees, the format's quantizer makes the int8 model from those feeds, held-out
clips are streamed through the int8 model and float32 PyTorch side by side,
and the export fails below ``--min-agreement``.  Only the quantizer and the
runtime that opens the file differ: that is an :class:`Int8Format`.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from online_tsm.errors import UserError
from online_tsm.export.formats.onnx import ExportError
from online_tsm.export.precision.quantize import DRIFT_FRAMES, Agreement, measure_agreement, record_feeds, \
    verification_check
from online_tsm.manifest import Manifest, write_manifest
from online_tsm.console.progress import Say

HELD_OUT_CLIPS = 64   # one disagreeing clip moves the last-frame agreement by 1.6 %


class AgreementError(ExportError, UserError):
    """The int8 model agrees with float32 less than ``--min-agreement`` asks: the user's data or choice decides."""


@dataclass(frozen=True)
class Int8Format:
    """What one int8 route needs: the file a runtime opens, the backend that opens it, and the quantizer."""

    file_name: str                                              # "model.onnx", "model.tflite"
    role: str                                                   # its role in a manifest
    backend: str                                                # runtime backend that streams it
    quantize: Callable[[Path, list[dict[str, np.ndarray]], Path], Path]   # float32 file, feeds, out -> int8 file
    stream: Callable[[Path, Manifest, np.ndarray], np.ndarray]  # logits of frames, buffers carried
    open_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Int8Model:
    """The int8 file and what the manifest says of it (calibration, agreement, the verification frames)."""

    path: Path
    agreement: Agreement
    check: dict[str, float]
    calibration: dict[str, Any]


def _is_default_model(weights_or_model: Any) -> bool:
    from online_tsm.weights import DEFAULT_NAME, default_weights

    if isinstance(weights_or_model, str) and weights_or_model == DEFAULT_NAME:
        return True
    shipped = default_weights()
    if shipped is None or not isinstance(weights_or_model, (str, os.PathLike)):
        return False
    try:
        return Path(weights_or_model).expanduser().resolve() == Path(shipped).resolve()
    except OSError:
        return False


def calibration_for(precision: str, weights_or_model: Any, calibration: str | None) -> str | None:
    """The calibration data an int8 export uses: the user's, or ``synthetic`` for the shipped default model."""
    if precision != "int8":
        return None
    if calibration is None:
        if not _is_default_model(weights_or_model):
            raise UserError("--precision int8 needs --calibration DATA for these weights: a tsm-train class folder "
                            "(or its train/ split), a video, a folder of frames, or 'synthetic'")
        calibration = "synthetic"
    return calibration


def folder_with(model_file: Path, manifest: Manifest, folder: Path, fmt: Int8Format) -> Path:
    """A minimal artifact folder (the model file + manifest) so that the runtimes can open ``model_file``."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_file, folder / fmt.file_name)
    write_manifest(folder, manifest, {fmt.file_name: fmt.role})
    return folder


def calibrated_int8(model: Any, fp32_file: Path, manifest: Manifest, frames: np.ndarray, reference: np.ndarray,
                    say: Say, fmt: Int8Format, *, calibration: str, min_agreement: float, drift_frames: int | None,
                    workdir: Path, quantizing: str, cause: str = "") -> Int8Model:
    """Calibrate on ``calibration``, quantize with ``fmt``, measure and gate the agreement; the int8 model.

    ``quantizing`` is said before the quantizer runs; ``cause`` is added to the refusal below the gate (what,
    on this machine, may explain it).
    """
    from online_tsm.export.precision.calibration import load_calibration
    from online_tsm.streaming.pacing import pace_from_metadata
    from online_tsm.runtimes import open_runtime
    from online_tsm.machine.torch_threads import torch_threads

    every = pace_from_metadata(manifest.model).every
    split = manifest.model.get("training_split") or {}
    data = load_calibration(calibration, manifest.labels, every=every, n_held_out=HELD_OUT_CLIPS,
                            seed=int(split.get("seed", 0)), val_fraction=split.get("val_fraction"))
    n_cal = sum(len(c.frames) for c in data.calibration)
    say(f"int8 calibration data: {data.description}")
    fp32_dir = folder_with(fp32_file, manifest, workdir / "fp32", fmt)
    with open_runtime(fp32_dir, fmt.backend, **fmt.open_options) as fp32_rt:
        say(f"calibrating: {len(data.calibration)} clips, {n_cal} frames streamed with buffers carried "
            f"(one frame in {every})")
        feeds = record_feeds(fp32_rt, data.calibration)
    say(quantizing)
    int8_file = fmt.quantize(fp32_dir / fmt.file_name, feeds, workdir / f"int8{Path(fmt.file_name).suffix}")
    int8_dir = folder_with(int8_file, manifest, workdir / "int8", fmt)
    # one thread each: two runtimes alternating frame by frame must not fight over the cores
    with torch_threads(1):
        with open_runtime(int8_dir, fmt.backend, **{**fmt.open_options, "threads": 1}) as int8_rt, \
                open_runtime(model, "torch", threads=1) as torch_rt:
            say(f"agreement: {len(data.held_out)} held-out clips through int8 and float32 PyTorch")
            agreement = measure_agreement(int8_rt, torch_rt, data.held_out, data=data.description,
                                          drift_frames=DRIFT_FRAMES if drift_frames is None else drift_frames,
                                          progress=say)
    for line in agreement.lines():
        say(line)
    if agreement.gate() < min_agreement:
        accept = cause or (f", or accept it with --min-agreement "
                           f"{max(0.0, np.floor(agreement.gate() * 100) / 100):.2f}")
        raise AgreementError(f"the int8 model agrees with float32 on {agreement.gate():.1%} of held-out frames "
                             f"(last frames {agreement.top1_agreement_last_frame:.1%}), below --min-agreement "
                             f"{min_agreement:.0%}; calibrate on data closer to what the model sees{accept}")
    check = verification_check(fmt.stream(int8_file, manifest, frames), reference[:len(frames)])
    say(f"int8 on the {len(frames)} verification frames: max |logit diff| {check['max_abs_diff']:.3f} vs float32, "
        f"top-1 agreement {check['top1_agreement']:.0%} (tsm-export verify re-checks these)")
    return Int8Model(int8_file, agreement, check, {"data": data.description, "clips": len(data.calibration),
                                                   "frames": n_cal, "every": every})


def quantization_entry(result: Int8Model, min_agreement: float, **how: Any) -> dict[str, Any]:
    """The manifest's ``model.quantization``: how the model was quantized (``how``), calibrated and measured."""
    return {**how, "calibration": result.calibration, "min_agreement": min_agreement,
            "agreement": result.agreement.to_dict(), "verification": result.check}


def export_onnx_int8(model: Any, onnx_path: Path, manifest: Manifest, frames: np.ndarray, reference: np.ndarray,
                     say: Say, *, calibration: str, min_agreement: float, workdir: Path,
                     drift_frames: int | None = None) -> dict[str, Any]:
    """Replace ``onnx_path`` (float32, verified) by its QDQ int8 model; return the manifest's ``quantization``."""
    from online_tsm.machine.cpuinfo import int8_kernels, int8_kernels_saturate
    from online_tsm.export.formats.onnx import stream_onnxruntime
    from online_tsm.export.precision.quantize import ACTIVATIONS, PERCENTILE, WEIGHTS, quantize_int8

    seven_bit = int8_kernels_saturate()
    weights = f"{WEIGHTS}, 7-bit range" if seven_bit else WEIGHTS
    if seven_bit:
        say(f"this CPU's int8 kernels are {int8_kernels()}: 8-bit weights would overflow them, so the weights are "
            "quantized to 7 bits")
    fmt = Int8Format("model.onnx", "onnx", "onnxruntime", stream=stream_onnxruntime, open_options={"batched": False},
                     quantize=lambda src, feeds, out: quantize_int8(src, feeds, out, seven_bit_weights=seven_bit))
    cause = ("; this CPU needs 7-bit weights (see above), which cost the fine-tuned default model about a point of "
             "agreement: --min-agreement 0.97 accepts that, or export on a CPU with VNNI" if seven_bit else "")
    result = calibrated_int8(model, onnx_path, manifest, frames, reference, say, fmt, calibration=calibration,
                             min_agreement=min_agreement, drift_frames=drift_frames, workdir=workdir, cause=cause,
                             quantizing=f"quantizing: QDQ, {ACTIVATIONS} activations, {weights} weights, "
                                        f"{PERCENTILE}th percentile ranges, classifier in float32")
    shutil.move(result.path, onnx_path)
    return quantization_entry(result, min_agreement, format="QDQ (ONNX Runtime)", activations=ACTIVATIONS,
                              weights=weights, weight_bits=7 if seven_bit else 8, int8_kernels_at_export=int8_kernels(),
                              ranges=f"{PERCENTILE}th percentile", float32_nodes="classifier (Gemm)")
