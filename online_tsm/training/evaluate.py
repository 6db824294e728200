"""Accuracy of a clip model, in clip mode and streamed frame by frame, and the confusion matrix.

Clip mode averages the per-frame logits of ``forward_clip`` (TSN consensus);
streaming feeds the same sampled frames one at a time with the shift
buffers carried and averages the same per-frame logits.  For a causal model
the two must agree: that is the promise of online TSM, checked on real data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from online_tsm.models import MobileNetV2TSM

EVAL_MODES = ("clip", "stream")


@dataclass
class EvalResult:
    """Per-clip averaged logits and true labels of one pass over a data set."""

    logits: np.ndarray  # [N, n_class]
    labels: np.ndarray  # [N]

    def topk(self, k: int) -> float:
        return topk_accuracy(self.logits, self.labels, k)

    @property
    def top1(self) -> float:
        return self.topk(1)

    @property
    def top5(self) -> float:
        return self.topk(5)

    def confusion(self, n_class: int | None = None) -> np.ndarray:
        return confusion_matrix(self.logits.argmax(1), self.labels, n_class or self.logits.shape[1])


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose true label is among the ``k`` largest logits (``k`` capped at the class count)."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1)[:, :k]
    return float(np.mean([labels[i] in top[i] for i in range(len(labels))]))


def pair_accuracy(logits: np.ndarray, labels: np.ndarray, a: int, b: int) -> float:
    """Among clips of class ``a`` or ``b``: how often the logit of the true one beats the other.

    The measure of direction for the synthetic set: 0.5 is chance, whatever
    the model thinks of the other classes.
    """
    rows = np.flatnonzero((labels == a) | (labels == b))
    if len(rows) == 0:
        return float("nan")
    other = np.where(labels[rows] == a, b, a)
    return float(np.mean(logits[rows, labels[rows]] > logits[rows, other]))


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, n_class: int) -> np.ndarray:
    """``[true, predicted]`` counts."""
    out = np.zeros((n_class, n_class), np.int64)
    np.add.at(out, (labels.astype(np.int64), predicted.astype(np.int64)), 1)
    return out


@torch.no_grad()
def clip_logits(model: MobileNetV2TSM, clips: torch.Tensor, shift: str) -> torch.Tensor:
    """``[B, T, 3, S, S]`` -> clip logits ``[B, n_class]`` (mean over frames)."""
    return model.forward_clip(clips, shift).mean(1)


@torch.no_grad()
def stream_logits(model: MobileNetV2TSM, clips: torch.Tensor) -> torch.Tensor:
    """The same clips streamed frame by frame with shift buffers (a batch of streams at once)."""
    buffers = model.init_buffers(clips.shape[0], input_size=clips.shape[-1])
    total = torch.zeros(clips.shape[0], model.n_class)
    for t in range(clips.shape[1]):
        logits, *buffers = model(clips[:, t], *buffers)
        total += logits
    return total / clips.shape[1]


def evaluate(model: MobileNetV2TSM, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             modes: Sequence[str] = ("clip",), shift: str = "causal", progress: bool = False,
             total: int | None = None, desc: str = "eval") -> dict[str, EvalResult]:
    """One pass over ``batches``; a result per mode (``clip`` uses ``shift``, ``stream`` is always causal)."""
    unknown = set(modes) - set(EVAL_MODES)
    if unknown:
        raise ValueError(f"unknown evaluation mode(s) {sorted(unknown)}; expected {', '.join(EVAL_MODES)}")
    model.eval()
    out: dict[str, list[np.ndarray]] = {m: [] for m in modes}
    labels = []
    for clips, y in tqdm(batches, total=total, desc=desc, disable=not progress, leave=False, unit="batch"):
        for mode in modes:
            logits = clip_logits(model, clips, shift) if mode == "clip" else stream_logits(model, clips)
            out[mode].append(logits.float().numpy())
        labels.append(np.asarray(y))
    y_all = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    n_class = model.n_class
    return {m: EvalResult(np.concatenate(v) if v else np.zeros((0, n_class), np.float32), y_all)
            for m, v in out.items()}


# -- confusion matrix picture --------------------------------------------------------------

def draw_confusion(matrix: np.ndarray, labels: Sequence[str], title: str = "") -> np.ndarray:
    """A BGR picture of a confusion matrix: rows are true classes, columns predictions, shades row-normalised.

    Drawn with OpenCV, so the toolkit needs no plotting library.
    """
    n = len(labels)
    cell = 44 if n <= 12 else max(14, 520 // n)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.45 if cell >= 30 else 0.32
    text_w = max(cv2.getTextSize(f"{i}: {name}", font, scale, 1)[0][0] for i, name in enumerate(labels)) + 12
    top, left = 40 + (20 if title else 0), text_w
    height, width = top + n * cell + 10, left + n * cell + 10
    image = np.full((height, width, 3), 255, np.uint8)
    if title:
        cv2.putText(image, title, (8, 20), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    rows = matrix.sum(1, keepdims=True).clip(min=1)
    share = matrix / rows
    for i in range(n):
        cv2.putText(image, f"{i}: {labels[i]}", (4, top + i * cell + cell // 2 + 5), font, scale, (0, 0, 0), 1,
                    cv2.LINE_AA)
        tw = cv2.getTextSize(str(i), font, scale, 1)[0][0]
        cv2.putText(image, str(i), (left + i * cell + (cell - tw) // 2, top - 8), font, scale, (0, 0, 0), 1,
                    cv2.LINE_AA)
        for j in range(n):
            shade = int(255 * (1 - share[i, j]))
            color = (shade, shade, 255) if i != j else (shade, 255, shade)  # BGR: errors red, hits green
            x0, y0 = left + j * cell, top + i * cell
            cv2.rectangle(image, (x0, y0), (x0 + cell - 1, y0 + cell - 1), color, -1)
            cv2.rectangle(image, (x0, y0), (x0 + cell - 1, y0 + cell - 1), (200, 200, 200), 1)
            if matrix[i, j] and cell >= 24:
                txt = str(int(matrix[i, j]))
                size = cv2.getTextSize(txt, font, scale * 0.9, 1)[0]
                ink = (255, 255, 255) if share[i, j] > 0.6 else (0, 0, 0)
                cv2.putText(image, txt, (x0 + (cell - size[0]) // 2, y0 + (cell + size[1]) // 2), font,
                            scale * 0.9, ink, 1, cv2.LINE_AA)
    return image


def save_confusion(matrix: np.ndarray, labels: Sequence[str], path: str | Path, title: str = "") -> Path:
    from online_tsm.fileio import atomic_write

    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix or ".png", draw_confusion(matrix, labels, title))
    if not ok:
        raise OSError(f"could not encode the confusion matrix image {path} (an image suffix such as .png?)")
    return atomic_write(path, encoded.tobytes())
