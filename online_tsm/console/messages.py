"""One line out of a long error: what a user reads instead of a library's pages of context."""
from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's message, or its type name when the message is empty.

    Library errors (TVM's, ONNX's) carry pages of context; a user needs the
    sentence that says what went wrong.
    """
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def last_message_line(exc: BaseException, limit: int = 300) -> str:
    """The last line of an error's text that is not a stack frame, or its type name; at most ``limit`` characters.

    TVM's errors print their C++ and Python stack first and the sentence that
    says what went wrong last, so :func:`first_line` would quote a frame.
    (``export/device/run_template.py`` runs without online-tsm and keeps its own copy.)
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("File ", "Traceback", "at ", "0:", "1:"))]
    return (useful[-1] if useful else type(exc).__name__)[:limit]
