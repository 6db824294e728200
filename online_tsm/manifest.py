"""The artifact contract: ``manifest.json`` describes everything a runtime needs.

An export folder holds ``model.onnx``, maybe a compiled library, a
``README.txt`` and this manifest.  Runtimes read names, shapes, dtypes, the
buffer pairing and pre-processing from here and never hard-code them, in the
spirit of MoViNet's streaming states: the buffer that comes out as
``shift_out_k`` goes back in as ``shift_k``.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from online_tsm.errors import OnlineTSMError
from online_tsm.fileio import atomic_write, sha256_file
from online_tsm.verification import FP32, PRECISIONS, VerificationRule, measured_int8_rule

MANIFEST_NAME = "manifest.json"
ARTIFACT_FORMAT = "online-tsm-artifact"
ARTIFACT_VERSION = 1
#: Where a Triton model repository (``tsm-export --target triton``) keeps its artifact folder: its python model
#: ``<repo>/online_tsm/1/artifact/``.  Written by the export, read by the triton backend.
TRITON_PYTHON_MODEL = "online_tsm"
TRITON_ARTIFACT_DIR = "artifact"


class ManifestError(OnlineTSMError, ValueError):
    """An export folder is missing, incomplete, or does not match its manifest."""


@dataclass
class TensorSpec:
    name: str
    shape: list[int]
    dtype: str = "float32"


@dataclass
class BufferPair:
    """``output`` of one step feeds ``input`` of the next; the first step sees ``init``."""

    input: str
    output: str
    shape: list[int]
    dtype: str = "float32"
    init: str = "zeros"


@dataclass
class Manifest:
    model: dict[str, Any]          # name, arch, n_class, labels, width_mult, shift_blocks, fold_div, shift
    preprocess: dict[str, Any]     # input_size, resize_shorter, mean, std, color_order, layout, folded
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    buffers: list[BufferPair]
    frame_input: str = "frame"
    logits_output: str = "logits"
    target: dict[str, Any] = field(default_factory=dict)     # row of the targets table used
    compiler: dict[str, Any] = field(default_factory=dict)   # tool names and versions
    files: dict[str, dict[str, str]] = field(default_factory=dict)  # file name -> {"sha256", "role"}
    verification: dict[str, Any] = field(default_factory=dict)  # {"precision", "rules": {precision: rule}}
    format: str = ARTIFACT_FORMAT
    format_version: int = ARTIFACT_VERSION

    # -- convenience ----------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        return list(self.model.get("labels", []))

    @property
    def input_size(self) -> int:
        return int(self.preprocess["input_size"])

    def spec(self, name: str) -> TensorSpec:
        for s in self.inputs + self.outputs:
            if s.name == name:
                return s
        raise ManifestError(f"manifest has no tensor named {name!r}")

    def file_with_role(self, role: str) -> str | None:
        """Name of the (first) file with ``role`` (``onnx``, ``library``, ...), if any."""
        return next((name for name, meta in self.files.items() if meta.get("role") == role), None)

    @property
    def precision(self) -> str:
        """What the artifact's model computes: ``fp32``, ``fp16`` or ``int8``."""
        return str(self.verification.get("precision") or self.model.get("precision") or "fp32")

    def rule(self, precision: str | None = None) -> VerificationRule:
        """The verification rule for ``precision`` (default: the artifact's own), as the export wrote it.

        Manifests written before the rules moved here carry the float32 rule in ``target.verification`` and
        an int8 model's measured figures in ``model.quantization``; those are read the same way.
        """
        precision = precision or self.precision
        stored = (self.verification.get("rules") or {}).get(precision)
        try:
            if stored is not None:
                return VerificationRule.from_dict(stored)
            if precision == "fp32" and self.target.get("verification"):
                return VerificationRule.from_dict(self.target["verification"])
        except ValueError as exc:
            raise ManifestError(f"manifest's {precision} verification rule: {exc}") from None
        measured = (self.model.get("quantization") or {}).get("verification")
        if precision == "int8" and measured:
            return measured_int8_rule(measured.get("max_abs_diff", 0.0), measured.get("top1_agreement", 1.0))
        if precision == "fp32":
            return FP32
        raise ManifestError(f"this artifact's manifest has no {precision} verification rule: re-export it with "
                            "this online-tsm")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


sha256_of = sha256_file  # the one file hash of the toolkit (also what weights downloads are checked with)


def write_manifest(directory: str | Path, manifest: Manifest, roles: dict[str, str] | None = None) -> Path:
    """Hash every file in ``directory`` (but the manifest) into ``manifest.files`` and write it."""
    directory = Path(directory)
    roles = roles or {}
    manifest.files = {
        p.name: {"sha256": sha256_of(p), "role": roles.get(p.name, manifest.files.get(p.name, {}).get("role", "other"))}
        for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST_NAME
    }
    path = directory / MANIFEST_NAME
    atomic_write(path, manifest.to_json())
    return path


def _from_dict(data: dict[str, Any]) -> Manifest:
    data = dict(data)
    data["inputs"] = [TensorSpec(**s) for s in data["inputs"]]
    data["outputs"] = [TensorSpec(**s) for s in data["outputs"]]
    data["buffers"] = [BufferPair(**b) for b in data["buffers"]]
    return Manifest(**data)


def _is_shape(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)


def check_file_name(name: Any) -> str | None:
    """Why ``name`` may not be a file of an export folder, or ``None`` when it is a plain name inside it.

    Names come from a file the user may have been handed: ``../x.so`` or an
    absolute path would make opening the folder load a library from
    elsewhere, so only a plain file name (no folder part) is accepted.
    """
    if not isinstance(name, str) or not name:
        return "expected a non-empty file name"
    if name in (".", "..") or "/" in name or "\\" in name or "\0" in name or Path(name).is_absolute():
        return "expected a plain file name inside the folder (no folder part, no '..', not absolute)"
    return None


def _check_fields(data: dict[str, Any]) -> str | None:
    """The first field of a parsed manifest that does not have the expected type, as one line (else ``None``)."""
    for key in ("model", "preprocess"):
        if not isinstance(data.get(key), dict):
            return f"field {key!r}: expected an object, got {type(data.get(key)).__name__}"
    for key in ("inputs", "outputs", "buffers"):
        if not isinstance(data.get(key), list):
            return f"field {key!r}: expected a list, got {type(data.get(key)).__name__}"
        for i, item in enumerate(data[key]):
            if not isinstance(item, dict):
                return f"field {key}[{i}]: expected an object, got {type(item).__name__}"
            if not _is_shape(item.get("shape")):
                return f"field {key}[{i}].shape: expected a list of non-negative integers, got {item.get('shape')!r}"
    verification = data.get("verification", {})
    if not isinstance(verification, dict) or not isinstance(verification.get("rules", {}), dict):
        return "field 'verification': expected an object with 'precision' and 'rules'"
    if verification.get("precision", "fp32") not in PRECISIONS:
        return f"field verification.precision: expected one of {', '.join(PRECISIONS)}, got " \
               f"{verification.get('precision')!r}"
    for key in ("target", "compiler"):
        if key in data and not isinstance(data[key], dict):
            return f"field {key!r}: expected an object, got {type(data[key]).__name__}"
    files = data.get("files", {})
    if not isinstance(files, dict):
        return f"field 'files': expected an object mapping file name to {{sha256, role}}, got {type(files).__name__}"
    for name, meta in files.items():
        why = check_file_name(name)
        if why:
            return f"field 'files' names {name!r}: {why}"
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
            return f"field files[{name!r}]: expected an object with a 'sha256' string"
    size = data["preprocess"].get("input_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        return f"field preprocess.input_size: expected a positive integer, got {size!r}"
    std = data["preprocess"].get("std")
    if std is not None and (not isinstance(std, list) or not all(isinstance(v, (int, float)) and v > 0 for v in std)):
        return f"field preprocess.std: expected a list of positive numbers, got {std!r}"
    labels = data["model"].get("labels")
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(v, str) for v in labels)):
        return "field model.labels: expected a list of strings"
    stride = data["model"].get("frame_stride")
    if stride is not None and (isinstance(stride, bool) or not isinstance(stride, (int, float))
                               or not math.isfinite(stride) or stride <= 0):
        return f"field model.frame_stride: expected a finite positive number, got {stride!r}"
    return None


def artifact_folder(path: str | Path) -> Path:
    """The artifact folder at ``path``: the folder itself, or the one inside a Triton model repository."""
    path = Path(path).expanduser()
    candidate = path / TRITON_PYTHON_MODEL / "1" / TRITON_ARTIFACT_DIR
    return candidate if (candidate / MANIFEST_NAME).is_file() else path


def load_manifest(directory: str | Path, verify_files: bool = True) -> Manifest:
    """Read and check ``directory/manifest.json``; with ``verify_files``, check every sha256."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise ManifestError(f"expected an export folder with {MANIFEST_NAME}, got {directory} (not a folder)")
    if not path.is_file():
        raise ManifestError(f"{directory} has no {MANIFEST_NAME}: expected a folder written by tsm-export")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != ARTIFACT_FORMAT:
        raise ManifestError(f"{path} is not an online-tsm manifest (expected format {ARTIFACT_FORMAT!r})")
    version = data.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ManifestError(f"{path}: field 'format_version': expected an integer, got {version!r}")
    if version > ARTIFACT_VERSION:
        raise ManifestError(f"{path} has format_version {version}; this online-tsm reads up to "
                            f"{ARTIFACT_VERSION} (upgrade online-tsm)")
    problem = _check_fields(data)
    if problem:
        raise ManifestError(f"{path}: {problem}")
    try:
        manifest = _from_dict(data)
    except (KeyError, TypeError) as exc:
        raise ManifestError(f"{path} is missing or has malformed fields: {exc}") from None
    for role_name in (manifest.frame_input, manifest.logits_output):
        if role_name not in {s.name for s in manifest.inputs} | {s.name for s in manifest.outputs}:
            raise ManifestError(f"{path}: field frame_input/logits_output names {role_name!r}, which is not among "
                                "the inputs/outputs")
    n_class = (manifest.spec(manifest.logits_output).shape or [0])[-1]
    if manifest.labels and len(manifest.labels) != n_class:
        raise ManifestError(f"{path}: field model.labels: expected {n_class} names (the logits' size), got "
                            f"{len(manifest.labels)}")
    names = {s.name for s in manifest.inputs} | {s.name for s in manifest.outputs}
    for pair in manifest.buffers:
        if pair.input not in names or pair.output not in names:
            raise ManifestError(f"{path}: buffer pair {pair.input} <-> {pair.output} names a tensor that is not "
                                "among the inputs/outputs")
    if verify_files:
        for name, meta in manifest.files.items():
            file = directory / name
            if not file.is_file():
                raise ManifestError(f"{directory}: file {name} listed in {MANIFEST_NAME} is missing")
            actual = sha256_of(file)
            if actual != meta.get("sha256"):
                raise ManifestError(f"{directory}: {name} does not match {MANIFEST_NAME} (sha256 expected "
                                    f"{str(meta.get('sha256'))[:12]}..., got {actual[:12]}...); re-export it")
    return manifest
