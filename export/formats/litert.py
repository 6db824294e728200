"""``model.tflite`` for LiteRT (formerly TensorFlow Lite): phones with nothing built.

Route, and why: ``litert-torch`` converts the very per-frame module the ONNX
export uses (no ONNX -> TensorFlow detour such as onnx2tf, no TensorFlow), in
about 15 s.  A wrapper takes ``frame`` and ``shift_k`` as keyword arguments
and returns a dict, so the one signature (``serving_default``) names its
inputs ``frame, shift_0..`` and its outputs ``logits, shift_out_0..``: the
manifest's names, shapes (NCHW, as in the manifest) and float32 dtypes.

Precisions, with ``ai-edge-quantizer`` on the float32 ``.tflite``:

* ``fp16``: float16 weights (half the file); the runtime computes in float32
  on CPUs without half-precision arithmetic, in half precision where XNNPACK
  has it.  Checked against the fp16 rule on the verification frames.
* ``int8``: full integer (int8 per-channel weights, int8 per-tensor
  activations), calibrated exactly as the ONNX int8 is
  (:mod:`online_tsm.export.precision.calibration`: the calibration clips
  streamed through the float32 model with the shift buffers carried, every
  step's inputs recorded by :func:`~online_tsm.export.precision.quantize.record_feeds`).
  The graph's boundary -- frame, shift buffers, logits -- stays float32
  (quantize/dequantize inside), so the contract does not change, and the
  classifier stays float32, as in the ONNX int8.  Ranges are the calibration
  data's true min/max: the quantizer's default moving average of per-frame
  ranges clipped rare large activations (95.8 % top-1 agreement on the default
  model, 24 synthetic clips, every frame; true min/max 98.0 % there, 99.999th
  percentiles no better; through this export, one frame in 4 as the model was
  trained: 98.5 %, as the ONNX int8).  Agreement with float32 PyTorch on
  held-out clips is measured by
  :func:`~online_tsm.export.precision.quantize.measure_agreement` and gated by
  ``--min-agreement``.

The converter packages are an optional extra; see :data:`INSTALL`.
"""
from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from online_tsm.errors import UserError
from online_tsm.manifest import Manifest
from online_tsm.console.messages import first_line
from online_tsm.verification import FP16, FP32

TFLITE_NAME = "model.tflite"
SIGNATURE = "serving_default"
#: ``litert-torch`` and ``litert-converter`` go in without their dependencies: litert-converter pins xdsl 0.28,
#: whose metadata caps typing-extensions below the 4.13 that apache-tvm-ffi needs, and this export never imports
#: xdsl (nor litert-torch's transformers-based generative API).  ``make setup`` does both steps.
INSTALL = ("pip install 'online-tsm[litert]' && pip install --no-deps litert-torch==0.10.0 "
           "litert-converter==0.5.0")
INT8_RECIPE = "int8 per-channel weights, int8 per-tensor activations (true min/max ranges), classifier in float32"
Say = Callable[[str], None]


class LiteRtError(UserError):
    """The LiteRT model could not be made, or it disagrees with PyTorch."""


def require_converter() -> Any:
    """``litert_torch``, or one line saying what to install."""
    try:
        with _quiet():
            import litert_torch
            import ai_edge_quantizer  # noqa: F401 -- fp16 and int8 need it; fail before any work
    except ImportError as exc:
        raise LiteRtError(f"--target android-litert needs the LiteRT converter ({exc.name} is missing): "
                          f"{INSTALL}") from None
    return litert_torch


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """litert-torch and the quantizer print progress bars, absl and C++ log lines and warnings: noise to an
    export's reader (a failure still raises)."""
    from online_tsm.runtimes.litert_backend import quiet_native

    logging.getLogger("absl").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()), quiet_native():
        warnings.simplefilter("ignore")
        yield


class NamedSignature(torch.nn.Module):
    """The per-frame module with keyword inputs and a dict of outputs, so the signature keeps the names."""

    def __init__(self, model: torch.nn.Module, manifest: Manifest) -> None:
        super().__init__()
        self.model = model
        self.frame = manifest.frame_input
        self.inputs = [b.input for b in manifest.buffers]
        self.outputs = [manifest.logits_output] + [b.output for b in manifest.buffers]

    def forward(self, **tensors: torch.Tensor) -> dict[str, torch.Tensor]:
        results = self.model(tensors[self.frame], *[tensors[name] for name in self.inputs])
        return dict(zip(self.outputs, results))


def convert_fp32(graph_model: torch.nn.Module, manifest: Manifest, path: Path) -> Path:
    """Write the float32 ``.tflite`` of ``graph_model`` to ``path``."""
    litert_torch = require_converter()
    wrapper = NamedSignature(graph_model.eval(), manifest).eval()
    frame = manifest.spec(manifest.frame_input)
    sample = {frame.name: torch.zeros(frame.shape, dtype=getattr(torch, frame.dtype))}
    sample.update({b.input: torch.zeros(b.shape, dtype=getattr(torch, b.dtype)) for b in manifest.buffers})
    try:
        with _quiet():
            edge = litert_torch.convert(wrapper, sample_args=(), sample_kwargs=sample)
            edge.export(str(path))
    except Exception as exc:  # noqa: BLE001 -- the converter raises many types; one line for the user
        raise LiteRtError(f"litert-torch could not convert the per-frame model: {first_line(exc)[:300]}") from None
    return path


def _new_quantizer(fp32_path: Path) -> Any:
    from ai_edge_quantizer import quantizer

    return quantizer.Quantizer(str(fp32_path))


def fp16_weights(fp32_path: Path, out: Path) -> Path:
    """float16 weights (``float_casting``); inputs, outputs and activations stay float32."""
    from ai_edge_quantizer import qtyping

    with _quiet():
        qt = _new_quantizer(fp32_path)
        qt.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
                                  algorithm_key="float_casting")
        qt.quantize().export_model(str(out), overwrite=True)
    return out


def int8_model(fp32_path: Path, feeds: list[dict[str, np.ndarray]], out: Path) -> Path:
    """Full-integer int8 calibrated on ``feeds`` (signature inputs), float32 at the graph's boundary."""
    from ai_edge_quantizer import calibrator, qtyping
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.utils import qsv_utils

    if not feeds:
        raise LiteRtError("no calibration frames")
    ops = qtyping.TFLOperationName
    with _quiet():
        qt = _new_quantizer(fp32_path)
        qt.add_static_config(regex=".*", operation_name=ops.ALL_SUPPORTED, activation_num_bits=8,
                             weight_num_bits=8)
        for op in (ops.INPUT, ops.OUTPUT, ops.FULLY_CONNECTED):   # float boundary, float classifier
            qt.update_quantization_recipe(regex=".*", operation_name=op, algorithm_key=AlgorithmName.NO_QUANTIZE)
        calib = calibrator.Calibrator(fp32_path.read_bytes(), num_threads=1,
                                      qsv_update_func=qsv_utils.min_max_update)
        calib.calibrate({SIGNATURE: feeds}, qt._recipe_manager)  # noqa: SLF001 -- the recipe Quantizer.calibrate uses
        qt.quantize(calib.get_model_qsvs()).export_model(str(out), overwrite=True)
    return out


def stream_litert(path: Path, manifest: Manifest, frames: np.ndarray, threads: int = 1) -> np.ndarray:
    """Logits of ``frames`` streamed through ``path`` with LiteRT, buffers carried by the manifest's names."""
    from online_tsm.runtimes.litert_backend import import_litert

    state = {b.input: np.zeros(b.shape, np.dtype(b.dtype)) for b in manifest.buffers}
    out = []
    with _quiet():
        runner = import_litert()(model_path=str(path), num_threads=threads).get_signature_runner(SIGNATURE)
        for frame in frames:
            results = runner(**{manifest.frame_input: np.ascontiguousarray(frame[None])}, **state)
            out.append(results[manifest.logits_output][0])
            state = {b.input: results[b.output] for b in manifest.buffers}
    return np.stack(out)


def export_tflite(graph_model: torch.nn.Module, model: torch.nn.Module, manifest: Manifest, out: Path,
                  frames: np.ndarray, reference: np.ndarray, say: Say, *, precision: str,
                  calibration: str | None = None, min_agreement: float = 0.98,
                  drift_frames: int | None = None) -> dict[str, Any]:
    """Write ``out/model.tflite`` in ``precision``, checked against PyTorch's ``reference``.

    Returns what the manifest stores: ``litert`` (route, versions, signature),
    and for int8 ``quantization`` (as the ONNX int8 stores it) and its
    verification figures; for fp16 ``fp16_check``.
    """
    from importlib import metadata

    require_converter()
    path = out / TFLITE_NAME
    entry: dict[str, Any] = {"litert": {
        "signature": SIGNATURE, "route": "litert-torch from the PyTorch per-frame module",
        "converter": {name: _version(metadata, name) for name in ("litert-torch", "ai-edge-quantizer")},
        "runtime": f"ai-edge-litert {_version(metadata, 'ai-edge-litert')} (XNNPACK)",
        "layout": "NCHW at the boundary, as the manifest says (the converter transposes inside)"}}
    with tempfile.TemporaryDirectory(prefix="online-tsm-litert-") as tmp:
        fp32_path = Path(tmp) / "fp32.tflite"
        say("converting the per-frame model to LiteRT with litert-torch (one signature, named inputs and outputs)")
        convert_fp32(graph_model, manifest, fp32_path)
        _check_signature(fp32_path, manifest)
        check = FP32.check(stream_litert(fp32_path, manifest, frames), reference, same_machine=False)
        say(f"LiteRT float32 vs PyTorch over {len(frames)} streamed frames: max abs diff {check['max_abs_diff']:.2e} "
            f"(tolerance {check['tolerance']:.1e}, {check['rule']})")
        if not check["passed"]:
            raise LiteRtError(f"the LiteRT model disagrees with PyTorch: max abs diff {check['max_abs_diff']:.3g} > "
                              f"{check['tolerance']:.3g}")
        entry["litert"]["fp32_check"] = check
        if precision == "fp32":
            shutil.copyfile(fp32_path, path)
        elif precision == "fp16":
            say("fp16: float16 weights with ai-edge-quantizer")
            fp16_weights(fp32_path, path)
            check = FP16.check(stream_litert(path, manifest, frames), reference, same_machine=False)
            say(f"fp16 vs float32 PyTorch: max |logit diff| {check['max_abs_diff']:.3f}, top-1 agreement "
                f"{check['top1_agreement']:.0%} ({check['rule']})")
            if not check["passed"]:
                raise LiteRtError(f"the fp16 LiteRT model drifts from float32: max |logit diff| "
                                  f"{check['max_abs_diff']:.3g} > {check['tolerance']:.3g} or a frame changed its "
                                  f"top-1 class (agreement {check['top1_agreement']:.0%})")
            entry["fp16_check"] = {**check, "weights": "float16", "frames": len(frames)}
        else:
            entry["quantization"] = _int8(model, fp32_path, path, manifest, frames, reference, say,
                                          calibration=str(calibration), min_agreement=min_agreement,
                                          drift_frames=drift_frames, folder=Path(tmp))
    _check_signature(path, manifest)
    return entry


def _int8(model: torch.nn.Module, fp32_path: Path, path: Path, manifest: Manifest, frames: np.ndarray,
          reference: np.ndarray, say: Say, *, calibration: str, min_agreement: float, drift_frames: int | None,
          folder: Path) -> dict[str, Any]:
    """The int8 model, calibrated and gated exactly as the ONNX int8 (:mod:`..precision.int8`)."""
    from online_tsm.export.precision.int8 import Int8Format, calibrated_int8, quantization_entry

    fmt = Int8Format(TFLITE_NAME, "tflite", "litert", quantize=int8_model, stream=stream_litert,
                     open_options={"threads": 1})
    result = calibrated_int8(model, fp32_path, manifest, frames, reference, say, fmt, calibration=calibration,
                             min_agreement=min_agreement, drift_frames=drift_frames, workdir=folder,
                             quantizing=f"quantizing with ai-edge-quantizer: {INT8_RECIPE}; frame, buffers and "
                                        "logits stay float32")
    shutil.copyfile(result.path, path)
    return quantization_entry(result, min_agreement, format="LiteRT full integer (ai-edge-quantizer)",
                              activations="int8 per-tensor (asymmetric)", weights="int8 per-channel (symmetric)",
                              weight_bits=8, ranges="calibration min/max",
                              float32_nodes="classifier (FULLY_CONNECTED); frame, shift buffers and logits at the "
                                            "boundary")


def _check_signature(path: Path, manifest: Manifest) -> None:
    """The model's one signature carries exactly the manifest's names, shapes and dtypes."""
    from online_tsm.runtimes.litert_backend import import_litert, signature_problems

    with _quiet():
        interpreter = import_litert()(model_path=str(path))
        signatures = interpreter.get_signature_list()
        if list(signatures) != [SIGNATURE]:
            raise LiteRtError(f"{path.name} has signatures {', '.join(signatures)}; expected one, {SIGNATURE!r}")
        runner = interpreter.get_signature_runner(SIGNATURE)
        problems = signature_problems(runner.get_input_details(), runner.get_output_details(), manifest)
    if problems:
        raise LiteRtError(f"{path.name}'s signature does not match the manifest: {'; '.join(problems[:3])}")


def _version(metadata: Any, name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"

