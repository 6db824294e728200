"""Stopping the demo on SIGINT (Ctrl-C) or SIGTERM (systemd, ``timeout``, ``docker stop``) without losing output.

A signal that raised an exception wherever it landed could cut the video
writer or the log in the middle of a write, or interrupt their ``close()``,
which leaves an mp4 without its index (unplayable) and a log with a torn last
line.  So the first signal only *asks* the demo loop to stop: the loop finishes
the frame it is on, and the sinks close normally.  A second signal means "now"
and raises :class:`KeyboardInterrupt` at once.  Outside the loop (loading the
model, opening the camera) there is nothing to finish, so a signal interrupts
straight away and the ``with`` blocks release the camera and the runtime.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Records the first stop signal while :attr:`armed`; installs its handlers as a context manager.

    Handlers can only be installed from the main thread; elsewhere (a test
    driving the demo on a thread) the context manager installs nothing and the
    request can still be made by calling :meth:`request`.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None      # e.g. "SIGTERM" once a stop was asked for
        self.armed = False                        # True while the demo loop runs and can stop by itself
        self.on_request: list[Callable[[], None]] = []   # e.g. cancel a camera reconnect wait
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def request(self, name: str = "request") -> None:
        self.signal_name = self.signal_name or name
        for callback in self.on_request:
            callback()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.armed or self.requested:
            raise KeyboardInterrupt  # nothing to finish, or the second signal: stop now
        self.request(signal.Signals(signum).name)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:   # e.g. SIGINT of a job started with `&`
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
