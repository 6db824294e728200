"""Exported artifacts for the benchmark, cached so that only the first run pays for them.

An ONNX export of the 224 model takes seconds and a tuned TVM build much
longer; a user re-running ``tsm-bench`` should wait for neither.  Artifacts go
under the user cache directory, keyed by a hash of the weights, the
architecture, the shift variant, the target, the versions of every tool
that shaped the artifact and the exporter's own source -- change any of them
and a fresh one is built.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import torch

from online_tsm.errors import UserError
from online_tsm.manifest import MANIFEST_NAME, ManifestError, load_manifest
from online_tsm.models import MobileNetV2TSM
from online_tsm.weights import cache_dir

# Tools whose version changes an artifact's bytes or speed.
_TOOLS = ("online-tsm", "torch", "onnx", "onnxslim", "onnxscript", "onnxruntime", "apache-tvm", "apache-tvm-ffi")


def _versions() -> dict[str, str]:
    out = {}
    for name in _TOOLS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    out["exporter-source"] = exporter_digest()
    return out


def exporter_digest() -> str:
    """sha256 of the exporter's own source (``online_tsm.export``): graph rewrites and schedules live there.

    The package version does not move in a development checkout, yet a new
    schedule changes what a TVM build runs; without this a cached artifact
    would time the old code.
    """
    import online_tsm.export as export_pkg

    digest = hashlib.sha256()
    for path in sorted(Path(export_pkg.__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def model_hash(model: MobileNetV2TSM) -> str:
    """sha256 over the architecture and every tensor of the state dict (names, shapes, bytes)."""
    digest = hashlib.sha256()
    arch = {"n_class": model.n_class, "width_mult": model.width_mult, "input_size": model.input_size,
            "shift_blocks": list(model.shift_blocks), "fold_div": model.fold_div}
    digest.update(json.dumps(arch, sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{list(t.shape)}:{t.dtype}".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return digest.hexdigest()


def artifact_key(model_digest: str, target: str, shift: str, extra: dict[str, Any] | None = None) -> str:
    payload = {"model": model_digest, "target": target, "shift": shift, "versions": _versions(),
               "extra": extra or {}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def bench_cache_dir(root: str | Path | None = None) -> Path:
    return Path(root) if root else cache_dir() / "bench-artifacts"


def cached_artifact(model: MobileNetV2TSM, target: str, shift: str, export: Callable[[Path], Path], *,
                    root: str | Path | None = None, model_digest: str | None = None,
                    extra: dict[str, Any] | None = None, log: Callable[[str], None] | None = None) -> Path:
    """The artifact folder for ``(model, target, shift)``, building it with ``export(tmp_dir)`` when absent.

    ``export`` writes an artifact folder (manifest and files) and returns its
    path.  A cached folder whose manifest no longer verifies is rebuilt.
    ``export`` must publish atomically, as ``tsm-export`` does (it builds in a
    hidden sibling folder and renames it into place), so an interrupted build
    never leaves a half-written artifact in the cache.
    """
    log = log or (lambda message: print(message, file=sys.stderr))
    digest = model_digest or model_hash(model)
    key = artifact_key(digest, target, shift, extra)
    folder = bench_cache_dir(root) / f"{target}-{shift}-{key}"
    if (folder / MANIFEST_NAME).is_file():
        try:
            load_manifest(folder)
            return folder
        except ManifestError as exc:
            log(f"cached artifact {folder} is damaged ({exc}); building it again")
            shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    log(f"building the {target} artifact ({'TSN, shift disabled' if shift == 'none' else 'TSM'}) -- "
        f"first run only, cached in {folder.parent}")
    start = time.perf_counter()
    try:
        load_manifest(Path(export(folder)))  # tsm-export stages beside the folder and renames it into place
    except UserError:
        if not (folder / MANIFEST_NAME).is_file():  # unless another process cached it meanwhile
            raise
    log(f"  built in {time.perf_counter() - start:.0f} s")
    return folder
