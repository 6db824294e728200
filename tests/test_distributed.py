"""``torchrun --standalone --nproc_per_node 2 -m online_tsm.training.cli``: two processes, gloo, loopback.

A tiny synthetic folder set (32 clips, 8 classes) fine-tuned from the
shipped default model for one epoch at a small learning rate: the accuracy
of the default model on this data is near 1, so both the 1-process and the
2-process run must stay far above chance (1/8) whatever the CPU, and close
to each other.  The assertions are about the plumbing (one world line, one
set of files, rank 0 only) and that property, not about a thin margin.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from online_tsm.training import cli, distributed

pytestmark = pytest.mark.slow  # several training processes

TRAIN = ["--init", "default", "--segments", "4", "--epochs", "1", "--batch-size", "8", "--lr", "0.0001",
         "--optimizer", "adamw", "--no-augment", "--threads", "1", "--no-progress", "--val-fraction", "0.25"]


def torchrun(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "online_tsm.training.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist") / "data"
    assert cli.main(["make-synthetic", str(root), "--clips", "32", "--size", "128x112"]) == 0
    return root


def test_two_processes_train_like_one(data, tmp_path):
    run = torchrun("--data", str(data), *TRAIN, "--out", str(tmp_path / "two"))
    assert run.returncode == 0, run.stderr[-2000:]
    ours = [line for line in run.stderr.splitlines() if not line.startswith(("*", "Setting OMP")) and line.strip()]
    assert ours[0] == "distributed: 2 processes, backend gloo"
    assert sum("epoch 1/1" in line for line in run.stderr.splitlines()) == 1  # rank 0 logs, rank 1 does not
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["best.pt", "confusion.png", "metrics.json"]
    assert run.stdout.count("best checkpoint:") == 1
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())

    assert cli.main(["--data", str(data), *TRAIN, "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    # the same 8 validation clips; far above chance (0.125) in both runs, and within two clips of each other
    assert two["clip_top1"] >= 0.75 and one["clip_top1"] >= 0.75
    assert abs(two["clip_top1"] - one["clip_top1"]) <= 0.25
    assert two["clip_stream_max_abs_diff"] < 1e-3  # the checkpoint rank 0 saved streams exactly


def test_batch_that_does_not_split_is_refused(data, tmp_path):
    run = torchrun("--data", str(data), *TRAIN, "--batch-size", "7", "--out", str(tmp_path / "x"), timeout=120)
    assert run.returncode != 0
    assert "error: --batch-size 7 does not split over 2 processes; pass a multiple of 2" in run.stderr
    assert "Traceback" not in run.stderr.split("error: --batch-size")[0]
    assert not (tmp_path / "x" / "best.pt").exists()


def test_single_process_world_is_a_no_op():
    world = distributed.world()
    assert (world.size, world.rank, world.is_main, world.distributed) == (1, 0, True, False)
    assert distributed.sum_over_ranks(1.0, 2.0) == (1.0, 2.0)
    assert distributed.local_batch(7) == 7
    assert distributed.backend_for(__import__("torch").device("cpu")) == "gloo"
    assert distributed.backend_for(__import__("torch").device("cuda", 0)) == "nccl"
