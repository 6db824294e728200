"""What ``tsm-export --tune`` shows while it runs: a line every half minute instead of MetaSchedule's log.

MetaSchedule writes several console lines per measured candidate (thousands
in a run of half an hour), which buries everything else.  Its console
handler is lowered to warnings for the run (its log files in the tuning
folder's ``logs/`` keep every line), and a heartbeat counts the records it
has written so far.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

METASCHEDULE_LOGGER = "tvm.s_tir.meta_schedule"
RECORDS_FILE = "database_tuning_record.json"   # one line per measured candidate (MetaSchedule's JSONDatabase)


def _lines(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(1 for _ in fh)
    except OSError:
        return 0


@contextlib.contextmanager
def tuning_progress(work_dir: Path, total: int, progress: Callable[[str], None],
                    interval_s: float = 30.0) -> Iterator[None]:
    """Within the block: MetaSchedule's console quiet, and ``progress`` told every ``interval_s`` seconds how many
    of ``total`` candidates have been measured."""
    logger = logging.getLogger(METASCHEDULE_LOGGER)
    level = logger.level
    logger.setLevel(logging.WARNING)   # MetaSchedule gives its console handler this level when the run starts
    records = Path(work_dir) / RECORDS_FILE
    already = _lines(records)
    start = time.monotonic()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval_s):
            done = _lines(records) - already
            progress(f"tuning: {done} of {total} candidates measured, {time.monotonic() - start:.0f} s "
                     f"(MetaSchedule's log: {Path(work_dir) / 'logs'})")

    thread = threading.Thread(target=beat, name="tune-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        logger.setLevel(level)
