"""The one family of errors online-tsm raises on purpose.

Every error the toolkit raises about the user's input, files or machine
derives from :class:`OnlineTSMError`, so that a program embedding it can
catch "anything online-tsm refused" in one ``except`` and let real bugs
through.  The typed errors keep their old built-in base too (``ValueError``
for bad input, ``RuntimeError`` for failed work), so code written against
those keeps working.

The classes that belong to one module live there (``CheckpointError`` in
:mod:`online_tsm.checkpoint`, ``ManifestError`` in the export manifest,
``RuntimeOpenError`` in the runtimes); the ones the core needs before any of
those exist live here.
"""
from __future__ import annotations


class OnlineTSMError(Exception):
    """Base of every error online-tsm raises deliberately (bad input, unusable file, missing tool)."""


class UserError(OnlineTSMError):
    """A problem with the user's input or machine, reported by the ``tsm-*`` commands as one line (exit code 2)."""


class FrameError(OnlineTSMError, ValueError):
    """A frame or image of the wrong type, shape, dtype, layout or values (NaN, zero size)."""
