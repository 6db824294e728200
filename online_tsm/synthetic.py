"""Synthetic gestures: clips whose class is in the motion, never in a single frame.

A textured, hand-sized object moves over a random background.  Eight motions
map to the 20BN-Jester classes whose meaning is the motion itself (swipes,
full-hand zooms, no gesture, other things).  The generator is built so that a
frame-by-frame model (TSN) *cannot* tell the direction pairs apart while a
temporal model (TSM) can, which makes it a test bench for the shift:

* Every frame is rendered from the clip's *scene* (background, object,
  noise level) and one object *state* (centre ``u, v`` and ``size``) only;
  nothing in a frame depends on the class.
* Every class draws its states from the same box :data:`STATE_BOX`, and a
  ``still`` clip can sit at any state of it, so any frame of any class is also
  a frame of ``still``.
* Each direction pair is a time reversal: a ``swipe-left`` clip played
  backwards is exactly a ``swipe-right`` clip (see :func:`reverse_params`),
  so even the *set* of frames of a clip says nothing about its direction.

Everything is deterministic given a seed.  Positions are in units of the
shorter image side, measured from the image centre, so the same clip renders
consistently at any resolution and aspect ratio.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

# Motion name -> the Jester class it stands for (labels of the synthetic set and of the default model).
GESTURES: dict[str, str] = {
    "swipe-left": "Swiping Left",
    "swipe-right": "Swiping Right",
    "swipe-up": "Swiping Up",
    "swipe-down": "Swiping Down",
    "zoom-in": "Zooming In With Full Hand",
    "zoom-out": "Zooming Out With Full Hand",
    "still": "No gesture",
    "jitter": "Doing other things",
}
MOTIONS: tuple[str, ...] = tuple(GESTURES)
# Pairs that differ only in the direction of time (each one is the other played backwards).
DIRECTION_PAIRS: tuple[tuple[str, str], ...] = (
    ("swipe-left", "swipe-right"), ("swipe-up", "swipe-down"), ("zoom-in", "zoom-out"))
_REVERSE = {a: b for pair in DIRECTION_PAIRS for a, b in (pair, pair[::-1])}

# Every frame of every class has its object state inside this box (u, v: centre offset from the image
# centre in shorter-side units; size: object side in shorter-side units).
STATE_BOX = {"u": (-0.3, 0.3), "v": (-0.3, 0.3), "size": (0.22, 0.42)}
SWIPE_DISTANCE = (0.3, 0.6)    # how far a swipe travels (shorter-side units)
ZOOM_FACTOR = (1.5, 1.9)       # end size / start size of a zoom
# Largest wobble of a jitter clip (position and relative size).  At least ~2 px at a 32x32 input, so
# that "doing other things" is a visible motion at every input size a model may use, not sub-pixel noise.
JITTER_AMPLITUDE = (0.05, 0.10)
NOISE_SIGMA = (2.0, 8.0)       # per-pixel Gaussian noise, grey levels


@dataclass(frozen=True)
class ObjectState:
    """Where the object is in one frame (see the module docstring for units)."""

    u: float
    v: float
    size: float


@dataclass(frozen=True)
class GestureParams:
    """Everything that decides a clip: its scene seed and its state trajectory.

    The object moves from ``start`` to ``end`` between the fractions ``onset``
    and ``offset`` of the clip (smooth-step easing) and rests before and
    after; ``jitter`` > 0 adds a seeded random wobble (class ``jitter``).
    """

    motion: str
    n_frames: int
    start: ObjectState
    end: ObjectState
    onset: float
    offset: float
    scene_seed: int
    noise_sigma: float
    jitter: float = 0.0
    jitter_seed: int = 0


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)  # symmetric: s(1 - x) == 1 - s(x), which makes reversal exact


def random_params(motion: str, n_frames: int, seed: int | np.random.Generator) -> GestureParams:
    """Draw a random clip of ``motion``: position, size, speed, timing, scene and noise."""
    if motion not in GESTURES:
        raise ValueError(f"unknown motion {motion!r}; expected one of {', '.join(MOTIONS)}")
    if n_frames < 1:
        raise ValueError(f"n_frames must be at least 1, got {n_frames}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    (u_lo, u_hi), (v_lo, v_hi), (s_lo, s_hi) = STATE_BOX["u"], STATE_BOX["v"], STATE_BOX["size"]
    u, v, size = rng.uniform(u_lo, u_hi), rng.uniform(v_lo, v_hi), rng.uniform(s_lo, s_hi)
    start = end = ObjectState(u, v, size)
    jitter = 0.0
    if motion.startswith("swipe-"):
        d = rng.uniform(*SWIPE_DISTANCE)
        sign = -1.0 if motion in ("swipe-left", "swipe-up") else 1.0
        horizontal = motion in ("swipe-left", "swipe-right")
        lo, hi = (u_lo, u_hi) if horizontal else (v_lo, v_hi)
        first = rng.uniform(lo + d, hi) if sign < 0 else rng.uniform(lo, hi - d)
        last = first + sign * d
        if horizontal:
            start, end = ObjectState(first, v, size), ObjectState(last, v, size)
        else:
            start, end = ObjectState(u, first, size), ObjectState(u, last, size)
    elif motion.startswith("zoom-"):
        k = rng.uniform(*ZOOM_FACTOR)
        small = rng.uniform(s_lo, s_hi / k)
        a, b = (small, small * k) if motion == "zoom-in" else (small * k, small)
        start, end = ObjectState(u, v, a), ObjectState(u, v, b)
    elif motion == "jitter":
        jitter = rng.uniform(*JITTER_AMPLITUDE)
        # Keep the wobbling object inside the box.
        u, v = np.clip(u, u_lo + jitter, u_hi - jitter), np.clip(v, v_lo + jitter, v_hi - jitter)
        size = float(np.clip(size, s_lo / (1 - jitter), s_hi / (1 + jitter)))
        start = end = ObjectState(float(u), float(v), size)
    duration = rng.uniform(0.6, 1.0)
    onset = rng.uniform(0.0, 1.0 - duration)
    return GestureParams(motion=motion, n_frames=int(n_frames), start=start, end=end, onset=onset,
                         offset=onset + duration, scene_seed=int(rng.integers(2**31)),
                         noise_sigma=float(rng.uniform(*NOISE_SIGMA)), jitter=float(jitter),
                         jitter_seed=int(rng.integers(2**31)))


def reverse_params(params: GestureParams) -> GestureParams:
    """The clip played backwards, as parameters of the opposite motion (``still`` maps to itself).

    Exact: frame ``t`` of the result has the state of frame ``n - 1 - t`` of
    ``params``.  ``jitter`` clips have no exact reverse (their wobble is drawn
    forwards) and are refused.
    """
    if params.jitter:
        raise ValueError("a jitter clip has no exact time reversal")
    return dataclasses.replace(params, motion=_REVERSE.get(params.motion, params.motion), start=params.end,
                               end=params.start, onset=1.0 - params.offset, offset=1.0 - params.onset)


def _jitter_offsets(params: GestureParams) -> np.ndarray:
    """Per-frame wobble ``[n, 3]`` (du, dv, relative size), smooth-ish random, seeded."""
    rng = np.random.default_rng(params.jitter_seed)
    n = params.n_frames
    knots = rng.uniform(-1.0, 1.0, size=(n // 3 + 2, 3))
    x = np.linspace(0, len(knots) - 1, n)
    wobble = np.stack([np.interp(x, np.arange(len(knots)), knots[:, k]) for k in range(3)], axis=1)
    return wobble * params.jitter


def object_states(params: GestureParams) -> list[ObjectState]:
    """The object state of every frame of the clip."""
    n = params.n_frames
    p = np.arange(n) / max(1, n - 1)
    f = _smoothstep((p - params.onset) / max(1e-9, params.offset - params.onset))
    a, b = params.start, params.end
    u = a.u + (b.u - a.u) * f
    v = a.v + (b.v - a.v) * f
    size = a.size + (b.size - a.size) * f
    if params.jitter:
        w = _jitter_offsets(params)
        u, v, size = u + w[:, 0], v + w[:, 1], size * (1 + w[:, 2])
    return [ObjectState(float(u[t]), float(v[t]), float(size[t])) for t in range(n)]


# -- rendering -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Scene:
    """What stays constant over a clip: background and object appearance, at one resolution."""

    background: np.ndarray  # uint8 HxWx3
    texture: np.ndarray     # uint8 KxKx3, the object's look before scaling
    mask_aspect: float      # ellipse width / height of the object's outline


def make_scene(seed: int, height: int, width: int) -> Scene:
    """A random background (smooth colour field + fine texture) and a random high-contrast object."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(50, 150, size=(rng.integers(2, 6), rng.integers(2, 6), 3)).astype(np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    fine = rng.normal(0.0, rng.uniform(2, 10), size=(max(1, height // 4), max(1, width // 4), 1))
    fine = cv2.resize(fine.astype(np.float32), (width, height), interpolation=cv2.INTER_NEAREST)[..., None]
    background = np.clip(field + fine, 0, 255).astype(np.uint8)
    cells = int(rng.integers(3, 7))
    hue = rng.uniform(0, 255, size=3)
    pattern = rng.uniform(0, 1, size=(cells, cells, 1)) > 0.5
    light, dark = np.clip(hue + 90, 0, 255), np.clip(hue * 0.3, 0, 255)
    texture = np.where(pattern, light, dark).astype(np.uint8)
    texture = cv2.resize(texture, (64, 64), interpolation=cv2.INTER_NEAREST)
    cv2.rectangle(texture, (0, 0), (63, 63), (255, 255, 255), 4)  # bright rim: the object stands out
    return Scene(background=background, texture=texture, mask_aspect=float(rng.uniform(0.75, 1.0)))


def render_frame(scene: Scene, state: ObjectState, noise: np.ndarray | None = None) -> np.ndarray:
    """One uint8 BGR frame: the scene's object at ``state`` over its background, plus ``noise``.

    The class of the clip is not an argument: frames are a function of the
    scene and the state only.
    """
    frame = scene.background.copy()
    height, width = frame.shape[:2]
    side = min(height, width)
    size_h = max(2, int(round(state.size * side)))
    size_w = max(2, int(round(state.size * side * scene.mask_aspect)))
    cx, cy = width / 2 + state.u * side, height / 2 + state.v * side
    x0, y0 = int(round(cx - size_w / 2)), int(round(cy - size_h / 2))
    patch = cv2.resize(scene.texture, (size_w, size_h), interpolation=cv2.INTER_LINEAR)
    mask = np.zeros((size_h, size_w), np.uint8)
    cv2.ellipse(mask, (size_w // 2, size_h // 2), (size_w // 2, size_h // 2), 0, 0, 360, 1, -1)
    # Clip the object to the frame.
    fx0, fy0, fx1, fy1 = max(0, x0), max(0, y0), min(width, x0 + size_w), min(height, y0 + size_h)
    if fx1 > fx0 and fy1 > fy0:
        sub = (slice(fy0 - y0, fy1 - y0), slice(fx0 - x0, fx1 - x0))
        region = frame[fy0:fy1, fx0:fx1]
        region[:] = np.where(mask[sub][..., None].astype(bool), patch[sub], region)
    if noise is not None:
        frame = np.clip(frame.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return frame


def frame_noise(params: GestureParams, index: int, shape: tuple[int, ...]) -> np.ndarray:
    """The seeded pixel noise of frame ``index`` (independent of the frame order of the motion)."""
    rng = np.random.default_rng((params.scene_seed, index))
    return rng.normal(0.0, params.noise_sigma, size=shape).astype(np.float32)


def render_clip(params: GestureParams, height: int, width: int, indices: Sequence[int] | None = None,
                noise: bool = True) -> list[np.ndarray]:
    """Frames ``indices`` (all by default) of the clip, uint8 BGR ``[height, width, 3]``.

    Rendering only the frames a sampler picks keeps on-the-fly training cheap.
    Noise is drawn per frame index; with ``noise=False`` frames are exact
    functions of (scene, state), which the tests use.
    """
    scene = make_scene(params.scene_seed, height, width)
    states = object_states(params)
    picked = range(params.n_frames) if indices is None else indices
    out = []
    for i in picked:
        if not 0 <= i < params.n_frames:
            raise IndexError(f"frame index {i} out of range for a clip of {params.n_frames} frames")
        out.append(render_frame(scene, states[i], frame_noise(params, i, (height, width, 3)) if noise else None))
    return out


def synthetic_frames(n_frames: int, height: int = 240, width: int = 320, motion: str = "swipe-left",
                     seed: int = 0) -> Iterator[np.ndarray]:
    """Yield ``n_frames`` uint8 BGR frames ``[height, width, 3]`` of one random clip of ``motion``."""
    params = random_params(motion, n_frames, seed)
    yield from render_clip(params, height, width)


# -- on disk -------------------------------------------------------------------------------

def write_video(frames: Sequence[np.ndarray], path: str | os.PathLike, fps: float = 12.0) -> Path:
    """Write frames as an ``mp4v`` MP4 (the codec OpenCV's wheels can encode everywhere)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write {path} with codec mp4v")
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()
    return path


def clip_plan(n_clips: int, seed: int, motions: Sequence[str] = MOTIONS,
              n_frames: tuple[int, int] = (24, 40)) -> list[GestureParams]:
    """``n_clips`` clips cycling through ``motions`` (balanced classes), each randomised from ``seed``."""
    rng = np.random.default_rng(seed)
    plan = []
    for i in range(n_clips):
        length = int(rng.integers(n_frames[0], n_frames[1] + 1))
        plan.append(random_params(motions[i % len(motions)], length, rng))
    return plan


def write_dataset(root: str | os.PathLike, n_clips: int, seed: int = 0, height: int = 120, width: int = 160,
                  fps: float = 12.0, n_frames: tuple[int, int] = (24, 40)) -> Path:
    """Write the synthetic set as ``root/<Jester label>/<index>.mp4`` (the folder format of ``tsm-train``)."""
    root = Path(root)
    for i, params in enumerate(clip_plan(n_clips, seed, n_frames=n_frames)):
        write_video(render_clip(params, height, width), root / GESTURES[params.motion] / f"{i:05d}.mp4", fps)
    return root
