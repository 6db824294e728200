"""TVM RPC backend: the artifact's library uploaded to a device running TVM's RPC server, streamed remotely.

On the device: ``python -m tvm.exec.rpc_server --host 0.0.0.0 --port 9090``.
Here: ``open_runtime(folder, "tvm-rpc", address="DEVICE:9090")``.  The
library is uploaded once, the Relax VM is created on the device, and the
shift buffers stay there as remote tensors: per frame only the frame goes
out and the logits come back.  :meth:`TvmRpcRuntime.remote_time` measures
the model on the device with TVM's ``time_evaluator``, without network
round-trips in the figure.
"""
from __future__ import annotations

import os
from typing import Any

from online_tsm.runtimes.base import RuntimeOpenError
from online_tsm.runtimes.library import elf_arch
from online_tsm.runtimes.tvm_backend import ENTRY, TvmRuntime, _first_line

DEFAULT_PORT = 9090


def parse_address(address: str | None = None, host: str | None = None, port: int | None = None) -> tuple[str, int]:
    """``"HOST:PORT"`` or ``host``/``port`` -> ``(host, port)``; one clear line if neither is usable."""
    if address:
        name, sep, number = str(address).rpartition(":")
        if not sep or not name or not number.isdigit():
            raise RuntimeOpenError(f"backend tvm-rpc expects address HOST:PORT (e.g. 192.168.1.20:{DEFAULT_PORT}), "
                                   f"got {address!r}")
        return name, int(number)
    if not host:
        raise RuntimeOpenError("backend tvm-rpc needs the device's RPC server: pass address='HOST:PORT' "
                               "(or host= and port=)")
    return str(host), int(port or DEFAULT_PORT)


class TvmRpcRuntime(TvmRuntime):
    backend = "tvm-rpc"

    def __init__(self, source: str | os.PathLike, *, address: str | None = None, host: str | None = None,
                 port: int | None = None, threads: int | None = None, device_id: int = 0,
                 session_timeout: float = 0) -> None:
        self.address = parse_address(address, host, port)
        self._session_timeout = session_timeout
        self.remote: Any = None
        super().__init__(source, threads=threads, device_id=device_id)

    def _open(self, device_id: int, threads: int | None) -> tuple[Any, str]:
        tvm = self._tvm
        from tvm import rpc

        arch = elf_arch(self._library)  # also refuses a .tar of object files
        host, port = self.address
        try:
            self.remote = rpc.connect(host, port, session_timeout=self._session_timeout)
        except Exception as exc:  # noqa: BLE001
            raise RuntimeOpenError(f"could not connect to a TVM RPC server at {host}:{port} ({_first_line(exc)}); "
                                   f"start one on the device: python -m tvm.exec.rpc_server --host 0.0.0.0 "
                                   f"--port {port}") from exc
        # Content-addressed name: two artifacts never overwrite each other on the device.
        remote_name = f"online_tsm_{self.artifact.manifest.files[self._library.name]['sha256'][:16]}.so"
        kind = self.artifact.target_kind()
        try:
            self.remote.upload(str(self._library), target=remote_name)
            lib = self.remote.load_module(remote_name)
            device = self.remote.cuda(device_id) if kind == "cuda" else self.remote.cpu(0)
            self._vm = tvm.relax.VirtualMachine(lib, device)
        except Exception as exc:  # noqa: BLE001
            raise RuntimeOpenError(f"the RPC server at {host}:{port} could not load {self._library.name}, which is "
                                   f"built for {arch} ({kind}): is the device {arch}? ({_first_line(exc)})") from exc
        if threads:
            self.remote.get_function("runtime.config_threadpool")(1, int(threads))
        return device, f"{kind} ({arch}) device at {host}:{port}"

    def _invoke(self, args: list[Any]) -> Any:
        # A direct call returns the output tuple as one opaque remote object; the stateful API
        # returns a tuple of remote tensors.
        self._vm.set_input(ENTRY, *args)
        self._vm.invoke_stateful(ENTRY)
        return self._vm.get_outputs(ENTRY)

    def remote_time(self, n: int = 50, repeat: int = 3):
        """Per-frame time on the device (``time_evaluator``, network round-trips excluded)."""
        return self.device_time(n, repeat)

    def _release(self) -> None:
        super()._release()
        self.remote = None  # dropping the session closes the connection
