"""The artifact contract: ``manifest.json`` describes everything a runtime needs.

An export folder holds ``model.onnx``, maybe a compiled library, a
``README.txt`` and this manifest.  Runtimes read names, shapes, dtypes, the
buffer pairing and pre-processing from here and never hard-code them, in the
spirit of MoViNet's streaming states: the buffer that comes out as
``shift_out_k`` goes back in as ``shift_k``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from online_tsm.errors import OnlineTSMError

MANIFEST_NAME = "manifest.json"
ARTIFACT_FORMAT = "online-tsm-artifact"
ARTIFACT_VERSION = 1


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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: str | Path, manifest: Manifest, roles: dict[str, str] | None = None) -> Path:
    """Hash every file in ``directory`` (but the manifest) into ``manifest.files`` and write it."""
    directory = Path(directory)
    roles = roles or {}
    manifest.files = {
        p.name: {"sha256": sha256_of(p), "role": roles.get(p.name, manifest.files.get(p.name, {}).get("role", "other"))}
        for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST_NAME
    }
    path = directory / MANIFEST_NAME
    path.write_text(manifest.to_json())
    return path


def _from_dict(data: dict[str, Any]) -> Manifest:
    data = dict(data)
    data["inputs"] = [TensorSpec(**s) for s in data["inputs"]]
    data["outputs"] = [TensorSpec(**s) for s in data["outputs"]]
    data["buffers"] = [BufferPair(**b) for b in data["buffers"]]
    return Manifest(**data)


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
    if int(data.get("format_version", 0)) > ARTIFACT_VERSION:
        raise ManifestError(f"{path} has format_version {data.get('format_version')}; this online-tsm reads up to "
                            f"{ARTIFACT_VERSION} (upgrade online-tsm)")
    try:
        manifest = _from_dict(data)
    except (KeyError, TypeError) as exc:
        raise ManifestError(f"{path} is missing or has malformed fields: {exc}") from None
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
