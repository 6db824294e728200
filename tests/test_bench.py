"""tsm-bench building blocks: statistics, timing loops, graph costs, bounds, the artifact cache.

No test asserts a timing: loops are checked for what they call and count,
with a fake clock where the numbers matter.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import seeded_model
from online_tsm.benchmarks.artifacts import cached_artifact, model_hash
from online_tsm.benchmarks.backends import BACKEND_PLANS, RemoteSpec, backend_availability
from online_tsm.benchmarks.facts import count_graph_cost, machine_description
from online_tsm.benchmarks.latency import Contestant, LatencyStats, measure_interleaved, measure_stages
from online_tsm.benchmarks.models import tsn_twin
from online_tsm.benchmarks.paper import (BOUND_LABEL, PAPER_LABEL, PAPER_ROWS, ROOFLINE_DEVICES,
                                             roofline_bound_ms, roofline_rows)
from online_tsm.errors import UserError
from online_tsm.manifest import write_manifest
from online_tsm.export.formats.onnx import build_manifest, export_onnx


class FakeClock:
    """Advances by a fixed step on every reading, so each timed call lasts exactly one step."""

    def __init__(self, step_s: float = 0.002) -> None:
        self.t = 0.0
        self.step = step_s

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def test_latency_stats_summary():
    stats = LatencyStats([float(x) for x in range(1, 101)], cold_ms=250.0)
    s = stats.summary()
    assert s["runs"] == 100 and s["min_ms"] == 1.0 and s["cold_ms"] == 250.0
    assert s["p50_ms"] == pytest.approx(50.5)
    assert s["p99_ms"] == pytest.approx(np.percentile(range(1, 101), 99))
    assert s["fps"] == pytest.approx(1000.0 / 50.5)
    batched = LatencyStats([10.0, 10.0], calls_per_sample=8)
    assert batched.fps == pytest.approx(800.0)


def test_interleaved_rounds_alternate_and_count():
    calls: list[str] = []
    a = Contestant("tsm", lambda: calls.append("a"))
    b = Contestant("tsn", lambda: calls.append("b"))
    ticks = []
    stats = measure_interleaved([a, b], samples=7, warmup=2, round_size=3, clock=FakeClock(),
                                on_sample=lambda: ticks.append(1), settle=1)
    # cold + warm-up per contestant first, then rounds A B, B A, A B (last round short), each turn
    # opening with one untimed settling call.
    assert "".join(calls) == "a" * 3 + "b" * 3 + "aaaabbbb" + "bbbbaaaa" + "aabb"
    assert stats["tsm"].runs == stats["tsn"].runs == 7 and len(ticks) == 14
    assert stats["tsm"].cold_ms == pytest.approx(2.0) and all(t == pytest.approx(2.0) for t in stats["tsm"].samples_ms)


def test_interleaved_rounds_rotate_so_no_contestant_always_follows_another():
    calls: list[str] = []
    players = [Contestant(name, lambda n=name: calls.append(n)) for name in "abc"]
    stats = measure_interleaved(players, samples=6, warmup=0, round_size=2, measure_cold=False,
                                clock=FakeClock(), settle=2)
    # A B C, B C A, C A B: every contestant is handed over to in every turn, and follows each of the
    # others once; the first two calls of each turn are not timed.
    assert "".join(calls) == "aaaabbbbcccc" + "bbbbccccaaaa" + "ccccaaaabbbb"
    assert all(stats[n].runs == 6 for n in "abc")


def test_interleaved_rejects_bad_counts():
    with pytest.raises(ValueError, match="positive number of timed frames"):
        measure_interleaved([Contestant("x", lambda: None)], samples=0, warmup=1)
    with pytest.raises(ValueError, match="non-negative number of warm-up"):
        measure_interleaved([Contestant("x", lambda: None)], samples=1, warmup=-1)


def test_stages_pass_values_along_and_sum_to_total():
    counter = itertools.count()
    times = measure_stages({"double": lambda x: 2 * x, "inc": lambda x: x + 1}, lambda: next(counter),
                           samples=4, warmup=1, clock=FakeClock(0.001))
    assert set(times.stages) == {"double", "inc"} and all(len(v) == 4 for v in times.stages.values())
    assert times.total.p50 == pytest.approx(2.0)


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory, model_small):
    folder = tmp_path_factory.mktemp("bench-onnx")
    export_onnx(model_small, folder / "tsm.onnx")
    export_onnx(tsn_twin(model_small), folder / "tsn.onnx")
    return folder


def _torch_macs(model: torch.nn.Module) -> int:
    """Independent count: MACs of every Conv2d / Linear from forward hooks on the PyTorch model."""
    total = [0]

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            total[0] += output.numel() * (module.in_channels // module.groups) * int(np.prod(module.kernel_size))
        else:
            total[0] += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.inference_mode():
        model(torch.zeros(1, 3, model.input_size, model.input_size), *model.init_buffers(1))
    for h in handles:
        h.remove()
    return total[0]


def test_graph_macs_match_pytorch_hooks(small_onnx, model_small):
    tsm = count_graph_cost(small_onnx / "tsm.onnx")
    tsn = count_graph_cost(small_onnx / "tsn.onnx")
    assert tsm.macs == _torch_macs(model_small)
    assert tsn.macs == tsm.macs  # the shift adds no multiply-adds
    assert tsm.flops > 2 * tsm.macs  # plus bias adds, ReLU6, residual adds
    assert tsm.movement_bytes > 0 and tsn.movement_bytes == 0  # the shift moves data, TSN moves none
    folded = sum(p.numel() for n, p in model_small.named_parameters() if "features" in n or "classifier" in n)
    assert tsn.params <= folded  # BN folded into the convolutions


def test_graph_io_bytes_count_frame_buffers_and_logits(small_onnx, model_small):
    cost = count_graph_cost(small_onnx / "tsm.onnx")
    buffers = sum(int(np.prod(s)) for s in model_small.buffer_shapes(1))
    expected = 4 * (3 * 96 * 96 + 2 * buffers + model_small.n_class)
    assert cost.io_bytes == expected
    assert cost.compulsory_bytes == cost.weight_bytes + expected


def test_roofline_bound_is_max_of_compute_and_memory():
    nano = ROOFLINE_DEVICES["jetson-nano-gpu"]
    assert roofline_bound_ms(236e9, 0, nano) == pytest.approx(1000.0)      # one second of peak compute
    assert roofline_bound_ms(0, 25.6e9, nano) == pytest.approx(1000.0)     # one second of bandwidth
    rows = roofline_rows(6e8, 1e7)
    assert {r["device"] for r in rows} == set(ROOFLINE_DEVICES)
    assert all(r["source_label"] == BOUND_LABEL and r["source"] for r in rows)


def test_roofline_unknown_device():
    with pytest.raises(ValueError, match="no published peak figures for device 'pixel-9'"):
        roofline_rows(1e9, 1e6, ["pixel-9"])


def test_paper_rows_are_labelled():
    rows = [r.to_dict() for r in PAPER_ROWS]
    assert {(r["device"], r["latency_ms"]) for r in rows} == {("NVIDIA Jetson Nano", 13.0),
                                                               ("Samsung Galaxy Note8", 35.0)}
    assert all(r["source"] == PAPER_LABEL for r in rows)


def _fake_export(model):
    calls = []

    def export(out: Path) -> Path:
        calls.append(out)
        out.mkdir(parents=True)
        (out / "model.onnx").write_bytes(b"not really onnx")
        write_manifest(out, build_manifest(model), {"model.onnx": "onnx"})
        return out

    return export, calls


def test_artifact_cache_builds_once_and_rebuilds_damaged(tmp_path, model_small):
    export, calls = _fake_export(model_small)
    logs: list[str] = []
    first = cached_artifact(model_small, "onnx", "causal", export, root=tmp_path, log=logs.append)
    second = cached_artifact(model_small, "onnx", "causal", export, root=tmp_path, log=logs.append)
    assert first == second and len(calls) == 1
    assert any("first run only" in m for m in logs)
    (first / "model.onnx").write_bytes(b"tampered")
    third = cached_artifact(model_small, "onnx", "causal", export, root=tmp_path, log=logs.append)
    assert third == first and len(calls) == 2 and any("damaged" in m for m in logs)
    assert not [p.name for p in first.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_artifact_key_follows_weights_target_and_shift(tmp_path, model_small):
    export, calls = _fake_export(model_small)
    base = cached_artifact(model_small, "onnx", "causal", export, root=tmp_path, log=lambda m: None)
    other_shift = cached_artifact(model_small, "onnx", "none", export, root=tmp_path, log=lambda m: None)
    other_target = cached_artifact(model_small, "host", "causal", export, root=tmp_path, log=lambda m: None)
    changed = seeded_model(seed=2, width_mult=0.5, input_size=96, n_class=10)
    assert model_hash(changed) != model_hash(model_small)
    other_weights = cached_artifact(changed, "onnx", "causal", export, root=tmp_path, log=lambda m: None)
    assert len({base, other_shift, other_target, other_weights}) == 4 and len(calls) == 4


def test_tsn_twin_has_same_weights_and_no_buffers(model_small):
    twin = tsn_twin(model_small)
    assert twin.shift_blocks == () and twin.buffer_shapes(1) == []
    x = torch.randn(1, 3, 96, 96)
    with torch.inference_mode():
        # With zero buffers a shifted block sees zeros in its first channels, so the outputs differ;
        # the clip model with shift "none" is the independent reference for TSN.
        ref = model_small.forward_clip(x[:, None], shift="none")[:, 0]
        assert torch.allclose(twin(x)[0], ref, atol=1e-5)


def test_machine_description_names_cpu_cores_and_libraries():
    m = machine_description()
    assert m["cpu"] and m["usable_cores"] >= 1 and m["memory_gb"] > 0
    assert {"torch", "onnxruntime", "numpy"} <= set(m["libraries"])
    json.dumps(m)


def test_every_backend_has_an_availability_verdict():
    verdicts = backend_availability()
    assert set(verdicts) == set(BACKEND_PLANS)
    assert verdicts["torch"] is None and verdicts["ort-plain"] is None


def test_tuned_tvm_has_its_own_row_only_when_this_cpu_has_records(monkeypatch):
    from online_tsm.benchmarks import backends

    assert BACKEND_PLANS["tvm"].tuned is False and BACKEND_PLANS["tvm-tuned"].tuned
    monkeypatch.setattr(backends, "tuning_fingerprint", lambda target: None)
    verdicts = backend_availability()
    assert verdicts["tvm"] is None
    assert verdicts["tvm-tuned"].startswith("no tuning records for this CPU (tsm-export --target host --tune N")
    monkeypatch.setattr(backends, "tuning_fingerprint", lambda target: "0123456789abcdef")
    assert backend_availability()["tvm-tuned"] is None


def test_rpc_spec_parsing_errors():
    with pytest.raises(UserError, match="--rpc expects HOST:PORT"):
        RemoteSpec.parse("jetson.local", "jetson-nano")
    with pytest.raises(UserError, match="needs --target NAME"):
        RemoteSpec.parse("127.0.0.1:9090", None)
    spec = RemoteSpec.parse("127.0.0.1:9090", "raspberry-pi-4")
    assert (spec.host, spec.port) == ("127.0.0.1", 9090)


def test_local_rpc_server_for_another_arch_is_refused_as_emulation():
    spec = RemoteSpec.parse("127.0.0.1:9090", "raspberry-pi-4")
    other = "aarch64" if "x86" in __import__("platform").machine() else "x86_64"
    with pytest.raises(UserError, match="emulator, whose timings are meaningless"):
        spec.refuse_emulation(target_arch=other)


def test_emulation_evidence_from_process_name_and_cpu_vendor():
    from online_tsm.benchmarks.facts import emulation_evidence

    x86_cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n"
    assert "qemu-aarch64-st" in emulation_evidence("Name:\tqemu-aarch64-st\n", x86_cpuinfo, "aarch64")
    assert "x86 AuthenticAMD" in emulation_evidence("Name:\tpython3\n", x86_cpuinfo, "aarch64")
    assert emulation_evidence("Name:\tpython3\n", x86_cpuinfo, "x86_64") is None
    assert emulation_evidence("Name:\tpython3\n", "processor\t: 0\nBogoMIPS\t: 108.00\n", "aarch64") is None


def test_bench_refuses_to_time_under_emulation(monkeypatch, capsys):
    from online_tsm.benchmarks import facts
    from online_tsm.benchmarks.cli import main

    monkeypatch.setattr(facts, "emulation_evidence", lambda: "the process runs inside qemu-aarch64-st")
    assert main(["--backends", "torch", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: refusing to time under emulation") and "qemu-aarch64-st" in err


def test_rpc_to_this_machines_own_address_counts_as_local():
    import socket

    try:
        address = socket.gethostbyname(socket.gethostname())
    except OSError:
        pytest.skip("no resolvable host name")
    assert RemoteSpec.parse(f"{address}:9090", "raspberry-pi-4").is_this_machine()
    assert not RemoteSpec.parse("192.0.2.1:9090", "raspberry-pi-4").is_this_machine()  # TEST-NET-1, never local


def test_default_bench_model_is_the_shipped_default_else_the_paper_setting(tmp_path, monkeypatch, model_small):
    from online_tsm import weights
    from online_tsm.benchmarks import models
    from online_tsm.checkpoint import save_checkpoint

    monkeypatch.setattr(models, "default_weights", lambda: None)
    paper = models.resolve_bench_model()
    assert paper.weights == "paper" and paper.paper_setting and "paper setting" in paper.description

    asset = tmp_path / "default-synthetic.pt"
    save_checkpoint(model_small, asset)
    monkeypatch.setattr(weights, "DEFAULT_ASSET", asset)
    monkeypatch.setattr(weights, "default_weights", lambda: asset)
    monkeypatch.setattr(models, "default_weights", lambda: asset)
    shipped = models.resolve_bench_model()
    assert shipped.weights == "default" and not shipped.paper_setting
    assert (shipped.tsm.width_mult, shipped.tsm.input_size) == (0.5, 96) and "shipped default" in shipped.description
    assert models.resolve_bench_model("paper", input_size=64).tsm.width_mult == 1.0


def test_tvm_profile_classes_functions_of_the_host_build(export_cache, small_weights):
    from online_tsm.benchmarks.profile import TVM_SHIFT, compare_profiles, profile_tvm

    folder = export_cache("small-host", small_weights, "host")
    frames = np.random.default_rng(0).standard_normal((3, 3, 96, 96)).astype(np.float32)
    prof = profile_tvm(folder, frames, warmup=1, threads=1)
    classes = {o["op"] for o in prof["ops"]}
    assert {"Conv 1x1", "Conv depthwise 3x3", "Conv (stem)", TVM_SHIFT} <= classes
    assert prof["frames"] == 3 and prof["tool"].startswith("TVM")
    assert sum(o["share"] for o in prof["ops"]) == pytest.approx(1.0)
    rows = compare_profiles(prof, prof)
    assert rows[-1]["op"] == "(whole run)" and all(r["delta_ms"] == 0 for r in rows)


def test_artifact_key_follows_the_exporter_source(monkeypatch):
    from online_tsm.benchmarks import artifacts

    before = artifacts.artifact_key("m", "host", "causal")
    monkeypatch.setattr(artifacts, "exporter_digest", lambda: "another schedule")
    assert artifacts.artifact_key("m", "host", "causal") != before


def test_a_tuned_row_is_flagged_when_its_export_kept_the_default_schedules(export_cache, small_weights, tmp_path):
    import json
    import shutil

    from online_tsm.benchmarks.suite import _ships_default_schedules

    artifact = tmp_path / "host"
    shutil.copytree(export_cache("small-host", small_weights, "host"), artifact)
    assert not _ships_default_schedules(artifact)           # no tuning records were there at export
    manifest = json.loads((artifact / "manifest.json").read_text())
    for kept, flagged in (("tuned", False), ("default", True)):
        manifest["target"]["tuning"] = {"schedules": kept, "ms_per_frame_here": {"tuned": 1.0, "default": 1.0}}
        (artifact / "manifest.json").write_text(json.dumps(manifest))
        assert _ships_default_schedules(artifact) is flagged
    assert not _ships_default_schedules(tmp_path / "missing") and not _ships_default_schedules(object())
