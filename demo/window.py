"""The OpenCV window: show frames, ``q``/Esc quits, ``f`` toggles full screen.

Kept thin on purpose -- it cannot be tested on a machine without a display --
and guarded: without a display or with OpenCV's GUI-less build the user gets
one line that points to ``--headless``.
"""
from __future__ import annotations

import os
import sys
from typing import Any

import cv2
import numpy as np

from online_tsm.errors import UserError

HEADLESS_HINT = "use --headless with --output out.mp4 and/or --log preds.jsonl"
QUIT_KEYS = (ord("q"), ord("Q"), 27)  # 27 = Esc
FULLSCREEN_KEYS = (ord("f"), ord("F"))


def window_problem() -> str | None:
    """Why a window cannot be opened here, or ``None`` if it probably can."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display to open a window on (DISPLAY is not set)"
    try:
        cv2.namedWindow("tsm-demo probe", cv2.WINDOW_NORMAL)
        cv2.destroyWindow("tsm-demo probe")
    except cv2.error:
        return ("this OpenCV build has no GUI support (opencv-python-headless?); "
                "for a window replace it with opencv-python")
    return None


class WindowSink:
    def __init__(self, title: str = "tsm-demo") -> None:
        problem = window_problem()
        if problem:
            raise UserError(f"{problem}; {HEADLESS_HINT}")
        self.title = title
        self.fullscreen = False
        cv2.namedWindow(title, cv2.WINDOW_NORMAL)

    def write(self, image: np.ndarray, record: dict[str, Any]) -> bool:
        cv2.imshow(self.title, image)
        key = cv2.waitKey(1) & 0xFF
        if key in QUIT_KEYS:
            return False
        if key in FULLSCREEN_KEYS:
            self.fullscreen = not self.fullscreen
            cv2.setWindowProperty(self.title, cv2.WND_PROP_FULLSCREEN,
                                  cv2.WINDOW_FULLSCREEN if self.fullscreen else cv2.WINDOW_NORMAL)
        return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1  # closed with the mouse

    def close(self) -> None:
        cv2.destroyWindow(self.title)
        cv2.waitKey(1)
