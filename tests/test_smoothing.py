"""PredictionSmoother driven by scripted logits: history averaging, debounce, ignored classes."""
from __future__ import annotations

import numpy as np
import pytest

from online_tsm.labels import JESTER_LABELS
from online_tsm.streaming.smoothing import (JESTER_IGNORED, PredictionSmoother, default_ignored, resolve_ignored,
                                  softmax)


def onehot(n: int, i: int, value: float = 5.0) -> np.ndarray:
    v = np.zeros(n, np.float32)
    v[i] = value
    return v


def shown(smoother: PredictionSmoother, classes: list[int], n: int = 5) -> list[int | None]:
    return [smoother.update(onehot(n, c)).index for c in classes]


def test_history_averages_the_last_k_logits():
    s = PredictionSmoother(n_class=3, history=3, debounce=1)
    s.update(np.array([3.0, 0.0, 0.0]))
    s.update(np.array([0.0, 2.0, 0.0]))
    p = s.update(np.array([0.0, 2.0, 0.0]))
    # mean = [1, 4/3, 0]: class 1 wins only because the three steps are averaged
    assert p.raw_index == 1 and p.index == 1
    expected = softmax(np.array([1.0, 4 / 3, 0.0]))
    assert p.confidence == pytest.approx(expected[1], rel=1e-6)
    assert [c for c, _ in p.top] == [1, 0, 2]
    assert [q for _, q in p.top] == pytest.approx(sorted(expected, reverse=True), rel=1e-6)
    # the oldest vector ([3, 0, 0]) falls out of a 3-step window
    p = s.update(np.array([0.0, 0.0, 0.5]))
    assert p.raw_index == 1
    assert p.top[0][1] == pytest.approx(softmax(np.array([0.0, 4 / 3, 0.5 / 3]))[1], rel=1e-6)


def test_history_of_one_follows_each_step():
    s = PredictionSmoother(n_class=4, history=1, debounce=1)
    assert shown(s, [0, 2, 1, 3], n=4) == [0, 2, 1, 3]


def test_single_step_blip_is_absorbed_by_the_history():
    s = PredictionSmoother(n_class=5, history=4, debounce=1)
    assert shown(s, [1, 1, 1, 2, 1, 1]) == [1, 1, 1, 1, 1, 1]


def test_debounce_needs_consecutive_steps_before_switching():
    s = PredictionSmoother(n_class=5, history=1, debounce=3)
    # first class is shown at once; 2 needs three consecutive steps; the blip of 4 resets the count
    assert shown(s, [1, 2, 2, 4, 2, 2, 2, 2]) == [1, 1, 1, 1, 1, 1, 2, 2]
    s.reset()
    assert s.current is None
    assert shown(s, [3]) == [3]


def test_switched_flag_marks_only_the_change():
    s = PredictionSmoother(n_class=3, history=1, debounce=2)
    flags = [s.update(onehot(3, c)).switched for c in [0, 0, 1, 1, 1]]
    assert flags == [True, False, False, True, False]


def test_ignored_class_keeps_the_shown_one_and_cancels_a_pending_switch():
    s = PredictionSmoother(n_class=5, history=1, debounce=2, ignore=[3])
    assert shown(s, [1, 3, 3, 3]) == [1, 1, 1, 1]
    # 2 once, then an ignored step, then 2 once: never two consecutive, so no switch
    assert shown(s, [2, 3, 2, 3]) == [1, 1, 1, 1]
    assert shown(s, [2, 2]) == [1, 2]
    p = s.update(onehot(5, 3))
    assert p.index == 2 and p.raw_index == 3 and p.top[0][0] == 3  # still reported in top-k


def test_nothing_shown_until_a_usable_class():
    s = PredictionSmoother(n_class=4, history=1, debounce=1, ignore=[0])
    p = s.update(onehot(4, 0))
    assert p.index is None and p.confidence == 0.0
    assert s.update(onehot(4, 2)).index == 2


def test_jester_defaults_and_names():
    assert default_ignored(JESTER_LABELS) == JESTER_IGNORED == (3, 7, 8, 21, 22)
    assert [JESTER_LABELS[i] for i in JESTER_IGNORED] == [
        "Pulling Hand In", "Rolling Hand Backward", "Rolling Hand Forward",
        "Turning Hand Clockwise", "Turning Hand Counterclockwise"]
    assert default_ignored(["a", "b"]) == ()
    assert resolve_ignored("rolling hand forward, Thumb Up", JESTER_LABELS) == (8, 20)
    assert resolve_ignored("", JESTER_LABELS) == ()


def test_unknown_ignored_name_is_one_clear_error():
    with pytest.raises(ValueError, match=r"unknown class name\(s\) to ignore: 'Waving'.*classes are: a, b"):
        resolve_ignored("Waving", ["a", "b"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(history=0), "history .* must be >= 1"),
    (dict(debounce=0), "debounce .* must be >= 1"),
    (dict(ignore=[7]), r"ignored class indices \[7\] are out of range for 3 classes"),
    (dict(ignore=[0, 1, 2]), "every class is ignored"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PredictionSmoother(n_class=3, **kwargs)


def test_wrong_logits_shape():
    with pytest.raises(ValueError, match=r"expected logits of shape \[3\], got \[4\]"):
        PredictionSmoother(n_class=3).update(np.zeros(4))
