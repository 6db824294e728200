"""The streaming pace derived from training metadata (online_tsm.streaming.pacing)."""
from __future__ import annotations

import pytest

from online_tsm.streaming.pacing import UPSTREAM_PACE, pace_from_metadata
from online_tsm.streaming.smoothing import DEFAULT_DEBOUNCE, DEFAULT_HISTORY


def test_recorded_stride_sets_every_and_half_a_clip_of_history():
    pace = pace_from_metadata({"frame_stride": 3.99, "segments": 8})
    assert (pace.every, pace.history, pace.debounce) == (4, 4, 1)
    assert "one frame in 4.0" in pace.reason and "8 steps" in pace.reason
    assert pace_from_metadata({"frame_stride": 0.4, "segments": 1}).every == 1   # never below every frame
    assert pace_from_metadata({"frame_stride": 2.6}).history == 4                 # segments default to 8


@pytest.mark.parametrize("meta", [None, {}, {"segments": 8}, {"frame_stride": "fast"}, {"frame_stride": -2},
                                  {"frame_stride": 4, "segments": 0}])
def test_without_a_usable_stride_the_upstream_settings(meta):
    assert pace_from_metadata(meta) == UPSTREAM_PACE
    assert (UPSTREAM_PACE.every, UPSTREAM_PACE.history, UPSTREAM_PACE.debounce) == (1, DEFAULT_HISTORY,
                                                                                      DEFAULT_DEBOUNCE)
