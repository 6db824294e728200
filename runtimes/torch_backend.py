"""PyTorch eager backend: the reference every other backend is compared with.

Buffers stay torch tensors between steps, under ``inference_mode``; only the
logits are converted to numpy.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch

from online_tsm.checkpoint import load_model
from online_tsm.models import MobileNetV2TSM
from online_tsm.preprocess import IMAGENET_MEAN, IMAGENET_STD
from online_tsm.runtimes.base import Runtime


class TorchRuntime(Runtime):
    backend = "torch"

    def __init__(self, weights: str | os.PathLike | MobileNetV2TSM, *, device: str = "cpu",
                 threads: int | None = None, input_size: int | None = None) -> None:
        model = weights if isinstance(weights, MobileNetV2TSM) else load_model(weights, input_size=input_size)
        if threads:
            torch.set_num_threads(threads)
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        info = getattr(model, "info", None)
        labels = info.labels if info else [f"class_{i}" for i in range(model.n_class)]
        size = model.input_size
        super().__init__(labels=labels, input_size=size, frame_shape=(1, 3, size, size),
                         mean=info.mean if info else IMAGENET_MEAN, std=info.std if info else IMAGENET_STD,
                         description=f"PyTorch {torch.__version__} eager on {device}")

    def _zero_state(self, batch: int) -> list[torch.Tensor]:
        return self.model.init_buffers(batch, device=self.device)

    def _run(self, frames: np.ndarray, state: list[torch.Tensor]) -> tuple[np.ndarray, list[torch.Tensor]]:
        with torch.inference_mode():
            logits, *new_state = self.model(torch.from_numpy(frames).to(self.device), *state)
        return logits.float().cpu().numpy(), new_state

    def _gather(self, states: Sequence[list[torch.Tensor]]) -> list[torch.Tensor]:
        return [torch.cat(parts, 0) for parts in zip(*states)]

    def _scatter(self, state: list[torch.Tensor], n: int) -> list[Any]:
        return [list(parts) for parts in zip(*(b.split(1, 0) for b in state))] if state else [[] for _ in range(n)]
