"""Drawing the demo's overlay: label, confidence, top-3, frame rates, dropped frames.

Pure functions of an image and a small state record, so the window, the
video writer and the screenshot in the README draw exactly the same thing.
Sizes are relative to a 640-pixel-wide frame and scale with the image.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE, GREY, GREEN, AMBER, RED = (255, 255, 255), (190, 190, 190), (80, 220, 80), (0, 190, 255), (60, 60, 230)


@dataclass
class OverlayState:
    label: str | None                          # shown (smoothed) class; None before the first prediction
    confidence: float = 0.0
    top: Sequence[tuple[str, float]] = field(default_factory=list)
    video_fps: float = 0.0
    model_fps: float = 0.0
    backend: str = ""
    dropped: int = 0
    every: int = 1
    warning: str = ""                          # e.g. "untrained weights": drawn in red, top right
    ignored: frozenset[str] = frozenset()      # classes never shown: greyed out in the top-3


def fit_width(image: np.ndarray, width: int) -> np.ndarray:
    """Resize to ``width`` pixels wide keeping the aspect ratio (``0`` or same width: unchanged)."""
    h, w = image.shape[:2]
    if width <= 0 or width == w:
        return image
    interp = cv2.INTER_AREA if width < w else cv2.INTER_LINEAR
    return cv2.resize(image, (width, max(1, round(h * width / w))), interpolation=interp)


def _shade(image: np.ndarray, x0: int, y0: int, x1: int, y1: int, alpha: float = 0.55) -> None:
    """Darken a rectangle in place so that text stays readable on any background."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 > x0 and y1 > y0:
        region = image[y0:y1, x0:x1]
        region[:] = (region.astype(np.float32) * (1 - alpha)).astype(np.uint8)


def _text(image: np.ndarray, text: str, org: tuple[int, int], scale: float, color: tuple[int, int, int],
          thickness: int = 1) -> None:
    cv2.putText(image, text, org, FONT, scale, color, thickness, cv2.LINE_AA)


def draw_overlay(image: np.ndarray, state: OverlayState) -> np.ndarray:
    """A copy of ``image`` (uint8 BGR) with the overlay drawn on it."""
    out = np.ascontiguousarray(image).copy()
    h, w = out.shape[:2]
    s = w / 640.0
    pad, line = int(10 * s), int(22 * s)

    # top-left panel: shown class, its confidence, then the top-3 with bars
    rows = 2 + len(state.top)
    panel_w = int(min(w, 330 * s))
    _shade(out, 0, 0, panel_w, pad + int(36 * s) + rows * line)
    label = state.label if state.label is not None else "..."
    _text(out, label, (pad, pad + int(26 * s)), 0.8 * s, GREEN if state.label else GREY, max(1, round(2 * s)))
    y = pad + int(26 * s) + line
    _text(out, f"confidence {state.confidence:.0%}", (pad, y), 0.5 * s, WHITE)
    bar_w = int(90 * s)
    for name, p in state.top:
        y += line
        x_bar = pad
        cv2.rectangle(out, (x_bar, y - int(11 * s)), (x_bar + bar_w, y + int(2 * s)), GREY, 1)
        cv2.rectangle(out, (x_bar, y - int(11 * s)), (x_bar + int(bar_w * min(1.0, max(0.0, p))), y + int(2 * s)),
                      GREEN if name == state.label else GREY, -1)
        ignored = name in state.ignored
        _text(out, f"{name} {p:.2f}" + (" (ignored)" if ignored else ""), (x_bar + bar_w + int(6 * s), y),
              0.45 * s, GREY if ignored else WHITE)

    # bottom bar: rates, backend, inference stride, dropped frames
    bar_h = int(26 * s)
    _shade(out, 0, h - bar_h, w, h, alpha=0.65)
    parts = [f"video {state.video_fps:4.1f} fps", f"model {state.model_fps:4.1f} fps"]
    if state.backend:
        parts.append(state.backend)
    if state.every > 1:
        parts.append(f"inference every {state.every} frames")
    _text(out, " | ".join(parts), (pad, h - int(8 * s)), 0.45 * s, WHITE)
    if state.dropped:
        text = f"dropped {state.dropped}"
        (tw, _), _ = cv2.getTextSize(text, FONT, 0.45 * s, 1)
        _text(out, text, (w - tw - pad, h - int(8 * s)), 0.45 * s, AMBER)

    if state.warning:
        (tw, th), _ = cv2.getTextSize(state.warning, FONT, 0.5 * s, 1)
        _shade(out, w - tw - 2 * pad, 0, w, th + 2 * pad, alpha=0.7)
        _text(out, state.warning, (w - tw - pad, th + pad), 0.5 * s, RED, 1)
    return out
