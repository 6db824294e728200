"""What every ``tsm-*`` command shares: one clear error line instead of a traceback.

A user who mistypes a path should read one sentence naming what was
expected, not forty lines of stack; ``--debug`` brings the stack back.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
import threading
from typing import Callable, Iterator, Sequence

from online_tsm.errors import OnlineTSMError
from online_tsm.console.messages import first_line

__all__ = ["add_debug_flag", "number_type", "port_number", "positive_float", "positive_int", "run_cli", "seconds"]


def number_type(cast: Callable[[str], float], what: str, minimum: float | None = None,
                maximum: float | None = None, *, above: float | None = None) -> Callable[[str], float]:
    """An argparse ``type=`` that parses ``cast(text)`` and checks its range, naming what was expected.

    ``minimum``/``maximum`` are inclusive bounds, ``above`` an exclusive one; infinities and NaN are refused.
    """
    def parse(text: str) -> float:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        if above is not None and not value > above:
            raise argparse.ArgumentTypeError(f"expected {what} > {above:g}, got {text}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what} >= {minimum:g}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"expected {what} <= {maximum:g}, got {text}")
        return value

    parse.__name__ = what  # argparse names the type in its own messages
    return parse


positive_int = number_type(int, "a whole number", minimum=1)
positive_float = number_type(float, "a number", above=0)
seconds = number_type(float, "a number of seconds", minimum=0)
port_number = number_type(int, "a port number (0: any free port)", minimum=0, maximum=65535)


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program was so that it unwinds (and cleans up) as on Ctrl-C."""


# Set when SIGTERM arrived: a library that catches the exception in a callback (TVM's FFI does) re-raises it as
# another type, and the run still ended because it was told to.
_TERMINATED = threading.Event()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, ``timeout``, systemd) unwinds like Ctrl-C, so clean-up code runs.

    Python's default for SIGTERM ends the process on the spot: an export's
    staging folder or a half-written temporary file would stay behind.  Only
    installed from the main thread over the default handler (commands that
    handle SIGTERM themselves, like the demo, keep theirs).
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        _TERMINATED.set()
        raise Terminated

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_cli(main: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser,
            argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, call ``main(args)`` and turn any exception into one ``error:`` line.

    Exit codes: 0 success (or what ``main`` returns), 2 bad input, 1 anything
    unexpected, 130 on Ctrl-C, 143 on SIGTERM.
    """
    args = parser.parse_args(argv)
    _TERMINATED.clear()
    try:
        with _sigterm_as_interrupt():
            return int(main(args) or 0)
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 -- the point of this function
        if _TERMINATED.is_set():
            print("terminated", file=sys.stderr)
            return 143
        if getattr(args, "debug", False):
            raise
        message = first_line(exc)
        known = isinstance(exc, (OnlineTSMError, ValueError, FileNotFoundError, PermissionError, LookupError))
        print(f"error: {message}" + ("" if known else f" ({type(exc).__name__}; rerun with --debug for details)"),
              file=sys.stderr)
        return 2 if known else 1
