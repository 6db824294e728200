"""The export folder as a transaction: built in a staging folder beside the target, published by renames.

A half-written artifact must never sit where a user (or a device copy) would
take it for a finished one, and a user's folder that is not an export must
never be replaced.  So the export writes into a staging folder on the same
file system, moves the previous export aside, renames the new one into
place, and only then deletes the old one; a killed export is cleaned up by
the next one.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from online_tsm.errors import UserError
from online_tsm.manifest import ARTIFACT_FORMAT, MANIFEST_NAME


def _is_artifact_folder(path: Path) -> bool:
    """Whether ``path`` holds an online-tsm export: a ``manifest.json`` of our format, not just any manifest."""
    try:
        data = json.loads((path / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == ARTIFACT_FORMAT


def prepare_out_dir(out_dir: str | os.PathLike, force: bool) -> Path:
    """A fresh staging folder to export into; :func:`publish_out_dir` moves it to ``out_dir`` when complete.

    An existing non-empty ``out_dir`` needs ``force`` and must be an online-tsm
    export (its manifest says so): a folder with some other ``manifest.json``
    (a web app's, an extension's) is never touched.  The staging folder lies
    beside ``out_dir`` (same file system, so the final move is a rename) and
    has the same name, so files that mention the folder name are right.
    """
    path = Path(out_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"output path {path} exists and is not a folder")
    _sweep_killed_exports(path)
    if path.is_dir() and any(path.iterdir()):
        if not force:
            raise UserError(f"output folder {path} already exists and is not empty; pass --force to replace it")
        if not _is_artifact_folder(path):
            raise UserError(f"refusing to replace {path}: it is not a tsm-export artifact folder (expected a "
                            f"{MANIFEST_NAME} of format {ARTIFACT_FORMAT!r}); choose another -o")
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = Path(tempfile.mkdtemp(prefix=f"{_holder_prefix(path)}", dir=path.parent))
    (holder / OWNER_FILE).write_text(f"{os.getpid()}\n")
    staging = holder / path.name
    staging.mkdir()
    return staging


OWNER_FILE = "owner.pid"   # in a staging folder's holder: the exporting process


def _holder_prefix(path: Path) -> str:
    return f".{path.name}.tsm-export-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True   # someone else's process
    return True


def _sweep_killed_exports(path: Path) -> None:
    """Clear what an export killed outright (SIGKILL, power loss) left beside ``path``.

    A staging folder is removed once the process that made it is gone; if
    that process had already moved the previous export aside to publish the
    new one, the previous export is put back first.  Folders without an
    owner file, or whose owner still runs, are left alone.
    """
    if not path.parent.is_dir():
        return
    for holder in path.parent.glob(f"{_holder_prefix(path)}*"):
        try:
            pid = int((holder / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if _process_alive(pid):
            continue
        previous = holder / f"{path.name}.old"
        if previous.is_dir() and not path.exists():
            os.rename(previous, path)
        shutil.rmtree(holder, ignore_errors=True)


def publish_out_dir(staging: Path, out_dir: str | os.PathLike) -> Path:
    """Move the complete export ``staging`` to ``out_dir``, replacing the artifact (or empty folder) there.

    The old artifact is renamed aside first and deleted only once the new
    one is in place, so at every moment ``out_dir`` holds a complete export.
    """
    path = Path(out_dir).expanduser()
    holder = staging.parent
    old = holder / f"{path.name}.old"
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()
    elif path.exists():
        os.rename(path, old)
    try:
        os.rename(staging, path)
    except OSError:
        if old.exists() and not path.exists():
            os.rename(old, path)     # put the previous export back
        raise
    shutil.rmtree(holder, ignore_errors=True)
    return path


def discard_out_dir(staging: Path) -> None:
    """Remove a staging folder after a failed export; ``out_dir`` was never touched."""
    shutil.rmtree(staging.parent, ignore_errors=True)
