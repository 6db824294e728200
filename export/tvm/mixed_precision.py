"""fp16 for the GPU targets: TVM's mixed-precision rewrite, and its numerics checked on this machine's CPU.

Convolutions and matrix products run in float16 with float32 accumulation
(``ToMixedPrecision(out_dtype="float32")``); the graph's inputs and outputs
(``frame``, the shift buffers, ``logits``) stay float32, so the runtimes and
the device kit feed the fp16 library exactly as the fp32 one.  Accumulating in
float16 instead roughly triples the logit error, hence float32.

The GPU build cannot be run here, so the same rewritten module is compiled for
the host CPU (``llvm``) and streamed over the verification frames with the
buffers carried; its agreement with float32 PyTorch is what the manifest
records and what the export gates on.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from online_tsm.export.tvm.build import CompileError
from online_tsm.manifest import Manifest
from online_tsm.console.progress import Say
from online_tsm.verification import FP16


def to_mixed_precision(mod: Any) -> Any:  # noqa: ANN401 -- tvm.IRModule
    """float16 compute, float32 accumulation and float32 graph boundaries."""
    from tvm import relax

    return relax.transform.ToMixedPrecision(out_dtype="float32")(mod)


def stream_fp16_llvm(onnx_path: Path, manifest: Any, frames: np.ndarray) -> np.ndarray:
    """Logits of ``frames`` through the mixed-precision module compiled for this CPU, buffers carried."""
    import tempfile

    import tvm

    from online_tsm.export.tvm.build import input_specs, relax_from_onnx, stream_tvm

    mod = to_mixed_precision(relax_from_onnx(onnx_path, input_specs(manifest)))
    executable = tvm.compile(mod, tvm.target.Target("llvm"))
    with tempfile.TemporaryDirectory(prefix="online-tsm-fp16-") as tmp:
        library = Path(tmp) / "fp16.so"
        executable.export_library(str(library))
        return stream_tvm(library, manifest, frames)


def fp16_agreement(logits: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """The figures the manifest stores, judged by the fp16 verification rule (the export's own CPU)."""
    reference = reference[:len(logits)]
    scale = float(np.abs(reference).max()) or 1.0
    check = FP16.check(logits, reference, same_machine=True)
    return {"checked_on": "llvm (this machine's CPU), same mixed-precision module", "frames": int(len(logits)),
            **check, "relative_max_diff": check["max_abs_diff"] / scale, "accumulation": "float32",
            "boundaries": "float32"}


def measure_fp16(onnx_path: Path, manifest: Any, frames: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """The fp16 check on this CPU: ``frames`` through the mixed-precision module, against float32 ``reference``.

    What the export stores (and gates on) and what ``tsm-export verify`` recomputes.
    """
    return fp16_agreement(stream_fp16_llvm(onnx_path, manifest, frames), reference)


def check_fp16(onnx_path: Path, manifest: Manifest, frames: np.ndarray, reference: np.ndarray,
               say: Say) -> dict[str, Any]:
    """The fp16 GPU library's numerics, checked on this CPU; returns the manifest's ``fp16_check`` entry."""
    say(f"checking fp16 numerics: the same mixed-precision module built for this CPU, {len(frames)} streamed frames")
    check = measure_fp16(onnx_path, manifest, frames, reference)
    say(f"fp16 vs float32 PyTorch: max |logit diff| {check['max_abs_diff']:.3f} "
        f"({check['relative_max_diff']:.1%} of max |logit|), top-1 agreement {check['top1_agreement']:.0%}")
    if not check["passed"]:
        raise CompileError(f"the fp16 model drifts from float32: max |logit diff| {check['max_abs_diff']:.3g} > "
                           f"{check['tolerance']:.3g} or a frame changed its top-1 class (agreement "
                           f"{check['top1_agreement']:.0%}; rule {check['rule']})")
    return check
