"""Relax rewrites applied to the imported ONNX graph before compilation.

TVM's ONNX importer lowers ``Clip`` (ReLU6 in MobileNetV2) to two opaque
``call_tir`` functions whose bounds are computed at run time.  Opaque calls
block both operator fusion (every ReLU6 would be a separate pass over memory)
and the NHWC layout conversion (each one gets wrapped in two transposes).
:func:`clip_to_relax_ops` turns them back into ``R.maximum``/``R.minimum``
with constant bounds, which fuse into the convolution epilogue.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

_CLIP_PARTS = {"maximum": relax.op.maximum, "minimum": relax.op.minimum}
_ELEMENTWISE = {"relax.isnan": np.isnan, "relax.where": np.where, "relax.add": np.add,
                "relax.subtract": np.subtract, "relax.multiply": np.multiply, "relax.divide": np.divide}


def _resolve(mutator: PyExprMutator, expr: relax.Expr) -> relax.Expr:
    """``expr``, or the constant a variable is bound to (bindings are not inlined by the mutator)."""
    if isinstance(expr, relax.Var):
        bound = mutator.lookup_binding(expr)
        if isinstance(bound, tvm.ir.expr.Constant):
            return bound
    return expr


def _constant_value(expr: relax.Expr) -> np.ndarray | None:
    return expr.value.numpy() if isinstance(expr, tvm.ir.expr.Constant) else None


@mutator
class _NumpyFolder(PyExprMutator):
    """Folds constant reshapes, transposes and scalar arithmetic with numpy.

    TVM's ``FoldConstant`` compiles and runs a kernel for every foldable
    expression -- over a minute for the ~200 weight transposes and bias
    reshapes of MobileNetV2 on a small machine; numpy does it in milliseconds.
    """

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 -- TVM's visitor name
        call = super().visit_call_(call)
        name = getattr(call.op, "name", "")
        values = [_constant_value(_resolve(self, a)) for a in call.args]
        if name in _ELEMENTWISE and all(v is not None for v in values):
            result = _ELEMENTWISE[name](*values)
        elif name == "relax.reshape" and values[0] is not None:
            result = values[0].reshape([int(d) for d in call.ty.shape])
        elif name == "relax.permute_dims" and values[0] is not None:
            axes = call.attrs.axes
            result = np.transpose(values[0], None if axes is None else [int(a) for a in axes])
        else:
            return call
        dtype = str(call.ty.dtype)
        return relax.const(np.array(result, dtype=dtype, order="C"), dtype)  # keeps 0-d arrays 0-d


def fold_constants(mod: tvm.ir.IRModule) -> tvm.ir.IRModule:
    """Constant folding for the graph's weight plumbing, in numpy (see :class:`_NumpyFolder`)."""
    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mod[gv] = _NumpyFolder(mod).visit_expr(func)
    return relax.transform.DeadCodeElimination()(mod)


def _scalar_constant(expr: relax.Expr) -> bool:
    return isinstance(expr, tvm.ir.expr.Constant) and len(expr.value.shape) == 0


@mutator
class _ClipToOps(PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 -- TVM's visitor name
        call = super().visit_call_(call)
        if not call.op.same_as(tvm.ir.Op.get("relax.call_tir")):
            return call
        name = call.args[0].name_hint.rstrip("0123456789").rstrip("_")
        args = [_resolve(self, a) for a in call.args[1].fields]
        if name not in _CLIP_PARTS or len(args) != 2 or not _scalar_constant(args[1]):
            return call
        return _CLIP_PARTS[name](args[0], args[1])


def clip_to_relax_ops(mod: tvm.ir.IRModule) -> tvm.ir.IRModule:
    """Replace the importer's opaque max/min-with-a-constant calls by fusable Relax ops."""
    mod = fold_constants(mod)  # the bounds are where(isnan(c), inf, c): fold them first
    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mod[gv] = _ClipToOps(mod).visit_expr(func)
    return relax.transform.DeadCodeElimination()(mod)


def to_channels_last(mod: tvm.ir.IRModule) -> tvm.ir.IRModule:
    """NCHW convolutions -> NHWC with HWIO kernels (channels innermost, the CPU-friendly layout).

    The graph's inputs and outputs keep their NCHW shapes (the manifest does
    not change); transposes are inserted only at the boundaries, and the
    kernel transposes fold into the constants.
    """
    mod = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]})(mod)
    return fold_constants(mod)


@mutator
class _PackPointwise(PyExprMutator):
    """1x1 NHWC convolutions with constant HWIO weights -> the same product over weights packed in panels."""

    def __init__(self, mod: tvm.ir.IRModule, panel: int) -> None:
        super().__init__(mod)
        self.mod_ = mod
        self.panel = panel

    def transform(self) -> tvm.ir.IRModule:
        for gv, func in list(self.mod_.functions_items()):
            if isinstance(func, relax.Function):
                self.builder_.update_func(gv, self.visit_expr(func))
        return self.builder_.get()

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 -- TVM's visitor name
        call = super().visit_call_(call)
        if not call.op.same_as(tvm.ir.Op.get("relax.nn.conv2d")):
            return call
        a = call.attrs
        weight = _constant_value(_resolve(self, call.args[1]))
        if (weight is None or a.data_layout != "NHWC" or a.kernel_layout != "HWIO" or a.out_layout != "NHWC"
                or int(a.groups) != 1 or weight.shape[:2] != (1, 1) or weight.shape[3] % self.panel
                or any(int(s) != 1 for s in a.strides) or any(int(p) != 0 for p in a.padding)
                or any(int(d) != 1 for d in a.dilation) or str(weight.dtype) != "float32"):
            return call
        cin, cout = weight.shape[2:]
        p = self.panel
        packed = np.ascontiguousarray(weight.reshape(cin, cout // p, p).transpose(1, 0, 2))
        return self.builder_.call_te(_pointwise_packed, call.args[0], relax.const(packed, "float32"),
                                     primfunc_name_hint="conv2d")


def _pointwise_packed(data, packed):  # noqa: ANN001, ANN202 -- TE tensors
    from tvm import te

    n, h, w, cin = data.shape
    panels, _, p = packed.shape
    k = te.reduce_axis((0, cin), name="rc")
    return te.compute((n, h, w, panels * p),
                      lambda b, y, x, c: te.sum(data[b, y, x, k] * packed[c // p, k, c % p], axis=k),
                      name="conv2d_nhwc", tag="conv2d_nhwc")


def pack_pointwise_weights(mod: tvm.ir.IRModule, panel: int) -> tvm.ir.IRModule:
    """Store each 1x1 convolution's weights as ``[Cout / panel, Cin, panel]``.

    In HWIO order the ``panel`` output channels a register tile works on are
    one short piece per input-channel row, ``Cout * 4`` bytes apart: a strided
    walk that maps onto a few cache sets and misses L1 on every step (for
    1280 outputs, 5 KB apart).  Packed, the tile reads one contiguous stream
    per panel.  Done once, on the constants, at compile time.
    """
    if panel < 2:
        return mod
    return _PackPointwise(mod, panel).transform()
