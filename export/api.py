"""``export_artifact``: weights in, a ready-to-copy artifact folder out.

The folder (see ``manifest.json`` for the contract)::

    model.onnx      per-frame graph, shift buffers as named inputs/outputs (role "onnx")
    model.so|.tar   the compiled TVM library for the target            (role "library")
    reference.npz   PyTorch logits [16, n_class] over the verification frames (role "reference")
    README.txt      how to run it on the device                         (role "readme")
    run.py          verify + time it on the device, numpy + runtime only (role "script"; run_onnx.py for onnx)
    manifest.json   names, shapes, buffer pairing, target, tool versions, sha256 of every file

Every step that can silently go wrong is checked here, at export time, not
on the device: the simplified ONNX graph against PyTorch, a host library
against PyTorch, a CUDA library for real device code of the target's
architecture, a cross library for the right ELF machine.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from online_tsm.export.formats.folded import DEFAULT_CAMERA_SIZE, FoldedPreprocess
from online_tsm.export.formats.onnx import (ExportError, build_manifest, export_onnx, simplify_and_check,
                                            stream_onnxruntime, stream_torch)
from online_tsm.export.options import ExportOptions, check_options
from online_tsm.export.reference import REFERENCE_FRAMES, REFERENCE_NAME, frames_for, write_reference
from online_tsm.export.formats.verified_graphs import VERIFIED_GRAPHS, graph_key
from online_tsm.export.source_model import load_export_model, model_name
from online_tsm.export.staging import discard_out_dir, prepare_out_dir, publish_out_dir
from online_tsm.export.versions import compiler_versions
from online_tsm.export.targets import ExportTarget, get_target
from online_tsm.manifest import Manifest, TensorSpec, write_manifest
from online_tsm.models import MobileNetV2TSM
from online_tsm.console.progress import Progress
from online_tsm.verification import (DEFAULT_MIN_AGREEMENT, FP32, VerificationRule, max_abs_diff, measured_int8_rule,
                                     verification_entry)

ONNX_NAME = "model.onnx"
README_NAME = "README.txt"


# -- manifest pieces -------------------------------------------------------------------------

def _fold_manifest(manifest: Manifest, wrapper: FoldedPreprocess) -> None:
    h, w = wrapper.camera_hw
    manifest.inputs[0] = TensorSpec(manifest.frame_input, [1, h, w, 3], "uint8")
    manifest.preprocess.update(folded=True, layout="NHWC", color_order=wrapper.color_order,
                               camera_size=[h, w], raw_input_shape=[1, h, w, 3], raw_input_dtype="uint8",
                               resize=f"shorter side to {manifest.preprocess['resize_shorter']} (bilinear, in "
                                      "float), centre crop, mean/std, inside the graph")


# -- the export ------------------------------------------------------------------------------

def export_artifact(weights_or_model: Any, target: str, out_dir: str | os.PathLike, *, input_size: int | None = None,
                    opset: int | None = None, fold_preprocess: bool = False, tune: int = 0, force: bool = False,
                    shift: str = "causal", progress: bool = True, camera_size: tuple[int, int] = DEFAULT_CAMERA_SIZE,
                    color_order: str = "bgr", library: str = "auto", precision: str = "fp32",
                    calibration: str | None = None, min_agreement: float = DEFAULT_MIN_AGREEMENT,
                    drift_frames: int | None = None, ort_shift: str = "slice",
                    tuning_records: bool = True) -> Path:
    """Export ``weights_or_model`` for ``target`` into ``out_dir``; return the folder.

    ``shift="none"`` exports the TSN baseline (same weights, no shift, no
    buffers) so that a benchmark can measure what the shift costs.
    ``fold_preprocess`` makes the graph take uint8 ``[1, H, W, 3]`` frames of
    ``camera_size`` in ``color_order``.  ``library``: ``auto`` (a ``.so`` when
    it can be linked here, else a ``.tar`` of objects), ``so`` (error if it
    cannot be linked) or ``tar``.

    ``precision="int8"`` (targets ``host`` and ``onnx``) writes a QDQ
    ``model.onnx`` for ONNX Runtime calibrated on ``calibration`` (see
    :mod:`.precision.calibration`; ``synthetic`` by default for the shipped
    default model) and stores its agreement with float32 in the manifest; the
    export fails below ``min_agreement``.  ``ort_shift="conv"`` expresses the
    shift as 1x1 convolutions in ``model.onnx`` (:mod:`.formats.shift_fold`).
    ``tuning_records=False`` compiles a CPU library with the default
    schedules even when ``tune`` records exist for this CPU.  What each target
    accepts is written in its row (:mod:`.targets`, checked by :mod:`.options`).
    """
    say = Progress(progress)
    row = get_target(target)
    options = ExportOptions(precision=precision, tune=tune, library=library, calibration=calibration,
                            min_agreement=min_agreement, ort_shift=ort_shift, tuning_records=tuning_records)
    check_options(row, options)
    from online_tsm.export.precision.int8 import calibration_for

    options = replace(options, calibration=calibration_for(options.precision, weights_or_model, calibration))
    if row.kind == "litert":
        from online_tsm.export.formats.litert import require_converter

        require_converter()   # a missing extra is one line before any work
    if library == "so" and row.cross and row.find_linker() is None:
        from online_tsm.export.tvm.build import _choose_suffix

        _choose_suffix(row, None, "so")  # raises the one-line "missing cross compiler" error before any work
    model = load_export_model(weights_or_model, input_size, shift)
    staging = prepare_out_dir(out_dir, force)
    try:
        _export(_Job(model, row, staging, say, options, drift_frames=drift_frames), name=model_name(weights_or_model),
                shift=shift, opset=opset, fold=fold_preprocess, camera_size=camera_size, color_order=color_order)
        out = publish_out_dir(staging, out_dir)
    except BaseException:
        discard_out_dir(staging)  # a failed export leaves the previous one (or nothing) where it was
        raise
    say(f"wrote {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
    return out


@dataclass
class _Job:
    """What the stages of one export share: the request, and what earlier stages produced."""

    model: MobileNetV2TSM
    row: ExportTarget
    out: Path
    say: Progress
    options: ExportOptions
    drift_frames: int | None = None
    graph_model: torch.nn.Module | None = None          # the model, or the model with pre-processing folded in
    manifest: Manifest | None = None
    frames: np.ndarray | None = None                    # the verification frames
    reference: np.ndarray | None = None                 # PyTorch's logits over them
    compiled: Any = None                                # the TVM library, where the row has one
    roles: dict[str, str] = field(default_factory=dict)  # file name -> role in the manifest
    notes: list[str] = field(default_factory=list)
    extra_rules: dict[str, VerificationRule] = field(default_factory=dict)
    profile_onnx: tuple[Path, dict[str, Any]] | None = None   # the row's own ONNX model, shipped as model.onnx

    @property
    def onnx_path(self) -> Path:
        return self.out / ONNX_NAME

    @property
    def tolerance(self) -> float:
        """The float32 rule where the reference was computed: every graph made here must meet it."""
        return FP32.tolerance(self.reference, same_machine=True)

    def check_against_reference(self, logits: np.ndarray, what: str) -> float:
        """Max abs diff of ``logits`` from PyTorch's; ExportError naming ``what`` when over the float32 rule."""
        diff = max_abs_diff(logits, self.reference)
        if not diff <= self.tolerance:
            raise ExportError(f"{what} disagrees with PyTorch: max abs diff {diff:.3g} > tolerance "
                              f"{self.tolerance:.3g}")
        return diff


def _export(job: _Job, *, name: str, shift: str, opset: int | None, fold: bool, camera_size: tuple[int, int],
            color_order: str) -> None:
    """The stages, in order, into the staging folder ``job.out``."""
    _describe(job, name=name, shift=shift, fold=fold, camera_size=camera_size, color_order=color_order)
    _export_onnx_verified(job, opset)
    _export_profile_onnx(job, opset)
    _compile(job)
    _reduce_precision(job)
    _litert(job)
    _ship_profile_onnx(job)
    _finish(job)


def _describe(job: _Job, *, name: str, shift: str, fold: bool, camera_size: tuple[int, int],
              color_order: str) -> None:
    """The manifest's model, inputs and outputs, and the graph to export (pre-processing folded in or not)."""
    job.graph_model = job.model
    job.manifest = manifest = build_manifest(job.model, name=name, shift=shift)
    if fold:
        info = getattr(job.model, "info", None)
        wrapper = FoldedPreprocess(job.model, camera_size, color_order,
                                   mean=manifest.preprocess["mean"], std=manifest.preprocess["std"])
        _fold_manifest(manifest, wrapper)
        job.graph_model = wrapper.eval()
        if info is not None:
            job.graph_model.info = info
    manifest.preprocess["verification_frames"] = "camera" if fold else "normalised"
    job.frames = frames_for(manifest, REFERENCE_FRAMES)


def _export_onnx_verified(job: _Job, opset: int | None) -> None:
    """``model.onnx`` (simplified) and ``reference.npz``, the graph checked against PyTorch with ONNX Runtime."""
    manifest, say = job.manifest, job.say
    key = graph_key(job.graph_model, opset, manifest)
    if key in VERIFIED_GRAPHS:
        graph_bytes, job.reference, diff = VERIFIED_GRAPHS[key]
        job.onnx_path.write_bytes(graph_bytes)
        say(f"reusing the ONNX graph verified earlier in this process (max abs diff {diff:.2e} vs PyTorch)")
    else:
        folded = manifest.preprocess.get("folded")
        say(f"exporting the per-frame ONNX graph ({len(manifest.buffers)} shift buffers, "
            + (f"uint8 camera frames {'x'.join(map(str, manifest.preprocess['camera_size']))})" if folded
               else f"input {job.model.input_size})"))
        export_onnx(job.graph_model, job.onnx_path, opset=opset, simplify=False)
        say("simplifying with onnxslim and checking the graph")
        simplify_and_check(job.onnx_path)
        job.reference = stream_torch(job.graph_model, job.frames)
        say(f"verifying ONNX (ONNX Runtime) against PyTorch over {REFERENCE_FRAMES} streamed frames")
        diff = job.check_against_reference(stream_onnxruntime(job.onnx_path, manifest, job.frames),
                                           "the simplified ONNX graph")
        say(f"ONNX matches PyTorch: max abs diff {diff:.2e} (tolerance {job.tolerance:.1e})")
        while len(VERIFIED_GRAPHS) >= 4:
            VERIFIED_GRAPHS.pop(next(iter(VERIFIED_GRAPHS)))
        VERIFIED_GRAPHS[key] = (job.onnx_path.read_bytes(), job.reference, diff)
    write_reference(job.out / REFERENCE_NAME, job.reference, frames_kind=manifest.preprocess["verification_frames"])
    job.roles.update({ONNX_NAME: "onnx", REFERENCE_NAME: "reference"})


def _export_profile_onnx(job: _Job, opset: int | None) -> None:
    """The row's own ONNX model (``onnx_profile``), beside the default graph until the library is built from that.

    Made early so that a graph the device's runtime cannot parse fails the export before the long compile.
    """
    if job.row.onnx_profile is None:
        return
    from online_tsm.export.formats.onnx_tensorrt import export_profile_onnx

    job.profile_onnx = export_profile_onnx(job.row.onnx_profile, job.graph_model, job.manifest, job.frames,
                                           job.reference, job.out / f".{job.row.onnx_profile}.onnx", opset=opset,
                                           say=job.say)


def _ship_profile_onnx(job: _Job) -> None:
    """``model.onnx`` becomes the row's own ONNX model; the manifest says which and how it was checked."""
    if job.profile_onnx is None:
        return
    path, record = job.profile_onnx
    os.replace(path, job.onnx_path)
    job.manifest.model["onnx_graph"] = record


def _compile(job: _Job) -> None:
    """The row's TVM library (none for ONNX rows and int8), checked for its machine and, here, for its numbers."""
    row, options, say = job.row, job.options, job.say
    if row.kind in ("onnx", "litert"):
        return
    if options.precision == "int8":
        job.notes.append("int8 runs on ONNX Runtime (model.onnx, QDQ); no TVM library is built for int8")
        return
    from online_tsm.export.tvm.build import check_library, compile_library

    job.compiled = compiled = compile_library(job.onnx_path, job.manifest, row, job.out, library=options.library,
                                              tune=options.tune, progress=say, precision=options.precision,
                                              tuning_records=options.tuning_records)
    job.notes += compiled.notes
    for note in compiled.notes:
        say(f"note: {note}")
    check_library(job.out / compiled.filename, row, compiled, say)
    job.roles[compiled.filename] = "library"
    if row.runs_here:
        from online_tsm.export.tvm.build import stream_tvm

        say(f"verifying the TVM library against PyTorch over {REFERENCE_FRAMES} streamed frames")
        diff = job.check_against_reference(stream_tvm(job.out / compiled.filename, job.manifest, job.frames),
                                           "the TVM build")
        say(f"TVM library matches PyTorch: max abs diff {diff:.2e}")


def _reduce_precision(job: _Job) -> None:
    """The ONNX Runtime shift rewrite, and the fp16 check or the int8 model with its measured rule."""
    manifest, options = job.manifest, job.options
    manifest.model["precision"] = options.precision
    if job.row.kind == "litert":
        return                      # model.tflite is made in its precision by _litert
    if options.ort_shift == "conv":
        _fold_shift(job)
    if options.precision == "fp16":
        from online_tsm.export.tvm.mixed_precision import check_fp16

        manifest.model["fp16_check"] = check_fp16(job.onnx_path, manifest, job.frames, job.reference, job.say)
    if options.precision == "int8":
        import tempfile

        from online_tsm.export.precision.int8 import export_onnx_int8

        with tempfile.TemporaryDirectory(prefix="online-tsm-int8-") as tmp:
            quantization = export_onnx_int8(job.model, job.onnx_path, manifest, job.frames, job.reference, job.say,
                                            calibration=str(options.calibration), workdir=Path(tmp),
                                            min_agreement=options.min_agreement, drift_frames=job.drift_frames)
        manifest.model["quantization"] = quantization
        measured = quantization["verification"]
        job.extra_rules["int8"] = measured_int8_rule(measured["max_abs_diff"], measured["top1_agreement"])


def _litert(job: _Job) -> None:
    """The LiteRT row: ``model.tflite`` from the same per-frame module, in the asked precision, checked against
    PyTorch (:mod:`.formats.litert`); it replaces ``model.onnx``, which only made the reference."""
    if job.row.kind != "litert":
        return
    from online_tsm.export.formats.litert import TFLITE_NAME, export_tflite

    options = job.options
    entry = export_tflite(job.graph_model, job.model, job.manifest, job.out, job.frames, job.reference, job.say,
                          precision=options.precision, calibration=options.calibration,
                          min_agreement=options.min_agreement, drift_frames=job.drift_frames)
    job.manifest.model.update(entry)
    measured = (entry.get("quantization") or {}).get("verification")
    if measured:
        job.extra_rules["int8"] = measured_int8_rule(measured["max_abs_diff"], measured["top1_agreement"])
    job.onnx_path.unlink()
    job.roles.pop(ONNX_NAME, None)
    job.roles[TFLITE_NAME] = "tflite"


def _finish(job: _Job) -> None:
    """The manifest's target, rules and versions, the device kit and README.txt; then the manifest itself."""
    from online_tsm.export.device.kit import add_device_kit
    from online_tsm.export.readme import artifact_readme

    manifest, row, compiled = job.manifest, job.row, job.compiled
    manifest.target = row.to_manifest(library=compiled.filename if compiled else None)
    if compiled is not None:
        manifest.target.update(tvm_target_resolved=compiled.tvm_target, device_code=compiled.device_code,
                               tuning=compiled.tuning)
    manifest.target["notes"] = job.notes
    manifest.verification = verification_entry(job.options.precision, job.extra_rules)
    manifest.compiler = compiler_versions(row, compiled)
    job.roles[README_NAME] = "readme"
    job.roles.update(add_device_kit(job.out, manifest, row))   # run.py / run_onnx.py: verify and time on the device
    (job.out / README_NAME).write_text(artifact_readme(manifest, row, job.out.name, files=sorted(job.roles),
                                                       roles=job.roles))
    write_manifest(job.out, manifest, job.roles)


def _fold_shift(job: _Job) -> None:
    """Rewrite ``model.onnx``'s shift so that ONNX Runtime keeps its blocked layout (:mod:`.formats.shift_fold`).

    Done after the TVM build, which compiles the plain graph (TVM slices
    channels in its own layout at no cost); the rewrite gives the same values
    bit for bit, and is verified against PyTorch again all the same.
    """
    import onnx

    from online_tsm.export.formats.shift_fold import fold_shift_into_convs

    graph, count = fold_shift_into_convs(onnx.load(str(job.onnx_path)))
    if not count:
        return
    tmp = job.onnx_path.with_suffix(".folding.onnx")
    onnx.save(graph, str(tmp))
    try:
        diff = job.check_against_reference(stream_onnxruntime(tmp, job.manifest, job.frames),
                                           "the shift rewrite for ONNX Runtime")
    except ExportError:
        tmp.unlink()
        raise
    os.replace(tmp, job.onnx_path)
    job.manifest.model["shift_graph"] = "1x1 convolutions (no channel slicing; ONNX Runtime keeps its blocked layout)"
    job.say(f"shift at {count} points expressed as 1x1 convolutions for ONNX Runtime: max abs diff {diff:.2e} vs "
            "PyTorch")
