"""``tsm-export --target triton``: the repository, its configs, the implicit-state graph, the per-sequence model.

Needs no server: the configs are parsed with tritonclient's protobuf and the
implicit-state model is checked against its ONNX graph and run here with ONNX
Runtime, feeding its state the way Triton does, against the local runtime.
"""
from __future__ import annotations

import numpy as np
import pytest

from online_tsm.export import cli as export_cli
from online_tsm.manifest import load_manifest
from online_tsm.export.formats.triton import (ARTIFACT_DIR, ORT_MODEL, PYTHON_MODEL, check_ort_config, export_repository,
                                      parse_config)
from online_tsm.runtimes import open_runtime
from online_tsm.runtimes.triton.model import Item, SequenceError, SequenceStates, step_requests

pytest.importorskip("tritonclient.grpc")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return export_repository("default", "triton", tmp_path_factory.mktemp("triton") / "repo", progress=False)


@pytest.fixture(scope="module")
def local(repo):
    return open_runtime(repo / PYTHON_MODEL / "1" / ARTIFACT_DIR, backend="onnxruntime")


def frames(n: int, t: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, t, 3, 96, 96)).astype(np.float32)


def test_repository_layout(repo):
    names = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
    assert names == ["README.txt", "online_tsm/1/artifact/README.txt", "online_tsm/1/artifact/manifest.json",
                     "online_tsm/1/artifact/model.onnx", "online_tsm/1/artifact/reference.npz",
                     "online_tsm/1/artifact/run_onnx.py", "online_tsm/1/model.py", "online_tsm/config.pbtxt", "online_tsm_ort/1/model.onnx",
                     "online_tsm_ort/config.pbtxt"]
    assert "not run here" in (repo / "README.txt").read_text()
    assert load_manifest(repo / PYTHON_MODEL / "1" / ARTIFACT_DIR).target["name"] == "triton"


def test_python_config_is_a_sequence_batched_model(repo):
    from tritonclient.grpc import model_config_pb2 as pb

    config = parse_config((repo / PYTHON_MODEL / "config.pbtxt").read_text())
    assert (config.backend, config.max_batch_size) == ("python", 8)
    kinds = {c.name: pb.ModelSequenceBatching.Control.Kind.Name(c.control[0].kind)
             for c in config.sequence_batching.control_input}
    assert kinds == {"START": "CONTROL_SEQUENCE_START", "END": "CONTROL_SEQUENCE_END",
                     "CORRID": "CONTROL_SEQUENCE_CORRID"}
    assert config.sequence_batching.HasField("oldest")
    assert config.sequence_batching.max_sequence_idle_microseconds > 0
    assert [(t.name, list(t.dims)) for t in config.input] == [("frame", [3, 96, 96])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("logits", [8])]


def test_ort_config_matches_graph_and_state_names_sort_alike(repo):
    import onnx

    text = (repo / ORT_MODEL / "config.pbtxt").read_text()
    graph = onnx.load(str(repo / ORT_MODEL / "1" / "model.onnx"))
    assert check_ort_config(text, graph) == []
    config = parse_config(text)
    states = list(config.sequence_batching.state)
    manifest = load_manifest(repo / PYTHON_MODEL / "1" / ARTIFACT_DIR)
    assert len(states) == len(manifest.buffers) == 10
    assert [list(s.dims) for s in states] == [b.shape[1:] for b in manifest.buffers]
    assert all(s.initial_state[0].zero_data for s in states)
    by_in = [s.input_name for s in sorted(states, key=lambda s: s.input_name)]
    by_out = [s.input_name for s in sorted(states, key=lambda s: s.output_name)]
    assert by_in == by_out == [f"state_in_{k:02d}" for k in range(10)]


def test_ort_config_problems_are_named(repo):
    import onnx

    text = (repo / ORT_MODEL / "config.pbtxt").read_text()
    graph = onnx.load(str(repo / ORT_MODEL / "1" / "model.onnx"))
    swapped = (text.replace('output_name: "state_out_00"', 'output_name: "TMP"')
               .replace('output_name: "state_out_01"', 'output_name: "state_out_00"')
               .replace('output_name: "TMP"', 'output_name: "state_out_01"'))
    assert any("do not sort in the same order" in p for p in check_ort_config(swapped, graph))
    no_zero = text.replace("zero_data: true", "zero_data: false", 1)
    assert any("no initial_state with zero_data" in p for p in check_ort_config(no_zero, graph))
    wrong = text.replace("dims: [ 3, 96, 96 ]", "dims: [ 3, 64, 64 ]", 1)
    assert any("input 'frame': config dims [3, 64, 64], graph [3, 96, 96]" in p
               for p in check_ort_config(wrong, graph))


def test_implicit_state_graph_runs_like_the_local_runtime(repo, local):
    """What Triton's onnxruntime backend does with implicit state, done by hand: zeros in, outputs fed back."""
    import onnxruntime as ort

    config = parse_config((repo / ORT_MODEL / "config.pbtxt").read_text())
    session = ort.InferenceSession(str(repo / ORT_MODEL / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = frames(3, 4)
    states = {s.input_name: np.zeros((3, *s.dims), np.float32) for s in config.sequence_batching.state}
    pairs = {s.output_name: s.input_name for s in config.sequence_batching.state}
    streams = [local.new_stream() for _ in range(3)]
    for t in range(4):
        outputs = session.run(None, {"frame": x[:, t], **states})
        named = dict(zip([o.name for o in session.get_outputs()], outputs))
        states = {pairs[name]: value for name, value in named.items() if name in pairs}
        expected = local.step_many(streams, list(x[:, t]))
        assert np.abs(named["logits"] - expected).max() <= 1e-3


def test_sequences_keep_their_own_buffers(local):
    """The python model's bookkeeping: interleaved cameras, a camera twice in one call, START, END, idle."""
    now = [0.0]
    states = SequenceStates(local, idle_s=5.0, clock=lambda: now[0])
    x = frames(3, 4, seed=1)
    ref = [local.new_stream() for _ in range(3)]
    expected = [[ref[i].step(x[i, t]) for t in range(4)] for i in range(3)]
    calls = [
        [Item(10, True, False, x[0, 0]), Item(11, True, False, x[1, 0]), Item(10, False, False, x[0, 1])],
        [Item(12, True, False, x[2, 0]), Item(11, False, False, x[1, 1]), Item(10, False, False, x[0, 2])],
        [Item(12, False, False, x[2, 1]), Item(10, False, True, x[0, 3]), Item(11, False, False, x[1, 2])],
    ]
    got: dict[int, list[np.ndarray]] = {10: [], 11: [], 12: []}
    for call in calls:
        for item, out in zip(call, step_requests(states, call)):
            got[item.corrid].append(out)
    for corrid, camera in ((10, 0), (11, 1), (12, 2)):
        for out, exp in zip(got[corrid], expected[camera]):
            assert np.abs(out - exp).max() <= 1e-4
    assert sorted(states.streams) == [11, 12]  # 10 ended
    now[0] = 4.0
    step_requests(states, [Item(12, False, False, x[2, 2])])
    now[0] = 8.0  # 11 silent for 8 s > 5 s, 12 for 4 s
    assert states.expire() == [11]
    [error] = step_requests(states, [Item(11, False, False, x[1, 3])])
    assert isinstance(error, SequenceError)
    assert "sequence 11 has no state here" in str(error) and "sequence_start=True" in str(error)


def test_cli_writes_repository_and_refuses_foreign_folder(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    assert export_cli.main(["--target", "triton", "-o", str(foreign), "--force", "--quiet"]) == 2
    assert "refusing to replace" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep"
