"""``tsm-export --precision``: which precisions go with which targets, and the int8 export step.

``fp32`` is the default everywhere.  ``int8`` is an ONNX Runtime model
(targets ``host`` and ``onnx``): see :mod:`.quantize`.  ``fp16`` is for the
GPU targets (``jetson-nano``): see :mod:`.mixed_precision`.  The step here
builds it from the verified float32 ``model.onnx``, measures its agreement
with the float32 PyTorch model on held-out clips, refuses it below
``--min-agreement``, and returns what the manifest stores.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from online_tsm.errors import UserError
from online_tsm.manifest import Manifest, write_manifest
from online_tsm.export.formats.onnx import ExportError, stream_onnxruntime
from online_tsm.export.precision.quantize import (ACTIVATIONS, DRIFT_FRAMES, PERCENTILE, WEIGHTS, measure_agreement,
                                        quantize_int8, record_feeds, verification_check)

HELD_OUT_CLIPS = 64   # one disagreeing clip moves the last-frame agreement by 1.6 %


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


def _folder_with(model_file: Path, manifest: Manifest, folder: Path) -> Path:
    """A minimal artifact folder (``model.onnx`` + manifest) so that the runtimes can open ``model_file``."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_file, folder / "model.onnx")
    write_manifest(folder, manifest, {"model.onnx": "onnx"})
    return folder


def export_int8(model: Any, onnx_path: Path, manifest: Manifest, frames: np.ndarray, reference: np.ndarray,
                say: Callable[[str], None], *, calibration: str, min_agreement: float,
                drift_frames: int | None = None) -> dict[str, Any]:
    """Replace ``onnx_path`` (float32, verified) by its int8 model; return the manifest's ``quantization`` entry."""
    from online_tsm.export.precision.calibration import load_calibration
    from online_tsm.pacing import pace_from_metadata
    from online_tsm.runtimes import open_runtime
    from online_tsm.cpuinfo import int8_kernels, int8_kernels_saturate

    every = pace_from_metadata(manifest.model).every
    split = manifest.model.get("training_split") or {}
    data = load_calibration(calibration, manifest.labels, every=every, n_held_out=HELD_OUT_CLIPS,
                            seed=int(split.get("seed", 0)), val_fraction=split.get("val_fraction"))
    n_cal = sum(len(c.frames) for c in data.calibration)
    say(f"int8 calibration data: {data.description}")
    with tempfile.TemporaryDirectory(prefix="online-tsm-int8-") as tmp:
        fp32_dir = _folder_with(onnx_path, manifest, Path(tmp) / "fp32")
        with open_runtime(fp32_dir, "onnxruntime", batched=False) as fp32_ort:
            say(f"calibrating: {len(data.calibration)} clips, {n_cal} frames streamed with buffers carried "
                f"(one frame in {every})")
            feeds = record_feeds(fp32_ort, data.calibration)
        int8_file = Path(tmp) / "int8.onnx"
        seven_bit = int8_kernels_saturate()
        weights = f"{WEIGHTS}, 7-bit range" if seven_bit else WEIGHTS
        if seven_bit:
            say(f"this CPU's int8 kernels are {int8_kernels()}: 8-bit weights would overflow them, so the weights "
                "are quantized to 7 bits")
        say(f"quantizing: QDQ, {ACTIVATIONS} activations, {weights} weights, {PERCENTILE}th percentile ranges, "
            "classifier in float32")
        quantize_int8(fp32_dir / "model.onnx", feeds, int8_file, seven_bit_weights=seven_bit)
        int8_dir = _folder_with(int8_file, manifest, Path(tmp) / "int8")
        from online_tsm.torch_threads import torch_threads

        # one thread each: two runtimes alternating frame by frame must not fight over the cores
        with torch_threads(1):
            with open_runtime(int8_dir, "onnxruntime", batched=False, threads=1) as int8_rt, \
                    open_runtime(model, "torch", threads=1) as torch_rt:
                say(f"agreement: {len(data.held_out)} held-out clips through int8 and float32 PyTorch")
                agreement = measure_agreement(int8_rt, torch_rt, data.held_out, data=data.description,
                                              drift_frames=DRIFT_FRAMES if drift_frames is None else drift_frames,
                                              progress=say)
        for line in agreement.lines():
            say(line)
        if agreement.gate() < min_agreement:
            cause = ("; this CPU needs 7-bit weights (see above), which cost the fine-tuned default model about a "
                     "point of agreement: --min-agreement 0.97 accepts that, or export on a CPU with VNNI"
                     if seven_bit else "")
            raise ExportError(f"the int8 model agrees with float32 on {agreement.gate():.1%} of held-out frames "
                              f"(last frames {agreement.top1_agreement_last_frame:.1%}), below --min-agreement "
                              f"{min_agreement:.0%}; calibrate on data closer to what the model sees{cause}")
        check = verification_check(stream_onnxruntime(int8_file, manifest, frames), reference[:len(frames)])
        os.replace(int8_file, onnx_path)
    say(f"int8 on the {len(frames)} verification frames: max |logit diff| {check['max_abs_diff']:.3f} vs float32, "
        f"top-1 agreement {check['top1_agreement']:.0%} (tsm-export verify re-checks these)")
    return {"format": "QDQ (ONNX Runtime)", "activations": ACTIVATIONS, "weights": weights,
            "weight_bits": 7 if seven_bit else 8, "int8_kernels_at_export": int8_kernels(),
            "ranges": f"{PERCENTILE}th percentile", "float32_nodes": "classifier (Gemm)",
            "calibration": {"data": data.description, "clips": len(data.calibration), "frames": n_cal,
                            "every": every},
            "min_agreement": min_agreement, "agreement": agreement.to_dict(), "verification": check}


def check_fp16(onnx_path: Path, manifest: Manifest, frames: np.ndarray, reference: np.ndarray,
               say: Callable[[str], None]) -> dict[str, Any]:
    """The fp16 GPU library's numerics, checked on this CPU; returns the manifest's ``fp16_check`` entry."""
    from online_tsm.export.tvm.mixed_precision import measure_fp16

    say(f"checking fp16 numerics: the same mixed-precision module built for this CPU, {len(frames)} streamed frames")
    check = measure_fp16(onnx_path, manifest, frames, reference)
    say(f"fp16 vs float32 PyTorch: max |logit diff| {check['max_abs_diff']:.3f} "
        f"({check['relative_max_diff']:.1%} of max |logit|), top-1 agreement {check['top1_agreement']:.0%}")
    if not check["passed"]:
        raise ExportError(f"the fp16 model drifts from float32: max |logit diff| {check['max_abs_diff']:.3g} > "
                          f"{check['tolerance']:.3g} or a frame changed its top-1 class (agreement "
                          f"{check['top1_agreement']:.0%}; rule {check['rule']})")
    return check
