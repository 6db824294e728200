"""``tsm-bench --import`` of ``trtexec --exportTimes`` JSON: a time beside the paper's, labelled not verified."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from online_tsm.benchmarks.cli import main as bench_main
from online_tsm.benchmarks.device_results.reader import import_results
from online_tsm.benchmarks.report import imported_rows
from online_tsm.benchmarks.device_results.trtexec import LABEL, read_trtexec_times
from online_tsm.errors import UserError

LATENCIES = [14.0, 12.0, 13.0, 15.0, 11.0]


def _times(folder: Path, latencies=LATENCIES) -> Path:
    """What trtexec writes: one object per timed inference (keys as TensorRT 8.2's trtexec writes them)."""
    records, start = [], 100.0
    for latency in latencies:
        compute = latency - 1.0
        records.append({"startEnqMs": start, "endEnqMs": start + 0.2, "startH2dMs": start, "endH2dMs": start + 0.5,
                        "startComputeMs": start + 0.5, "endComputeMs": start + 0.5 + compute,
                        "startD2hMs": start + 0.5 + compute, "endD2hMs": start + latency, "h2dMs": 0.5,
                        "computeMs": compute, "d2hMs": 0.5, "latencyMs": latency, "endToEndMs": latency})
        start += latency
    path = folder / "trtexec-times.json"
    path.write_text(json.dumps(records, indent=2))
    return path


def _manifest(folder: Path, width: float = 1.0, size: int = 224) -> None:
    """A jetson-nano artifact's manifest.json beside the times (only what the row reads)."""
    (folder / "manifest.json").write_text(json.dumps({
        "format": "online-tsm-artifact", "format_version": 1, "target": {"name": "jetson-nano", "kind": "cuda"},
        "model": {"name": "jester", "arch": "mobilenet_v2", "width_mult": width, "shift": "causal", "labels": ["a"]},
        "frame_input": "frame", "inputs": [{"name": "frame", "shape": [1, 3, size, size], "dtype": "float32"}],
        "preprocess": {"input_size": size, "folded": False}}))


def test_trtexec_times_sit_beside_the_paper_s_nano_labelled_not_verified(tmp_path):
    _manifest(tmp_path)
    (row,) = import_results([_times(tmp_path)])
    assert row["status"] == "not verified" and row["verification"] is None
    assert row["timing"]["p50_ms"] == 13.0 and row["timing"]["frames"] == 5
    assert row["timing"]["samples_ms"] == LATENCIES
    assert row["device_timing"]["p50_ms"] == 12.0            # computeMs, the GPU part
    assert row["target"] == "jetson-nano" and row["paper"]["latency_ms"] == 13.0
    assert row["ratio_to_paper"] == pytest.approx(1.0) and row["same_model_as_paper"]
    assert LABEL == "trtexec, not verified" and LABEL in row["source"]
    table = imported_rows({"imported": [row]})
    assert table[0][3] == "⚠️ no (trtexec, not verified)" and table[0][4] == "13.00"


def test_without_a_manifest_the_row_says_the_model_is_not_known(tmp_path):
    (row,) = import_results([_times(tmp_path)])
    assert row["target"] == "?" and row["paper"] is None and row["ratio_to_paper"] is None
    assert "no manifest.json beside the file" in row["model_label"]


def test_other_model_is_labelled_so(tmp_path):
    _manifest(tmp_path, width=0.5, size=96)
    (row,) = import_results([_times(tmp_path)])
    assert not row["same_model_as_paper"] and "width 0.5" in row["model_label"]


def test_run_py_results_and_bad_files_still_go_their_own_way(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"no": "latency"}]))
    assert read_trtexec_times(bad) is None
    with pytest.raises(UserError, match="is not a run.py result"):
        import_results([bad])


def test_tsm_bench_import_prints_the_trtexec_row(tmp_path, capsys):
    _manifest(tmp_path)
    times = _times(tmp_path)
    markdown = tmp_path / "report.md"
    assert bench_main(["--import", str(times), "--markdown", str(markdown)]) == 0
    out = capsys.readouterr().out
    assert "trtexec, not verified" in out and "13.00" in out
    assert "trtexec, not verified" in markdown.read_text()
