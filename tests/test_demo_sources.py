"""Demo frame sources: the threaded camera reader with fake captures, folders, files, synthetic frames."""
from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from online_tsm.demo.sources import (CameraLostError, CameraSource, FolderSource, SourceError, SyntheticSource,
                                     ThreadedReader, VideoFileSource, open_source)
from online_tsm.fileio import natural_key


def numbered(i: int) -> np.ndarray:
    """A tiny frame that carries its own sequence number."""
    return np.full((4, 4, 3), i, np.uint8)


class BurstCapture:
    """Delivers ``n`` frames as fast as it can, then fails (a camera unplugged)."""

    def __init__(self, n: int) -> None:
        self.n, self.i, self.released = n, 0, False

    def read(self):
        if self.i >= self.n:
            return False, None
        self.i += 1
        return True, numbered(self.i - 1)

    def release(self) -> None:
        self.released = True


class GatedCapture:
    """A slow camera: a frame exists only when the test releases the gate."""

    def __init__(self) -> None:
        self.gate = threading.Semaphore(0)
        self.i = 0
        self.released = False

    def read(self):
        if not self.gate.acquire(timeout=0.05):
            return False, None
        self.i += 1
        return True, numbered(self.i - 1)

    def release(self) -> None:
        self.released = True


def test_fast_camera_slow_consumer_keeps_only_the_newest_frames():
    cap = BurstCapture(50)
    reader = ThreadedReader(cap, maxsize=2, max_failures=1).start()
    reader._thread.join(5)  # the whole burst arrives while the consumer is "busy"
    assert reader.ended and reader.produced == 50
    assert reader.dropped == 48
    got = [reader.get(timeout=1)[0, 0, 0] for _ in range(2)]
    assert got == [48, 49]                      # the oldest were thrown away, order kept
    assert reader.get(timeout=1) is None        # then the end of the stream


def test_slow_camera_makes_the_consumer_wait_but_drops_nothing():
    cap = GatedCapture()
    reader = ThreadedReader(cap, maxsize=1, max_failures=10 ** 6).start()
    with pytest.raises(TimeoutError):
        reader.get(timeout=0.05)                # no frame yet: the consumer is told, not hung
    for expected in range(5):
        cap.gate.release()
        assert reader.get(timeout=5)[0, 0, 0] == expected
    assert reader.dropped == 0
    reader.stop()
    assert reader.ended and reader.get(timeout=1) is None


def test_steady_camera_frames_arrive_in_order_and_are_all_accounted_for():
    counter = iter(range(10 ** 6))

    class Counting:
        def read(self):
            threading.Event().wait(0.001)
            return True, np.full((2, 2), next(counter), np.int64)

        def release(self):
            pass

    reader = ThreadedReader(Counting(), maxsize=3).start()
    received = []
    for _ in range(20):
        received.append(int(reader.get(timeout=5)[0, 0]))
        threading.Event().wait(0.003)           # a consumer slower than the camera
    reader.stop()
    rest = []
    while (frame := reader.get(timeout=1)) is not None:
        rest.append(int(frame[0, 0]))
    seen = received + rest
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert reader.produced == len(seen) + reader.dropped
    assert seen[-1] == reader.produced - 1      # the newest frame is never the one dropped


def test_camera_source_reads_on_its_thread_and_counts_drops():
    cap = BurstCapture(30)
    source = CameraSource(0, capture=cap, queue_size=1)
    assert source.live and source.read()[0, 0, 0] == 0   # the probe frame, then the thread starts
    source._reader._thread.join(5)
    assert source.read()[0, 0, 0] == 29
    assert source.dropped == 28
    with pytest.raises(CameraLostError, match=r"camera 0 stopped delivering frames \(unplugged\?\); "
                                              "pass --reconnect SECONDS to keep trying"):
        source.read()                           # an unplugged camera is not the end of a stream
    source.close()
    assert cap.released


def test_camera_that_opens_but_gives_no_frame():
    with pytest.raises(SourceError, match="camera 3 opened but delivered no frame"):
        CameraSource(3, capture=BurstCapture(0))


def test_camera_that_stalls_is_reported():
    cap = GatedCapture()
    cap.gate.release()
    source = CameraSource(1, capture=cap, frame_timeout=0.1)
    source.read()
    with pytest.raises(CameraLostError, match="camera 1 delivered no frame for 0.1 s"):
        source.read()
    source.close()


class FakeClock:
    """Time that moves only when the code under test sleeps: backoff is checked without waiting for it."""

    def __init__(self) -> None:
        self.now, self.pauses = 100.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def unplugged(index: int = 0):
    raise SourceError(f"cannot open camera {index}: no such camera, or it is in use (--source takes ...)")


def test_lost_camera_is_reopened_with_backoff_and_a_new_generation(capsys):
    """Unplugged after 3 frames, absent for two tries, then back: frames go on from the new capture."""
    clock = FakeClock()
    openings = iter([unplugged, unplugged, lambda: BurstCapture(4)])
    source = CameraSource(0, capture=BurstCapture(3), queue_size=10, reconnect=30, opener=lambda: next(openings)(),
                          clock=clock, sleep=clock.sleep)
    assert [source.read()[0, 0, 0] for _ in range(3)] == [0, 1, 2] and source.generation == 0
    assert source.read()[0, 0, 0] == 0             # the new camera's first frame
    assert source.generation == 1 and clock.pauses == [0.25, 0.5]
    err = capsys.readouterr().err
    assert "camera 0 stopped delivering frames (unplugged?); reopening it for up to 30 s" in err
    assert "camera 0 is back after 0.8 s; predictions start over" in err
    source.close()


def test_lost_camera_gives_up_after_reconnect_seconds():
    clock = FakeClock()
    source = CameraSource(2, capture=BurstCapture(1), reconnect=3, opener=lambda: unplugged(2),
                          clock=clock, sleep=clock.sleep)
    source.read()
    with pytest.raises(CameraLostError, match=r"camera 2 stopped delivering frames \(unplugged\?\) and could not "
                                              r"be reopened within 3 s \(last try: cannot open camera 2: no such "
                                              r"camera, or it is in use\)$") as info:
        source.read()
    assert info.value.exit_code == 3
    assert clock.pauses == [0.25, 0.5, 1.0, 1.25]   # doubling, the last one cut at the deadline
    source.close()


def test_a_stop_request_ends_a_reconnect_wait():
    clock = FakeClock()
    source = CameraSource(0, capture=BurstCapture(1), reconnect=60, opener=unplugged, clock=clock,
                          sleep=lambda s: (clock.sleep(s), source.cancel()))
    source.read()
    assert source.read() is None and clock.pauses == [0.25]
    source.close()


def test_a_stalled_camera_is_reopened_too():
    cap = GatedCapture()
    cap.gate.release()
    source = CameraSource(1, capture=cap, frame_timeout=0.1, reconnect=5, opener=lambda: BurstCapture(2))
    source.read()
    assert source.read()[0, 0, 0] == 0 and source.generation == 1
    source.close()


def test_missing_camera_index():
    with pytest.raises(SourceError, match=r"cannot open camera 99: no such camera, or it is in use"):
        open_source("99")


def test_folder_in_natural_order_skipping_other_files(tmp_path):
    for i in (10, 2, 1):
        cv2.imwrite(str(tmp_path / f"frame_{i}.png"), numbered(i))
    (tmp_path / "notes.txt").write_text("not a frame")
    source = open_source(str(tmp_path))
    assert isinstance(source, FolderSource)
    assert [source.read()[0, 0, 0] for _ in range(3)] == [1, 2, 10]
    assert source.read() is None
    assert sorted(["b10", "b9", "a1"], key=lambda s: natural_key(Path(s))) == ["a1", "b9", "b10"]


def test_empty_folder(tmp_path):
    (tmp_path / "readme.md").write_text("no images")
    with pytest.raises(SourceError, match=r"no image files \(.jpg, .*\) in folder"):
        open_source(str(tmp_path))


def test_corrupt_image_in_folder(tmp_path):
    (tmp_path / "0001.jpg").write_bytes(b"not a jpeg")
    source = open_source(str(tmp_path))
    with pytest.raises(SourceError, match=r"cannot read image .*0001.jpg"):
        source.read()


def test_missing_and_unreadable_video_files(tmp_path):
    with pytest.raises(SourceError, match=r"no such video file or folder: .*nope.mp4 \(--source takes"):
        open_source(str(tmp_path / "nope.mp4"))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(SourceError, match=r"cannot read .*bad.mp4 as a video"):
        open_source(str(bad))


def test_video_file_every_frame_in_order(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (32, 24))
    for i in range(7):
        writer.write(np.full((24, 32, 3), i * 30, np.uint8))
    writer.release()
    source = open_source(str(path))
    assert isinstance(source, VideoFileSource) and source.fps == pytest.approx(25)
    frames = []
    while (f := source.read()) is not None:
        frames.append(f)
    source.close()
    assert len(frames) == 7 and frames[0].shape == (24, 32, 3)
    assert [int(round(f.mean() / 30)) for f in frames] == list(range(7))


def test_synthetic_source_is_endless_and_cycles_motions():
    source = open_source("synthetic", width=64, height=48)
    assert isinstance(source, SyntheticSource)
    frames = [source.read() for _ in range(source.clip_frames * 2 + 1)]
    assert all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for f in frames)
    again = SyntheticSource(64, 48)
    assert np.array_equal(again.read(), frames[0])   # reproducible for a seed
