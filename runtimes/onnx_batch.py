"""A batch-N twin of an exported per-frame ONNX graph, made from the graph itself.

Exports fix the batch dimension at 1 (the device case: one camera).  For
many streams on one machine, ``step_many`` wants the same graph with a free
batch dimension.  The per-frame TSM graph only slices and concatenates along
channels, so renaming the leading dimension of every graph input and output
to a symbol (and dropping the stale intermediate shapes) is enough; a
``Reshape`` whose constant target shape starts with the batch size 1 is
rewritten to copy that dimension (``0``).  Anything else that could bake the
batch size into the graph is refused with :class:`BatchingError`, and the
caller falls back to stepping the streams one after another.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from online_tsm.errors import OnlineTSMError

BATCH_SYMBOL = "streams"
# Ops that take a target shape as data: a constant there may hold the batch size.
_SHAPE_TAKING_OPS = {"Expand", "ConstantOfShape", "Tile", "Resize", "Upsample"}


class BatchingError(OnlineTSMError, ValueError):
    """The graph cannot be given a free batch dimension by renaming dimensions."""


def make_batch_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of ``model`` whose inputs and outputs have a symbolic leading dimension."""
    batched = onnx.ModelProto()
    batched.CopyFrom(model)
    graph = batched.graph
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims:
            raise BatchingError(f"graph tensor {value.name} has no shape; cannot add a batch dimension")
        if dims[0].HasField("dim_value") and dims[0].dim_value != 1:
            raise BatchingError(f"graph tensor {value.name} has leading dimension {dims[0].dim_value}, expected 1")
        dims[0].dim_param = BATCH_SYMBOL
    del graph.value_info[:]  # intermediate shapes were inferred for batch 1
    initializers = {init.name: init for init in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for node in graph.node:
        if node.op_type in _SHAPE_TAKING_OPS:
            raise BatchingError(f"graph has a {node.op_type} node ({node.name or node.output[0]}) whose target "
                                "shape may fix the batch size")
        if node.op_type == "Reshape":
            _free_reshape_batch(node, initializers, uses)
    onnx.checker.check_model(batched)
    return batched


def _free_reshape_batch(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto],
                        uses: dict[str, int]) -> None:
    shape_name = node.input[1]
    if shape_name not in initializers:
        return  # computed from Shape(): follows the batch by itself
    shape = numpy_helper.to_array(initializers[shape_name])
    if shape.size == 0 or (shape[0] in (0, -1) and -1 not in shape[1:]):
        return
    if shape[0] != 1 or uses.get(shape_name, 0) != 1 or any(a.name == "allowzero" and a.i for a in node.attribute):
        raise BatchingError(f"Reshape {node.name or node.output[0]} has target shape {shape.tolist()}; "
                            "cannot tell its batch dimension")
    fixed = shape.copy()
    fixed[0] = 0  # ONNX Reshape: 0 copies the input's dimension
    initializers[shape_name].CopyFrom(numpy_helper.from_array(fixed.astype(np.int64), shape_name))
