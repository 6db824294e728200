"""An export-time graph rewrite that lets ONNX Runtime keep its blocked layout through the shift.

The online shift feeds a block's 1x1 expansion convolution with
``concat(shift_k, x[:, fold:])`` and writes ``shift_out_k = x[:, :fold]``.
ONNX Runtime runs convolutions in a blocked channel layout (NCHWc, 8 or 16
channels per block); a channel Slice/Concat cannot be expressed in it, so
at every shift point ORT converts the whole activation out of the layout,
slices and concatenates, and converts it back -- four passes over the
tensor, 8 % of a 224x224 frame and about a quarter of the small default
model's frame.

The rewrite removes the channel slicing from the graph.  The expansion
convolution's input ``concat(buf, x[:, fold:])`` becomes::

    depthwise_1x1(x, keep) + conv_1x1(buf, place)

where ``keep`` is 0 on channels ``[0, fold)`` and 1 elsewhere and ``place``
puts the ``fold`` buffer channels at ``[0, fold)``; ``x[:, :fold]`` is a 1x1
convolution of ``x`` with a 0/1 selection matrix.  All of it is exact
(products with 0 and 1, sums with zeros), so the logits are bit for bit
those of the plain graph.  Every operator then runs in the blocked layout;
only the small ``fold``-channel tensors cross the layout boundary.

What it buys is measured, not assumed: at 224x224 on a Zen 4 CPU the
profile's shift data movement falls from about 8 % to under 2 % of the
frame, but the extra 1x1 operators cost about as much, so the whole frame
is no faster.  It stays opt-in (``ort_shift="conv"``);
``benchmarks/profile.py`` shows both sides.

Names, shapes and the buffer contract are unchanged; the exporter checks the
rewritten graph against PyTorch like any other.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper


@dataclass
class ShiftPoint:
    concat: onnx.NodeProto
    rest: onnx.NodeProto      # Slice x[:, fold:]
    out: onnx.NodeProto       # Slice x[:, :fold] -> shift_out_k
    conv: onnx.NodeProto      # the 1x1 convolution that reads the concat
    x: str
    buffer: str
    fold: int
    channels: int


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _slice_range(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> tuple[int, int] | None:
    """``(start, end)`` of a Slice along axis 1 with step 1, from constant inputs; ``None`` for any other Slice."""
    if node.op_type != "Slice" or len(node.input) < 4:
        return None
    try:
        starts, ends, axes = (consts[n] for n in node.input[1:4])
        steps = consts[node.input[4]] if len(node.input) > 4 and node.input[4] else np.ones_like(starts)
    except KeyError:
        return None
    if starts.size != 1 or int(axes.ravel()[0]) != 1 or int(steps.ravel()[0]) != 1:
        return None
    return int(starts.ravel()[0]), int(ends.ravel()[0])


def find_shift_points(model: onnx.ModelProto) -> list[ShiftPoint]:
    """Every ``concat(buffer input, x[:, fold:]) -> 1x1 conv`` with ``x[:, :fold]`` written to a graph output."""
    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(_attr(node, "value"))
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    inputs = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    outputs = {o.name for o in graph.output}
    points = []
    for concat in graph.node:
        if concat.op_type != "Concat" or _attr(concat, "axis") != 1 or len(concat.input) != 2:
            continue
        buffer, rest_name = concat.input
        rest = producer.get(rest_name)
        if buffer not in inputs or rest is None or len(inputs[buffer]) != 4:
            continue
        fold = inputs[buffer][1]
        span = _slice_range(rest, consts)
        users = consumers[concat.output[0]]
        if span is None or span[0] != fold or len(users) != 1 or concat.output[0] in outputs:
            continue
        conv = users[0]
        weight = consts.get(conv.input[1]) if conv.op_type == "Conv" and len(conv.input) > 1 else None
        if (weight is None or weight.ndim != 4 or weight.shape[2:] != (1, 1) or (_attr(conv, "group", 1) or 1) != 1
                or conv.input[0] != concat.output[0]):
            continue
        channels = int(weight.shape[1])
        x = rest.input[0]
        out = next((n for n in consumers[x] if _slice_range(n, consts) == (0, fold) and n.output[0] in outputs), None)
        if out is None or span[1] < channels:
            continue
        points.append(ShiftPoint(concat, rest, out, conv, x, buffer, fold, channels))
    return points


def fold_shift_into_convs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Rewrite every shift point (see the module docstring); return the new model and how many were rewritten."""
    points = find_shift_points(model)
    if not points:
        return model, 0
    graph = model.graph
    dtype = np.float32
    drop = {id(n) for p in points for n in (p.concat, p.rest, p.out)}
    replace: dict[int, list[onnx.NodeProto]] = {}
    new_inits: list[onnx.TensorProto] = []
    for k, p in enumerate(points):
        c, f = p.channels, p.fold
        place = np.zeros((c, f, 1, 1), dtype)           # buffer -> channels [0, fold) of C
        place[np.arange(f), np.arange(f)] = 1.0
        keep = np.ones((c, 1, 1, 1), dtype)              # depthwise: x with channels [0, fold) zeroed
        keep[:f] = 0.0
        select = np.zeros((f, c, 1, 1), dtype)          # x[:, :fold]
        select[np.arange(f), np.arange(f)] = 1.0
        name = f"shift_fold_{k}"
        new_inits += [numpy_helper.from_array(place, f"{name}_place"), numpy_helper.from_array(keep, f"{name}_keep"),
                      numpy_helper.from_array(select, f"{name}_select")]
        placed, kept = f"{name}_buffer_placed", f"{name}_x_kept"
        replace[id(p.concat)] = [
            helper.make_node("Conv", [p.buffer, f"{name}_place"], [placed], name=placed, kernel_shape=[1, 1]),
            helper.make_node("Conv", [p.x, f"{name}_keep"], [kept], name=kept, kernel_shape=[1, 1], group=c),
            helper.make_node("Add", [kept, placed], [p.concat.output[0]], name=f"{name}_merge"),
        ]
        replace[id(p.out)] = [helper.make_node("Conv", [p.x, f"{name}_select"], [p.out.output[0]],
                                               name=f"{name}_out", kernel_shape=[1, 1])]
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if id(node) in replace:
            nodes += replace[id(node)]
        elif id(node) not in drop:
            nodes.append(node)
    still_used = {name for n in nodes for name in n.input}
    replaced = {name for p in points for n in (p.rest, p.out) for name in n.input[1:]}
    kept_inits = [i for i in graph.initializer if i.name not in replaced or i.name in still_used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept_inits + new_inits)
    onnx.checker.check_model(model)
    return model, len(points)
