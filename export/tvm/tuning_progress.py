"""What ``tsm-export --tune`` shows while it runs: a line every half minute instead of MetaSchedule's log.

MetaSchedule writes several console lines per measured candidate (thousands
in a run of half an hour), which buries everything else.  Its console
handler is lowered to warnings for the run (its log files in the tuning
folder's ``logs/`` keep every line), and a heartbeat says how many candidates
have been built and sent for timing (from the scheduler's log) and how many
measurements are recorded.  Both counts are needed: MetaSchedule writes its
records only when it collects a round's results, which on the first round
comes after every function has had its candidates built (minutes).
"""
from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

METASCHEDULE_LOGGER = "tvm.s_tir.meta_schedule"
RECORDS_FILE = "database_tuning_record.json"   # one line per measured candidate (MetaSchedule's JSONDatabase)
SCHEDULER_LOG = "logs/tvm.s_tir.meta_schedule.logging.task_scheduler.log"
SENT_TO_RUNNER = re.compile(rb"Sending (\d+) valid sample\(s\) to runner")


def _lines(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(1 for _ in fh)
    except OSError:
        return 0


def _sent_to_runner(path: Path) -> int:
    """Candidates MetaSchedule's scheduler has built and handed to the runner, counted from its log."""
    try:
        return sum(int(m.group(1)) for m in SENT_TO_RUNNER.finditer(path.read_bytes()))
    except OSError:
        return 0


@contextlib.contextmanager
def tuning_progress(work_dir: Path, total: int, progress: Callable[[str], None],
                    interval_s: float = 30.0) -> Iterator[None]:
    """Within the block: MetaSchedule's console quiet, and ``progress`` told every ``interval_s`` seconds how many
    of ``total`` candidates have been built and how many measured."""
    logger = logging.getLogger(METASCHEDULE_LOGGER)
    level = logger.level
    logger.setLevel(logging.WARNING)   # MetaSchedule gives its console handler this level when the run starts
    records = Path(work_dir) / RECORDS_FILE
    scheduler_log = Path(work_dir) / SCHEDULER_LOG
    already, already_sent = _lines(records), _sent_to_runner(scheduler_log)
    start = time.monotonic()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval_s):
            built = _sent_to_runner(scheduler_log) - already_sent
            measured = _lines(records) - already
            progress(f"tuning: {built} of {total} candidates built, {measured} measured, "
                     f"{time.monotonic() - start:.0f} s (MetaSchedule's log: {Path(work_dir) / 'logs'})")

    thread = threading.Thread(target=beat, name="tune-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        logger.setLevel(level)
