"""What every ``tsm-*`` command shares: one clear error line instead of a traceback.

A user who mistypes a path should read one sentence naming what was
expected, not forty lines of stack; ``--debug`` brings the stack back.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence


from online_tsm.errors import OnlineTSMError, UserError

__all__ = ["OnlineTSMError", "UserError", "add_debug_flag", "run_cli"]


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def run_cli(main: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser,
            argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, call ``main(args)`` and turn any exception into one ``error:`` line.

    Exit codes: 0 success (or what ``main`` returns), 2 bad input, 1 anything
    unexpected, 130 on Ctrl-C.
    """
    args = parser.parse_args(argv)
    try:
        return int(main(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 -- the point of this function
        if getattr(args, "debug", False):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        known = isinstance(exc, (OnlineTSMError, ValueError, FileNotFoundError, PermissionError, LookupError))
        print(f"error: {message}" + ("" if known else f" ({type(exc).__name__}; rerun with --debug for details)"),
              file=sys.stderr)
        return 2 if known else 1
