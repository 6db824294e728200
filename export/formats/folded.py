"""Pre-processing folded into the graph: the device feeds raw camera frames.

``--fold-preprocess`` wraps the model in :class:`FoldedPreprocess`, whose
per-frame input is ``uint8 [1, H, W, 3]`` at a stated camera size (BGR as
OpenCV delivers it, or RGB).  Inside the graph: colour order, shorter-side
bilinear resize (half-pixel centres, as OpenCV's INTER_LINEAR), centre crop
and mean/std normalisation -- the same steps as
:func:`online_tsm.preprocess.preprocess_frame`, so a device needs no numpy.

The resize is written as two gathers with constant indices and a two-tap
blend with constant weights (per axis, only for the cropped pixels), not as
an ONNX ``Resize``: runtimes compute ``Resize``'s source coordinates each in
their own way (ONNX Runtime, TVM, TensorRT), and the last-bit differences,
multiplied by pixel values up to 255, made exported graphs miss the 1e-4
parity check for some weights.  Gathers and elementwise blends give the same
numbers everywhere, and cost 4 multiply-adds per pixel.

Not bit-exact with OpenCV: OpenCV resizes uint8 images with fixed-point
weights and rounds each resized pixel to an integer level, while the graph
keeps the float value (up to half a grey level apart, ~0.009 after
normalisation); the tests state the resulting tolerance on the logits.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from online_tsm.preprocess import COLOR_ORDERS, resize_size

DEFAULT_CAMERA_SIZE = (240, 320)  # (height, width): the paper's demo camera


def parse_camera_size(text: str) -> tuple[int, int]:
    """``"240x320"`` (height x width) -> ``(240, 320)``."""
    try:
        h, w = (int(v) for v in str(text).lower().replace("*", "x").split("x"))
    except ValueError:
        raise ValueError(f"camera size must look like HEIGHTxWIDTH (e.g. 240x320), got {text!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"camera size must be positive, got {text!r}")
    return h, w


def resized_shape(camera_hw: Sequence[int], input_size: int) -> tuple[int, int]:
    """Size after the shorter-side resize, rounded like :func:`online_tsm.preprocess.resize_shorter_side`."""
    h, w = camera_hw
    size = resize_size(input_size)
    if h <= w:
        return size, max(1, int(round(w * size / h)))
    return max(1, int(round(h * size / w))), size


def _bilinear_taps(source: int, resized: int, crop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per output pixel of the centred ``crop`` of a ``source -> resized`` bilinear resize along one axis:
    the two source indices and the weight of the second (half-pixel centres, clamped at the edges, as
    OpenCV's INTER_LINEAR and ``F.interpolate(align_corners=False)``)."""
    start = (resized - crop) // 2
    dst = torch.arange(start, start + crop, dtype=torch.float64)
    src = ((dst + 0.5) * (source / resized) - 0.5).clamp(min=0.0)
    first = src.floor().long().clamp(max=source - 1)
    second = (first + 1).clamp(max=source - 1)
    weight = (src - first.double()).clamp(0.0, 1.0).float()
    return first, second, weight


class FoldedPreprocess(nn.Module):
    """``model`` behind a raw-frame front end: ``(uint8 [1,H,W,3], *buffers) -> (logits, *buffers)``."""

    def __init__(self, model: nn.Module, camera_hw: Sequence[int], color_order: str = "bgr",
                 mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225)) -> None:
        super().__init__()
        if color_order not in COLOR_ORDERS:
            raise ValueError(f"color_order must be one of {COLOR_ORDERS}, got {color_order!r}")
        self.model = model
        self.camera_hw = (int(camera_hw[0]), int(camera_hw[1]))
        self.color_order = color_order
        self.input_size = int(model.input_size)
        self.resized = resized_shape(self.camera_hw, self.input_size)
        if min(self.resized) < self.input_size:
            raise ValueError(f"camera size {self.camera_hw} resizes to {self.resized}, smaller than the "
                             f"{self.input_size} crop")
        rows = _bilinear_taps(self.camera_hw[0], self.resized[0], self.input_size)
        cols = _bilinear_taps(self.camera_hw[1], self.resized[1], self.input_size)
        for axis, (first, second, weight), shape in (("row", rows, (1, 1, -1, 1)), ("col", cols, (1, 1, 1, -1))):
            self.register_buffer(f"{axis}_first", first)
            self.register_buffer(f"{axis}_second", second)
            self.register_buffer(f"{axis}_weight", weight.view(shape))
        scale = [1.0 / (255.0 * s) for s in std]
        offset = [255.0 * m for m in mean]
        self.register_buffer("offset", torch.tensor(offset, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, frame: torch.Tensor, *buffers: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = frame.permute(0, 3, 1, 2).to(torch.float32)          # NHWC uint8 -> NCHW float
        if self.color_order == "bgr":
            x = torch.flip(x, dims=[1])                            # -> RGB, the order the model was trained in
        # resize + centre crop in one (see the module docstring); no rounding back to integer levels, which
        # would flip at .5 between runtimes
        top = x.index_select(2, self.row_first)
        x = top + (x.index_select(2, self.row_second) - top) * self.row_weight
        left = x.index_select(3, self.col_first)
        x = left + (x.index_select(3, self.col_second) - left) * self.col_weight
        x = (x - self.offset) * self.scale
        return self.model(x, *buffers)
