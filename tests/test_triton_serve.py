"""A real Triton server on loopback: ``tsm-serve`` started and stopped by the tests, 8 cameras at once.

Bounded: one server for the parity tests (about 10-20 s to start), one more
that is killed mid-run; every client call has a timeout and every thread a
join deadline, so a hang fails the test instead of blocking it.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from online_tsm.export.formats.triton import ARTIFACT_DIR, PYTHON_MODEL, export_repository
from online_tsm.runtimes import RuntimeOpenError, open_runtime

pytestmark = pytest.mark.slow  # starts real Triton servers (10-30 s each)

pytest.importorskip("tritonclient.grpc")
triton_server = pytest.importorskip("online_tsm.runtimes.triton.server")
try:
    triton_server.find_triton()
except Exception as exc:  # noqa: BLE001
    pytest.skip(f"no bundled tritonserver: {exc}", allow_module_level=True)

TOLERANCE = 1e-3
SERVE = [sys.executable, "-c", "import sys; from online_tsm.runtimes.triton.serve_cli import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return export_repository("default", "triton", tmp_path_factory.mktemp("triton") / "repo", progress=False)


@pytest.fixture(scope="module")
def served(repo):
    """``tsm-serve REPO`` on free loopback ports; yields the gRPC address; SIGTERM must stop it cleanly."""
    proc = subprocess.Popen([*SERVE, str(repo), "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0",
                             "--instances", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # "serving REPO (models ...): gRPC HOST:PORT, ..." once ready (or EOF)
    found = re.search(r"gRPC (127\.0\.0\.1:\d+)", line)
    if not found:
        proc.kill()
        pytest.fail(f"tsm-serve did not start: {line} {proc.stderr.read()[-2000:]}")
    yield found.group(1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped (tritonserver exit code 0)" in out


@pytest.fixture(scope="module")
def local(repo):
    return open_runtime(repo / PYTHON_MODEL / "1" / ARTIFACT_DIR, backend="onnxruntime")


def frames(n: int, t: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, t, 3, 96, 96)).astype(np.float32)


def expected_logits(local, x: np.ndarray, reset_at: dict[int, int]) -> np.ndarray:
    """Separate local float32 streams, each reset where its camera is."""
    out = np.zeros((x.shape[0], x.shape[1], local.n_class), np.float32)
    for i in range(x.shape[0]):
        stream = local.new_stream()
        for t in range(x.shape[1]):
            if reset_at.get(i) == t:
                stream.reset()
            out[i, t] = stream.step(x[i, t])
    return out


def test_eight_camera_threads_match_local_streams(repo, served, local):
    x = frames(8, 6)
    reset_at = {i: 2 + i % 3 for i in range(0, 8, 2)}  # half the cameras cut mid-stream
    expected = expected_logits(local, x, reset_at)
    got = np.full_like(expected, np.nan)
    errors: list[BaseException] = []
    with open_runtime(repo, backend="triton", address=served, timeout=60) as rt:
        def camera(i: int) -> None:
            try:
                stream = rt.new_stream()
                for t in range(x.shape[1]):
                    if reset_at.get(i) == t:
                        stream.reset()
                    got[i, t] = stream.step(x[i, t])
                stream.close()
            except BaseException as exc:  # noqa: BLE001 -- reported below
                errors.append(exc)

        threads = [threading.Thread(target=camera, args=(i,)) for i in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=180)
        assert not any(th.is_alive() for th in threads), "a camera thread hung"
    assert not errors, errors[0]
    assert np.abs(got - expected).max() <= TOLERANCE


def test_step_many_sends_eight_streams_at_once(repo, served, local):
    x = frames(8, 5, seed=3)
    reset_at = {5: 3}
    expected = expected_logits(local, x, reset_at)
    with open_runtime(repo, backend="triton", address=served, timeout=60) as rt:
        streams = [rt.new_stream() for _ in range(8)]
        for t in range(x.shape[1]):
            if t == 3:
                streams[5].reset()
            logits = rt.step_many(streams, list(x[:, t]))
            assert np.abs(logits - expected[:, t]).max() <= TOLERANCE


def test_demo_opens_the_repository_with_the_triton_backend(repo, served, local):
    """``tsm-demo --backend triton --artifact REPO --address HOST:PORT``: the demo's model, pace from the manifest."""
    from online_tsm.demo.model import load_demo_model
    from online_tsm.streaming.pacing import pace_from_metadata

    demo = load_demo_model("triton", artifact=repo, address=served)
    try:
        assert demo.runtime.backend == "triton" and not demo.untrained
        assert demo.pace == pace_from_metadata(local.artifact.manifest.model)
        x = frames(1, 3, seed=5)[0]
        expected = local.new_stream()
        stream = demo.runtime.new_stream()
        for frame in x:
            assert np.abs(stream.step(frame) - expected.step(frame)).max() <= TOLERANCE
    finally:
        demo.runtime.close()


def test_taken_port_is_one_line(repo, served):
    port = served.rsplit(":", 1)[1]
    run = subprocess.run([*SERVE, str(repo), "--grpc-port", port, "--http-port", "0", "--metrics-port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.strip() == (f"error: port {port} on 127.0.0.1 is taken (--grpc-port); pick another with "
                                  "--grpc-port N or stop what listens there")


def test_client_errors_name_the_problem(repo, served):
    with pytest.raises(RuntimeOpenError, match="backend triton needs the server's gRPC address"):
        open_runtime(repo, backend="triton")
    with pytest.raises(RuntimeOpenError, match="expects address HOST:PORT"):
        open_runtime(repo, backend="triton", address="localhost")
    free = triton_server.free_port()
    with pytest.raises(RuntimeOpenError, match=f"no Triton server answers at 127.0.0.1:{free}"):
        open_runtime(repo, backend="triton", address=f"127.0.0.1:{free}", timeout=5)
    with pytest.raises(RuntimeOpenError, match="has no ready model 'nope'"):
        open_runtime(repo, backend="triton", address=served, model="nope", timeout=5)


def test_missing_extra_is_one_line(repo, monkeypatch, capsys):
    import importlib.util

    from online_tsm.runtimes.triton import serve_cli as serve_cli
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pytriton" else real(name, *a))
    assert serve_cli.main([str(repo)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: tsm-serve needs the serve extra: pip install 'online-tsm[serve]'")
    assert "\n" not in err


def test_killed_server_gives_a_clear_error_not_a_hang(repo, local):
    from online_tsm.runtimes.triton.backend import TritonError

    server = triton_server.TritonServer(repo, grpc_port=triton_server.free_port(),
                                        http_port=triton_server.free_port(), metrics_port=triton_server.free_port())
    server.start()
    try:
        server.wait_ready()
        rt = open_runtime(repo, backend="triton", address=server.grpc_address, timeout=20)
        x = frames(4, 1, seed=5)[:, 0]
        outcome: dict[int, BaseException | None] = {}
        stepped = threading.Barrier(5)

        def camera(i: int) -> None:
            stream = rt.new_stream()
            try:
                stream.step(x[i])
                stepped.wait(timeout=60)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:  # keeps streaming until the server is gone
                    stream.step(x[i])
                outcome[i] = None
            except BaseException as exc:  # noqa: BLE001
                outcome[i] = exc

        threads = [threading.Thread(target=camera, args=(i,)) for i in range(4)]
        for th in threads:
            th.start()
        stepped.wait(timeout=120)  # every camera got a frame through
        server.process.send_signal(signal.SIGKILL)
        for th in threads:
            th.join(timeout=90)
        assert not any(th.is_alive() for th in threads), "a client hung after the server was killed"
        assert len(outcome) == 4 and all(isinstance(e, TritonError) for e in outcome.values()), outcome
        for e in outcome.values():
            assert f"Triton server at {server.grpc_address}" in str(e)
            assert "lost the Triton server" in str(e) or "did not answer" in str(e)
        rt.close()  # best effort: must not raise or hang with the server gone
    finally:
        server.stop()
    # The killed server's model processes (python backend stubs) are gone too, not left running.
    deadline = time.monotonic() + 10
    while True:
        try:
            os.killpg(server.process.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "processes of the killed server's group are still running"
        time.sleep(0.2)


def test_folder_without_models_is_one_line(tmp_path, capsys):
    from online_tsm.runtimes.triton import serve_cli as serve_cli
    assert serve_cli.main([str(tmp_path), "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {tmp_path} is not a Triton model repository (no <model>/config.pbtxt); write one with "
                   "tsm-export --target triton -o REPO\n")
