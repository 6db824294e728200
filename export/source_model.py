"""The model an export starts from: weights (a file, a registry name, or a model object) at the asked size.

``tsm-export`` takes what a user has: a checkpoint in any supported format,
the name of registered weights, or a :class:`MobileNetV2TSM` built in Python.
The same weights can be exported at another input size, or without the
shift (the TSN baseline a benchmark compares with).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from online_tsm.errors import UserError
from online_tsm.models import MobileNetV2TSM

SHIFT_CHOICES = ("causal", "none")


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


def model_name(weights_or_model: Any) -> str:
    """The name an artifact's manifest gives the model: a registry name, or a checkpoint file's stem."""
    if isinstance(weights_or_model, MobileNetV2TSM):
        return "online-tsm"
    text = str(weights_or_model)
    return Path(text).stem.split(".")[0] if os.sep in text or Path(text).suffix else text
