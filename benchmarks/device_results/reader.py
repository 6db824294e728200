"""``tsm-bench --import RESULT.json``: figures measured on a device by the artifact's ``run.py``.

``run.py`` (``run_onnx.py``) runs where online-tsm is not installed and writes
its result as JSON; this module reads such files into report rows, each set
beside the paper's row for that device with the ratio of the two p50s, and
labelled as the same model as the paper's or another one (width, input size
and shift from the artifact's manifest).  A run whose verification failed,
or that never got to verify, is a failed row: it never shows a time.
"""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any, Sequence

from online_tsm.benchmarks.models import PAPER_INPUT_SIZE, PAPER_WIDTH
from online_tsm.benchmarks.paper import PAPER_ROWS
from online_tsm.errors import UserError

SCHEMA = "online-tsm-device-run/1"

#: Which paper row a device result sits beside: by the device's own name first, else by the export target.
PAPER_DEVICE_MATCH: dict[str, dict[str, tuple[str, ...]]] = {
    "NVIDIA Jetson Nano": {"names": ("jetson nano",), "targets": ("jetson-nano",)},
    "Samsung Galaxy Note8": {"names": ("note8", "sm-n950"), "targets": ("android-arm64", "android-litert")},
}


def load_result(path: str | Path) -> dict[str, Any]:
    """A run.py result file, checked; one clear line when it is something else."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"--import {path}: no such file (expected the JSON written by run.py --json)")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"--import {path} is not JSON ({exc}); expected the file written by run.py --json") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise UserError(f"--import {path} is not a run.py result (expected schema {SCHEMA!r}, got "
                        f"{data.get('schema') if isinstance(data, dict) else type(data).__name__!r})")
    return data


def device_label(data: dict[str, Any]) -> str:
    """The device in words: its model name when the OS reports one, and its CPU."""
    machine = data.get("machine") or {}
    cpu = machine.get("cpu") or machine.get("arch") or "unknown CPU"
    model = machine.get("device_model")
    return f"{model} ({cpu})" if model else str(cpu)


def paper_row_for(data: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """``(paper row, how it was matched)`` for the device of ``data``; ``(None, why not)`` when none applies."""
    machine = data.get("machine") or {}
    name = f"{machine.get('device_model') or ''} {machine.get('cpu') or ''}".lower()
    target = ((data.get("artifact") or {}).get("target") or {}).get("name")
    rows = {r.device: r for r in PAPER_ROWS}
    for device, match in PAPER_DEVICE_MATCH.items():
        if device in rows and any(key in name for key in match["names"]):
            return rows[device].to_dict(), "same device"
    for device, match in PAPER_DEVICE_MATCH.items():
        if device in rows and target in match["targets"]:
            return rows[device].to_dict(), f"the paper's device for target {target}"
    return None, "the paper has no figure for this device"


def model_label(data: dict[str, Any]) -> tuple[bool, str]:
    """Whether the artifact is the paper's model (MobileNetV2 width 1.0, 224x224, online shift), in words."""
    artifact = data.get("artifact") or {}
    model, shape = artifact.get("model") or {}, artifact.get("input") or {}
    width, size = model.get("width_mult"), shape.get("input_size")
    differences = []
    if "mobilenet" not in str(model.get("arch", "")).lower():
        differences.append(f"architecture {model.get('arch')}")
    if width != PAPER_WIDTH:
        differences.append(f"width {width:g}" if isinstance(width, (int, float)) else f"width {width}")
    if size != PAPER_INPUT_SIZE:
        differences.append(f"{size}x{size} input")
    if model.get("shift") != "causal":
        differences.append("no temporal shift (TSN)")
    if shape.get("folded"):
        differences.append("pre-processing folded into the graph")
    weights = model.get("name", "?")
    if differences:
        return False, f"another model than the paper's ({', '.join(differences)}; weights {weights})"
    return True, f"same model as the paper's (MobileNetV2 {PAPER_WIDTH:g}, {PAPER_INPUT_SIZE}x{PAPER_INPUT_SIZE}, " \
                 f"online shift; weights {weights})"


def _date(created: str | None) -> str:
    try:
        return _dt.datetime.fromisoformat(str(created)).date().isoformat()
    except ValueError:
        return str(created or "date unknown")


def imported_row(data: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """One report row from a run.py result: figures only when verification passed and timing ran."""
    settings = data.get("settings") or {}
    check = data.get("verification") or {}
    timing = data.get("timing") if check.get("passed") is True else None
    tool = data.get("tool") or "run.py"
    label = device_label(data)
    paper, matched = paper_row_for(data)
    same, model_text = model_label(data)
    target = ((data.get("artifact") or {}).get("target") or {}).get("name", "?")
    engine = f"{settings.get('engine', '?')} ({settings.get('device', '?')}" + (
        ", fp16)" if settings.get("fp16") else ")")
    row: dict[str, Any] = {
        "device": label, "target": target, "engine": engine, "file": str(path),
        "source": f"measured on the device {label}, {tool} {_date(data.get('created'))}",
        "model": (data.get("artifact") or {}).get("model"), "same_model_as_paper": same, "model_label": model_text,
        "paper": paper, "paper_match": matched, "verification": check or None, "timing": None, "ratio_to_paper": None,
        "device_timing": data.get("device_timing"), "machine": data.get("machine"),
        "artifact_sha256": (data.get("artifact") or {}).get("manifest_sha256"),
    }
    if check.get("passed") is not True:
        error = (data.get("error") or {}).get("message")
        if check:
            reason = (f"verification failed: max abs diff {check.get('max_abs_diff'):.3g} > tolerance "
                      f"{check.get('tolerance'):.3g}")
        else:
            reason = f"not verified: {error or 'no verification in the file'}"
        row.update(status="failed", reason=reason)
        return row
    if not timing:
        row.update(status="not timed", reason="verified only (run.py --no-timing)")
        return row
    row.update(status="ok", reason="", timing=timing)
    if paper:
        row["ratio_to_paper"] = timing["p50_ms"] / paper["latency_ms"]
    return row


def artifact_beside(path: Path) -> dict[str, Any]:
    """The artifact part of a run.py result, from a ``manifest.json`` next to the file ({} when none)."""
    manifest = path.parent / "manifest.json"
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != "online-tsm-artifact":
        return {}
    frame = next((s for s in data.get("inputs") or [] if s.get("name") == data.get("frame_input")), {})
    pre = data.get("preprocess") or {}
    return {"target": data.get("target") or {}, "folder": str(path.parent),
            "model": {k: v for k, v in (data.get("model") or {}).items() if k != "labels"},
            "input": {"shape": frame.get("shape"), "input_size": pre.get("input_size"),
                      "folded": bool(pre.get("folded"))}}



def unverified_row(path: Path, label: str, source: str, *, engine: str, device: str, timing: dict[str, Any],
                   no_manifest: str, device_timing: dict[str, Any] | None = None,
                   default_target: str | None = None) -> dict[str, Any]:
    """A report row for a device tool's own timing (trtexec, benchmark_model): random inputs, nothing verified.

    The model and the paper's figure it sits beside come from a ``manifest.json`` next to the file;
    ``source`` is completed with the file's date.
    """
    artifact = artifact_beside(path) or ({"target": {"name": default_target}} if default_target else {})
    shaped = {"artifact": artifact, "machine": {}}
    paper, matched = paper_row_for(shaped)
    same, model_text = model_label(shaped) if artifact.get("model") else (False, no_manifest)
    created = _dt.datetime.fromtimestamp(path.stat().st_mtime, _dt.timezone.utc).date().isoformat()
    return {"device": device, "target": (artifact.get("target") or {}).get("name", "?"), "engine": engine,
            "file": str(path), "source": f"{label}: {source} {created}",
            "model": artifact.get("model"), "same_model_as_paper": same, "model_label": model_text,
            "paper": paper, "paper_match": matched, "verification": None, "timing": timing,
            "ratio_to_paper": timing["p50_ms"] / paper["latency_ms"] if paper else None,
            "device_timing": device_timing, "machine": None, "artifact_sha256": None,
            "status": "not verified", "reason": f"{label} (random inputs, outputs never compared)",
            "unverified_label": label}


def import_results(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Rows for every ``--import`` file, in order: run.py results, and ``trtexec --exportTimes`` files
    (:mod:`online_tsm.benchmarks.device_results.trtexec`) and LiteRT ``benchmark_model`` logs
    (:mod:`online_tsm.benchmarks.device_results.benchmark_model`), both labelled not verified."""
    from online_tsm.benchmarks.device_results.benchmark_model import benchmark_model_row, read_benchmark_model
    from online_tsm.benchmarks.device_results.trtexec import read_trtexec_times, trtexec_row

    rows = []
    for path in paths:
        times = read_trtexec_times(path)
        log = read_benchmark_model(path) if times is None else None
        rows.append(trtexec_row(times, path) if times is not None else benchmark_model_row(log, path)
                    if log is not None else imported_row(load_result(path), path))
    return rows


def import_only_report(rows: list[dict[str, Any]], command: str) -> dict[str, Any]:
    """A report of device results and the paper's rows only (nothing measured here), in the report's schema."""
    from online_tsm.benchmarks.results import SCHEMA as REPORT_SCHEMA

    return {"schema": REPORT_SCHEMA, "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": command, "wall_s": 0.0, "machine": None, "model": None, "settings": None, "rows": [],
            "reference": [r.to_dict() for r in PAPER_ROWS], "bounds": [], "targets": [], "profile": None,
            "notes": ["nothing was measured on this machine: add --backends NAME,... to measure it here as well"],
            "imported": rows}
