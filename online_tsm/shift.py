"""Temporal shift operators: the only place where TSM moves channels in time.

Three views of the same idea (Lin, Gan & Han, ICCV 2019):

* ``shift_bidirectional`` is the *offline* TSM used for training on whole
  clips: part of the channels look one frame ahead, part one frame back.
* ``shift_causal`` is the *online* TSM over a whole clip: part of the channels
  look one frame back only, so the result can be streamed.
* ``shift_online`` is ``shift_causal`` for one frame at a time: the channels
  that would have come from the previous frame are read from a cached *shift
  buffer*, and the current frame's slice is returned to become the next
  frame's buffer.  Streaming ``shift_online`` over a clip equals
  ``shift_causal`` on the clip, which is what makes clip training and frame
  streaming interchangeable.

All shifts move data only; they add no FLOPs.
"""
from __future__ import annotations

import torch

SHIFT_MODES = ("causal", "bidirectional", "none")


def fold_size(channels: int, fold_div: int) -> int:
    """Number of channels moved by one shift direction (``C // fold_div``)."""
    if fold_div <= 0:
        raise ValueError(f"fold_div must be a positive integer, got {fold_div}")
    return channels // fold_div


def _split_clip(x: torch.Tensor, n_frames: int) -> torch.Tensor:
    if x.dim() != 4:
        raise ValueError(f"expected a clip tensor [N*T, C, H, W], got shape {tuple(x.shape)}")
    if n_frames <= 0 or x.shape[0] % n_frames:
        raise ValueError(f"first dimension {x.shape[0]} is not a multiple of n_frames={n_frames}")
    nt, c, h, w = x.shape
    return x.view(nt // n_frames, n_frames, c, h, w)


def shift_bidirectional(x: torch.Tensor, n_frames: int, fold_div: int = 8) -> torch.Tensor:
    """Offline TSM shift over a clip ``[N*T, C, H, W]``.

    Channels ``[:fold]`` take the *next* frame's values, ``[fold:2*fold]`` the
    *previous* frame's, the rest are unchanged; zeros enter at the clip edges.
    """
    clip = _split_clip(x, n_frames)
    fold = fold_size(clip.shape[2], fold_div)
    out = torch.zeros_like(clip)
    out[:, :-1, :fold] = clip[:, 1:, :fold]
    out[:, 1:, fold:2 * fold] = clip[:, :-1, fold:2 * fold]
    out[:, :, 2 * fold:] = clip[:, :, 2 * fold:]
    return out.view_as(x)


def shift_causal(x: torch.Tensor, n_frames: int, fold_div: int = 8) -> torch.Tensor:
    """Uni-directional (online-compatible) shift over a clip ``[N*T, C, H, W]``.

    Channels ``[:fold]`` take the *previous* frame's values (zeros for the first
    frame); the rest are unchanged.
    """
    clip = _split_clip(x, n_frames)
    fold = fold_size(clip.shape[2], fold_div)
    out = torch.zeros_like(clip)
    out[:, 1:, :fold] = clip[:, :-1, :fold]
    out[:, :, fold:] = clip[:, :, fold:]
    return out.view_as(x)


def shift_online(x: torch.Tensor, buffer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift one frame ``[B, C, H, W]`` using the previous frame's cached slice.

    Returns ``(shifted, new_buffer)`` where ``shifted = cat(buffer, x[:, fold:])``
    and ``new_buffer = x[:, :fold]``; ``fold`` is the buffer's channel count.
    """
    fold = buffer.shape[1]
    return torch.cat((buffer, x[:, fold:]), dim=1), x[:, :fold]


def shift_clip(x: torch.Tensor, n_frames: int, mode: str, fold_div: int = 8) -> torch.Tensor:
    """Dispatch to the clip shift named by ``mode`` (``causal``, ``bidirectional``, ``none``)."""
    if mode == "causal":
        return shift_causal(x, n_frames, fold_div)
    if mode == "bidirectional":
        return shift_bidirectional(x, n_frames, fold_div)
    if mode == "none":
        return x
    raise ValueError(f"unknown shift mode {mode!r}; expected one of {', '.join(SHIFT_MODES)}")
