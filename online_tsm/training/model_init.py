"""The model a run starts from, and how its parameters are updated.

A fresh MobileNetV2 TSM starts with its residual branches at zero; an
``--init`` checkpoint keeps what it learnt of every class the data shares
with it.  The optimiser (SGD with Nesterov momentum, or AdamW) follows a
warm-up and cosine schedule.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from online_tsm.checkpoint import load_model
from online_tsm.models import DEFAULT_SHIFT_BLOCKS, MobileNetV2TSM
from online_tsm.training.config import DEFAULT_LR, TrainConfig


def build_model(cfg: TrainConfig, labels: list[str]) -> tuple[MobileNetV2TSM, str]:
    """A fresh or ``--init`` model for ``labels``, and a phrase saying where it came from."""
    shift_blocks = () if cfg.shift == "none" else None
    n_class = len(labels)
    if cfg.init:
        model = load_model(cfg.init, input_size=cfg.input_size, shift_blocks=shift_blocks)
        if cfg.width is not None and abs(cfg.width - model.width_mult) > 1e-9:
            raise ValueError(f"--width {cfg.width} contradicts --init {cfg.init} (width {model.width_mult}); "
                             "drop --width when fine-tuning")
        old = list(model.info.labels)
        how = f"initialised from {cfg.init}"
        if old == labels:
            how += " (classifier kept: same classes)"
        elif set(labels) <= set(old):
            # Every class is known to the checkpoint (e.g. a subset of Jester's): keep what it learnt of each.
            order = [old.index(name) for name in labels]
            rows = nn.Linear(model.classifier.in_features, n_class)
            with torch.no_grad():
                rows.weight.copy_(model.classifier.weight[order])
                rows.bias.copy_(model.classifier.bias[order])
            model.classifier, model.n_class = rows, n_class
            how += (" (classifier rows reordered to the data's classes)" if n_class == len(old) else
                    f" (classifier: the rows of {n_class} of its {len(old)} classes kept)")
        else:
            model.classifier = nn.Linear(model.classifier.in_features, n_class)
            nn.init.normal_(model.classifier.weight, 0, 0.01)
            nn.init.zeros_(model.classifier.bias)
            model.n_class = n_class
            how += f" (new classifier: {len(old)} -> {n_class} classes)"
        model.info.n_class, model.info.labels = n_class, list(labels)
    else:
        model = MobileNetV2TSM(n_class=n_class, width_mult=cfg.width or 1.0, input_size=cfg.input_size or 224,
                               shift_blocks=DEFAULT_SHIFT_BLOCKS if shift_blocks is None else shift_blocks)
        zero_init_residuals(model)
        how = "random initialisation"
    return model, how


def zero_init_residuals(model: MobileNetV2TSM) -> None:
    """Start every residual branch at zero (its last BatchNorm scale), so each block starts as identity.

    From scratch this trains markedly faster (Goyal et al. 2017's trick for
    ResNets): the signal passes the whole depth from the first step, and the
    shifted channels, which only live on residual branches, grow in as the
    loss asks for them.
    """
    from online_tsm.models.mobilenet_v2 import InvertedResidual

    for block in model.features:
        if isinstance(block, InvertedResidual) and block.use_res_connect:
            nn.init.zeros_(block.conv[-1].weight)


def trainable_parameters(model: MobileNetV2TSM, freeze_backbone: bool) -> list[nn.Parameter]:
    """The parameters the optimiser updates: all of them, or the classifier's with a frozen backbone."""
    for p in model.features.parameters():
        p.requires_grad_(not freeze_backbone)
    return [p for p in model.parameters() if p.requires_grad]


def set_train_mode(model: MobileNetV2TSM, freeze_backbone: bool) -> None:
    """Training mode, except a frozen backbone's BatchNorm layers, whose statistics must stay."""
    model.train()
    if freeze_backbone:
        model.features.eval()  # frozen backbone: keep its BatchNorm statistics too


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine decay to zero at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> tuple[torch.optim.Optimizer, float]:
    """The optimiser of ``cfg`` over ``params``, and its base learning rate."""
    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.optimizer]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay), lr
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay), lr
