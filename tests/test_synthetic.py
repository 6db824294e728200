"""The synthetic gesture set: deterministic, on disk as real videos, and no single frame tells the class."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from online_tsm import synthetic
from online_tsm.synthetic import (DIRECTION_PAIRS, GESTURES, MOTIONS, STATE_BOX, ObjectState, make_scene,
                                  object_states, random_params, render_clip, render_frame, reverse_params,
                                  synthetic_frames)
from online_tsm.labels import JESTER_LABELS


def test_classes_are_jester_classes():
    assert set(GESTURES.values()) <= set(JESTER_LABELS)
    assert len(set(GESTURES.values())) == len(MOTIONS) == 8


def test_synthetic_frames_shape_and_determinism():
    a = list(synthetic_frames(5, 60, 80, "zoom-in", seed=3))
    b = list(synthetic_frames(5, 60, 80, "zoom-in", seed=3))
    c = list(synthetic_frames(5, 60, 80, "zoom-in", seed=4))
    assert len(a) == 5 and all(f.shape == (60, 80, 3) and f.dtype == np.uint8 for f in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_unknown_motion_is_an_error():
    with pytest.raises(ValueError, match="unknown motion 'wave'; expected one of swipe-left"):
        list(synthetic_frames(2, motion="wave"))


def test_frame_index_out_of_range_is_an_error():
    with pytest.raises(IndexError, match="frame index 9 out of range for a clip of 4 frames"):
        render_clip(random_params("still", 4, 0), 32, 32, indices=[9])


@pytest.mark.parametrize("motion", MOTIONS)
def test_every_state_lies_in_the_shared_box(motion):
    """All classes draw object states from one box, so position and size carry no class information."""
    for seed in range(40):
        for state in object_states(random_params(motion, 30, seed)):
            assert STATE_BOX["u"][0] - 1e-9 <= state.u <= STATE_BOX["u"][1] + 1e-9
            assert STATE_BOX["v"][0] - 1e-9 <= state.v <= STATE_BOX["v"][1] + 1e-9
            assert STATE_BOX["size"][0] - 1e-9 <= state.size <= STATE_BOX["size"][1] + 1e-9


@pytest.mark.parametrize("motion", MOTIONS)
def test_every_frame_is_also_a_still_frame(motion):
    """Pixel for pixel, each frame of any class is the frame of a 'No gesture' clip at that state."""
    params = random_params(motion, 12, seed=7)
    frames = render_clip(params, 48, 64, noise=False)
    scene = make_scene(params.scene_seed, 48, 64)
    for frame, state in zip(frames, object_states(params)):
        still = synthetic.GestureParams("still", 1, state, state, 0.0, 1.0, params.scene_seed, params.noise_sigma)
        assert np.array_equal(frame, render_clip(still, 48, 64, noise=False)[0])
        assert np.array_equal(frame, render_frame(scene, state))


@pytest.mark.parametrize("pair", DIRECTION_PAIRS)
def test_direction_pairs_are_time_reversals(pair):
    """A clip of one direction played backwards is, frame for frame, a clip of the other direction."""
    a, b = pair
    for seed in range(5):
        params = random_params(a, 17, seed)
        back = reverse_params(params)
        assert back.motion == b
        forward = render_clip(params, 40, 56, noise=False)
        backward = render_clip(back, 40, 56, noise=False)
        for t in range(params.n_frames):
            assert np.array_equal(forward[t], backward[params.n_frames - 1 - t])
        # and the reversed parameters are ones the generator itself could have drawn for class b
        for s in object_states(back):
            assert STATE_BOX["u"][0] - 1e-9 <= s.u <= STATE_BOX["u"][1] + 1e-9
        assert 0.0 <= back.onset <= back.offset <= 1.0 + 1e-12


def test_jitter_has_no_exact_reversal():
    with pytest.raises(ValueError, match="no exact time reversal"):
        reverse_params(random_params("jitter", 8, 0))


def test_motions_move_as_named():
    def track(motion):
        states = object_states(random_params(motion, 20, 1))
        return states[0], states[-1]
    first, last = track("swipe-left")
    assert last.u < first.u - 0.15
    first, last = track("swipe-up")
    assert last.v < first.v - 0.15  # image v grows downwards
    first, last = track("zoom-out")
    assert last.size < first.size / 1.3
    first, last = track("still")
    assert first == last


def test_objects_are_drawn_where_the_state_says():
    scene = make_scene(0, 64, 64)
    left = render_frame(scene, ObjectState(-0.2, 0.0, 0.3)).astype(int)
    right = render_frame(scene, ObjectState(0.2, 0.0, 0.3)).astype(int)
    diff = np.abs(left - right).sum(2)
    cols = np.flatnonzero(diff.sum(0))
    assert cols.min() < 32 < cols.max()  # the two objects sit on either side of the centre


def test_write_dataset_makes_readable_videos(tmp_path):
    root = synthetic.write_dataset(tmp_path / "set", n_clips=8, seed=0, height=48, width=64, n_frames=(10, 12))
    folders = sorted(p.name for p in root.iterdir())
    assert folders == sorted(GESTURES.values())
    video = next((root / "Swiping Left").glob("*.mp4"))
    cap = cv2.VideoCapture(str(video))
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (48, 64, 3)
        n += 1
    cap.release()
    assert 10 <= n <= 12
