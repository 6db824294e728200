"""int8 for ONNX Runtime: a QDQ model calibrated on streamed clips, and its measured agreement with float32.

Format and types were chosen by measurement on an AVX-512 VNNI CPU
(paper setting, ORT 1.32, op profile): QDQ (the format ORT, ORT Mobile /
XNNPACK and TensorRT all read), **uint8 activations with int8 per-channel
weights** (U8S8: what VNNI's ``vpdpbusd`` multiplies natively; S8S8 QDQ ran
at half the float32 speed).  Ranges are the 99.99th percentile of the
calibration activations (min/max let rare outliers widen the ranges and
flipped more top-1 predictions), and the classifier (one Gemm, a fraction of
a percent of the MACs) stays float32: quantized, its logits were clipped to
the calibrated range on confident frames.  ORT then runs every
convolution as ``QLinearConv`` in NHWC, the residual adds as ``QLinearAdd``
and the shift's Split/Concat on int8 data, so activations stay int8 from the
first convolution to the pooling; only the graph boundary (frame, shift
buffers, logits) is float32, which keeps the artifact's contract unchanged.

Calibration streams each clip through the float32 artifact with the shift
buffers carried (:class:`~online_tsm.runtimes.base.Stream`), recording every
step's inputs: the buffers are calibrated on the values they really hold,
not on zeros.  :func:`measure_agreement` streams held-out clips through the
int8 and the float32 PyTorch model and says how often they agree.
"""
from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from online_tsm.export.precision.calibration import CalibrationClip
from online_tsm.runtimes.base import Runtime

ACTIVATIONS = "uint8"        # QDQ activation type
WEIGHTS = "int8 per-channel"
DRIFT_FRAMES = 1000
PERCENTILE = 99.99
CALIBRATION_CHUNK = 32      # frames per calibration pass (bounds memory; ranges accumulate across passes)


class QuantizationError(RuntimeError):
    """The int8 model could not be built, or agrees with float32 less than required."""


def record_feeds(runtime: Runtime, clips: Sequence[CalibrationClip]) -> list[dict[str, np.ndarray]]:
    """Every step's graph inputs (frame + shift buffers) of ``clips`` streamed through a float32 ONNX Runtime runtime.

    Each clip starts from zero buffers; the buffers fed at step *t* are the
    ones step *t-1* returned.  Reads the ONNX Runtime stream's buffer arrays
    (its ``state.current``) before each step.
    """
    manifest = runtime.artifact.manifest  # type: ignore[attr-defined]
    names = [b.input for b in manifest.buffers]
    feeds = []
    for clip in clips:
        stream = runtime.new_stream()
        for image in clip.frames:
            frame = runtime.check_frame(runtime.preprocess(image, "bgr"))
            feeds.append({manifest.frame_input: frame.copy(),
                          **{n: a.copy() for n, a in zip(names, stream.state.current)}})
            stream.step(frame)
    return feeds


def quantize_int8(fp32_onnx: Path, feeds: list[dict[str, np.ndarray]], out: Path, *,
                  seven_bit_weights: bool = False) -> Path:
    """Write the U8S8 QDQ model of ``fp32_onnx`` calibrated on ``feeds`` (percentile ranges) to ``out``.

    ``seven_bit_weights`` quantizes the weights to [-64, 64] (ORT's ``reduce_range``), which CPUs whose int8
    kernels saturate need (:mod:`online_tsm.machine.cpuinfo`).
    """
    import contextlib
    import io

    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        """Hands ORT the feeds a chunk at a time (``set_range``): its histogram calibrator keeps every activation of
        the frames it is given in memory, about 25 MB a frame at 224x224."""

        def __init__(self) -> None:
            self.it = iter(())

        def __len__(self) -> int:
            return len(feeds)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.it = iter(feeds[start_index:end_index])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    import onnx

    chunk = min(CALIBRATION_CHUNK, len(feeds))
    feeds = feeds[:len(feeds) - len(feeds) % chunk] if chunk else feeds  # ORT wants whole chunks
    if not feeds:
        raise QuantizationError("no calibration frames")
    classifier = [n.name for n in onnx.load(str(fp32_onnx), load_external_data=False).graph.node
                  if n.op_type in ("Gemm", "MatMul")]
    # quantize_static keeps its augmented calibration model in a temporary folder of its own (ORT >= 1.17)
    advice = _DropAdvice()
    logging.getLogger().addFilter(advice)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # ORT prints its percentile settings
            quantize_static(str(fp32_onnx), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            reduce_range=seven_bit_weights, calibrate_method=CalibrationMethod.Percentile,
                            nodes_to_exclude=classifier,
                            extra_options={"ActivationSymmetric": False, "CalibPercentile": PERCENTILE,
                                           "CalibStridedMinMax": chunk})
    finally:
        logging.getLogger().removeFilter(advice)
    return out


class _DropAdvice(logging.Filter):
    """ORT's quantizer logs "consider pre-processing" advice on the root logger on every call: noise to a user.

    The symbolic shape inference it advises is not needed here (every shape is static in our graphs).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@dataclass
class Agreement:
    """How the int8 artifact agrees with the float32 PyTorch model on held-out clips (stored in the manifest)."""

    clips: int
    frames: int
    top1_agreement_frames: float
    top1_agreement_last_frame: float
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    drift: dict[str, Any] = field(default_factory=dict)
    accuracy_fp32: float | None = None
    accuracy_int8: float | None = None
    accuracy_on: str = "each held-out clip's last frame (the online prediction at the end of the clip)"
    clip_accuracy_fp32: float | None = None
    clip_accuracy_int8: float | None = None
    clip_accuracy_on: str = "each held-out clip's streamed logits averaged over its frames (what tsm-train reports)"
    data: str = ""
    measured: str = ""

    def gate(self) -> float:
        """What ``--min-agreement`` is checked against: top-1 agreement over every streamed held-out frame.

        The last-frame figure is reported beside it; with a few dozen clips one
        near-tie moves it by several percent, too coarse to refuse an export on.
        """
        return self.top1_agreement_frames

    def lines(self) -> list[str]:
        out = [f"int8 vs float32 PyTorch on {self.clips} held-out clips ({self.frames} streamed frames): top-1 "
               f"agreement {self.top1_agreement_frames:.1%} of frames, {self.top1_agreement_last_frame:.1%} of "
               f"clips' last frames; |logit diff| max {self.max_abs_logit_diff:.3f}, mean "
               f"{self.mean_abs_logit_diff:.4f}"]
        if self.drift:
            d = self.drift
            out.append(f"drift over one {d['frames']}-frame stream (buffers carried): mean |logit diff| "
                       f"{d['mean_abs_diff_first_100']:.4f} in the first 100 frames, {d['mean_abs_diff_last_100']:.4f}"
                       f" in the last 100; top-1 agreement {d['top1_agreement']:.1%}")
        if self.accuracy_fp32 is not None:
            out.append(f"accuracy on {self.accuracy_on}: float32 {self.accuracy_fp32:.1%}, int8 "
                       f"{self.accuracy_int8:.1%}")
        if self.clip_accuracy_fp32 is not None:
            out.append(f"accuracy on {self.clip_accuracy_on}: float32 {self.clip_accuracy_fp32:.1%}, int8 "
                       f"{self.clip_accuracy_int8:.1%}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stream(runtime: Runtime, frames: list[np.ndarray]) -> np.ndarray:
    stream = runtime.new_stream()
    return np.stack([stream.step(runtime.preprocess(image, "bgr")) for image in frames])


def measure_agreement(int8_rt: Runtime, fp32_rt: Runtime, clips: Sequence[CalibrationClip], *,
                      drift_frames: int = DRIFT_FRAMES, data: str = "",
                      progress: Callable[[str], None] = lambda _: None) -> Agreement:
    """Stream ``clips`` through both runtimes (buffers carried, fresh per clip) and one long stream for drift."""
    diffs, agree, last_agree = [], [], []
    correct: dict[str, list[bool]] = {"fp32": [], "int8": [], "fp32 clip": [], "int8 clip": []}
    n_frames = 0
    for clip in clips:
        if not clip.frames:
            continue
        q, f = _stream(int8_rt, clip.frames), _stream(fp32_rt, clip.frames)
        diffs.append(np.abs(q - f))
        agree.append(q.argmax(1) == f.argmax(1))
        last_agree.append(bool(q[-1].argmax() == f[-1].argmax()))
        n_frames += len(clip.frames)
        if clip.label is not None:
            correct["fp32"].append(int(f[-1].argmax()) == clip.label)
            correct["int8"].append(int(q[-1].argmax()) == clip.label)
            correct["fp32 clip"].append(int(f.mean(0).argmax()) == clip.label)
            correct["int8 clip"].append(int(q.mean(0).argmax()) == clip.label)
    if not diffs:
        raise QuantizationError("no held-out frames to measure agreement on")
    all_diff = np.concatenate([d.ravel() for d in diffs])
    result = Agreement(clips=len(last_agree), frames=n_frames,
                       top1_agreement_frames=float(np.concatenate(agree).mean()),
                       top1_agreement_last_frame=float(np.mean(last_agree)),
                       max_abs_logit_diff=float(all_diff.max()), mean_abs_logit_diff=float(all_diff.mean()),
                       data=data, measured=_dt.datetime.now().astimezone().isoformat(timespec="seconds"))
    if len(correct["fp32"]) == len(last_agree):
        result.accuracy_fp32 = float(np.mean(correct["fp32"]))
        result.accuracy_int8 = float(np.mean(correct["int8"]))
        result.clip_accuracy_fp32 = float(np.mean(correct["fp32 clip"]))
        result.clip_accuracy_int8 = float(np.mean(correct["int8 clip"]))
    if drift_frames:
        progress(f"drift: one {drift_frames}-frame stream through both models, buffers carried")
        pool = [image for clip in clips for image in clip.frames]
        long = [pool[i % len(pool)] for i in range(drift_frames)]
        q, f = _stream(int8_rt, long), _stream(fp32_rt, long)
        per_frame = np.abs(q - f).mean(1)
        result.drift = {"frames": drift_frames, "mean_abs_diff_first_100": float(per_frame[:100].mean()),
                        "mean_abs_diff_last_100": float(per_frame[-100:].mean()),
                        "max_abs_diff": float(np.abs(q - f).max()),
                        "top1_agreement": float((q.argmax(1) == f.argmax(1)).mean())}
    return result


def verification_check(actual: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """int8 logits over the verification frames against the float32 reference: what ``verify`` re-checks."""
    diff = np.abs(actual - reference)
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "top1_agreement": float((actual.argmax(1) == reference.argmax(1)).mean())}
