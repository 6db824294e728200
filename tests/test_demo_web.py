"""The browser view's server without a browser: routes, token, Host check, newest-only delivery, CLI options."""
from __future__ import annotations

import http.client
import json
import threading
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest

from helpers import seeded_model
from online_tsm.checkpoint import save_checkpoint
from online_tsm.errors import UserError
from online_tsm.demo import cli
from online_tsm.demo.app import frame_record
from online_tsm.console.address import is_loopback
from online_tsm.demo.web import LiveView, exposure_warning, parse_serve_address
from online_tsm.streaming.smoothing import SmoothedPrediction

LABELS = ["left", "right", "up", "down"]


def record(i: int) -> dict:
    prediction = SmoothedPrediction(index=i % 4, confidence=0.5, top=[(i % 4, 0.5), ((i + 1) % 4, 0.3),
                                                                       ((i + 2) % 4, 0.2)], raw_index=i % 4)
    return frame_record(i, i / 30, prediction, LABELS, inferred=True, latency_s=0.01, dropped=0)


def frame(i: int) -> np.ndarray:
    return np.full((48, 64, 3), i % 256, np.uint8)


@pytest.fixture
def view():
    v = LiveView("127.0.0.1", 0, info={"classes": LABELS})
    yield v
    v.close()


def get(view: LiveView, path: str, host: str | None = None) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", view.port, timeout=10)
    headers = {"Host": host} if host else {}
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, resp.getheader("Content-Type", ""), body


def open_stream(view: LiveView, path: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", view.port, timeout=10)
    conn.request("GET", path)
    resp = conn.getresponse()
    assert resp.status == 200
    return resp


def next_event(resp: http.client.HTTPResponse) -> dict:
    while True:
        line = resp.readline().decode()
        if line.startswith("data: "):
            return json.loads(line[len("data: "):])


def next_jpeg(resp: http.client.HTTPResponse) -> np.ndarray:
    length = None
    while True:
        line = resp.readline().decode().strip()
        if line.lower().startswith("content-length:"):
            length = int(line.split(":")[1])
        elif not line and length is not None:
            return cv2.imdecode(np.frombuffer(resp.read(length), np.uint8), cv2.IMREAD_COLOR)


def test_page_info_and_newest_frame(view):
    status, kind, body = get(view, "/")
    assert status == 200 and kind.startswith("text/html") and b'id="video"' in body and b"EventSource" in body
    assert json.loads(get(view, "/info")[2]) == {"classes": LABELS}
    assert get(view, "/frame.jpg")[0] == 503                  # nothing drawn yet
    for i in range(3):
        view.write(frame(40 * i), record(i))
    status, kind, body = get(view, "/frame.jpg")
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert status == 200 and kind == "image/jpeg" and image.shape == (48, 64, 3)
    assert abs(float(image.mean()) - 80) < 3                   # the newest frame, not the first


def test_events_are_the_log_records_newest_first_and_skips_are_counted(view):
    """A viewer that was busy gets the newest record, never a backlog; what it missed is counted."""
    for i in range(50):                                        # before anyone watches: nothing queues up
        view.write(frame(i), record(i))
    resp = open_stream(view, "/events")
    first = next_event(resp)
    assert first == record(49) | {"unix_time": first["unix_time"]}
    assert set(first) == set(record(0))                         # the fields of --log, no more, no fewer
    view.write(frame(50), record(50))
    assert next_event(resp)["frame"] == 50
    # Hold the server's loop (a viewer slower than the demo), write 10 frames, let go: one event, 9 skipped.
    held, release = threading.Event(), threading.Event()
    view._loop.call_soon_threadsafe(lambda: (held.set(), release.wait(10)))
    assert held.wait(10)
    for i in range(51, 61):
        view.write(frame(i), record(i))                         # returns at once: the demo never waits
    release.set()
    event = next_event(resp)
    assert event["frame"] == 60 and event["label"] == LABELS[60 % 4]
    assert view.stats.events_skipped == 9 and view.stats.events_sent == 3
    resp.close()


def test_video_is_mjpeg_of_the_annotated_frames(view):
    view.write(frame(10), record(0))
    resp = open_stream(view, "/video")
    assert resp.getheader("Content-Type") == "multipart/x-mixed-replace; boundary=frame"
    assert abs(float(next_jpeg(resp).mean()) - 10) < 3
    view.write(frame(200), record(1))
    assert abs(float(next_jpeg(resp).mean()) - 200) < 3
    resp.close()


def test_closing_the_view_ends_the_streams_and_frees_the_port():
    view = LiveView("127.0.0.1", 0)
    view.write(frame(1), record(1))
    resp = open_stream(view, "/events")
    next_event(resp)
    view.close()
    assert resp.read().strip() == b""                           # the stream ended, nothing hangs
    again = LiveView("127.0.0.1", view.port)                    # the port is free again
    again.close()


def test_token_is_required_on_every_route(capsys):
    view = LiveView("127.0.0.1", 0, token="s3cret")
    try:
        view.write(frame(1), record(1))
        for path in ("/", "/video", "/frame.jpg", "/events", "/info", "/stats"):
            status, _, body = get(view, path)
            assert status == 401 and b"?token=" in body, path
            assert get(view, path + "?token=wrong")[0] == 401
        assert get(view, "/?token=s3cret")[0] == 200
        assert get(view, "/frame.jpg?token=s3cret")[0] == 200
        assert view.url.endswith("/?token=s3cret")
        assert view.stats.rejected == 12
    finally:
        view.close()
    refused = capsys.readouterr().err.splitlines()
    assert len(refused) == 12 and refused[0] == "tsm-demo: browser view refused GET / from 127.0.0.1 (401)"


def test_a_loopback_view_refuses_other_host_names(view):
    """DNS rebinding: a web page that renamed itself to 127.0.0.1 must not read the camera."""
    assert get(view, "/", host="attacker.example:80")[0] == 403
    assert get(view, "/", host=f"localhost:{view.port}")[0] == 200


def test_addresses_and_the_network_warning():
    assert parse_serve_address("8080") == ("127.0.0.1", 8080)
    assert parse_serve_address("0.0.0.0:0") == ("0.0.0.0", 0)
    assert parse_serve_address("[::1]:9000") == ("::1", 9000)
    for bad in ("localhost:", "x", "1.2.3.4:99999"):
        with pytest.raises(UserError, match=r"--serve expects \[HOST:\]PORT with PORT 0-65535"):
            parse_serve_address(bad)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20")
    assert not is_loopback("my-laptop") and is_loopback("127.0.0.2", resolve=True)   # names count only resolved
    assert exposure_warning("127.0.0.1", None) is None
    assert exposure_warning("0.0.0.0", None) == ("warning: serving on 0.0.0.0 makes the camera visible to everyone "
                                                 "on the network; add --token SECRET to require ?token=SECRET")
    assert exposure_warning("0.0.0.0", "t").endswith("visible to everyone on the network")


def test_a_port_in_use_is_one_line(view):
    with pytest.raises(UserError, match=rf"cannot serve the browser view on 127.0.0.1:{view.port}: "):
        LiveView("127.0.0.1", view.port)


# -- through tsm-demo ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("web") / "tiny.pt"
    save_checkpoint(seeded_model(seed=7, width_mult=0.5, input_size=96, n_class=4), path, labels=LABELS)
    return path


def test_serving_on_all_interfaces_warns(tiny_checkpoint, monkeypatch, capsys):
    """--serve 0.0.0.0:P warns before serving (bound to loopback here: tests use no other interface)."""
    hosts = []

    def loopback_view(host, port, token=None):
        hosts.append(host)
        return LiveView("127.0.0.1", 0, token=token)

    monkeypatch.setattr(cli, "LiveView", loopback_view)
    assert cli.main(["--source", "synthetic", "--weights", str(tiny_checkpoint), "--frames", "2",
                     "--serve", "0.0.0.0:8765"]) == 0
    err = capsys.readouterr().err
    assert hosts == ["0.0.0.0"]
    assert "tsm-demo: warning: serving on 0.0.0.0 makes the camera visible to everyone on the network; " \
           "add --token SECRET" in err
    assert "browser view: " in err and "frames sent" in err


def test_served_run_reports_what_it_sent(tiny_checkpoint, capsys):
    assert cli.main(["--source", "synthetic", "--weights", str(tiny_checkpoint), "--frames", "3",
                     "--serve", "127.0.0.1:0", "--token", "abc", "--headless"]) == 0
    err = capsys.readouterr().err
    url = next(line for line in err.splitlines() if "browser view at" in line).split(" at ")[1]
    assert urlsplit(url).hostname == "127.0.0.1" and url.endswith("/?token=abc")
    assert "warning" not in err


def test_option_errors(capsys):
    def one_line(*argv):
        assert cli.main(list(argv)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        return err
    assert "--serve expects [HOST:]PORT" in one_line("--source", "synthetic", "--serve", "web")
    assert "--token must not be empty" in one_line("--source", "synthetic", "--serve", "0", "--token", " ")
    assert "--token protects the browser view: pass --serve" in one_line("--source", "synthetic", "--token", "x")
