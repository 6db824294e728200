"""Reproducible untrained models whose logits are large enough to mean something.

The stock initialisation, run in eval mode, shrinks the signal to nothing
(logits ~1e-9, every class at 1/n_class): a parity check on such a model
passes trivially and a demo overlay never moves.  He-scaled weights and random
BatchNorm statistics keep logits of order 1-10.  Tests, the demo without
trained weights and the benchmark's paper-setting stand-in all use this one
recipe, so a seed names the same weights everywhere.
"""
from __future__ import annotations

from typing import Any

import torch

from online_tsm.models.mobilenet_v2 import MobileNetV2TSM


def seeded_model(seed: int = 0, **kwargs: Any) -> MobileNetV2TSM:
    """``MobileNetV2TSM(**kwargs)`` in eval mode with every parameter and BN statistic drawn from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    model = MobileNetV2TSM(**kwargs)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not torch.is_floating_point(tensor):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) * 0.5 + 0.75)
            elif name.endswith("running_mean") or name.endswith(".bias"):
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
            elif tensor.dim() == 1:  # BatchNorm weight
                tensor.copy_(torch.rand(tensor.shape, generator=gen) * 0.5 + 0.75)
            else:
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
    return model.eval()
