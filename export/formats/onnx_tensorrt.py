"""The ONNX model that TensorRT 8.2 parses (JetPack 4.6, the Jetson Nano's last): opset 13, checked node by node.

Why a second exporter: torch's dynamo exporter (what :mod:`.onnx` uses) does
not write opsets below 18, and ``onnx.version_converter`` cannot bring its
graph down to 13.  TensorRT 8.2's ONNX parser reads opsets 7-13 only, and
ONNX Runtime 1.10 (the last for Python 3.6, JetPack 4.6's Python) reads up to
15.  torch's legacy TorchScript exporter still writes opset 13, with the same
input and output names (``frame``, ``shift_k`` -> ``logits``,
``shift_out_k``).

Every node is then checked against onnx-tensorrt's 8.2 support table, kept as
data beside this module (``tensorrt82_operators.json``, converted from
``docs/operators.md`` on the ``release/8.2-GA`` tag): an operator it does not
support, a tensor type it does not take (it has no UINT8), an input it needs
as a constant that is computed, a dynamic shape -- each fails the export
with the node's name, on this machine, instead of on the device.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch

from online_tsm.export.formats.onnx import (ExportError, simplify_and_check, stream_onnxruntime, torch_export)
from online_tsm.manifest import Manifest
from online_tsm.verification import FP32

TENSORRT_OPSET = 13
TABLE_PATH = Path(__file__).with_name("tensorrt82_operators.json")

#: ONNX tensor element types in the table's words (operators.md: FP32, FP16, INT8, INT32, BOOL; INT64 and DOUBLE
#: are cast down by the parser).  Anything else (UINT8, strings, ...) TensorRT 8.2 cannot hold.
_TYPE_NAMES = {onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.FLOAT16: "FP16", onnx.TensorProto.INT8: "INT8",
               onnx.TensorProto.INT32: "INT32", onnx.TensorProto.INT64: "INT64", onnx.TensorProto.BOOL: "BOOL",
               onnx.TensorProto.DOUBLE: "DOUBLE"}
#: How the parser stores a type (what the per-operator "types" column is written in).
_CAST_DOWN = {"INT64": "INT32", "DOUBLE": "FP32"}


@lru_cache(maxsize=1)
def operator_table() -> dict[str, Any]:
    """The TensorRT 8.2 support table (``tensorrt82_operators.json``)."""
    return json.loads(TABLE_PATH.read_text())


@dataclass(frozen=True)
class Problem:
    """One reason TensorRT 8.2 would refuse the graph: where (a node or a graph input) and why."""

    where: str
    why: str

    def __str__(self) -> str:
        return f"{self.where}: {self.why}"


def _type_name(elem_type: int) -> str:
    return _TYPE_NAMES.get(elem_type, onnx.TensorProto.DataType.Name(elem_type))


def tensorrt_problems(model: onnx.ModelProto, table: dict[str, Any] | None = None) -> list[Problem]:
    """Everything in ``model`` that TensorRT 8.2's ONNX parser does not support, per ``table``; [] when ready."""
    table = operator_table() if table is None else table
    problems: list[Problem] = []
    version = f"TensorRT {table['tensorrt']}"
    for opset in model.opset_import:
        if opset.domain not in ("", "ai.onnx"):
            problems.append(Problem("model", f"uses the operator domain {opset.domain!r}; {version} reads the "
                                             "default ONNX domain only"))
        elif not table["min_opset"] <= opset.version <= table["max_opset"]:
            problems.append(Problem("model", f"is opset {opset.version}; {version} reads opsets "
                                             f"{table['min_opset']}-{table['max_opset']}"))
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    types = {v.name: v.type.tensor_type for v in (*inferred.graph.input, *inferred.graph.value_info,
                                                  *inferred.graph.output)}
    types.update({t.name: onnx.TypeProto.Tensor(elem_type=t.data_type) for t in model.graph.initializer})
    allowed = set(table["tensor_types"])
    for value in (*model.graph.input, *model.graph.output):
        tensor = value.type.tensor_type
        kind = "input" if value in model.graph.input else "output"
        if _type_name(tensor.elem_type) not in allowed:
            problems.append(Problem(f"graph {kind} {value.name!r}", f"is {_type_name(tensor.elem_type)}; {version} "
                                    f"takes {', '.join(table['tensor_types'])}"))
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
        if not tensor.HasField("shape") or any(not isinstance(d, int) or d <= 0 for d in dims):
            problems.append(Problem(f"graph {kind} {value.name!r}", f"has the shape {dims}; the engine is built "
                                                                    "for static shapes"))
    constants = {t.name for t in model.graph.initializer}
    constants.update(o for n in model.graph.node if n.op_type == "Constant" for o in n.output)
    operators = table["operators"]
    for index, node in enumerate(model.graph.node):
        where = f"node {node.name or f'#{index}'} ({node.op_type})"
        row = operators.get(node.op_type)
        if row is None or not row["supported"]:
            problems.append(Problem(where, f"{version} does not support the operator {node.op_type}"))
            continue
        for i in row.get("constant_inputs", []):
            if i < len(node.input) and node.input[i] and node.input[i] not in constants:
                problems.append(Problem(where, f"input {i} ({node.input[i]}) must be an initializer in {version}: "
                                               f"{row.get('restrictions', 'it is read as weights')}"))
        data = types.get(node.input[0]) if node.input else None
        if data is not None and data.elem_type and row["types"] and node.op_type != "Constant":
            name = _type_name(data.elem_type)
            if _CAST_DOWN.get(name, name) not in row["types"] and name not in row["types"]:
                problems.append(Problem(where, f"reads {name} ({node.input[0]}); {version} runs {node.op_type} on "
                                               f"{', '.join(row['types'])}"))
    return problems


def check_tensorrt_ready(path: str | Path) -> None:
    """Raise :class:`ExportError` naming the first problems when TensorRT 8.2 would not parse ``path``."""
    problems = tensorrt_problems(onnx.load(str(path)))
    if problems:
        shown = "; ".join(str(p) for p in problems[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ExportError(f"the TensorRT model is not one TensorRT {operator_table()['tensorrt']} parses: "
                          f"{shown}{more}")


def export_tensorrt_onnx(model: torch.nn.Module, path: str | Path, *, opset: int = TENSORRT_OPSET,
                         verbose: bool = False) -> Path:
    """Write the per-frame graph of ``model`` at ``opset`` (<= 13) with the legacy exporter, simplified and checked.

    Same names and contract as :func:`online_tsm.export.formats.onnx.export_onnx`; raises
    :class:`ExportError` when the graph is not one TensorRT 8.2 parses.
    """
    path = Path(path)
    table = operator_table()
    if not table["min_opset"] <= opset <= table["max_opset"]:
        raise ExportError(f"the TensorRT model needs an opset between {table['min_opset']} and "
                          f"{table['max_opset']} (TensorRT {table['tensorrt']}), got {opset}")
    torch_export(model, path, verbose=verbose, what=f"torch.onnx.export (opset {opset})", dynamo=False,
                 opset_version=opset, do_constant_folding=True)
    simplify_and_check(path)
    check_tensorrt_ready(path)
    return path


#: ``onnx_profile`` names a row may give (export/targets.py) -> the opset its runtime reads at most.
PROFILES = {"tensorrt-8.2": TENSORRT_OPSET}


def export_profile_onnx(profile: str, model: torch.nn.Module, manifest: Manifest, frames: np.ndarray,
                        reference: np.ndarray, path: str | Path, *, opset: int | None = None,
                        say: Callable[[str], None] | None = None) -> tuple[Path, dict[str, Any]]:
    """The ``profile`` graph of ``model`` at ``path``, checked, with its numbers against PyTorch's ``reference``.

    Returns ``(path, record)``; the record goes into the manifest (``model.onnx_graph``).  The graph's logits
    must meet the float32 rule for another machine: it is not the graph the reference's ONNX check ran on
    (another exporter, other fusions), and the device computes it with other kernels again.
    """
    if profile not in PROFILES:
        raise ExportError(f"unknown ONNX profile {profile!r}; known: {', '.join(PROFILES)}")
    say = say or (lambda _message: None)
    opset = min(opset or PROFILES[profile], PROFILES[profile])
    table = operator_table()
    say(f"exporting the {profile} ONNX graph (opset {opset}, TorchScript exporter) and checking every node "
        f"against onnx-tensorrt's {table['source']['ref']} operator table")
    try:
        path = export_tensorrt_onnx(model, path, opset=opset)
    except ExportError as exc:
        if not manifest.preprocess.get("folded"):
            raise
        raise ExportError(f"{exc} -- the folded pre-processing takes uint8 camera frames, which TensorRT "
                          f"{table['tensorrt']} cannot hold: export this target without --fold-preprocess") from None
    logits = stream_onnxruntime(path, manifest, frames)
    check = FP32.check(logits, reference, same_machine=False)
    if not check["passed"]:
        raise ExportError(f"the {profile} ONNX graph disagrees with PyTorch: max abs diff "
                          f"{check['max_abs_diff']:.3g} > tolerance {check['tolerance']:.3g}")
    say(f"{profile} graph matches PyTorch (ONNX Runtime): max abs diff {check['max_abs_diff']:.2e} "
        f"(tolerance {check['tolerance']:.1e}, {check['rule']})")
    source = table["source"]
    return Path(path), {
        "profile": profile, "opset": opset, "exporter": f"torch.onnx.export, TorchScript (dynamo=False), torch "
                                                        f"{torch.__version__}",
        "checked_against": f"{source['repository']} {source['ref']} {source['path']} (commit "
                           f"{source['commit'][:12]}): every node supported, constant inputs, types, static shapes",
        "max_abs_diff": check["max_abs_diff"], "tolerance": check["tolerance"],
        "rule": f"fp32, another machine: {check['rule']}",
        "reference": "PyTorch logits (reference.npz), streamed through ONNX Runtime at export"}
