"""What long work says while it runs: one line per stage on stderr, with the seconds since it began.

Exports, sysroot builds and emulated checks take from seconds to minutes; a
user watching the terminal should see which stage is running, not silence.
Functions that report take a ``say`` callable (:data:`Say`), so tests and
quiet callers pass their own or ``Progress(enabled=False)``.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable

Say = Callable[[str], None]


class Progress:
    """Stage messages with elapsed seconds on stderr (silent when disabled)."""

    def __init__(self, enabled: bool = True, stream: Any = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[{time.perf_counter() - self.start:6.1f}s] {message}", file=self.stream, flush=True)


def stderr_progress(message: str) -> None:
    """Progress without timestamps: one line on stderr (for work whose own lines carry their timing)."""
    print(message, file=sys.stderr, flush=True)
