"""Pretrained weights as data, and their download into a verified cache.

An entry says where a checkpoint lives and how to feed it (labels, input
size, mean/std).  Downloading is the only network access of the toolkit; it
writes to a cache directory and checks sha256 so that a truncated or
substituted file is never loaded.
"""
from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from online_tsm.errors import OnlineTSMError
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


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, dest: Path) -> None:
    tmp = dest.with_suffix(dest.suffix + ".part")
    with urllib.request.urlopen(url, timeout=30) as resp, open(tmp, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0)
        done = 0
        for chunk in iter(lambda: resp.read(1 << 16), b""):
            out.write(chunk)
            done += len(chunk)
            if total and sys.stderr.isatty():
                print(f"\r  {done / 1e6:6.1f} / {total / 1e6:.1f} MB", end="", file=sys.stderr)
    if total and sys.stderr.isatty():
        print(file=sys.stderr)
    tmp.replace(dest)


def fetch_weights(name: str, directory: str | os.PathLike | None = None) -> Path:
    """Path of the verified local copy of registry entry ``name``, downloading it if needed."""
    entry = find_entry(name)
    if entry is None:
        raise WeightsError(f"unknown weights name {name!r}; known: {', '.join(sorted(WEIGHTS))}")
    folder = Path(directory) if directory else cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / entry.filename
    recorded = folder / (entry.filename + ".sha256")
    if not path.exists():
        print(f"Downloading {entry.name} to {path} ...", file=sys.stderr)
        errors = []
        for url in entry.urls:
            try:
                _download(url, path)
                break
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                errors.append(f"{url}: {exc}")
        else:
            raise WeightsError(
                f"could not download {entry.name} (offline?); tried {len(entry.urls)} URLs ({errors[-1]}). "
                f"Copy {entry.filename} into {folder} by hand, or pass a local path.")
    actual = sha256_file(path)
    expected = entry.sha256 or (recorded.read_text().strip() if recorded.exists() else None)
    if expected is None:
        recorded.write_text(actual + "\n")
        print(f"warning: {entry.name} has no published sha256; recorded {actual[:16]}... on first use "
              f"in {recorded} and will check it from now on", file=sys.stderr)
    elif actual != expected:
        raise WeightsError(f"sha256 mismatch for {path}: expected {expected}, got {actual}; "
                           "delete the file to download it again")
    return path
