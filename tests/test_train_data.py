"""Training data: the three layouts, segment sampling, direction-keeping augmentation, skipped clips."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from online_tsm import synthetic
from online_tsm.preprocess import preprocess_frame
from online_tsm import clips
from online_tsm.training import data
from online_tsm.training.augment import EvalTransform, TrainAugment, flip_label_map
from online_tsm.training.dataset import ClipDataset, segment_indices


def _write_video(path, n=6, size=(40, 32), value=0):
    frames = [np.full((size[1], size[0], 3), (value + 20 * i) % 255, np.uint8) for i in range(n)]
    return synthetic.write_video(frames, path)


def _write_frames(folder, n=5):
    folder.mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i + 1:05d}.jpg"), np.full((24, 32, 3), 10 * i, np.uint8))
    return folder


# -- segment sampling ----------------------------------------------------------------------

def test_eval_sampling_takes_segment_centres():
    assert segment_indices(16, 8) == [1, 3, 5, 7, 9, 11, 13, 15]
    assert segment_indices(8, 8) == list(range(8))
    assert segment_indices(3, 6) == [0, 0, 1, 1, 2, 2]  # short clips repeat frames in order


def test_train_sampling_is_one_random_frame_per_segment():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        idx = segment_indices(40, 8, rng)
        assert len(idx) == 8 and idx == sorted(idx)
        for k, i in enumerate(idx):
            assert 5 * k <= i < 5 * (k + 1)
        seen.update(idx)
    assert seen == set(range(40))  # every frame can be drawn


def test_sampling_rejects_empty_clips():
    with pytest.raises(ValueError, match="need at least one frame and one segment"):
        segment_indices(0, 8)


# -- augmentation --------------------------------------------------------------------------

def test_flip_label_map_swaps_mirrored_classes():
    labels = ["Swiping Left", "Swiping Right", "Swiping Up", "Turning Hand Clockwise",
              "Turning Hand Counterclockwise", "No gesture"]
    assert flip_label_map(labels) == [1, 0, 2, 4, 3, 5]


def test_flip_label_map_refuses_a_missing_mirror():
    with pytest.raises(ValueError, match="'Swiping Left' is direction-sensitive but its mirror 'Swiping Right'"):
        flip_label_map(["Swiping Left", "No gesture"])


def test_train_augment_is_the_same_for_every_frame_and_never_flips_by_default():
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[:, :32] = 255  # bright left half
    aug = TrainAugment(32)
    for seed in range(20):
        out, label = aug([frame, frame.copy()], 3, np.random.default_rng(seed))
        assert out.shape == (2, 3, 32, 32) and out.dtype == np.float32 and label == 3
        assert np.array_equal(out[0], out[1])  # one draw per clip
        assert out[0, :, :, 0].mean() >= out[0, :, :, -1].mean()  # left stays left


def test_train_augment_flip_swaps_the_label():
    frame = np.zeros((32, 32, 3), np.uint8)
    frame[:, :16] = 255
    aug = TrainAugment(32, scale=(1.0, 1.0), aspect=(1.0, 1.0), brightness=0, contrast=0, flip_map=(1, 0))
    flipped = [aug([frame], 0, np.random.default_rng(s)) for s in range(20)]
    assert {label for _, label in flipped} == {0, 1}
    for out, label in flipped:
        left_brighter = out[0, :, :, 0].mean() > out[0, :, :, -1].mean()
        assert left_brighter == (label == 0)


def test_eval_transform_is_the_deployment_preprocessing():
    frame = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    out, _ = EvalTransform(32)([frame], 0, np.random.default_rng(0))
    assert np.array_equal(out[0], preprocess_frame(frame, 32))


# -- layouts -------------------------------------------------------------------------------

def test_folder_layout_with_videos_and_frame_folders_and_a_bad_video(tmp_path, capsys):
    root = tmp_path / "set"
    for c in ("a", "b"):
        for i in range(5):
            _write_video(root / c / f"{i}.mp4", value=i)
    _write_frames(root / "a" / "frames_clip")
    (root / "b" / "broken.mp4").write_bytes(b"not a video at all")
    (root / "b" / "notes.txt").write_text("ignored: not a clip")
    split = data.scan_folder(root, val_fraction=0.2, seed=0)
    assert split.labels == ["a", "b"]
    assert len(split.train) + len(split.val) == 11
    assert len(split.val) == 2  # one per class
    assert [name for name, _ in split.report.skipped] == [str(root / "b" / "broken.mp4")]
    assert "skipped 1 unreadable clip(s)" in split.report.summary()
    clip = next(c for c in split.train + split.val if isinstance(c, clips.VideoClip))
    frames = clip.load([0, 5, 2])
    assert len(frames) == 3 and frames[0].shape == (32, 40, 3)
    folder_clip = next(c for c in split.train + split.val if isinstance(c, clips.FrameFolderClip))
    assert folder_clip.n_frames == 5 and folder_clip.load([4])[0].shape == (24, 32, 3)


def test_folder_layout_with_train_and_val_folders(tmp_path):
    for part in ("train", "val"):
        for c in ("left", "right", "up"):
            _write_video(tmp_path / part / c / "x.avi")
    split = data.scan_folder(tmp_path)
    assert split.labels == ["left", "right", "up"] and len(split.train) == 3 and len(split.val) == 3


def test_folder_layout_errors(tmp_path):
    (tmp_path / "only").mkdir()
    with pytest.raises(data.DataError, match="has 1 class folder"):
        data.scan_folder(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(data.DataError, match="has no class sub-folders"):
        data.scan_folder(empty)
    for c in ("a", "b"):
        (tmp_path / "bad" / c).mkdir(parents=True)
        (tmp_path / "bad" / c / "x.mp4").write_bytes(b"junk")
    with pytest.raises(data.DataError, match="no readable training clips"):
        data.scan_folder(tmp_path / "bad")
    with pytest.raises(data.DataError, match="data not found"):
        data.detect_data_format(str(tmp_path / "missing"))


def test_jester_layout(tmp_path):
    frames = tmp_path / "20bn-jester-v1"
    for clip_id in ("1", "2", "3", "4"):
        _write_frames(frames / clip_id)
    (tmp_path / "jester-v1-labels.csv").write_text("Swiping Left\nSwiping Right\nNo gesture\n")
    (tmp_path / "jester-v1-train.csv").write_text("1;Swiping Left\n2;Swiping Right\n9;No gesture\n")
    (tmp_path / "jester-v1-validation.csv").write_text("3;Swiping Left\n4;No gesture\n")
    assert data.detect_data_format(str(tmp_path)) == "jester"
    split = data.scan_jester(tmp_path)
    assert split.labels == ["Swiping Left", "Swiping Right", "No gesture"]
    assert [c.label for c in split.train] == [0, 1] and [c.label for c in split.val] == [0, 2]
    assert split.report.skipped == [(str(frames / "9"), "missing frame folder")]


def test_jester_layout_errors(tmp_path):
    (tmp_path / "jester-v1-train.csv").write_text("1;Swiping Left\n")
    with pytest.raises(data.DataError, match="needs a train and a validation list"):
        data.scan_jester(tmp_path)
    (tmp_path / "jester-v1-validation.csv").write_text("2 Swiping Left\n")
    with pytest.raises(data.DataError, match="line 1: expected 'id;label'"):
        data.scan_jester(tmp_path)
    (tmp_path / "jester-v1-validation.csv").write_text("2;Waving\n")
    (tmp_path / "jester-v1-labels.csv").write_text("Swiping Left\n")
    _write_frames(tmp_path / "1")
    with pytest.raises(data.DataError, match="clip 2 has label 'Waving', not in the class list"):
        data.scan_jester(tmp_path)


def test_synthetic_split_and_dataset():
    split = data.synthetic_split(16, 8, seed=0, render_size=40)
    assert split.labels[:2] == ["Swiping Left", "Swiping Right"] and len(split.train) == 16
    ds = ClipDataset(split.val, 4, EvalTransform(32), train=False)
    clip, label = ds[0]
    assert clip.shape == (4, 3, 32, 32) and label == split.val[0].label
    again, _ = ds[0]
    assert np.array_equal(clip.numpy(), again.numpy())
    train = ClipDataset(split.train, 4, TrainAugment(32), train=True, seed=1)
    a, _ = train[0]
    train.set_epoch(1)
    b, _ = train[0]
    assert not np.array_equal(a.numpy(), b.numpy())  # new draws each epoch
    with pytest.raises(data.DataError, match="at least 8 training clips"):
        data.synthetic_split(4, 4)
