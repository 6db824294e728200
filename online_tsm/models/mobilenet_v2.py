"""MobileNetV2 with online temporal shift, key-compatible with the upstream online demo.

The module tree (``features.N.conv.M``, ``classifier``) mirrors
``online_demo/mobilenet_v2_tsm.py`` of mit-han-lab/temporal-shift-module so
that the published ``mobilenetv2_jester_online.pth.tar`` loads unchanged.
The shift itself lives in :mod:`online_tsm.shift`; blocks only decide where
it is applied (on the residual branch: ``x + conv(shift(x))``).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from online_tsm.shift import SHIFT_MODES, fold_size, shift_clip, shift_online

# Every stride-1 residual block of MobileNetV2 (block indices, 0-based), as in the upstream demo.
DEFAULT_SHIFT_BLOCKS: tuple[int, ...] = (2, 4, 5, 7, 8, 9, 11, 12, 14, 15)

# t (expansion), c (channels), n (repeats), s (stride) -- the MobileNetV2 paper's table.
_INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(x: float, divisible_by: int = 8) -> int:
    """Round channel counts up to a multiple of 8, as upstream does for width multipliers."""
    return int(math.ceil(x * 1.0 / divisible_by) * divisible_by)


def _conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU6(inplace=True))


def _conv_1x1_bn(inp: int, oup: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """MobileNetV2 block; with ``shift=True`` its residual branch sees the shifted input."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, shift: bool = False,
                 fold_div: int = 8) -> None:
        super().__init__()
        hidden_dim = int(inp * expand_ratio)
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        self.shift = shift
        self.fold_div = fold_div
        self.fold = fold_size(inp, fold_div)
        if shift and not (self.use_res_connect and expand_ratio > 1):
            raise ValueError("a shifted block must be a stride-1 residual block with expansion > 1")
        if shift and self.fold == 0:
            raise ValueError(f"block with {inp} channels is too narrow to shift with fold_div={fold_div}")
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [nn.Conv2d(inp, hidden_dim, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden_dim),
                       nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden_dim, hidden_dim, 3, stride, 1, groups=hidden_dim, bias=False),
            nn.BatchNorm2d(hidden_dim),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Plain (unshifted) block: the TSN path and every non-shift block."""
        return x + self.conv(x) if self.use_res_connect else self.conv(x)

    def forward_online(self, x: torch.Tensor, buffer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shifted, new_buffer = shift_online(x, buffer)
        return x + self.conv(shifted), new_buffer

    def forward_clip(self, x: torch.Tensor, n_frames: int, mode: str) -> torch.Tensor:
        return x + self.conv(shift_clip(x, n_frames, mode, self.fold_div))


class MobileNetV2TSM(nn.Module):
    """Online TSM MobileNetV2.

    Per frame: ``model(frame, *buffers) -> (logits, *new_buffers)`` with
    ``frame`` ``[B, 3, H, W]`` and one buffer per shifted block (see
    :meth:`buffer_shapes`).  Per clip: :meth:`forward_clip`.  With
    ``shift_blocks=()`` the same weights form the TSN baseline.
    """

    def __init__(self, n_class: int = 27, width_mult: float = 1.0, input_size: int = 224,
                 shift_blocks: Sequence[int] = DEFAULT_SHIFT_BLOCKS, fold_div: int = 8) -> None:
        super().__init__()
        if input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32, got {input_size}")
        if n_class <= 0:
            raise ValueError(f"n_class must be positive, got {n_class}")
        self.n_class = n_class
        self.width_mult = width_mult
        self.input_size = input_size
        self.fold_div = fold_div
        self.shift_blocks = tuple(sorted(int(b) for b in shift_blocks))
        input_channel = 32  # the first layer is always 32 channels upstream
        last_channel = make_divisible(1280 * width_mult) if width_mult > 1.0 else 1280
        features: list[nn.Module] = [_conv_bn(3, input_channel, 2)]
        block_idx = 0
        for t, c, n, s in _INVERTED_RESIDUAL_SETTING:
            output_channel = make_divisible(c * width_mult) if t > 1 else c
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t,
                                                 shift=block_idx in self.shift_blocks, fold_div=fold_div))
                input_channel = output_channel
                block_idx += 1
        unknown = [b for b in self.shift_blocks if b >= block_idx or b < 0]
        if unknown:
            raise ValueError(f"shift_blocks {unknown} out of range: MobileNetV2 has blocks 0..{block_idx - 1}")
        features.append(_conv_1x1_bn(input_channel, last_channel))
        self.features = nn.ModuleList(features)
        self.classifier = nn.Linear(last_channel, n_class)
        self._initialize_weights()

    # -- buffers ---------------------------------------------------------------------------
    @property
    def shifted_blocks(self) -> list[InvertedResidual]:
        return [f for f in self.features if isinstance(f, InvertedResidual) and f.shift]

    def buffer_shapes(self, batch: int = 1, input_size: int | None = None) -> list[tuple[int, int, int, int]]:
        """Shapes of the shift buffers, in the order ``forward`` takes them."""
        size = input_size or self.input_size
        shapes = []
        spatial = size // 2  # after the stride-2 stem
        for f in self.features[1:-1]:
            if f.shift:
                shapes.append((batch, f.fold, spatial, spatial))
            spatial = (spatial + f.stride - 1) // f.stride  # 3x3 conv, padding 1
        return shapes

    def init_buffers(self, batch: int = 1, device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32, input_size: int | None = None) -> list[torch.Tensor]:
        """Zero shift buffers: the state of a stream before its first frame."""
        return [torch.zeros(s, device=device, dtype=dtype) for s in self.buffer_shapes(batch, input_size)]

    # -- forward ---------------------------------------------------------------------------
    def forward(self, frame: torch.Tensor, *buffers: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One streaming step: ``(logits, *new_buffers)``."""
        if len(buffers) != len(self.shift_blocks):
            raise ValueError(f"expected {len(self.shift_blocks)} shift buffers, got {len(buffers)}")
        x = frame
        new_buffers = []
        it = iter(buffers)
        for f in self.features:
            if isinstance(f, InvertedResidual) and f.shift:
                x, b = f.forward_online(x, next(it))
                new_buffers.append(b)
            else:
                x = f(x)
        return (self._head(x), *new_buffers)

    def forward_clip(self, clip: torch.Tensor, shift: str = "causal") -> torch.Tensor:
        """Clip model ``[B, T, 3, H, W] -> [B, T, n_class]``: training and verification path.

        ``causal`` equals streaming frame by frame; ``bidirectional`` is offline
        TSM; ``none`` is the TSN baseline.
        """
        if shift not in SHIFT_MODES:
            raise ValueError(f"unknown shift mode {shift!r}; expected one of {', '.join(SHIFT_MODES)}")
        if clip.dim() != 5 or clip.shape[2] != 3:
            raise ValueError(f"expected a clip [B, T, 3, H, W], got shape {tuple(clip.shape)}")
        b, t = clip.shape[:2]
        x = clip.reshape(b * t, *clip.shape[2:])
        for f in self.features:
            if isinstance(f, InvertedResidual) and f.shift:
                x = f.forward_clip(x, t, shift)
            else:
                x = f(x)
        return self._head(x).view(b, t, -1)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x.mean(3).mean(2))

    def _initialize_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / n))
                if m.bias is not None:
                    m.bias.data.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.weight.data.normal_(0, 0.01)
                m.bias.data.zero_()
