"""Frame transforms for training and evaluation that keep the direction of motion.

Every random choice is made once per clip and applied to all its frames, so
augmentation changes how a clip looks, never how it moves.  Horizontal flips
mirror motion, so they are off unless the labels of mirrored classes are
swapped with them (:func:`flip_label_map`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from online_tsm.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess_frame

# Words whose meaning a horizontal mirror swaps.
_MIRRORED_WORDS = (("Left", "Right"), ("Clockwise", "Counterclockwise"))


def flip_label_map(labels: Sequence[str]) -> list[int]:
    """For each class, the class a horizontally mirrored clip belongs to.

    ``Swiping Left`` <-> ``Swiping Right``, ``Turning Hand Clockwise`` <->
    ``... Counterclockwise``; classes without such a word map to themselves
    (mirroring an up/down swipe or a zoom does not change it).  A class with
    such a word whose partner is missing cannot be mirrored: it raises.
    """
    index = {name: i for i, name in enumerate(labels)}
    out = []
    for name in labels:
        mirrored = name
        for a, b in _MIRRORED_WORDS:
            if re.search(rf"\b{a}\b", name, re.IGNORECASE):
                mirrored = re.sub(rf"\b{a}\b", b, name, flags=re.IGNORECASE)
                break
            if re.search(rf"\b{b}\b", name, re.IGNORECASE):
                mirrored = re.sub(rf"\b{b}\b", a, name, flags=re.IGNORECASE)
                break
        if mirrored != name and mirrored not in index:
            raise ValueError(f"--hflip: class {name!r} is direction-sensitive but its mirror {mirrored!r} "
                             "is not a class, so a flipped clip would have no label")
        out.append(index[mirrored])
    return out


@dataclass(frozen=True)
class TrainAugment:
    """Random scale/aspect crop, brightness/contrast, optional mirrored flip; one draw per clip."""

    input_size: int
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    scale: tuple[float, float] = (0.66, 1.0)      # crop side / shorter side
    aspect: tuple[float, float] = (0.8, 1.25)
    brightness: float = 0.25
    contrast: float = 0.25
    flip_map: tuple[int, ...] | None = None       # set to allow horizontal flips with label swapping

    def __call__(self, frames: list[np.ndarray], label: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        h, w = frames[0].shape[:2]
        side = min(h, w)
        s = rng.uniform(*self.scale)
        r = np.exp(rng.uniform(np.log(self.aspect[0]), np.log(self.aspect[1])))
        ch, cw = min(h, int(round(side * s / np.sqrt(r)))), min(w, int(round(side * s * np.sqrt(r))))
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        gain = 1.0 + rng.uniform(-self.contrast, self.contrast)
        bias = 255.0 * rng.uniform(-self.brightness, self.brightness) * 0.5
        flip = self.flip_map is not None and rng.random() < 0.5
        mean = 255.0 * np.asarray(self.mean, np.float32)
        scale = 1.0 / (255.0 * np.asarray(self.std, np.float32))
        out = np.empty((len(frames), 3, self.input_size, self.input_size), np.float32)
        for t, frame in enumerate(frames):
            crop = cv2.resize(frame[y0:y0 + ch, x0:x0 + cw], (self.input_size, self.input_size),
                              interpolation=cv2.INTER_LINEAR)
            if flip:
                crop = crop[:, ::-1]
            image = crop[:, :, ::-1].astype(np.float32)  # BGR -> RGB
            image = np.clip((image - 127.5) * gain + 127.5 + bias, 0, 255)
            out[t] = ((image - mean) * scale).transpose(2, 0, 1)
        if flip:
            assert self.flip_map is not None
            label = self.flip_map[label]
        return out, label


@dataclass(frozen=True)
class EvalTransform:
    """Exactly the deployment pre-processing (:func:`online_tsm.preprocess.preprocess_frame`)."""

    input_size: int
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    def __call__(self, frames: list[np.ndarray], label: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        return np.stack([preprocess_frame(f, self.input_size, "bgr", self.mean, self.std) for f in frames]), label
