"""Pretrained weights as data, and their download into a verified cache.

An entry says where a checkpoint lives and how to feed it (labels, input
size, mean/std).  Downloading is the only network access of the toolkit; it
writes to a cache directory and checks sha256 so that a truncated or
substituted file is never loaded.
"""
from __future__ import annotations

import http.client
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from online_tsm.errors import OnlineTSMError
from online_tsm.fileio import atomic_write, file_lock, sha256_file
from online_tsm.labels import JESTER_LABELS
from online_tsm.preprocess import IMAGENET_MEAN, IMAGENET_STD


class WeightsError(OnlineTSMError, RuntimeError):
    """A named weight could not be found, fetched or verified."""


@dataclass(frozen=True)
class WeightsEntry:
    name: str
    filename: str
    urls: tuple[str, ...]
    # Upstream never published a checksum.  ``None`` means trust-on-first-use:
    # the first download's digest is recorded next to the file and checked on
    # every later use, and a warning says so.
    sha256: str | None
    labels: tuple[str, ...]
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    width_mult: float = 1.0
    description: str = ""
    aliases: tuple[str, ...] = field(default=())


WEIGHTS: dict[str, WeightsEntry] = {
    e.name: e
    for e in (
        WeightsEntry(
            name="jester-mobilenetv2-online",
            filename="mobilenetv2_jester_online.pth.tar",
            urls=(
                "https://hanlab18.mit.edu/projects/tsm/models/mobilenetv2_jester_online.pth.tar",
                "https://hanlab.mit.edu/projects/tsm/models/mobilenetv2_jester_online.pth.tar",
                "https://file.lzhu.me/projects/tsm/models/mobilenetv2_jester_online.pth.tar",
            ),
            sha256=None,
            labels=JESTER_LABELS,
            description="Upstream online-demo MobileNetV2 TSM trained on 20BN-Jester (27 gestures)",
            aliases=("jester",),
        ),
    )
}


# The small model trained on the synthetic gesture set and shipped inside the package
# (see ``tsm-train``); ``"default"`` names it wherever weights are asked for.
DEFAULT_NAME = "default"
DEFAULT_ASSET = Path(__file__).parent / "assets" / "default-synthetic.pt"


def default_weights() -> Path | None:
    """Path of the shipped default model, or ``None`` in a build that does not ship it."""
    return DEFAULT_ASSET if DEFAULT_ASSET.is_file() else None


def find_entry(name: str) -> WeightsEntry | None:
    """The registry entry called ``name`` (or one of its aliases), if any."""
    for entry in WEIGHTS.values():
        if name == entry.name or name in entry.aliases:
            return entry
    return None


def cache_dir() -> Path:
    """``$ONLINE_TSM_CACHE`` or ``$XDG_CACHE_HOME/online-tsm`` (``~/.cache/online-tsm``)."""
    if os.environ.get("ONLINE_TSM_CACHE"):
        return Path(os.environ["ONLINE_TSM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "online-tsm"


class IncompleteDownload(OSError):
    """The server sent fewer bytes than it announced; what came is kept in ``.part`` to resume from."""


# What a failed transfer can raise: connection and protocol errors, timeouts, a body cut short.
DOWNLOAD_ERRORS = (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException)
ATTEMPTS_PER_URL = 3


def _download(url: str, dest: Path) -> None:
    """Fetch ``url`` into ``dest`` via ``dest.part``, resuming a ``.part`` left by an interrupted try.

    The body must have the announced Content-Length; a short one raises
    :class:`IncompleteDownload` and is never renamed to ``dest``.  The caller
    holds the download lock, so no other process writes the same ``.part``.
    """
    tmp = dest.with_name(dest.name + ".part")
    have = tmp.stat().st_size if tmp.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=30) as resp:
        resumed = have > 0 and getattr(resp, "status", None) == 206
        start = have if resumed else 0   # a server that ignores Range sends everything again
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else 0
        done = start
        with open(tmp, "ab" if resumed else "wb") as out:
            for chunk in iter(lambda: resp.read(1 << 16), b""):
                out.write(chunk)
                done += len(chunk)
                if total and sys.stderr.isatty():
                    print(f"\r  {done / 1e6:6.1f} / {total / 1e6:.1f} MB", end="", file=sys.stderr)
    if total and sys.stderr.isatty():
        print(file=sys.stderr)
    if total and done != total:
        raise IncompleteDownload(f"got {done} of {total} bytes")
    tmp.replace(dest)


def _download_any(entry: WeightsEntry, path: Path) -> None:
    """Try each URL of ``entry`` up to :data:`ATTEMPTS_PER_URL` times (resuming); raise one line if none works."""
    print(f"Downloading {entry.name} to {path} ...", file=sys.stderr)
    errors = []
    for url in entry.urls:
        for attempt in range(1, ATTEMPTS_PER_URL + 1):
            try:
                _download(url, path)
                return
            except urllib.error.HTTPError as exc:
                errors.append(f"{url}: {exc}")
                break                   # the server answered: retrying will not change its mind
            except DOWNLOAD_ERRORS as exc:
                errors.append(f"{url}: {exc or type(exc).__name__}")
                if isinstance(exc, urllib.error.URLError) and not isinstance(exc.reason, TimeoutError):
                    break               # refused, unknown host: the next URL, not the same one again
                if attempt < ATTEMPTS_PER_URL:
                    time.sleep(min(8.0, 0.5 * 2 ** attempt))
    raise WeightsError(
        f"could not download {entry.name} (offline?); tried {len(entry.urls)} URLs ({errors[-1]}). "
        f"Copy {entry.filename} into {path.parent} by hand, or pass a local path.")


def fetch_weights(name: str, directory: str | os.PathLike | None = None) -> Path:
    """Path of the verified local copy of registry entry ``name``, downloading it if needed."""
    entry = find_entry(name)
    if entry is None:
        raise WeightsError(f"unknown weights name {name!r}; known: {', '.join(sorted(WEIGHTS))}")
    folder = Path(directory) if directory else cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / entry.filename
    recorded = folder / (entry.filename + ".sha256")
    # Two processes asking at once: the second waits for the first's download instead of writing the same
    # .part; the digest is checked and recorded under the same lock.
    with file_lock(folder / (entry.filename + ".lock"),
                   lambda: print(f"waiting for another process downloading {entry.name}", file=sys.stderr)):
        if not path.exists():
            _download_any(entry, path)
        actual = sha256_file(path)
        expected = entry.sha256 or (recorded.read_text().strip() if recorded.exists() else None)
        if expected is None:
            # Only complete downloads reach here (a short body is never renamed into place).
            atomic_write(recorded, actual + "\n")
            print(f"warning: {entry.name} has no published sha256; recorded {actual[:16]}... on first use "
                  f"in {recorded} and will check it from now on", file=sys.stderr)
        elif actual != expected:
            start_over = f"delete {path} and {recorded}" if entry.sha256 is None else f"delete {path}"
            raise WeightsError(f"sha256 mismatch for {path}: expected {expected}, got {actual}; to start over, "
                               f"{start_over}, then run again to download it")
    return path
