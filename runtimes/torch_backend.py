"""PyTorch eager backend: the reference every other backend is compared with.

Buffers stay torch tensors between steps, under ``inference_mode``; only the
logits are converted to numpy.  ``step_many`` concatenates the streams'
buffers along the batch dimension, runs one batch and splits the new
buffers back (views into the batched outputs, no copies).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from online_tsm.checkpoint import load_model
from online_tsm.manifest import MANIFEST_NAME
from online_tsm.models import MobileNetV2TSM
from online_tsm.preprocess import IMAGENET_MEAN, IMAGENET_STD
from online_tsm.runtimes.base import Runtime, RuntimeOpenError


class TorchRuntime(Runtime):
    backend = "torch"

    def __init__(self, weights: str | os.PathLike | MobileNetV2TSM, *, device: str = "cpu",
                 threads: int | None = None, input_size: int | None = None) -> None:
        if isinstance(weights, (str, os.PathLike)) and (Path(weights).is_dir() or Path(weights).name == MANIFEST_NAME):
            raise RuntimeOpenError(f"backend torch runs a checkpoint (file or weights name), got the export folder "
                                   f"{weights}; open it with backend onnxruntime, tvm or auto")
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
                         description=f"PyTorch {torch.__version__} eager on {device} "
                                     f"({torch.get_num_threads()} threads)")

    def _zero_state(self) -> list[torch.Tensor]:
        return self.model.init_buffers(1, device=self.device)

    def _run(self, frames: np.ndarray, state: list[torch.Tensor]) -> tuple[np.ndarray, list[torch.Tensor]]:
        with torch.inference_mode():
            logits, *new_state = self.model(torch.from_numpy(frames).to(self.device), *state)
        return logits.float().cpu().numpy(), new_state

    def _run_many(self, frames: np.ndarray, states: list[list[torch.Tensor]]) -> tuple[np.ndarray, list]:
        with torch.inference_mode():
            gathered = [torch.cat(parts, 0) for parts in zip(*states)]
            logits, *new_state = self.model(torch.from_numpy(frames).to(self.device), *gathered)
            scattered = [list(parts) for parts in zip(*(b.split(1, 0) for b in new_state))] \
                if new_state else [[] for _ in states]
        return logits.float().cpu().numpy(), scattered
