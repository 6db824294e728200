"""Start the Triton Inference Server bundled in ``nvidia-pytriton`` on a repository from ``tsm-export --target triton``.

The wheel ships a real ``tritonserver`` with the python backend; what it
takes to run it outside PyTriton's own API is done here once:

- a backend folder ``python/`` with ``libtriton_python.so``, its utilities
  and the python stub built for *this* interpreter's version;
- ``LD_LIBRARY_PATH`` with the wheel's bundled libraries (the stub links the
  CUDA runtime even on a CPU-only machine);
- ``ONLINE_TSM_SYS_PATH``: this interpreter's ``site-packages`` for the
  repository's ``model.py`` (the stub embeds Python without a virtual
  environment's packages and ignores ``PYTHONPATH``);
- a serving copy of the repository (links to the version folders, configs
  rewritten for ``--instances``), without the models whose backend this
  server lacks (the bundled one has no onnxruntime backend).
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from online_tsm.errors import OnlineTSMError
from online_tsm.runtimes.base import BackendUnavailable

INSTALL_HINT = ("pip install 'online-tsm[serve]' && pip install --no-deps nvidia-pytriton==0.7.0 "
                "(its numpy<2 requirement is for PyTriton's Python API, which tsm-serve does not use)")
DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}


class ServerError(OnlineTSMError, RuntimeError):
    """The server could not start or stopped; the message says why (and where its log is)."""


class PortTaken(ServerError, ValueError):
    """A port tsm-serve was asked to use is already in use."""


@dataclass
class TritonInstall:
    """Where the bundled server's pieces are."""

    binary: Path
    backends: Path        # holds python/libtriton_python.so
    stub: Path            # triton_python_backend_stub for this Python
    library_dirs: list[Path]


def find_triton() -> TritonInstall:
    """The ``tritonserver`` bundled in nvidia-pytriton; :class:`BackendUnavailable` (one line) without it."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable(f"tsm-serve needs the serve extra: {INSTALL_HINT}")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    binary, stub = root / "bin" / "tritonserver", root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not binary.is_file():
        raise BackendUnavailable(f"nvidia-pytriton is installed but has no {binary}; reinstall it ({INSTALL_HINT})")
    if not stub.is_file():
        raise BackendUnavailable(f"nvidia-pytriton has no python stub for Python {version} (it ships "
                                 f"{', '.join(sorted(p.name for p in stub.parent.parent.iterdir()))})")
    libs = [root.parent.parent / "nvidia_pytriton.libs", root / "lib"]
    return TritonInstall(binary, root / "backends", stub, [p for p in libs if p.is_dir()])


def check_port(host: str, port: int, flag: str) -> None:
    """:class:`PortTaken` when ``host:port`` cannot be bound (another server holds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise PortTaken(f"port {port} on {host} is taken (--{flag}-port); pick another with --{flag}-port N "
                            "or stop what listens there") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now (for tests and --*-port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _models(repo: Path) -> list[Path]:
    return sorted(p for p in repo.iterdir() if (p / "config.pbtxt").is_file())


def _backend_of(config: str) -> str:
    found = re.search(r'^\s*backend:\s*"([^"]+)"', config, re.M)
    return found.group(1) if found else "?"


def serving_repository(repo: Path, work: Path, backends: set[str], instances: int | None) -> tuple[Path, list[str],
                                                                                                   list[str]]:
    """A copy of ``repo`` in ``work`` to serve: ``(folder, served models, skipped notes)``."""
    out = work / "models"
    out.mkdir()
    served, skipped = [], []
    for model in _models(repo):
        config = (model / "config.pbtxt").read_text()
        backend = _backend_of(config)
        if backend not in backends:
            skipped.append(f"{model.name} (backend {backend} is not in this Triton, which has "
                           f"{', '.join(sorted(backends))})")
            continue
        if instances is not None:
            config, n = re.subn(r"instance_group\s*\[\s*\{\s*count:\s*\d+", lambda m: re.sub(
                r"count:\s*\d+", f"count: {instances}", m.group(0)), config)
            if not n:
                config += f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]\n"
        (out / model.name).mkdir()
        (out / model.name / "config.pbtxt").write_text(config)
        for version in model.iterdir():
            if version.is_dir():
                (out / model.name / version.name).symlink_to(version.resolve(), target_is_directory=True)
        served.append(model.name)
    return out, served, skipped


def _backend_folder(install: TritonInstall, work: Path) -> Path:
    folder = work / "backends"
    python = folder / "python"
    python.mkdir(parents=True)
    for item in (install.backends / "python").iterdir():
        if item.is_file():
            shutil.copy2(item, python / item.name)
    shutil.copy2(install.stub, python / install.stub.name)
    return folder


def _site_paths() -> list[str]:
    paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    import online_tsm

    paths.append(str(Path(online_tsm.__file__).resolve().parent.parent))  # a source checkout without install
    return list(dict.fromkeys(p for p in paths if p))


@dataclass
class TritonServer:
    """One ``tritonserver`` process serving a repository; ``start()``, ``wait_ready()``, ``stop()``."""

    repository: Path
    host: str = "127.0.0.1"
    grpc_port: int = DEFAULT_PORTS["grpc"]
    http_port: int = DEFAULT_PORTS["http"]
    metrics_port: int = DEFAULT_PORTS["metrics"]
    instances: int | None = None
    log_path: Path | None = None
    served: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = None
    _work: Path | None = None
    _log: IO[bytes] | None = None

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def start(self) -> "TritonServer":
        install = find_triton()
        repo = Path(self.repository).expanduser()
        if not repo.is_dir() or not _models(repo):
            raise ServerError(f"{repo} is not a Triton model repository (no <model>/config.pbtxt); write one with "
                              "tsm-export --target triton -o REPO")
        for flag, port in (("grpc", self.grpc_port), ("http", self.http_port), ("metrics", self.metrics_port)):
            check_port(self.host, port, flag)
        self._work = Path(tempfile.mkdtemp(prefix="tsm-serve-"))
        backends = _backend_folder(install, self._work)
        models, self.served, self.skipped = serving_repository(
            repo, self._work, {p.name for p in backends.iterdir()}, self.instances)
        if not self.served:
            raise ServerError(f"no model in {repo} can run on this Triton: {'; '.join(self.skipped)}")
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join([str(p) for p in install.library_dirs]
                                                 + [env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
        env["ONLINE_TSM_SYS_PATH"] = os.pathsep.join(_site_paths())
        cmd = [str(install.binary), f"--model-repository={models}", f"--backend-directory={backends}",
               f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}", f"--http-address={self.host}",
               f"--http-port={self.http_port}", f"--metrics-address={self.host}",
               f"--metrics-port={self.metrics_port}", "--allow-gpu-metrics=false", "--allow-cpu-metrics=false",
               "--exit-on-error=true", "--strict-readiness=true", "--exit-timeout-secs=20"]
        self.log_path = self.log_path or self._work / "tritonserver.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        return self

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until every served model is ready; :class:`ServerError` with the log's tail otherwise."""
        import tritonclient.grpc as grpcclient

        deadline = time.monotonic() + timeout_s
        client = grpcclient.InferenceServerClient(self.grpc_address)
        try:
            while time.monotonic() < deadline:
                if self.process is None or self.process.poll() is not None:
                    tail = self.log_tail()
                    self.stop()
                    raise ServerError(f"tritonserver exited while starting: {tail}")
                try:
                    if client.is_server_ready(client_timeout=2) and all(
                            client.is_model_ready(m, client_timeout=2) for m in self.served):
                        return
                except Exception:  # noqa: BLE001 -- not listening yet
                    pass
                time.sleep(0.3)
        finally:
            client.close()
        tail = self.log_tail()
        self.stop()
        raise ServerError(f"tritonserver was not ready within {timeout_s:g} s: {tail}")

    def log_tail(self, lines: int = 3) -> str:
        if self.log_path is None or not Path(self.log_path).is_file():
            return "no log"
        text = Path(self.log_path).read_text(errors="replace").strip().splitlines()
        useful = [line for line in text if line.startswith("E") and "CudaDriverHelper" not in line] or text
        kept = "" if self._work is not None and self._work in Path(self.log_path).parents else \
            f" (log: {self.log_path})"
        return " | ".join(line.strip()[:400] for line in useful[-lines:]) + kept

    def stop(self, timeout_s: float = 40.0) -> int | None:
        """SIGTERM (Triton unloads its models and exits), SIGKILL after ``timeout_s``; the exit code."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            code = self.process.returncode
            # The python backend's stub processes share the server's process group (start_new_session) and outlive
            # a server that was killed: end whatever is left of the group, so no model process lingers.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)
            self._work = None
        return code

    def __enter__(self) -> "TritonServer":
        self.start()
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
