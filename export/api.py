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
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from online_tsm.cli_util import UserError
from online_tsm.export.formats.folded import DEFAULT_CAMERA_SIZE, FoldedPreprocess
from online_tsm.manifest import MANIFEST_NAME, Manifest, TensorSpec, write_manifest
from online_tsm.export.formats.onnx import ExportError, build_manifest, export_onnx, stream_onnxruntime, stream_torch
from online_tsm.export.reference import (REFERENCE_FRAMES, REFERENCE_NAME, compare, frames_for, tolerance_same_machine,
                                         write_reference)
from online_tsm.export.targets import ExportTarget, get_target
from online_tsm.models import MobileNetV2TSM

ONNX_NAME = "model.onnx"
README_NAME = "README.txt"
SHIFT_CHOICES = ("causal", "none")


class Progress:
    """Stage messages with elapsed seconds on stderr (silent when disabled)."""

    def __init__(self, enabled: bool = True, stream: Any = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[{time.perf_counter() - self.start:6.1f}s] {message}", file=self.stream, flush=True)


# -- inputs --------------------------------------------------------------------------------

def load_export_model(weights_or_model: Any, input_size: int | None = None, shift: str = "causal") -> MobileNetV2TSM:
    """The model to export: a path / registry name / :class:`MobileNetV2TSM`, at ``input_size``, TSM or TSN."""
    from online_tsm.checkpoint import CheckpointError, load_model, model_info

    if shift not in SHIFT_CHOICES:
        raise UserError(f"shift must be one of {', '.join(SHIFT_CHOICES)}, got {shift!r}")
    if isinstance(weights_or_model, MobileNetV2TSM):
        model = weights_or_model
    elif isinstance(weights_or_model, torch.nn.Module):
        raise UserError(f"expected a MobileNetV2TSM, a checkpoint path or a weights name, got a "
                        f"{type(weights_or_model).__name__}")
    else:
        try:
            model = load_model(weights_or_model, input_size=input_size)
        except CheckpointError as exc:
            raise UserError(f"cannot read weights {weights_or_model}: {exc}") from None
    size = int(input_size or model.input_size)
    if size % 32 or size <= 0:
        raise UserError(f"--input-size must be a positive multiple of 32, got {size}")
    blocks = () if shift == "none" else model.shift_blocks
    if size == model.input_size and tuple(blocks) == tuple(model.shift_blocks):
        return model.eval()
    info = model_info(model)
    rebuilt = MobileNetV2TSM(n_class=model.n_class, width_mult=model.width_mult, input_size=size,
                             shift_blocks=blocks, fold_div=model.fold_div)
    rebuilt.load_state_dict(model.state_dict())
    info.input_size, info.shift_blocks = size, tuple(blocks)
    rebuilt.info = info
    return rebuilt.eval()


def _model_name(weights_or_model: Any) -> str:
    if isinstance(weights_or_model, MobileNetV2TSM):
        return "online-tsm"
    text = str(weights_or_model)
    return Path(text).stem.split(".")[0] if os.sep in text or Path(text).suffix else text


def _is_artifact_folder(path: Path) -> bool:
    """Whether ``path`` holds an online-tsm export: a ``manifest.json`` of our format, not just any manifest."""
    import json

    from online_tsm.manifest import ARTIFACT_FORMAT

    try:
        data = json.loads((path / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == ARTIFACT_FORMAT


def prepare_out_dir(out_dir: str | os.PathLike, force: bool) -> Path:
    """A fresh staging folder to export into; :func:`publish_out_dir` moves it to ``out_dir`` when complete.

    An existing non-empty ``out_dir`` needs ``force`` and must be an online-tsm
    export (its manifest says so): a folder with some other ``manifest.json``
    (a web app's, an extension's) is never touched.  The staging folder lies
    beside ``out_dir`` (same file system, so the final move is a rename) and
    has the same name, so files that mention the folder name are right.
    """
    import tempfile

    from online_tsm.manifest import ARTIFACT_FORMAT

    path = Path(out_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"output path {path} exists and is not a folder")
    _sweep_killed_exports(path)
    if path.is_dir() and any(path.iterdir()):
        if not force:
            raise UserError(f"output folder {path} already exists and is not empty; pass --force to replace it")
        if not _is_artifact_folder(path):
            raise UserError(f"refusing to replace {path}: it is not a tsm-export artifact folder (expected a "
                            f"{MANIFEST_NAME} of format {ARTIFACT_FORMAT!r}); choose another -o")
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = Path(tempfile.mkdtemp(prefix=f"{_holder_prefix(path)}", dir=path.parent))
    (holder / OWNER_FILE).write_text(f"{os.getpid()}\n")
    staging = holder / path.name
    staging.mkdir()
    return staging


OWNER_FILE = "owner.pid"   # in a staging folder's holder: the exporting process


def _holder_prefix(path: Path) -> str:
    return f".{path.name}.tsm-export-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True   # someone else's process
    return True


def _sweep_killed_exports(path: Path) -> None:
    """Clear what an export killed outright (SIGKILL, power loss) left beside ``path``.

    A staging folder is removed once the process that made it is gone; if
    that process had already moved the previous export aside to publish the
    new one, the previous export is put back first.  Folders without an
    owner file, or whose owner still runs, are left alone.
    """
    if not path.parent.is_dir():
        return
    for holder in path.parent.glob(f"{_holder_prefix(path)}*"):
        try:
            pid = int((holder / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if _process_alive(pid):
            continue
        previous = holder / f"{path.name}.old"
        if previous.is_dir() and not path.exists():
            os.rename(previous, path)
        shutil.rmtree(holder, ignore_errors=True)


def publish_out_dir(staging: Path, out_dir: str | os.PathLike) -> Path:
    """Move the complete export ``staging`` to ``out_dir``, replacing the artifact (or empty folder) there.

    The old artifact is renamed aside first and deleted only once the new
    one is in place, so at every moment ``out_dir`` holds a complete export.
    """
    path = Path(out_dir).expanduser()
    holder = staging.parent
    old = holder / f"{path.name}.old"
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()
    elif path.exists():
        os.rename(path, old)
    try:
        os.rename(staging, path)
    except OSError:
        if old.exists() and not path.exists():
            os.rename(old, path)     # put the previous export back
        raise
    shutil.rmtree(holder, ignore_errors=True)
    return path


def discard_out_dir(staging: Path) -> None:
    """Remove a staging folder after a failed export; ``out_dir`` was never touched."""
    shutil.rmtree(staging.parent, ignore_errors=True)


# -- manifest pieces -------------------------------------------------------------------------

def _fold_manifest(manifest: Manifest, wrapper: FoldedPreprocess) -> None:
    h, w = wrapper.camera_hw
    manifest.inputs[0] = TensorSpec(manifest.frame_input, [1, h, w, 3], "uint8")
    manifest.preprocess.update(folded=True, layout="NHWC", color_order=wrapper.color_order,
                               camera_size=[h, w], raw_input_shape=[1, h, w, 3], raw_input_dtype="uint8",
                               resize=f"shorter side to {manifest.preprocess['resize_shorter']} (bilinear, in "
                                      "float), centre crop, mean/std, inside the graph")


def _compiler_versions(row: ExportTarget, library: Any) -> dict[str, Any]:
    import onnx
    import onnxruntime
    import onnxslim

    versions: dict[str, Any] = {"torch": torch.__version__, "onnx": onnx.__version__,
                                "onnxslim": getattr(onnxslim, "__version__", "?"),
                                "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}
    if row.kind != "onnx":
        from online_tsm.export.tvm.build import tvm_versions

        versions.update(tvm_versions())
        if library is not None and library.linker:
            versions["cross_compiler"] = _tool_version(library.linker)
        if library is not None and library.device_code:
            versions["cuda_compiler"] = library.device_code.get("compiler")
    return versions


def _tool_version(tool: str) -> str:
    import subprocess

    try:
        out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=30).stdout
        return f"{tool}: {out.strip().splitlines()[0]}" if out.strip() else tool
    except (OSError, subprocess.SubprocessError):
        return tool


# -- the export ------------------------------------------------------------------------------

def export_artifact(weights_or_model: Any, target: str, out_dir: str | os.PathLike, *, input_size: int | None = None,
                    opset: int | None = None, fold_preprocess: bool = False, tune: int = 0, force: bool = False,
                    shift: str = "causal", progress: bool = True, camera_size: tuple[int, int] = DEFAULT_CAMERA_SIZE,
                    color_order: str = "bgr", library: str = "auto", precision: str = "fp32",
                    calibration: str | None = None, min_agreement: float = 0.98,
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
    :mod:`.calibration`; ``synthetic`` by default for the shipped default
    model) and stores its agreement with float32 in the manifest; the export
    fails below ``min_agreement``.  ``ort_shift="conv"`` expresses the shift
    as 1x1 convolutions in ``model.onnx`` (:mod:`.shift_fold`).
    ``tuning_records=False`` compiles a CPU library with the default
    schedules even when ``tune`` records exist for this CPU.
    """
    say = Progress(progress)
    row = get_target(target)
    from online_tsm.export.precision.options import check_precision

    calibration = check_precision(precision, row, weights_or_model, calibration, min_agreement)
    if ort_shift not in ("slice", "conv"):
        raise UserError(f"ort_shift must be slice or conv, got {ort_shift!r}")
    if library not in ("auto", "so", "tar"):
        raise UserError(f"library must be auto, so or tar, got {library!r}")
    if library == "so" and row.kind != "onnx" and row.cross and row.find_linker() is None:
        from online_tsm.export.tvm.build import _choose_suffix

        _choose_suffix(row, None, "so")  # raises the one-line "missing cross compiler" error before any work
    if tune and row.kind != "cpu" or tune and row.cross:
        raise UserError(f"--tune measures candidates on this machine, so it works for the host target only "
                        f"(not {row.name})")
    if tune and not tuning_records:
        raise UserError("--tune makes tuning records and --no-tuning-records ignores them: give one of the two")
    if tune < 0:
        raise UserError(f"--tune must be >= 0, got {tune}")
    model = load_export_model(weights_or_model, input_size, shift)
    staging = prepare_out_dir(out_dir, force)
    try:
        _export(model, row, staging, say, name=_model_name(weights_or_model), shift=shift, opset=opset,
                fold=fold_preprocess, camera_size=camera_size, color_order=color_order, tune=tune,
                library=library, precision=precision, calibration=calibration,
                min_agreement=min_agreement, drift_frames=drift_frames, ort_shift=ort_shift,
                tuning_records=tuning_records)
        out = publish_out_dir(staging, out_dir)
    except BaseException:
        discard_out_dir(staging)  # a failed export leaves the previous one (or nothing) where it was
        raise
    say(f"wrote {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
    return out


def _export(model: MobileNetV2TSM, row: ExportTarget, out: Path, say: Progress, *, name: str, shift: str,
            opset: int | None, fold: bool, camera_size: tuple[int, int], color_order: str, tune: int,
            library: str, precision: str = "fp32", calibration: str | None = None, min_agreement: float = 0.98,
            drift_frames: int | None = None, ort_shift: str = "slice", tuning_records: bool = True) -> Path:
    graph_model: torch.nn.Module = model
    manifest = build_manifest(model, name=name, shift=shift)
    if fold:
        info = getattr(model, "info", None)
        wrapper = FoldedPreprocess(model, camera_size, color_order,
                                   mean=manifest.preprocess["mean"], std=manifest.preprocess["std"])
        _fold_manifest(manifest, wrapper)
        graph_model = wrapper.eval()
        if info is not None:
            graph_model.info = info
    manifest.preprocess["verification_frames"] = "camera" if fold else "normalised"

    onnx_path = out / ONNX_NAME
    frames = frames_for(manifest, REFERENCE_FRAMES)
    key = _graph_key(graph_model, opset, manifest)
    if key in _VERIFIED_GRAPHS:
        graph_bytes, reference, diff = _VERIFIED_GRAPHS[key]
        onnx_path.write_bytes(graph_bytes)
        tolerance = tolerance_same_machine(reference)
        say(f"reusing the ONNX graph verified earlier in this process (max abs diff {diff:.2e} vs PyTorch)")
    else:
        say(f"exporting the per-frame ONNX graph ({len(manifest.buffers)} shift buffers, "
            f"{'uint8 camera frames ' + 'x'.join(map(str, camera_size)) if fold else 'input ' + str(model.input_size)})")
        export_onnx(graph_model, onnx_path, opset=opset, simplify=False)
        say("simplifying with onnxslim and checking the graph")
        _simplify(onnx_path)
        reference = stream_torch(graph_model, frames)
        tolerance = tolerance_same_machine(reference)
        say(f"verifying ONNX (ONNX Runtime) against PyTorch over {REFERENCE_FRAMES} streamed frames")
        diff = compare(stream_onnxruntime(onnx_path, manifest, frames), reference)
        if not diff <= tolerance:
            raise ExportError(f"the simplified ONNX graph disagrees with PyTorch: max abs diff {diff:.3g} > "
                              f"tolerance {tolerance:.3g}")
        say(f"ONNX matches PyTorch: max abs diff {diff:.2e} (tolerance {tolerance:.1e})")
        while len(_VERIFIED_GRAPHS) >= 4:
            _VERIFIED_GRAPHS.pop(next(iter(_VERIFIED_GRAPHS)))
        _VERIFIED_GRAPHS[key] = (onnx_path.read_bytes(), reference, diff)
    write_reference(out / REFERENCE_NAME, reference, frames_kind=manifest.preprocess["verification_frames"])

    compiled = None
    notes: list[str] = []
    if row.kind != "onnx" and precision == "int8":
        notes.append("int8 runs on ONNX Runtime (model.onnx, QDQ); no TVM library is built for int8")
    elif row.kind != "onnx":
        from online_tsm.export.tvm.build import compile_library

        compiled = compile_library(onnx_path, manifest, row, out, library=library, tune=tune, progress=say,
                                   precision=precision, tuning_records=tuning_records)
        notes += compiled.notes
        for note in compiled.notes:
            say(f"note: {note}")
        _check_library(out / compiled.filename, row, compiled, say)
        if row.runs_here:
            from online_tsm.export.tvm.build import stream_tvm

            say(f"verifying the TVM library against PyTorch over {REFERENCE_FRAMES} streamed frames")
            diff = compare(stream_tvm(out / compiled.filename, manifest, frames), reference)
            if not diff <= tolerance:
                raise ExportError(f"the TVM build disagrees with PyTorch: max abs diff {diff:.3g} > tolerance "
                                  f"{tolerance:.3g}")
            say(f"TVM library matches PyTorch: max abs diff {diff:.2e}")

    if ort_shift == "conv":
        _fold_shift(onnx_path, manifest, frames, reference, tolerance, say)
    manifest.model["precision"] = precision
    if precision == "fp16":
        from online_tsm.export.precision.options import check_fp16

        manifest.model["fp16_check"] = check_fp16(onnx_path, manifest, frames, reference, say)
    if precision == "int8":
        from online_tsm.export.precision.options import export_int8

        manifest.model["quantization"] = export_int8(model, onnx_path, manifest, frames, reference, say,
                                                     calibration=str(calibration), min_agreement=min_agreement,
                                                     drift_frames=drift_frames)
    manifest.target = row.to_manifest(library=compiled.filename if compiled else None)
    if compiled is not None:
        manifest.target.update(tvm_target_resolved=compiled.tvm_target, device_code=compiled.device_code,
                               tuning=compiled.tuning)
    manifest.target["notes"] = notes
    manifest.compiler = _compiler_versions(row, compiled)
    from online_tsm.export.readme import artifact_readme

    roles = {ONNX_NAME: "onnx", REFERENCE_NAME: "reference", README_NAME: "readme"}
    if compiled is not None:
        roles[compiled.filename] = "library"
    from online_tsm.export.device.kit import add_device_kit

    roles.update(add_device_kit(out, manifest, row))   # run.py / run_onnx.py: verify and time on the device
    (out / README_NAME).write_text(artifact_readme(manifest, row, out.name, files=sorted(roles), roles=roles))
    write_manifest(out, manifest, roles)
    return out


# Exporting one model for several targets in one process (a script, the test suite) re-uses the
# verified graph: torch.onnx.export + onnxslim + the parity check cost tens of seconds each time.
_VERIFIED_GRAPHS: dict[str, tuple[bytes, np.ndarray, float]] = {}


def _graph_key(graph_model: torch.nn.Module, opset: int | None, manifest: Manifest) -> str:
    """Fingerprint of everything the ONNX graph depends on: weights, shapes, pre-processing, opset."""
    import hashlib
    import json

    digest = hashlib.sha256()
    for name, tensor in graph_model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(json.dumps([opset, manifest.preprocess, [s.shape for s in manifest.inputs],
                              [s.shape for s in manifest.outputs]], sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _fold_shift(onnx_path: Path, manifest: Manifest, frames: np.ndarray, reference: np.ndarray, tolerance: float,
                say: Progress) -> None:
    """Rewrite ``model.onnx``'s shift so that ONNX Runtime keeps its blocked layout (:mod:`.shift_fold`), re-checked.

    Done after the TVM build, which compiles the plain graph (TVM slices
    channels in its own layout at no cost); the rewrite gives the same values
    bit for bit, and is verified against PyTorch again all the same.
    """
    import onnx

    from online_tsm.export.formats.shift_fold import fold_shift_into_convs

    graph, count = fold_shift_into_convs(onnx.load(str(onnx_path)))
    if not count:
        return
    tmp = onnx_path.with_suffix(".folding.onnx")
    onnx.save(graph, str(tmp))
    diff = compare(stream_onnxruntime(tmp, manifest, frames), reference)
    if not diff <= tolerance:
        tmp.unlink()
        raise ExportError(f"the shift rewrite for ONNX Runtime changed the logits: max abs diff {diff:.3g} > "
                          f"tolerance {tolerance:.3g}")
    os.replace(tmp, onnx_path)
    manifest.model["shift_graph"] = "1x1 convolutions (no channel slicing; ONNX Runtime keeps its blocked layout)"
    say(f"shift at {count} points expressed as 1x1 convolutions for ONNX Runtime: max abs diff {diff:.2e} vs "
        "PyTorch")


def _simplify(onnx_path: Path) -> None:
    import contextlib
    import io

    import onnx
    import onnxslim

    graph = onnx.load(str(onnx_path))
    with contextlib.redirect_stdout(io.StringIO()):
        graph = onnxslim.slim(graph)
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, str(onnx_path))


def _check_library(path: Path, row: ExportTarget, compiled: Any, say: Progress) -> None:
    """The library's host code must be for the target's machine; CUDA ones must carry device code."""
    from online_tsm.export.device import elf
    machines = set(elf.library_machines(path).values())
    expected = row.elf_machine
    if expected is not None and machines != {expected}:
        raise ExportError(f"{path.name} holds {', '.join(elf.machine_name(m) for m in machines)} code, expected "
                          f"{elf.machine_name(expected)} for {row.name}")
    names = ", ".join(sorted(elf.machine_name(m) for m in machines))
    if row.kind == "cuda":
        code = compiled.device_code
        say(f"library: {names} host code + {code.get('kernels')} CUDA kernels as a {code.get('arch')} "
            f"{code.get('format')} ({code.get('compiler')})")
    else:
        say(f"library: {path.name}, {names} code")
