"""Frame pre-processing without torchvision: uint8 HxWx3 -> normalised float32 CHW.

Mirrors the upstream demo's GroupScale(256) + GroupCenterCrop(224) +
ToTorchFormatTensor + GroupNormalize, scaled for other input sizes
(shorter side to ``input_size * 256 / 224``).  OpenCV does the resize
(bilinear, like PIL's default in the demo); numpy does the rest.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from online_tsm.errors import FrameError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
COLOR_ORDERS = ("bgr", "rgb")


def resize_size(input_size: int) -> int:
    """Length of the shorter side before the centre crop (256 for a 224 model)."""
    return int(round(input_size * 256 / 224))


def resize_shorter_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so that the shorter side is ``size`` pixels, keeping the aspect ratio."""
    h, w = image.shape[:2]
    if h <= w:
        new_h, new_w = size, max(1, int(round(w * size / h)))
    else:
        new_h, new_w = max(1, int(round(h * size / w))), size
    if (new_h, new_w) == (h, w):
        return image
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Central ``size`` x ``size`` window (the shorter side must already be >= size)."""
    h, w = image.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return image[top:top + size, left:left + size]


def check_frame(frame: np.ndarray) -> None:
    """Reject anything but a non-empty uint8 HxWx3 image with one clear :class:`FrameError` line.

    A camera that hiccups can hand over a 0xW image; caught here it is one
    line instead of a division by zero deep in the resize.
    """
    if not isinstance(frame, np.ndarray):
        raise FrameError(f"expected a numpy uint8 image of shape HxWx3, got {type(frame).__name__}")
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise FrameError(f"expected a uint8 image of shape HxWx3, got dtype {frame.dtype} and shape {frame.shape}")
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise FrameError(f"expected a uint8 image of shape HxWx3 with H and W >= 1, got shape {frame.shape}")


def preprocess_frame(frame: np.ndarray, input_size: int = 224, color_order: str = "bgr",
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """uint8 HxWx3 (``bgr`` as OpenCV reads it, or ``rgb``) -> float32 ``[3, S, S]`` in RGB order."""
    check_frame(frame)
    if color_order not in COLOR_ORDERS:
        raise ValueError(f"color_order must be one of {COLOR_ORDERS}, got {color_order!r}")
    image = resize_shorter_side(frame, resize_size(input_size))
    image = center_crop(image, input_size)
    if color_order == "bgr":
        image = image[:, :, ::-1]
    scale = 1.0 / (255.0 * np.asarray(std, dtype=np.float32))
    out = (image.astype(np.float32) - 255.0 * np.asarray(mean, dtype=np.float32)) * scale
    return np.ascontiguousarray(out.transpose(2, 0, 1))
