"""Checkpoint formats: read three, write three, trust none.

Formats
-------
``online-tsm``
    Ours: ``{"format": "online-tsm", "version": 1, "state_dict": ..., <metadata>}``
    with ``arch``, ``n_class``, ``labels``, ``input_size``, ``mean``, ``std``,
    ``shift_blocks``, ``fold_div`` and ``width_mult``.
``upstream-online``
    The upstream online demo's plain state dict (``features.*``, ``classifier.*``),
    e.g. ``mobilenetv2_jester_online.pth.tar``.
``upstream-offline``
    The upstream offline TSM training checkpoint (TSN wrapper): keys under
    ``module.base_model.``, shifted convolutions as ``...conv.0.net.weight``,
    the classifier as ``module.new_fc.*``; optionally inside ``{"state_dict": ...}``.

Every file goes through ``torch.load(..., weights_only=True)``: a checkpoint is
untrusted input and must not be able to run code.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from online_tsm.console.messages import first_line
from online_tsm.errors import OnlineTSMError
from online_tsm.fileio import atomic_path
from online_tsm.labels import default_labels
from online_tsm.models.mobilenet_v2 import DEFAULT_SHIFT_BLOCKS, MobileNetV2TSM
from online_tsm.preprocess import IMAGENET_MEAN, IMAGENET_STD

FORMAT_NAME = "online-tsm"
FORMAT_VERSION = 1
ARCH = "mobilenet_v2_tsm"
CHECKPOINT_FORMATS = ("online-tsm", "upstream-online", "upstream-offline")
# Width multipliers tried, in order, when a plain state dict does not say which it has.
_KNOWN_WIDTHS = (1.0, 0.5, 0.75, 0.35, 0.25, 1.25, 1.4, 1.5, 2.0)


class CheckpointError(OnlineTSMError, ValueError):
    """A file is not a checkpoint we can load, or does not fit the model."""


class OneWayShiftWarning(UserWarning):
    """Weights trained with a bi-directional shift are being streamed one-way."""


@dataclass
class ModelInfo:
    """What a runtime needs besides the weights: how to feed the model and read its output."""

    n_class: int
    labels: list[str]
    input_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    width_mult: float = 1.0
    shift_blocks: tuple[int, ...] = DEFAULT_SHIFT_BLOCKS
    fold_div: int = 8
    arch: str = ARCH
    source_format: str = FORMAT_NAME
    extra: dict[str, Any] = field(default_factory=dict)


def model_info(model: MobileNetV2TSM, labels: Sequence[str] | None = None, **overrides: Any) -> ModelInfo:
    """Describe ``model`` (its own ``info`` if it was loaded, defaults otherwise)."""
    base = getattr(model, "info", None)
    info = ModelInfo(
        n_class=model.n_class,
        labels=list(labels) if labels is not None else (list(base.labels) if base else default_labels(model.n_class)),
        input_size=model.input_size,
        mean=tuple(base.mean) if base else IMAGENET_MEAN,
        std=tuple(base.std) if base else IMAGENET_STD,
        width_mult=model.width_mult,
        shift_blocks=model.shift_blocks,
        fold_div=model.fold_div,
        extra=dict(base.extra) if base else {},  # training metadata (shift, segments, frame stride) travels along
    )
    for key, value in overrides.items():
        setattr(info, key, value)
    if len(info.labels) != info.n_class:
        raise ValueError(f"{len(info.labels)} labels given for a model with {info.n_class} classes")
    return info


# -- reading -------------------------------------------------------------------------------

def _torch_load(path: Path, map_location: str | torch.device) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except IsADirectoryError:
        raise CheckpointError(f"expected a checkpoint file, got a directory: {path}") from None
    except Exception as exc:  # noqa: BLE001 -- untrusted bytes make the unpickler fail in many ways
        raise CheckpointError(
            f"{path} is not a loadable PyTorch checkpoint (expected a weights-only torch.save file "
            f"in one of the formats {', '.join(CHECKPOINT_FORMATS)}): {first_line(exc)[:200]}") from None


def detect_checkpoint_format(obj: Any) -> str:
    """Name of the checkpoint format of a loaded object, or raise :class:`CheckpointError`."""
    if isinstance(obj, dict) and obj.get("format") == FORMAT_NAME:
        return "online-tsm"
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) for k in state):
        raise CheckpointError(
            f"expected a state dict or a dict with 'state_dict' (formats: {', '.join(CHECKPOINT_FORMATS)}), "
            f"got {type(obj).__name__}")
    keys = list(state)
    if any(re.match(r"^(module\.)?base_model\.", k) for k in keys):
        return "upstream-offline"
    if any(k.startswith(("features.", "classifier.")) for k in keys):
        return "upstream-online"
    raise CheckpointError(
        f"unrecognised checkpoint keys (first: {', '.join(keys[:3])}); expected 'features.*'/'classifier.*' "
        f"(upstream-online), 'module.base_model.*' (upstream-offline) or format '{FORMAT_NAME}'")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _field_problem(obj: dict[str, Any]) -> str | None:
    """The first metadata field of an ``online-tsm`` checkpoint that is unusable, as one line; else ``None``.

    Checked on load so that a damaged or hand-edited file fails here, naming
    the field, instead of at the first frame (wrong label count) or with a
    ``KeyError``/``inf`` deep inside (missing ``n_class``, ``std`` of 0).
    """
    version = obj.get("version")
    if not _is_int(version):
        return f"field 'version': expected an integer, got {version!r}"
    n_class = obj.get("n_class")
    if not _is_int(n_class) or n_class < 1:
        return f"field 'n_class': expected a positive integer, got {n_class!r}" if "n_class" in obj else \
            "field 'n_class' is missing (expected the number of classes)"
    labels = obj.get("labels")
    if labels is not None:
        if not isinstance(labels, (list, tuple)) or not all(isinstance(v, str) for v in labels):
            return "field 'labels': expected a list of class names (strings)"
        if len(labels) != n_class:
            return f"field 'labels': expected {n_class} names (n_class), got {len(labels)}"
    size = obj.get("input_size", 224)
    if not _is_int(size) or size < 32 or size % 32:
        return f"field 'input_size': expected a positive multiple of 32, got {size!r}"
    for key in ("mean", "std"):
        values = obj.get(key, (0.5, 0.5, 0.5))
        if not isinstance(values, (list, tuple)) or len(values) != 3 or not all(_is_number(v) for v in values):
            return f"field {key!r}: expected 3 finite numbers (one per colour channel), got {values!r}"
    if not all(v > 0 for v in obj.get("std", (1.0,))):
        return f"field 'std': expected 3 positive numbers (a 0 divides by zero), got {obj.get('std')!r}"
    width = obj.get("width_mult", 1.0)
    if not _is_number(width) or width <= 0:
        return f"field 'width_mult': expected a positive number, got {width!r}"
    fold = obj.get("fold_div", 8)
    if not _is_int(fold) or fold < 1:
        return f"field 'fold_div': expected a positive integer, got {fold!r}"
    blocks = obj.get("shift_blocks", ())
    if not isinstance(blocks, (list, tuple)) or not all(_is_int(b) and b >= 0 for b in blocks):
        return f"field 'shift_blocks': expected a list of block indices (integers >= 0), got {blocks!r}"
    extra = obj.get("extra", {})
    if not isinstance(extra, dict):
        return f"field 'extra': expected a dict, got {type(extra).__name__}"
    stride = extra.get("frame_stride")
    if stride is not None and (not _is_number(stride) or stride <= 0):
        return f"field 'extra.frame_stride': expected a finite positive number, got {stride!r}"
    segments = extra.get("segments")
    if segments is not None and (not _is_int(segments) or segments < 1):
        return f"field 'extra.segments': expected a positive integer, got {segments!r}"
    return None


def _non_tensor(state: dict[str, Any]) -> str | None:
    bad = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if bad is None:
        return None
    return f"state_dict[{bad!r}]: expected a tensor, got {type(state[bad]).__name__}"


def convert_offline_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], tuple[int, ...]]:
    """Offline TSN-wrapper keys -> online keys, plus the shifted block indices found.

    ``module.base_model.features.3.conv.0.net.weight`` -> ``features.3.conv.0.weight``;
    ``module.new_fc.*`` -> ``classifier.*``.
    """
    out: dict[str, torch.Tensor] = {}
    shifted: set[int] = set()
    unexpected = []
    for key, value in state.items():
        k = re.sub(r"^module\.", "", key)
        if k.startswith("new_fc."):
            out["classifier." + k[len("new_fc."):]] = value
            continue
        if not k.startswith("base_model."):
            unexpected.append(key)
            continue
        k = k[len("base_model."):]
        m = re.match(r"^features\.(\d+)\.conv\.0\.net\.(.*)$", k)
        if m:
            shifted.add(int(m.group(1)) - 1)  # features[0] is the stem
            k = f"features.{m.group(1)}.conv.0.{m.group(2)}"
        out[k] = value
    if unexpected:
        raise CheckpointError(f"unexpected keys for format upstream-offline: {', '.join(unexpected[:3])}")
    return out, tuple(sorted(shifted))


def _infer_width(state: dict[str, torch.Tensor], n_class: int) -> float:
    """The width multiplier whose layer shapes best match ``state``.

    Best rather than exact, so that a damaged checkpoint still gets the
    closest architecture and the strict comparison names the offending keys.
    """
    def score(width: float) -> int:
        shapes = MobileNetV2TSM(n_class=n_class, width_mult=width).state_dict()
        return sum(1 for k, v in shapes.items() if k in state and tuple(state[k].shape) == tuple(v.shape))
    return max(_KNOWN_WIDTHS, key=score)  # ties keep the earlier (more common) width


def _check_state_dict(model: MobileNetV2TSM, state: dict[str, torch.Tensor], fmt: str) -> None:
    expected = model.state_dict()
    # Checkpoints written by torch < 0.4.1 lack BatchNorm's step counter; it plays no part at inference.
    for key, value in expected.items():
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
    if wrong:
        problems.append(f"shape mismatch: {'; '.join(wrong[:3])}")
    if problems:
        raise CheckpointError(
            f"checkpoint does not fit {ARCH}(n_class={model.n_class}, width_mult={model.width_mult}) "
            f"in format {fmt}: " + "; ".join(problems))


def _resolve_weights(path_or_name: str | os.PathLike) -> tuple[Path, Any]:
    """The checkpoint file for a path or a registry name (fetched into the cache), and its registry entry."""
    from online_tsm import weights  # local: keeps the registry optional for pure-model users

    path = Path(path_or_name)
    if str(path_or_name) == weights.DEFAULT_NAME and not path.exists():
        if weights.default_weights() is None:
            raise CheckpointError("the built-in default model is not shipped in this build "
                                  f"(expected {weights.DEFAULT_ASSET}); pass --weights PATH or 'jester'")
        return weights.DEFAULT_ASSET, None
    if path.exists():
        return path, None
    entry = weights.find_entry(str(path_or_name))
    if entry is None:
        raise CheckpointError(f"no such checkpoint file: {path} (and not a known weights name; known: "
                              f"{', '.join(sorted(weights.WEIGHTS))})")
    return weights.fetch_weights(entry.name), entry


def _read_online_tsm(obj: dict, path: Path) -> tuple[dict, dict[str, Any], int]:
    """State dict, metadata and class count of an online-tsm checkpoint, every field checked."""
    problem = _field_problem(obj)
    if problem:
        raise CheckpointError(f"{path} (format {FORMAT_NAME}): {problem}")
    if obj["version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {obj.get('version')}; this online-tsm reads "
                              f"up to version {FORMAT_VERSION} (upgrade online-tsm)")
    if obj.get("arch") != ARCH:
        raise CheckpointError(f"{path} holds arch {obj.get('arch')!r}; expected {ARCH!r}")
    state = obj.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} (format {FORMAT_NAME}) has no 'state_dict'")
    if _non_tensor(state):
        raise CheckpointError(f"{path} (format {FORMAT_NAME}): {_non_tensor(state)}")
    meta = {k: obj[k] for k in ("labels", "input_size", "mean", "std", "shift_blocks", "fold_div", "width_mult",
                                "extra") if k in obj}
    return state, meta, int(obj["n_class"])


def _read_upstream(obj: dict, path: Path, fmt: str, entry: Any) -> tuple[dict, dict[str, Any], int]:
    """State dict, metadata and class count of an upstream (MIT HAN Lab) checkpoint, offline ones converted."""
    meta: dict[str, Any] = {}
    state = obj.get("state_dict", obj)
    if _non_tensor(state):
        raise CheckpointError(f"{path} (format {fmt}): {_non_tensor(state)}")
    if fmt == "upstream-offline":
        state, found_shift = convert_offline_state_dict(state)
        if found_shift:
            meta["shift_blocks"] = found_shift
        warnings.warn(
            f"{path} is an offline TSM checkpoint trained with a bi-directional shift; streamed one-way "
            "its accuracy drops (retrain or fine-tune with the causal shift for exact streaming)",
            OneWayShiftWarning, stacklevel=3)
    if "classifier.weight" not in state:
        raise CheckpointError(f"missing keys: classifier.weight (format {fmt})")
    ckpt_classes = int(state["classifier.weight"].shape[0])
    meta["width_mult"] = _infer_width(state, ckpt_classes)
    if entry is not None:
        meta.update(labels=list(entry.labels), input_size=entry.input_size, mean=entry.mean, std=entry.std)
    return state, meta, ckpt_classes


def load_model(path_or_name: str | os.PathLike, *, n_class: int | None = None,
               map_location: str | torch.device = "cpu", input_size: int | None = None,
               shift_blocks: Sequence[int] | None = None, replace_classifier: bool = False) -> MobileNetV2TSM:
    """Load a checkpoint in any supported format into an eval-mode :class:`MobileNetV2TSM`.

    ``path_or_name`` is a file or a registry name (see :mod:`online_tsm.weights`).
    ``n_class`` must match the checkpoint unless ``replace_classifier`` (fine-tuning
    to new classes), which keeps the backbone and starts a fresh classifier.
    The returned model carries a :class:`ModelInfo` as ``model.info``.
    """
    path, entry = _resolve_weights(path_or_name)
    obj = _torch_load(path, map_location)
    fmt = detect_checkpoint_format(obj)
    if fmt == "online-tsm":
        state, meta, ckpt_classes = _read_online_tsm(obj, path)
    else:
        state, meta, ckpt_classes = _read_upstream(obj, path, fmt, entry)
    # Weights are half precision in shipped models; the model computes in float32.
    state = {k: (v.float() if torch.is_floating_point(v) else v) for k, v in state.items()}
    target_classes = n_class if n_class is not None else ckpt_classes
    if target_classes != ckpt_classes and not replace_classifier:
        raise CheckpointError(f"shape mismatch: classifier.weight has {ckpt_classes} classes, "
                              f"n_class={n_class} was asked (pass replace_classifier=True to fine-tune)")
    model = MobileNetV2TSM(
        n_class=ckpt_classes, width_mult=float(meta.get("width_mult", 1.0)),
        input_size=int(input_size or meta.get("input_size", 224)),
        shift_blocks=tuple(shift_blocks if shift_blocks is not None else meta.get("shift_blocks", DEFAULT_SHIFT_BLOCKS)),
        fold_div=int(meta.get("fold_div", 8)))
    _check_state_dict(model, state, fmt)
    model.load_state_dict(state)
    labels = list(meta.get("labels") or default_labels(ckpt_classes))
    if target_classes != ckpt_classes:
        model.classifier = torch.nn.Linear(model.classifier.in_features, target_classes)
        model.n_class = target_classes
        labels = default_labels(target_classes)
    model.info = ModelInfo(
        n_class=target_classes, labels=labels, input_size=model.input_size,
        mean=tuple(meta.get("mean", IMAGENET_MEAN)), std=tuple(meta.get("std", IMAGENET_STD)),
        width_mult=model.width_mult, shift_blocks=model.shift_blocks, fold_div=model.fold_div,
        source_format=fmt, extra=dict(meta.get("extra", {})))
    return model.eval()


# -- writing -------------------------------------------------------------------------------

def save_checkpoint(model: MobileNetV2TSM, path: str | os.PathLike, *, fmt: str = FORMAT_NAME,
                    labels: Sequence[str] | None = None, half: bool = False,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` in format ``fmt``; ``half`` stores float tensors as float16 (ours only)."""
    if fmt not in CHECKPOINT_FORMATS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; expected one of {', '.join(CHECKPOINT_FORMATS)}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "upstream-online":
        _atomic_save(state, path)
        return path
    if fmt == "upstream-offline":
        shifted = {f"features.{b + 1}.conv.0." for b in model.shift_blocks}
        out = {}
        for k, v in state.items():
            if k.startswith("classifier."):
                out["module.new_fc." + k[len("classifier."):]] = v
                continue
            prefix = next((p for p in shifted if k.startswith(p)), None)
            if prefix:
                k = prefix + "net." + k[len(prefix):]
            out["module.base_model." + k] = v
        _atomic_save({"epoch": 0, "arch": "mobilenetv2", "state_dict": out}, path)
        return path
    if half:
        state = {k: (v.half() if torch.is_floating_point(v) else v) for k, v in state.items()}
    info = model_info(model, labels)
    payload = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "state_dict": state}
    meta = asdict(info)
    meta.pop("source_format")
    meta["mean"], meta["std"] = list(info.mean), list(info.std)
    meta["shift_blocks"] = list(info.shift_blocks)
    meta["extra"] = dict(extra or info.extra)
    payload.update(meta)
    _atomic_save(payload, path)
    return path


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary name, then rename: a run killed mid-save keeps the previous best.pt whole."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
