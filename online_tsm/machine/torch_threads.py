"""A torch thread count for one piece of work, put back afterwards.

``torch.set_num_threads`` is process-wide: a training run or an export
called from a user's program (or a test) would otherwise leave the caller's
torch on the count it asked for.
"""
from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch threads (``None`` or 0: leave torch's choice) and restore the count."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
