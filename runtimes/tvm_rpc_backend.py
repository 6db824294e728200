"""TVM RPC backend: the artifact's library uploaded to a device running TVM's RPC server, streamed remotely.

On the device: ``python -m tvm.exec.rpc_server --host DEVICE_IP --port 9090``
(the server is unauthenticated and runs any library it is sent: bind it to
a trusted network or reach it through an SSH tunnel, see docs/security.md).
Here: ``open_runtime(folder, "tvm-rpc", address="DEVICE:9090")``.  The
library is uploaded once, the Relax VM is created on the device, and the
shift buffers stay there as remote tensors: per frame only the frame goes
out and the logits come back.  :meth:`TvmRpcRuntime.remote_time` measures
the model on the device with TVM's ``time_evaluator``, without network
round-trips in the figure.

TVM's client has no timeout of its own: a device that is switched off or a
network that drops packets would block ``step`` forever.  Connecting and
every step therefore wait at most ``timeout`` seconds (an option of the
backend), and uploading the library that long plus its size at 2 Mbit/s;
after a step timed out the connection is in an unknown state and
the runtime refuses further steps.
"""
from __future__ import annotations

import math
import os
import queue
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable

from online_tsm.console.address import parse_host_port
from online_tsm.console.messages import last_message_line
from online_tsm.errors import OnlineTSMError
from online_tsm.runtimes.base import RuntimeOpenError
from online_tsm.runtimes.library import elf_arch
from online_tsm.runtimes.tvm_backend import ENTRY, TvmRuntime

DEFAULT_PORT = 9090
DEFAULT_TIMEOUT_S = 10.0   # connect and per-step limit; a step of a small model over Wi-Fi takes milliseconds
UPLOAD_BYTES_PER_S = 250_000   # the slowest link allowed for when uploading the library (2 Mbit/s)


class RpcTimeoutError(OnlineTSMError, TimeoutError):
    """The TVM RPC server did not answer within the runtime's ``timeout``."""


def parse_address(address: str | None = None, host: str | None = None, port: int | None = None) -> tuple[str, int]:
    """``"HOST:PORT"`` or ``host``/``port`` -> ``(host, port)``; one clear line if neither is usable."""
    if address:
        return parse_host_port(address, error=RuntimeOpenError,
                               expected=f"backend tvm-rpc expects address HOST:PORT (e.g. 192.168.1.20:{DEFAULT_PORT})")
    if not host:
        raise RuntimeOpenError("backend tvm-rpc needs the device's RPC server: pass address='HOST:PORT' "
                               "(or host= and port=)")
    return str(host), int(port or DEFAULT_PORT)


class _ConnectionThread:
    """One daemon thread that makes every call on the connection, so the caller can stop waiting for it.

    A daemon thread (unlike a ``ThreadPoolExecutor``'s) does not hold up the
    interpreter's exit when it is stuck in a call that never returns.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="tvm-rpc-connection", daemon=True)
        self.thread.start()

    def submit(self, work: Callable[[], Any]) -> Future:
        future: Future = Future()
        self._jobs.put((work, future))
        return future

    def shutdown(self) -> None:
        self._jobs.put(None)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            work, future = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(work())
                except BaseException as exc:  # noqa: BLE001 -- handed to the caller
                    future.set_exception(exc)


class TvmRpcRuntime(TvmRuntime):
    backend = "tvm-rpc"

    def __init__(self, source: str | os.PathLike, *, address: str | None = None, host: str | None = None,
                 port: int | None = None, threads: int | None = None, device_id: int = 0,
                 session_timeout: float = 0, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.address = parse_address(address, host, port)
        if not timeout > 0 or not math.isfinite(timeout):
            raise RuntimeOpenError(f"backend tvm-rpc expects timeout in seconds > 0, got {timeout!r}")
        self.timeout = float(timeout)
        self._session_timeout = session_timeout
        self._broken: str | None = None
        self._worker = _ConnectionThread()
        self.remote: Any = None
        super().__init__(source, threads=threads, device_id=device_id)

    def _open(self, device_id: int, threads: int | None) -> tuple[Any, str]:
        tvm = self._tvm
        from tvm import rpc

        arch = elf_arch(self._library)  # also refuses a .tar of object files
        host, port = self.address
        try:
            self.remote = self._within_timeout(
                lambda: rpc.connect(host, port, session_timeout=self._session_timeout), "connecting")
        except RpcTimeoutError:
            self._worker.shutdown()
            raise
        except Exception as exc:  # noqa: BLE001
            self._worker.shutdown()
            raise RuntimeOpenError(f"could not connect to a TVM RPC server at {host}:{port} "
                                   f"({last_message_line(exc)}); "
                                   f"start one on the device: python -m tvm.exec.rpc_server --host DEVICE_IP "
                                   f"--port {port} (on a trusted network only: the server is unauthenticated)"
                                   ) from exc
        # Content-addressed name: two artifacts never overwrite each other on the device.
        remote_name = f"online_tsm_{self.artifact.manifest.files[self._library.name]['sha256'][:16]}.so"
        kind = self.artifact.target_kind()

        def load() -> tuple[Any, Any]:
            self.remote.upload(str(self._library), target=remote_name)
            lib = self.remote.load_module(remote_name)
            device = self.remote.cuda(device_id) if kind == "cuda" else self.remote.cpu(0)
            vm = tvm.relax.VirtualMachine(lib, device)
            if threads:
                self.remote.get_function("runtime.config_threadpool")(1, int(threads))
            return device, vm

        limit = self.timeout + self._library.stat().st_size / UPLOAD_BYTES_PER_S
        try:
            device, self._vm = self._within_timeout(load, f"uploading and loading {self._library.name}", limit)
        except RpcTimeoutError:
            self._worker.shutdown()
            raise
        except Exception as exc:  # noqa: BLE001
            self._worker.shutdown()
            raise RuntimeOpenError(f"the RPC server at {host}:{port} could not load {self._library.name}, which is "
                                   f"built for {arch} ({kind}): is the device {arch}? "
                                   f"({last_message_line(exc)})") from exc
        return device, f"{kind} ({arch}) device at {host}:{port}"

    def set_instrument(self, hook: Callable[..., int] | None) -> None:
        """Not over RPC: a Python hook cannot run inside the device's VM; use :meth:`remote_time` there."""
        raise RuntimeOpenError("set_instrument needs a local VM (backend tvm); over tvm-rpc use "
                               "runtime.remote_time() for the device's own timing")

    def _invoke(self, args: list[Any]) -> Any:
        # A direct call returns the output tuple as one opaque remote object; the stateful API
        # returns a tuple of remote tensors.
        if self._broken:
            raise RpcTimeoutError(self._broken)
        vm = self._vm

        def call() -> Any:
            vm.set_input(ENTRY, *args)
            vm.invoke_stateful(ENTRY)
            return vm.get_outputs(ENTRY)

        return self._within_timeout(call, "a step")

    def _run(self, frames: Any, state: list[Any]) -> tuple[Any, list[Any]]:
        # The frame upload and the logits download cross the network too: all of the step is under the limit.
        if self._broken:
            raise RpcTimeoutError(self._broken)
        return self._within_timeout(lambda: TvmRuntime._run(self, frames, state), "a step")

    def _within_timeout(self, work: Callable[[], Any], what: str, limit: float | None = None) -> Any:
        """Run ``work`` on the connection's thread; raise :class:`RpcTimeoutError` after ``limit`` s
        (default ``self.timeout``)."""
        if threading.current_thread() is self._worker.thread:
            return work()  # already on the connection's thread (a step's own remote calls)
        limit = self.timeout if limit is None else limit
        future = self._worker.submit(work)
        try:
            return future.result(timeout=limit)
        except FutureTimeout:
            host, port = self.address
            self._broken = (f"the TVM RPC server at {host}:{port} did not answer {what} within {limit:g} s "
                            "(device off, network down, or a model slower than that: pass a larger timeout=); "
                            "open a new runtime once it is reachable")
            raise RpcTimeoutError(self._broken) from None

    def remote_time(self, n: int = 50, repeat: int = 3):
        """Per-frame time on the device (``time_evaluator``, network round-trips excluded)."""
        return self.device_time(n, repeat)

    def _release(self) -> None:
        super()._release()
        self.remote = None  # dropping the session closes the connection
        self._worker.shutdown()
