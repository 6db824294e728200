"""The browser view in a real browser: Debian's chromium driven by selenium, against ``tsm-demo --serve``.

Skipped where chromium or its driver is missing, except in CI (``CI`` set), where .ci/run installs them and
their absence is a set-up error.  ``TSM_SCREENSHOT=docs/browser-view.png`` also saves the page as the
README's screenshot.
"""
from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import require_tools
from online_tsm.demo.app import frame_record
from online_tsm.demo.model import load_demo_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _require_browser() -> None:
    missing = [name for name, found in (("chromium", CHROMIUM), ("chromium-driver", CHROMEDRIVER)) if not found]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip, in the dev extra)")
    require_tools(missing, f"the browser test needs {', '.join(missing)} (apt-get install -y chromium "
                           "chromium-driver)")


@pytest.fixture
def demo_server():
    """``tsm-demo --source synthetic --serve 127.0.0.1:0`` in its own process: (url, process, stderr lines)."""
    proc = subprocess.Popen([sys.executable, "-m", "online_tsm.demo.cli", "--source", "synthetic", "--serve",
                             "127.0.0.1:0", "--threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    err: list[str] = []
    url = None
    deadline = time.monotonic() + 120            # bounds a hang; not a timing assertion
    try:
        while url is None or not any(" classes" in line for line in err):
            try:
                err.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                pytest.fail(f"tsm-demo did not start serving: {''.join(err)}")
            found = re.search(r"browser view at (http://\S+)", err[-1])
            url = url or (found.group(1) if found else None)
        yield url, proc, err, lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,860", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def png(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def read_events(url: str, n: int) -> list[dict]:
    events = []
    with urllib.request.urlopen(url + "events", timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        for raw in resp:
            line = raw.decode()
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if len(events) == n:
                    return events
    return events


def test_the_page_shows_the_live_demo(demo_server):
    _require_browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, proc, err, lines = demo_server
    labels = load_demo_model("torch").runtime.labels
    driver = chromium()
    try:
        driver.set_page_load_timeout(60)
        driver.get(url)
        wait = WebDriverWait(driver, 60)
        # the page names the shown class, one of the model's
        wait.until(lambda d: d.find_element(By.ID, "label").text.strip() in labels)
        assert driver.find_element(By.ID, "label").text.strip() in labels
        assert len(driver.find_elements(By.CSS_SELECTOR, "#top3 .bar b")) == 3
        # the video is live: two screenshots of it differ
        video = driver.find_element(By.ID, "video")
        wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", video) > 0)
        first = png(video.screenshot_as_png)
        assert first.std() > 5                                      # a picture, not a blank box
        wait.until(lambda d: not np.array_equal(png(video.screenshot_as_png), first))
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#timeline li"))
        assert driver.find_element(By.ID, "camera-fps").text.endswith("fps")
        if os.environ.get("TSM_SCREENSHOT"):
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#timeline li")) >= 8)
            Path(os.environ["TSM_SCREENSHOT"]).write_bytes(driver.get_screenshot_as_png())
    finally:
        driver.quit()

    # /events: one JSON object per frame, the fields of --log, the model's labels
    events = read_events(url, 20)
    assert len(events) == 20
    assert all(set(e) == set(frame_record(0, 0.0, None, labels, False, None, 0)) for e in events)
    frames = [e["frame"] for e in events]
    assert frames == sorted(set(frames))
    assert all(e["label"] is None or e["label"] in labels for e in events)
    assert all(t["label"] in labels for e in events for t in e["top3"])

    # SIGTERM stops the server and the demo cleanly
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    summary = ""
    while "frames in" not in summary:
        summary = lines.get(timeout=30)     # the process has ended: its last lines are on their way
    assert "stopped by SIGTERM" in summary
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)
