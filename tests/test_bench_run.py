"""tsm-bench end to end on a small model and a few frames: report structure, outputs, CLI errors.

One benchmark run is shared by the module (a 96x96 width-0.5 model, a
handful of frames); tests check what the report contains and how it is
labelled, never how fast anything was.
"""
from __future__ import annotations

import io
import json

import pytest

from helpers import seeded_model
from online_tsm.benchmarks.cli import main, run_default_report
from online_tsm.benchmarks.paper import BOUND_LABEL, PAPER_LABEL
from online_tsm.benchmarks.report import render_markdown, render_terminal, write_json, write_plot
from online_tsm.benchmarks.goals import report_dict
from online_tsm.benchmarks.results import SCHEMA, BenchConfig
from online_tsm.benchmarks.suite import run_benchmark
from online_tsm.checkpoint import save_checkpoint

BACKENDS = ["torch", "onnxruntime", "ort-plain", "tvm", "tensorrt"]

pytestmark = pytest.mark.slow  # one whole benchmark run, with ONNX and TVM exports


@pytest.fixture(scope="module")
def bench_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    weights = root / "small.pt"
    save_checkpoint(seeded_model(seed=3, width_mult=0.5, input_size=96, n_class=10), weights)
    # cache_root is where ONLINE_TSM_CACHE=<root>/cache puts artifacts, so the CLI test reuses them.
    return {"weights": str(weights), "cache": str(root / "cache" / "bench-artifacts"), "root": root}


def small_config(env, **overrides) -> BenchConfig:
    options = dict(weights=env["weights"], backends=BACKENDS, frames=6, warmup=1, streams=2, round_size=3,
                   cache_root=env["cache"], progress=False)
    options.update(overrides)
    return BenchConfig(**options)


@pytest.fixture(scope="module")
def report_data(bench_env):
    report = run_benchmark(small_config(bench_env, profile=True), command="tsm-bench --test")
    return report_dict(report)


def test_report_has_every_requested_backend_with_a_status(report_data):
    rows = {r["backend"]: r for r in report_data["rows"]}
    assert list(rows) == BACKENDS
    for backend in ("torch", "onnxruntime", "ort-plain", "tvm"):
        assert rows[backend]["status"] == "ok", (backend, rows[backend].get("reason"))
    trt = rows["tensorrt"]  # runs only where TensorRT and a GPU are; elsewhere a skip that says why
    assert trt["status"] == "ok" or (trt["status"] == "skipped" and "tensorrt" in trt["reason"]), trt


@pytest.mark.slow
def test_int8_row_carries_its_agreement_and_the_precision_targets_are_judged(bench_env):
    report = run_benchmark(small_config(bench_env, backends=["onnxruntime", "onnxruntime-int8", "ort-plain"],
                                        profile=True, streams=0, end_to_end=False))
    report_data = report_dict(report)
    rows = {r["backend"]: r for r in report_data["rows"]}
    int8 = rows["onnxruntime-int8"]
    assert int8["status"] == "ok" and int8["precision"] == "int8" and rows["onnxruntime"]["precision"] == "fp32"
    assert 0.0 <= int8["agreement"]["top1_agreement_frames"] <= 1.0 and int8["agreement"]["clips"] > 0
    targets = {t["id"]: t for t in report_data["targets"]}
    assert targets[5]["reached"] in (True, False) and "ort-plain" in targets[5]["measured"]
    assert targets[6]["reached"] is None  # auto and tvm were not in this run
    assert targets[7]["reached"] in (True, False) and "op profile" in targets[7]["measured"]
    assert targets[8]["reached"] in (True, False) and report_data["model"]["trained_weights"] is True
    # seeded random weights (the paper setting without Jester weights): agreement is not judged on them
    report.model["trained_weights"] = False
    random = {t["id"]: t for t in report_dict(report)["targets"]}[8]
    assert random["reached"] is None and random["measured"].startswith("not meaningful on seeded random weights")


def test_measured_rows_carry_stats_overhead_and_source(report_data):
    machine = report_data["machine"]["cpu"]
    for r in report_data["rows"]:
        if r["status"] != "ok":
            continue
        assert r["source"].startswith("measured here on") and machine in r["source"]
        for variant in ("tsm", "tsn"):
            s = r[variant]
            assert s["runs"] == 6 and len(s["samples_ms"]) == 6
            assert s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] and s["cold_ms"] > 0
        assert r["overhead_vs_tsn"] == pytest.approx(r["tsm"]["p50_ms"] / r["tsn"]["p50_ms"] - 1)
        assert r["size_mb"] > 0


def test_end_to_end_and_streams_sections(report_data):
    torch_row = next(r for r in report_data["rows"] if r["backend"] == "torch")
    e2e = torch_row["end_to_end"]
    assert set(e2e["stages_p50_ms"]) == {"preprocess", "step", "smoothing"}
    assert e2e["total"]["runs"] == 10 and "state_handling_ms" in e2e
    streams = torch_row["streams"]
    assert streams["status"] == "ok" and streams["n"] == 2
    assert streams["total_fps_batched"] == pytest.approx(2 * streams["per_stream_fps_batched"])
    assert streams["step_many"] == "one batch"  # torch concatenates the streams' buffers
    by_backend = {r["backend"]: r for r in report_data["rows"]}
    assert by_backend["onnxruntime"]["streams"]["step_many"] == "one batch"  # its batch-N graph was built
    assert by_backend["tvm"]["streams"]["step_many"] == "one after another (no batched graph)"
    plain = next(r for r in report_data["rows"] if r["backend"] == "ort-plain")
    assert plain["streams"] is None  # a yardstick for single-stream latency only


def test_model_facts_and_machine(report_data):
    m = report_data["model"]
    assert m["input_size"] == 96 and m["width_mult"] == 0.5 and m["n_class"] == 10
    assert m["macs_per_frame"] > 0 and m["flops_per_frame"] > 2 * m["macs_per_frame"] and m["params"] > 0
    assert m["shift_buffers"] == 10 and not m["paper_setting"]
    assert report_data["machine"]["logical_cores"] >= 1 and report_data["machine"]["libraries"]


def test_reference_and_bound_rows_are_labelled(report_data):
    assert {r["source"] for r in report_data["reference"]} == {PAPER_LABEL}
    assert report_data["bounds"] and {b["source_label"] for b in report_data["bounds"]} == {BOUND_LABEL}


def test_targets_are_evaluated_without_pretending(report_data):
    targets = {t["id"]: t for t in report_data["targets"]}
    assert set(targets) == set(range(1, 9))
    assert targets[3]["reached"] is not None and "tvm" in targets[3]["measured"]  # tvm is in this run
    for t in targets.values():
        assert t["reached"] in (True, False, None) and t["measured"]


def test_every_backend_measured_here_is_timed_again_against_the_others(report_data):
    """The head-to-head pass: each backend that ran here, TSM only, all in the same rounds; ratios from it."""
    h2h = report_data["head_to_head"]
    rows = {r["backend"]: r for r in h2h["rows"]}
    assert set(rows) == {r["backend"] for r in report_data["rows"] if r["status"] == "ok"}
    for r in rows.values():
        assert r["runs"] == 6 and r["min_ms"] <= r["p50_ms"] <= r["p99_ms"]
        assert r["speedup_vs_plain_ort"] == pytest.approx(rows["ort-plain"]["p50_ms"] / r["p50_ms"])
        assert r["vs_fastest"] >= 1.0
    assert min(r["vs_fastest"] for r in rows.values()) == 1.0
    targets = {t["id"]: t for t in report_data["targets"]}
    assert targets[3]["ratio"] == pytest.approx(rows["tvm"]["p50_ms"] / rows["onnxruntime"]["p50_ms"])
    assert "(head to head)" in targets[2]["measured"] and "(head to head)" in targets[3]["measured"]
    assert "Head to head" in render_terminal(report_data) and "### Head to head" in render_markdown(report_data)


def test_without_the_head_to_head_pass_targets_say_the_rows_were_timed_apart(bench_env):
    report = report_dict(run_benchmark(small_config(bench_env, backends=["onnxruntime", "tvm"], streams=0,
                                                    end_to_end=False, head_to_head=False)))
    assert report["head_to_head"] is None
    target = {t["id"]: t for t in report["targets"]}[3]
    assert target["reached"] is not None and "(rows timed one after another)" in target["measured"]


def test_profile_compares_tsm_and_tsn_per_op(report_data):
    prof = report_data["profile"]
    ops = {r["op"] for r in prof["by_op"]}
    assert "Conv" in ops and "(whole run)" in ops
    assert prof["tsm"]["frames"] == prof["tsn"]["frames"] >= 6


def test_terminal_table_shows_rows_paper_and_bounds(report_data):
    text = render_terminal(report_data)
    for needle in ("Backend", "p50 (ms)", "p99 (ms)", "FPS", "vs TSN", "torch", "ort-plain (baseline)",
                   "NVIDIA Jetson Nano", "Samsung Galaxy Note8", PAPER_LABEL, BOUND_LABEL, "skipped",
                   "End to end per frame", "Batched streams", "Performance targets", "Operator profile"):
        assert needle in text, needle


def test_json_is_complete_and_round_trips(report_data, tmp_path):
    path = write_json(report_data, tmp_path / "r.json")
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA and data["command"] == "tsm-bench --test"
    assert set(data) >= {"machine", "model", "settings", "rows", "reference", "bounds", "targets", "created"}
    assert {"cpu", "arch", "usable_cores", "load_average_at_start", "libraries"} <= set(data["machine"])
    for row in data["rows"]:
        assert {"backend", "status", "reason", "source", "tsm", "tsn", "overhead_vs_tsn"} <= set(row)
        if row["status"] == "ok":
            assert {"runs", "min_ms", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "fps", "cold_ms",
                    "samples_ms"} <= set(row["tsm"])
    assert [t["id"] for t in data["targets"]] == list(range(1, 9))
    assert all(r["source"] == PAPER_LABEL for r in data["reference"])


def test_markdown_tables(report_data):
    md = render_markdown(report_data)
    assert md.startswith("## tsm-bench report")
    assert "| Backend | Status |" in md and "|---|" in md and PAPER_LABEL in md
    for heading in ("### End to end per frame", "### Batched streams", "### Performance targets"):
        assert heading in md
    header = next(line for line in md.splitlines() if line.startswith("| Backend | Status |"))
    rows = [line for line in md.splitlines() if line.startswith("| torch |")]
    assert rows and rows[0].count("|") == header.count("|")  # cells line up with the header
    assert "`tsm-bench --test`" in md


def test_plot_is_a_png(report_data, tmp_path):
    path = write_plot(report_data, tmp_path / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_cli_writes_all_outputs_reusing_cached_artifacts(bench_env, report_data, capsys, monkeypatch):
    root = bench_env["root"]
    argv = ["--weights", bench_env["weights"], "--backends", "torch,ort-plain", "--frames", "3", "--warmup", "0",
            "--streams", "0", "--no-end-to-end", "--no-progress", "--json", str(root / "c.json"),
            "--markdown", str(root / "c.md"), "--plot", str(root / "c.png")]
    monkeypatch.setenv("ONLINE_TSM_CACHE", str(root / "cache"))
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "torch" in out.out and PAPER_LABEL in out.out
    assert "first run only" not in out.err  # built by the shared run above, taken from the cache
    data = json.loads((root / "c.json").read_text())
    assert data["command"].startswith("tsm-bench --weights") and [r["backend"] for r in data["rows"]] == [
        "torch", "ort-plain"]
    assert (root / "c.md").read_text().startswith("## tsm-bench report")
    assert (root / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_run_default_report_prints_and_returns(bench_env):
    out = io.StringIO()
    data = run_default_report(frames=2, warmup=0, backends=["torch"], out=out, weights=bench_env["weights"],
                              streams=0, end_to_end=False, cache_root=bench_env["cache"])
    assert data["rows"][0]["backend"] == "torch" and "Samsung Galaxy Note8" in out.getvalue()


@pytest.mark.parametrize("argv, message", [
    (["--frames", "0"], "--frames must be at least 1"),
    (["--warmup", "-1"], "--warmup must be 0 or more"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--input-size", "100"], "--input-size must be a positive multiple of 32"),
    (["--backends", "torch,cuda"], "unknown backend(s) cuda"),
    (["--backends", ","], "--backends is empty"),
    (["--backends", "tvm-rpc"], "backend tvm-rpc needs --rpc HOST:PORT"),
    (["--rpc", "nano:port", "--target", "jetson-nano"], "--rpc expects HOST:PORT"),
    (["--rpc", "10.0.0.2:9090"], "--rpc HOST:PORT needs --target NAME"),
    (["--plot", "out.svg"], "--plot expects a .png file name"),
    (["--weights", "/nonexistent/model.pt"], "no such checkpoint file"),
])
def test_cli_errors_are_one_line(argv, message, capsys):
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]


def test_a_tvm_profile_gets_its_own_table(report_data):
    import copy

    data = copy.deepcopy(report_data)
    data["profile"]["tvm"] = {**copy.deepcopy(data["profile"]), "tool": "TVM 0.27 VM instrument (per call)"}
    text, md = render_terminal(data), render_markdown(data)
    assert text.count("Operator profile (") == 2 and "per function class" in text
    assert md.count("### Operator profile (") == 2
