"""Training on several processes or machines with ``torch.distributed`` (``torchrun``).

``torchrun --standalone --nproc_per_node N -m online_tsm.training.cli ...``
starts N copies of ``tsm-train``; each finds its rank in the environment
torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...).
Without those variables everything here is a no-op, so a plain ``tsm-train``
runs exactly as before.

What a distributed run does, and why:

- **DistributedDataParallel** averages the gradients of every step over the
  processes.  The backend is gloo: the training loop runs on the CPU
  (:func:`backend_for` picks nccl for a CUDA device).
- **``--batch-size`` stays the global batch**: each process takes
  ``batch / N`` clips per step, so N processes follow the same learning-rate
  schedule, step count and effective batch as one process on the same data.
- **A DistributedSampler** shards the training clips, reshuffled every epoch
  from ``(seed, epoch)`` (``set_epoch``), identically on every rank.
- **BatchNorm stays as it is** (not synchronised): each process normalises
  with the statistics of its own share of the batch, and DDP broadcasts rank
  0's running statistics at every forward, so the saved model carries rank
  0's.  ``SyncBatchNorm`` needs a GPU backend and is not used.
- **Metrics are reduced over ranks**: training loss/accuracy are summed over
  the processes; validation is sharded and its logits gathered, so every rank
  takes the same "best epoch" decision.
- **Only rank 0 writes** ``best.pt``, ``metrics.json``, the confusion matrix,
  the log and the progress bars.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

# torchrun sets these for every process it starts.
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class DistributedError(ValueError):
    """A distributed run that cannot start or cannot split its work; the message says what to change."""


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank among ``size`` processes, and the collective backend."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes files."""
        return self.rank == 0

    def describe(self) -> str:
        """The first log line of a run, e.g. ``distributed: 2 processes, backend gloo``."""
        return f"distributed: {self.size} processes, backend {self.backend}"


_WORLD = World()


def backend_for(device: torch.device) -> str:
    """nccl for CUDA tensors, gloo for CPU tensors (the collective must reach the tensors it reduces)."""
    return "nccl" if device.type == "cuda" else "gloo"


def setup(timeout_s: float = 1800.0) -> World:
    """Join the process group torchrun describes in the environment; a single-process World without it.

    Safe to call twice (the second call returns the current world).
    """
    global _WORLD
    if _WORLD.distributed or not all(name in os.environ for name in _ENV):
        return _WORLD
    size = int(os.environ["WORLD_SIZE"])
    if size <= 1:
        return _WORLD
    import torch.distributed as dist

    backend = backend_for(torch.device("cpu"))  # the training loop runs on the CPU
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(f"cannot join the torchrun process group ({backend}): {exc}") from None
    _WORLD = World(dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"]), backend)
    return _WORLD


def world() -> World:
    """The world :func:`setup` joined (rank 0 of 1 when not distributed)."""
    return _WORLD


def teardown() -> None:
    """Leave the process group (end of a run)."""
    global _WORLD
    if _WORLD.distributed:
        import torch.distributed as dist

        dist.destroy_process_group()
        _WORLD = World()


def local_batch(batch_size: int) -> int:
    """Clips per step in this process: the global ``--batch-size`` split evenly over the processes."""
    w = _WORLD
    if batch_size % w.size:
        raise DistributedError(f"--batch-size {batch_size} does not split over {w.size} processes; pass a "
                               f"multiple of {w.size} (it is the global batch, shared by all processes)")
    return batch_size // w.size


def shard_train_loader(loader: DataLoader, seed: int) -> DataLoader:
    """The training loader rebuilt over a :class:`DistributedSampler` (``loader`` itself when not distributed)."""
    w = _WORLD
    if not w.distributed:
        return loader
    sampler = DistributedSampler(loader.dataset, num_replicas=w.size, rank=w.rank, shuffle=True, seed=seed,
                                 drop_last=False)
    return _rebuild(loader, sampler, local_batch(loader.batch_size or 1), drop_last=loader.drop_last)


class _Strided(Sampler[int]):
    """Items ``rank, rank + N, ...``: every item once over all ranks (no padding, unlike DistributedSampler)."""

    def __init__(self, n: int, rank: int, size: int) -> None:
        self.indices = list(range(rank, n, size))

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def shard_eval_loader(loader: DataLoader | None) -> DataLoader | None:
    """A validation loader over this rank's share (every clip exactly once over all ranks)."""
    w = _WORLD
    if loader is None or not w.distributed:
        return loader
    return _rebuild(loader, _Strided(len(loader.dataset), w.rank, w.size), loader.batch_size or 1, drop_last=False)


def _rebuild(loader: DataLoader, sampler: Sampler, batch_size: int, drop_last: bool) -> DataLoader:
    return DataLoader(loader.dataset, batch_size=batch_size, sampler=sampler, num_workers=loader.num_workers,
                      drop_last=drop_last, worker_init_fn=loader.worker_init_fn, collate_fn=loader.collate_fn)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffle the shards for ``epoch`` (the same permutation on every rank)."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)


class _ClipForward(nn.Module):
    """``forward(clips) = model.forward_clip(clips, shift)``: DDP synchronises what goes through ``forward``."""

    def __init__(self, model: nn.Module, shift: str) -> None:
        super().__init__()
        self.model = model
        self.shift = shift

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.model.forward_clip(clips, self.shift)


def clip_forward(model: nn.Module, shift: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The training forward: ``model.forward_clip`` directly, or through DistributedDataParallel.

    Call it after the model's last in-place change (memory format); DDP
    broadcasts rank 0's weights when it is built, so every rank starts alike.
    """
    if not _WORLD.distributed:
        return lambda clips: model.forward_clip(clips, shift)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(_ClipForward(model, shift))


def sum_over_ranks(*values: float) -> tuple[float, ...]:
    """Each value summed over all processes (the values themselves when not distributed)."""
    if not _WORLD.distributed:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return tuple(float(v) for v in t)


def gather_rows(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each array concatenated along its first axis over all processes, in rank order."""
    if not _WORLD.distributed:
        return arrays
    import torch.distributed as dist

    parts: list[Any] = [None] * _WORLD.size
    dist.all_gather_object(parts, arrays)
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(len(arrays)))


def gather_result(result: Any) -> Any:
    """An :class:`~online_tsm.training.evaluate.EvalResult` of this rank's shard -> the one of all clips."""
    if not _WORLD.distributed:
        return result
    logits, labels = gather_rows(result.logits, result.labels)
    return type(result)(logits, labels)


def barrier() -> None:
    if _WORLD.distributed:
        import torch.distributed as dist

        dist.barrier()
