"""Writing files so that a crash, a kill or a second process never leaves half of one behind.

Every cache entry and output file of the toolkit (checkpoints, engines,
downloads, tuning records) is written to a temporary name in the same folder
and renamed over the final name, which is atomic on one file system: a reader
sees the old file or the new one, never a torn one.  Where two processes can
meet on one file (a shared cache), :func:`file_lock` makes the second wait.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it is renamed to ``path``.

    On an exception the temporary file is removed and ``path`` keeps its old
    content (or stays absent).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; the final file gets the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write(path: str | os.PathLike, data: bytes | str, encoding: str = "utf-8") -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    payload = data.encode(encoding) if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if needed) for the duration of the block.

    A second process blocks until the first leaves; ``on_wait`` is called
    once when it has to wait, so that it can say why it is not moving.  The
    kernel drops the lock when a holder dies, so a killed process never
    leaves a stale lock.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def natural_key(path: str | os.PathLike) -> list[object]:
    """Sort key that orders numbered names as people count: ``1.png, 2.png, ..., 10.png`` (not ``1, 10, 2``).

    Extracted video frames are numbered without zero padding often enough
    that a plain sort would scramble the motion.
    """
    import re

    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", Path(path).name)]


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MB chunks (models and libraries can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cached_file(path: str | os.PathLike, make: Callable[[], bytes]) -> Path:
    """``path``, first written with ``make()`` if it does not exist: once, atomically, under a lock.

    For caches that are expensive to fill (a TensorRT engine takes minutes):
    a second process waits for the first's result instead of building its
    own, and a build that is killed or fails leaves nothing under ``path``.
    """
    path = Path(path)
    if path.is_file():
        return path
    with file_lock(path.with_name(path.name + ".lock")):
        if not path.is_file():  # another process may have written it while this one waited
            atomic_write(path, make())
    return path
