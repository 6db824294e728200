"""Class labels shipped as data.

The 27 classes of the 20BN-Jester v1 data set, in the order of the upstream
online demo's classifier (alphabetical, index = logit position).
"""
from __future__ import annotations

JESTER_LABELS: tuple[str, ...] = (
    "Doing other things",
    "Drumming Fingers",
    "No gesture",
    "Pulling Hand In",
    "Pulling Two Fingers In",
    "Pushing Hand Away",
    "Pushing Two Fingers Away",
    "Rolling Hand Backward",
    "Rolling Hand Forward",
    "Shaking Hand",
    "Sliding Two Fingers Down",
    "Sliding Two Fingers Left",
    "Sliding Two Fingers Right",
    "Sliding Two Fingers Up",
    "Stop Sign",
    "Swiping Down",
    "Swiping Left",
    "Swiping Right",
    "Swiping Up",
    "Thumb Down",
    "Thumb Up",
    "Turning Hand Clockwise",
    "Turning Hand Counterclockwise",
    "Zooming In With Full Hand",
    "Zooming In With Two Fingers",
    "Zooming Out With Full Hand",
    "Zooming Out With Two Fingers",
)


def default_labels(n_class: int) -> list[str]:
    """Jester's labels for a 27-class model, ``class_<i>`` placeholders otherwise."""
    if n_class == len(JESTER_LABELS):
        return list(JESTER_LABELS)
    return [f"class_{i}" for i in range(n_class)]
