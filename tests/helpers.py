"""Test helpers (not fixtures): seeded models with non-trivial BatchNorm statistics."""
from __future__ import annotations

import torch

from online_tsm.models import MobileNetV2TSM


def seeded_model(seed: int = 0, **kwargs) -> MobileNetV2TSM:
    """A model whose every parameter and BN statistic is random but reproducible.

    The default initialisation gives near-zero logits, which would make any
    parity test pass trivially; random BN statistics and a wider classifier
    make logits of order 1-10.
    """
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
            elif tensor.dim() == 1:  # BN weight
                tensor.copy_(torch.rand(tensor.shape, generator=gen) * 0.5 + 0.75)
            else:
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
    return model.eval()


def random_clip(batch: int, frames: int, size: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 3, size, size, generator=gen)
