"""Pre-processing against an independent computation (torch bilinear resize, explicit loops)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from online_tsm.errors import FrameError
from online_tsm.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess_frame, resize_size


def _reference(frame_rgb: np.ndarray, input_size: int) -> np.ndarray:
    h, w = frame_rgb.shape[:2]
    short = resize_size(input_size)
    new_h, new_w = (short, round(w * short / h)) if h <= w else (round(h * short / w), short)
    x = torch.from_numpy(frame_rgb.astype(np.float32)).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
    top, left = (new_h - input_size) // 2, (new_w - input_size) // 2
    x = x[:, top:top + input_size, left:left + input_size] / 255.0
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return ((x - mean) / std).numpy()


@pytest.mark.parametrize("shape,size", [((240, 320, 3), 224), ((480, 360, 3), 160), ((120, 200, 3), 96)])
def test_matches_reference(shape, size):
    rng = np.random.default_rng(0)
    # Smooth images: the comparison is about geometry and normalisation, not interpolation detail.
    small = rng.integers(0, 256, size=(shape[0] // 8, shape[1] // 8, 3)).astype(np.uint8)
    rgb = np.kron(small, np.ones((8, 8, 1), dtype=np.uint8))
    got = preprocess_frame(rgb[:, :, ::-1].copy(), size, color_order="bgr")
    assert got.shape == (3, size, size) and got.dtype == np.float32 and got.flags["C_CONTIGUOUS"]
    ref = _reference(rgb, size)
    # OpenCV interpolates in 11-bit fixed point and rounds to uint8: within one grey level, divided by std.
    assert np.abs(got - ref).max() <= 1.0 / 255 / min(IMAGENET_STD)
    assert np.abs(got - ref).mean() < 0.01


def test_no_resize_path_is_exact():
    rgb = np.random.default_rng(1).integers(0, 256, size=(256, 300, 3)).astype(np.uint8)
    got = preprocess_frame(rgb, 224, color_order="rgb")
    crop = rgb[16:240, 38:262].astype(np.float64) / 255.0
    expected = ((crop - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1)
    assert np.abs(got - expected).max() < 1e-5


def test_bgr_and_rgb_agree():
    rgb = np.random.default_rng(2).integers(0, 256, size=(256, 256, 3)).astype(np.uint8)
    assert np.array_equal(preprocess_frame(rgb, 224, "rgb"), preprocess_frame(rgb[:, :, ::-1].copy(), 224, "bgr"))


@pytest.mark.parametrize("frame,msg", [
    (np.zeros((240, 320, 3), np.float32), "expected a uint8 image of shape HxWx3, got dtype float32"),
    (np.zeros((240, 320), np.uint8), r"got dtype uint8 and shape \(240, 320\)"),
    (np.zeros((240, 320, 4), np.uint8), r"shape \(240, 320, 4\)"),
])
def test_bad_frames(frame, msg):
    with pytest.raises(FrameError, match=msg):
        preprocess_frame(frame)


def test_bad_type_and_color_order():
    with pytest.raises(FrameError, match="expected a numpy uint8 image"):
        preprocess_frame([[1, 2, 3]])
    with pytest.raises(ValueError, match="color_order must be one of"):
        preprocess_frame(np.zeros((8, 8, 3), np.uint8), 32, color_order="yuv")
