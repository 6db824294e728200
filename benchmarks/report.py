"""Turning a benchmark report into a terminal table, Markdown, JSON and a plot.

All four read the report's dictionary (:meth:`BenchReport.to_dict`), so what
is printed, pasted and saved is the same data.  Every row carries its
source -- measured here on <machine>, paper, bound -- so no unmeasured
figure can pass for a measurement.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from online_tsm.benchmarks.paper import BOUND_LABEL, PAPER_LABEL

STATUS_MARK = {"ok": "✅ ok", "skipped": "➖ skipped", "error": "❌ error"}
MAIN_HEADERS = ["Backend", "Status", "Size (MB)", "p50 (ms)", "p99 (ms)", "FPS", "TSN p50 (ms)", "vs TSN", "Source"]


def _num(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def _pct(x: Any) -> str:
    return "-" if x is None else f"{x:+.1%}"


def main_rows(data: dict[str, Any]) -> list[list[str]]:
    """The main table: measured backends, then the paper's rows, then roofline bounds."""
    rows = []
    for r in data["rows"]:
        name = r["backend"] + (" (baseline)" if r.get("baseline") else "")
        if r["status"] != "ok":
            rows.append([name, STATUS_MARK.get(r["status"], r["status"]), "-", "-", "-", "-", "-", "-", r["reason"]])
            continue
        tsm, tsn = r["tsm"], r["tsn"]
        rows.append([name, STATUS_MARK["ok"], _num(r["size_mb"], 1), _num(tsm["p50_ms"]), _num(tsm["p99_ms"]),
                     _num(tsm["fps"], 1), _num(tsn["p50_ms"] if tsn else None), _pct(r["overhead_vs_tsn"]),
                     r["source"]])
    for p in data["reference"]:
        rows.append([f"{p['device']} [{p['runtime']}]", "📄 paper", "-", _num(p["latency_ms"], 1), "-",
                     _num(p["fps"], 1), "-", "-", PAPER_LABEL])
    for b in data["bounds"]:
        rows.append([f"{b['device']} [{b['unit']}]", "📐 bound", "-", f">= {_num(b['bound_ms'])}", "-",
                     f"<= {_num(1000.0 / b['bound_ms'], 0)}", "-", "-", f"{BOUND_LABEL} ({b['limited_by']}-bound)"])
    return rows


def end_to_end_rows(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in data["rows"]:
        e = r.get("end_to_end") if r["status"] == "ok" else None
        if not e:
            continue
        st = e["stages_p50_ms"]
        rows.append([r["backend"], _num(st["preprocess"]), _num(st["step"]), _num(e.get("state_handling_ms")),
                     _num(st["smoothing"], 3), _num(e["total"]["p50_ms"]), _num(e["total"]["p99_ms"]),
                     _num(e["total"]["fps"], 1)])
    return rows


E2E_HEADERS = ["Backend", "pre-process", "step", "of which state (TSM-TSN)", "smoothing", "total p50", "total p99",
               "FPS"]
STREAMS_HEADERS = ["Backend", "N", "step_many runs", "batched p50 (ms)", "sequential p50 (ms)", "total FPS batched",
                   "total FPS sequential", "per-stream FPS", "speed-up"]


def streams_rows(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in data["rows"]:
        s = r.get("streams") if r["status"] == "ok" else None
        if not s:
            continue
        rows.append([r["backend"], str(s["n"]), s["step_many"], _num(s["batched"]["p50_ms"]), _num(s["sequential"]["p50_ms"]),
                     _num(s["total_fps_batched"], 1), _num(s["total_fps_sequential"], 1),
                     _num(s["per_stream_fps_batched"], 1), f"{s['speedup']:.2f}x"])
    return rows


HEAD_TO_HEAD_HEADERS = ["Backend", "p50 (ms)", "p90 (ms)", "p99 (ms)", "Runs", "vs ort-plain", "vs fastest"]


def head_to_head_rows(data: dict[str, Any]) -> list[list[str]]:
    h2h = data.get("head_to_head") or {}
    return [[r["backend"], _num(r["p50_ms"]), _num(r["p90_ms"]), _num(r["p99_ms"]), str(r["runs"]),
             "-" if r["speedup_vs_plain_ort"] is None else f"{r['speedup_vs_plain_ort']:.2f}x",
             f"{r['vs_fastest']:.2f}x"] for r in h2h.get("rows", [])]


def _head_to_head_title(data: dict[str, Any]) -> str:
    return (f"Head to head ({data['head_to_head']['timing']}); vs ort-plain above 1 is faster than the plain loop; "
            "the targets compare backends with these figures")


PROFILE_HEADERS = ["Operator", "TSM ms/frame", "TSN ms/frame", "TSM - TSN"]


def _profiles(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's profiles: ONNX Runtime's, then the TVM host build's when it was profiled."""
    prof = data.get("profile")
    return [p for p in ((prof or {}), (prof or {}).get("tvm") or {}) if p.get("by_op")]


def profile_rows(prof: dict[str, Any]) -> list[list[str]]:
    return [[r["op"], _num(r["tsm_ms"], 3), _num(r["tsn_ms"], 3), f"{r['delta_ms']:+.3f}"] for r in prof["by_op"]]


def _profile_title(prof: dict[str, Any]) -> str:
    unit = "function class" if prof["tool"].startswith("TVM") else "op type"
    return (f"Operator profile ({prof['tool']}, {prof['frames']} streamed frames, kernel time summed per {unit}; "
            "profiling itself adds overhead)")


IMPORTED_HEADERS = ["Device", "Target", "Engine", "Verified", "p50 (ms)", "p90 (ms)", "p99 (ms)", "FPS",
                    "Paper p50 (ms)", "p50 / paper", "Model", "Source"]
IMPORTED_TITLE = "Measured on the device by the artifact's run.py (tsm-bench --import), beside the paper"


def imported_rows(data: dict[str, Any]) -> list[list[str]]:
    """Device results: a failed verification shows as failed, never as a time; a time from a tool that checks
    nothing (trtexec) shows labelled as not verified."""
    rows = []
    for r in data.get("imported") or []:
        paper = r.get("paper")
        paper_cell = f"{paper['latency_ms']:g} ({paper['device']})" if paper else "- (no paper figure)"
        model = "same as paper" if r["same_model_as_paper"] else "other model"
        check = r.get("verification") or {}
        unverified = r["status"] == "not verified" and r.get("timing")   # a time from a tool that checks nothing
        if r["status"] != "ok" and not unverified:
            verified = "❌ failed" if r["status"] == "failed" else "✅ yes"
            rows.append([r["device"], r["target"], r["engine"], verified, "-", "-", "-", "-", paper_cell, "-", model,
                         f"{r['reason']} ({r['source']})"])
            continue
        t = r["timing"]
        ratio = "-" if r.get("ratio_to_paper") is None else f"{r['ratio_to_paper']:.2f}x"
        verified = f"⚠️ no ({r.get('unverified_label', 'not verified')})" if unverified else \
            f"✅ {check.get('max_abs_diff', 0):.1e}"
        rows.append([r["device"], r["target"], r["engine"], verified,
                     _num(t["p50_ms"]), _num(t["p90_ms"]), _num(t["p99_ms"]), _num(t["fps"], 1), paper_cell, ratio,
                     model, r["source"]])
    return rows


def _imported_notes(data: dict[str, Any]) -> list[str]:
    return [f"{r['device']}: {r['model_label']}; paper row: {r['paper_match']}; "
            f"{(r.get('timing') or {}).get('frames', 0)} timed frames; file {r['file']}"
            for r in data.get("imported") or []]


TARGET_HEADERS = ["#", "Target", "Measured", "Reached"]
PRECISION_HEADERS = ["Backend", "Precision", "p50 (ms)", "vs ort-plain p50", "top-1 agreement (frames)",
                     "top-1 agreement (last frames)", "max |logit diff|", "drift (mean |diff|, last 100)"]


def precision_rows(data: dict[str, Any]) -> list[list[str]]:
    """Each measured row's precision, its speed against the plain ORT float32 loop, and int8 agreement.

    Speeds come from the head-to-head pass when the run made one (every backend in the same rounds).
    """
    from online_tsm.benchmarks.head_to_head import comparable_p50

    p50, _ = comparable_p50(data.get("head_to_head"), {r["backend"]: r["tsm"]["p50_ms"] for r in data["rows"]
                                                         if r["status"] == "ok" and r.get("tsm")})
    plain = p50.get("ort-plain")
    rows = []
    for r in data["rows"]:
        if r["status"] != "ok" or r.get("baseline") or r["backend"] not in p50:
            continue
        a = r.get("agreement") or {}
        ratio = plain / p50[r["backend"]] if plain else None
        rows.append([r["backend"], r.get("precision", "fp32"), _num(p50[r["backend"]]),
                     "-" if ratio is None else f"{ratio:.2f}x",
                     f"{a['top1_agreement_frames']:.1%} of {a['frames']}" if a else "-",
                     f"{a['top1_agreement_last_frame']:.1%} of {a['clips']}" if a else "-",
                     _num(a.get("max_abs_logit_diff")) if a else "-",
                     _num((a.get("drift") or {}).get("mean_abs_diff_last_100"), 3) if a else "-"])
    return rows


def target_rows(data: dict[str, Any]) -> list[list[str]]:
    mark = {True: "✅ yes", False: "❌ no", None: "➖ not measured"}
    return [[str(t["id"]), t["target"], t["measured"], mark[t["reached"]]] for t in data["targets"]]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain aligned columns (numbers right-aligned), as in Ultralytics' benchmark printout."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]

    def numeric(cell: str) -> bool:
        return cell.replace(".", "", 1).replace("-", "", 1).replace("+", "", 1).replace("%", "").replace(
            "x", "").replace(">= ", "").replace("<= ", "").isdigit()

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(w) if numeric(str(c)) else str(c).ljust(w) for c, w in zip(cells, widths))

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]).rstrip()


def _model_line(data: dict[str, Any]) -> str:
    m = data["model"]
    return (f"MobileNetV2 TSM {m['input_size']}x{m['input_size']}, width {m['width_mult']}, {m['n_class']} classes, "
            f"{m['params'] / 1e6:.2f} M params, {m['macs_per_frame'] / 1e6:.0f} M MACs "
            f"({m['flops_per_frame'] / 1e6:.0f} M FLOPs) per frame, {m['shift_buffers']} shift buffers "
            f"({m['buffer_bytes'] / 1e3:.0f} kB); weights: {m['weights_source']}")


def _machine_line(data: dict[str, Any]) -> str:
    mc = data["machine"]
    libs = ", ".join(f"{k} {v}" for k, v in mc["libraries"].items())
    return (f"{mc['cpu']} ({mc['arch']}), {mc['usable_cores']} usable cores, {mc['memory_gb']} GB, {mc['os']}, "
            f"Python {mc['python']}; load average at start {mc['load_average_at_start']}; {libs}")


def _settings_line(data: dict[str, Any]) -> str:
    s = data["settings"]
    return (f"{s['frames']} timed frames per variant after {s['warmup']} warm-up frames, batch 1, buffers carried, "
            f"TSM and TSN interleaved in rounds of {s['round_size']}; threads: {s['threads'] or 'library default'}; "
            "FPS = 1000 / mean")


def render_terminal(data: dict[str, Any]) -> str:
    parts = [f"tsm-bench  --  {data['command']}"]
    if data.get("model"):      # absent when the report only shows imported device results
        parts += [f"model:   {_model_line(data)}", f"machine: {_machine_line(data)}",
                  f"timing:  {_settings_line(data)}"]
    parts += ["", format_table(MAIN_HEADERS, main_rows(data))]
    if data.get("imported"):
        parts += ["", IMPORTED_TITLE, format_table(IMPORTED_HEADERS, imported_rows(data)),
                  *(f"  {n}" for n in _imported_notes(data))]
    e2e = end_to_end_rows(data)
    if e2e:
        parts += ["", "End to end per frame (ms): camera image -> pre-processing -> step -> smoothing",
                  format_table(E2E_HEADERS, e2e)]
    st = streams_rows(data)
    if st:
        parts += ["", "Batched streams (step_many) against the same streams stepped one after another",
                  format_table(STREAMS_HEADERS, st)]
    if data.get("head_to_head"):
        parts += ["", _head_to_head_title(data), format_table(HEAD_TO_HEAD_HEADERS, head_to_head_rows(data))]
    for prof in _profiles(data):
        parts += ["", _profile_title(prof), format_table(PROFILE_HEADERS, profile_rows(prof))]
    if data.get("rows"):
        parts += ["", "Precision, speed against the plain ONNX Runtime loop, int8 agreement with float32",
                  format_table(PRECISION_HEADERS, precision_rows(data))]
    if data.get("targets"):
        parts += ["", "Performance targets", format_table(TARGET_HEADERS, target_rows(data))]
    parts += [f"note: {n}" for n in data.get("notes", [])]
    parts += [f"({data['wall_s']:.0f} s)"] if data.get("model") else []
    return "\n".join(parts) + "\n"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def esc(cell: str) -> str:
        return str(cell).replace("|", "\\|")

    out = ["| " + " | ".join(esc(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def render_markdown(data: dict[str, Any]) -> str:
    parts = ["## tsm-bench report", "",
             f"- command: `{data['command']}`",
             f"- created: {data['created']} ({data['wall_s']:.0f} s)"]
    if data.get("model"):
        parts += [f"- model: {_model_line(data)}", f"- machine: {_machine_line(data)}",
                  f"- timing: {_settings_line(data)}"]
    parts += ["", markdown_table(MAIN_HEADERS, main_rows(data))]
    if data.get("imported"):
        parts += ["", f"### {IMPORTED_TITLE}", "", markdown_table(IMPORTED_HEADERS, imported_rows(data)), ""]
        parts += [f"- {n}" for n in _imported_notes(data)]
    e2e = end_to_end_rows(data)
    if e2e:
        parts += ["", "### End to end per frame (ms)", "", markdown_table(E2E_HEADERS, e2e)]
    st = streams_rows(data)
    if st:
        parts += ["", "### Batched streams (`step_many`)", "", markdown_table(STREAMS_HEADERS, st)]
    if data.get("head_to_head"):
        parts += ["", f"### {_head_to_head_title(data)}", "",
                  markdown_table(HEAD_TO_HEAD_HEADERS, head_to_head_rows(data))]
    for prof in _profiles(data):
        parts += ["", f"### {_profile_title(prof)}", "", markdown_table(PROFILE_HEADERS, profile_rows(prof))]
    if data.get("rows"):
        parts += ["", "### Precision and int8 agreement", "", markdown_table(PRECISION_HEADERS, precision_rows(data))]
    if data.get("targets"):
        parts += ["", "### Performance targets", "", markdown_table(TARGET_HEADERS, target_rows(data))]
    if data.get("notes"):
        parts += [""] + [f"- {n}" for n in data["notes"]]
    return "\n".join(parts) + "\n"


def write_json(data: dict[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=float) + "\n")
    return path


def write_markdown(data: dict[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_markdown(data))
    return path


def write_plot(data: dict[str, Any], path: str | os.PathLike) -> Path:
    """Two panels: per-frame latency distribution per backend (TSM and TSN), and p50 bars beside the paper."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data["rows"] if r["status"] == "ok" and r["tsm"]]
    # Device results imported from run.py: TSM only (the artifact holds no TSN twin).
    rows += [{"backend": f"{r['target']} on device", "tsm": r["timing"], "tsn": None, "overhead_vs_tsn": None}
             for r in data.get("imported") or [] if r["status"] == "ok"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    names = [r["backend"] for r in rows]
    if rows:
        positions = list(range(len(rows)))
        tsm = left.violinplot([r["tsm"]["samples_ms"] for r in rows], [p - 0.2 for p in positions], widths=0.35,
                              showmedians=True)
        legend = [tsm["bodies"][0]]
        paired = [(p, r) for p, r in zip(positions, rows) if r["tsn"]]
        if paired:
            tsn = left.violinplot([r["tsn"]["samples_ms"] for _, r in paired], [p + 0.2 for p, _ in paired],
                                  widths=0.35, showmedians=True)
            for body in tsn["bodies"]:
                body.set_facecolor("tab:orange")
            legend.append(tsn["bodies"][0])
        left.set_xticks(positions, names, rotation=20)
        left.set_yscale("log")
        left.legend(legend, ["TSM (shift)", "TSN (no shift)"][:len(legend)])
        width = 0.38
        right.bar([p - width / 2 for p in positions], [r["tsm"]["p50_ms"] for r in rows], width, label="TSM p50")
        if paired:
            right.bar([p + width / 2 for p, _ in paired], [r["tsn"]["p50_ms"] for _, r in paired], width,
                      label="TSN p50", color="tab:orange")
        for p, r in zip(positions, rows):
            if r["overhead_vs_tsn"] is not None:
                right.annotate(f"{r['overhead_vs_tsn']:+.1%}", (p, max(r["tsm"]["p50_ms"], r["tsn"]["p50_ms"])),
                               ha="center", va="bottom", fontsize=8)
        right.set_xticks(positions, names, rotation=20)
    for ref in data["reference"]:
        right.axhline(ref["latency_ms"], linestyle="--", color="grey", linewidth=1)
        right.annotate(f"{ref['device']} {ref['latency_ms']:g} ms ({PAPER_LABEL})", (0.99, ref["latency_ms"]),
                       xycoords=("axes fraction", "data"), fontsize=7, ha="right", va="bottom", color="dimgrey",
                       zorder=5, bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1})
    where = f"here on {data['machine']['cpu']}" if data.get("machine") else "on the device (run.py)"
    left.set_title(f"per-frame latency, measured {where}", fontsize=10)
    left.set_ylabel("ms per frame (log scale)")
    right.set_title("TSM vs TSN p50 (label: TSM overhead)", fontsize=10)
    right.set_ylabel("ms per frame")
    right.legend(loc="upper left", fontsize=8)
    m = data.get("model")
    fig.suptitle(f"online TSM MobileNetV2 {m['input_size']}x{m['input_size']} -- {data['command']}" if m
                 else f"online TSM -- {data['command']}", fontsize=10)
    from online_tsm.fileio import atomic_path

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path
