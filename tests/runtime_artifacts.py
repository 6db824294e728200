"""The runtime tests' export folder (from conftest's ``export_cache``: written by the exporter users run) and a
loopback TVM RPC server."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest


def copy_artifact(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def small_artifact(export_cache, small_weights) -> Path:
    """The host artifact of conftest's ``model_small`` (shared with the export tests)."""
    return export_cache("small-host", small_weights, "host")


# -- loopback RPC server -------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_rpc_server(log_path: Path, timeout: float = 90.0) -> tuple[subprocess.Popen, int]:
    """``python -m tvm.exec.rpc_server`` on 127.0.0.1 in its own process group; returns once it listens."""
    port = free_port()
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1",
                             "--port", str(port), "--port-end", str(port + 1)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "bind to" in log_path.read_text(errors="replace"):
            return proc, port
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    stop_rpc_server(proc)
    raise RuntimeError(f"TVM RPC server did not start: {log_path.read_text(errors='replace')[-500:]}")


def stop_rpc_server(proc: subprocess.Popen) -> None:
    """Kill the server and the worker processes it forked (its whole process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def rpc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Address ``127.0.0.1:PORT`` of a TVM RPC server that lives as long as the test module."""
    proc, port = start_rpc_server(tmp_path_factory.mktemp("rpc") / "server.log")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop_rpc_server(proc)
