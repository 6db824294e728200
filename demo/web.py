"""The browser view: a live page served by the demo process (``tsm-demo --serve [HOST:]PORT``).

It is one more sink of the demo loop, so what the page shows is what the
window, the video file and the log get.  The loop must never wait for a
viewer: :meth:`LiveView.write` only stores the newest frame and record and
wakes the server, which runs on its own thread with its own asyncio event
loop (Tornado, already a dependency for TVM's RPC server).  Each viewer gets
the newest frame whenever it is ready for one; frames it was too slow for are
skipped for it and counted, never queued.

Routes (all need ``?token=`` when a token is set, else 401):

- ``/``           the page;
- ``/video``      the annotated frames as MJPEG (``multipart/x-mixed-replace``), at the rate they are drawn;
- ``/frame.jpg``  the newest annotated frame;
- ``/events``     Server-Sent Events, one JSON object per frame with the fields of ``--log``;
- ``/info``       the model's classes, backend and source; ``/stats`` what was sent and skipped.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import socket
import sys
import threading
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import quote

import cv2
import numpy as np
import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.web

from online_tsm.console.address import is_loopback, parse_host_port
from online_tsm.errors import UserError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
JPEG_QUALITY = 80
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def parse_serve_address(text: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[IPv6]:PORT`` -> ``(host, port)``; the host defaults to 127.0.0.1."""
    return parse_host_port(text, error=UserError, default_host=DEFAULT_HOST,
                           expected="--serve expects [HOST:]PORT with PORT 0-65535 (e.g. 8765 or 0.0.0.0:8765)")


def exposure_warning(host: str, token: str | None) -> str | None:
    """The warning for a view that other machines can reach, or ``None`` for a loopback one."""
    if is_loopback(host):
        return None
    where = "everyone on the network" if host in ("0.0.0.0", "::") else f"the network of {host}"
    advice = "" if token else "; add --token SECRET to require ?token=SECRET"
    return f"warning: serving on {host} makes the camera visible to {where}{advice}"


def desktop_available() -> bool:
    """Whether ``webbrowser`` would open a graphical browser, not a text one in this terminal."""
    import os

    if sys.platform.startswith("linux") or "bsd" in sys.platform:
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


@dataclass
class ViewStats:
    """What the server sent and what it skipped for viewers slower than the demo."""

    viewers: int = 0                 # connected to /video or /events now
    frames_sent: int = 0
    frames_skipped: int = 0          # annotated frames a /video viewer was too slow for
    events_sent: int = 0
    events_skipped: int = 0          # records an /events viewer was too slow for
    rejected: int = 0                # requests without the right token

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Latest:
    seq: int = 0
    image: np.ndarray | None = None
    record: dict[str, Any] | None = None
    jpeg_seq: int = -1
    jpeg: bytes = b""
    closed: bool = False
    waiter: asyncio.Future | None = field(default=None, repr=False)


class LiveView:
    """A sink that serves the newest annotated frame and record to browsers, on a thread of its own.

    The socket is bound in the constructor, so a port in use fails before the
    model loads and ``port=0`` resolves to a free port at once (see :attr:`url`).
    """

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, token: str | None = None,
                 info: dict[str, Any] | None = None) -> None:
        self.host, self.token = host, token
        self.info = dict(info or {})
        self.stats = ViewStats()
        self._latest = _Latest()
        self._lock = threading.Lock()
        self._wake_pending = False
        try:
            self._sockets = tornado.netutil.bind_sockets(port, address=host, reuse_port=False)
        except OSError as exc:
            raise UserError(f"cannot serve the browser view on {host}:{port}: {exc.strerror or exc}") from None
        self.port = self._sockets[0].getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopped: asyncio.Future | None = None
        self._thread = threading.Thread(target=self._serve, name="tsm-demo-web", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    # -- the demo side (any thread) --------------------------------------------------------------

    @property
    def url(self) -> str:
        """The address to open, with the token when one is set."""
        shown = "127.0.0.1" if self.host in ("0.0.0.0", "") else "[::1]" if self.host == "::" else \
            f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}/" + (f"?token={quote(self.token, safe='')}" if self.token else "")

    def write(self, image: np.ndarray, record: dict[str, Any]) -> bool:
        """Keep the newest frame and record; wake the server once (never waits for a viewer)."""
        with self._lock:
            self._latest.seq += 1
            self._latest.image, self._latest.record = image, record
            wake = not self._wake_pending
            self._wake_pending = True
        if wake and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the server is shutting down
                pass
        return True

    def close(self) -> None:
        """Stop the server: viewers see the end of their streams, the port is released."""
        if self._loop.is_closed() or not self._thread.is_alive():
            return
        with self._lock:
            self._latest.closed = True
        try:
            self._loop.call_soon_threadsafe(self._shutdown)
        except RuntimeError:
            pass
        self._thread.join(10)

    # -- the server side (its own thread and event loop) ----------------------------------------

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._stopped = self._loop.create_future()
        app = tornado.web.Application(
            [(r"/", PageHandler), (r"/video", VideoHandler), (r"/frame\.jpg", FrameHandler),
             (r"/events", EventsHandler), (r"/info", InfoHandler), (r"/stats", StatsHandler)],
            view=self, log_function=_log_refused)
        self._server = tornado.httpserver.HTTPServer(app)
        self._server.add_sockets(self._sockets)
        self._ready.set()
        try:
            self._loop.run_until_complete(self._stopped)
            self._loop.run_until_complete(self._finish())
        finally:
            self._loop.close()

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
        waiter, self._latest.waiter = self._latest.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _shutdown(self) -> None:
        self._wake()
        self._server.stop()
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    async def _finish(self) -> None:
        await asyncio.sleep(0.05)        # let the streaming handlers see ``closed`` and end their responses
        try:
            await asyncio.wait_for(self._server.close_all_connections(), timeout=2)
        except asyncio.TimeoutError:
            pass

    async def next_after(self, seq: int) -> int | None:
        """Wait for a frame newer than ``seq``; its number, or ``None`` once the view is closed."""
        while True:
            with self._lock:
                if self._latest.closed:
                    return None
                if self._latest.seq > seq:
                    return self._latest.seq
            if self._latest.waiter is None or self._latest.waiter.done():
                self._latest.waiter = self._loop.create_future()
            await self._latest.waiter

    def newest_record(self) -> tuple[int, dict[str, Any] | None]:
        with self._lock:
            return self._latest.seq, self._latest.record

    def newest_jpeg(self) -> tuple[int, bytes]:
        """The newest frame as JPEG, encoded once however many viewers ask (on the server's thread)."""
        with self._lock:
            seq, image = self._latest.seq, self._latest.image
            if self._latest.jpeg_seq == seq:
                return seq, self._latest.jpeg
        if image is None:
            return seq, b""
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        jpeg = data.tobytes() if ok else b""
        with self._lock:
            if seq >= self._latest.jpeg_seq:
                self._latest.jpeg_seq, self._latest.jpeg = seq, jpeg
        return seq, jpeg


class _Handler(tornado.web.RequestHandler):
    """Token and Host checks shared by every route."""

    @property
    def view(self) -> LiveView:
        return self.application.settings["view"]

    def prepare(self) -> None:
        view = self.view
        if view.token is not None:
            given = self.get_query_argument("token", "")
            if not hmac.compare_digest(given.encode(), view.token.encode()):
                view.stats.rejected += 1
                self.set_status(401)
                self.finish("401: this view needs ?token= with the token given to tsm-demo --token\n")
                return
        if is_loopback(view.host) and _host_name(self.request.host) not in LOOPBACK_NAMES:
            # A page elsewhere could rename itself to 127.0.0.1 (DNS rebinding) and read the camera.
            self.set_status(403)
            self.finish("403: this view only answers to localhost or 127.0.0.1\n")

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")


def _log_refused(handler: tornado.web.RequestHandler) -> None:
    """One line per refused request (a wrong token, a foreign Host); successful requests are not logged."""
    status = handler.get_status()
    if status in (401, 403):
        request = handler.request
        print(f"tsm-demo: browser view refused {request.method} {request.path} from {request.remote_ip} "
              f"({status})", file=sys.stderr, flush=True)


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class PageHandler(_Handler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.write(resources.files("online_tsm.demo").joinpath("page.html").read_bytes())


class InfoHandler(_Handler):
    def get(self) -> None:
        self.write(self.view.info)


class StatsHandler(_Handler):
    def get(self) -> None:
        self.write(self.view.stats.as_dict())


class FrameHandler(_Handler):
    def get(self) -> None:
        _, jpeg = self.view.newest_jpeg()
        if not jpeg:
            self.set_status(503)
            self.finish("no frame yet\n")
            return
        self.set_header("Content-Type", "image/jpeg")
        self.write(jpeg)


class _StreamHandler(_Handler):
    """Sends the newest item whenever the client has taken the previous one; counts what it skipped."""

    content_type = ""

    def part(self) -> tuple[int, bytes]:
        """The newest item's number and its bytes (empty: nothing to send yet)."""
        raise NotImplementedError

    def count(self, skipped: int) -> None:
        raise NotImplementedError

    async def get(self) -> None:
        view = self.view
        self.set_header("Content-Type", self.content_type)
        view.stats.viewers += 1
        seq = 0
        try:
            while await view.next_after(seq) is not None:
                newest, data = self.part()
                if not data:
                    seq = newest
                    continue
                skipped = newest - seq - 1 if seq else 0
                seq = newest
                self.count(skipped)
                self.write(data)
                await self.flush()   # waits while this viewer is slow; the demo keeps going
        except tornado.iostream.StreamClosedError:
            pass
        finally:
            view.stats.viewers -= 1


class VideoHandler(_StreamHandler):
    content_type = "multipart/x-mixed-replace; boundary=frame"

    def part(self) -> tuple[int, bytes]:
        seq, jpeg = self.view.newest_jpeg()
        if not jpeg:
            return seq, b""
        return seq, (b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)) + jpeg + b"\r\n"

    def count(self, skipped: int) -> None:
        self.view.stats.frames_sent += 1
        self.view.stats.frames_skipped += skipped


class EventsHandler(_StreamHandler):
    content_type = "text/event-stream; charset=utf-8"

    def part(self) -> tuple[int, bytes]:
        seq, record = self.view.newest_record()
        if record is None:
            return seq, b""
        return seq, f"id: {record.get('frame', seq)}\ndata: {json.dumps(record, ensure_ascii=False)}\n\n".encode()

    def count(self, skipped: int) -> None:
        self.view.stats.events_sent += 1
        self.view.stats.events_skipped += skipped


def machine_address() -> str:
    """A name other machines may reach this one by (for the message printed with a non-loopback view)."""
    return socket.gethostname() or "THIS-MACHINE"
