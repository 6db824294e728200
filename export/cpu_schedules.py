"""Default CPU schedules for the NHWC MobileNetV2 graph: fast without tuning.

TVM 0.27's ready-made dlight rules are GPU rules (plus CPU GEMV/reduction);
nothing schedules a convolution on a CPU, and an unscheduled Relax build is
~10x slower than ONNX Runtime.  These rules give every fused
``conv2d + bias + ReLU6 (+ residual)`` function the classic direct-convolution
register tiling used by CPU inference libraries:

* channels-last data (``to_channels_last``), output tile of ``wt`` pixels of
  one row x ``ct`` channels held in vector registers (a ``local`` buffer that
  LLVM promotes to registers), vectorised along the output channels;
* reduction loops (input channels, kernel window) outside the register tile,
  so each weight vector is reused for ``wt`` pixels;
* the epilogue (bias, clip, residual add) applied to the tile while it is hot;
* parallel over rows and channel tiles (TVM's thread pool), padding computed
  once into a buffer, vectorised.

They are rules, not tuned records, so they serve every target (x86 AVX-512,
AVX2, Arm NEON) by reading the vector width from the target.  MetaSchedule
tuning (``--tune``) can still replace them per function.
"""
from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.target import Target
from tvm.target.codegen import llvm_get_vector_width

# Accumulator budget, in vector registers, of the output tile (AVX-512 and NEON have 32, AVX2 16).
_MAX_ACCUMULATORS = 16
_MAX_TILE_PIXELS = 8


def vector_lanes(target: Target, dtype_bits: int = 32) -> int:
    """float32 lanes of the target's SIMD registers (at least 4)."""
    bits = llvm_get_vector_width(target)
    return max(4, (bits if bits > 0 else 128) // dtype_bits)


def _largest_divisor(n: int, limit: int) -> int:
    return next(d for d in range(min(n, limit), 0, -1) if n % d == 0)


def _vector_width(extent: int, lanes: int) -> int:
    """The widest of lanes, lanes/2, ..., 4 that divides ``extent`` (1 if none)."""
    width = lanes
    while width >= 4:
        if extent % width == 0:
            return width
        width //= 2
    return 1


def _is_reduction(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
    return any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)


def _extent(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV) -> int:
    return int(sch.get(loop).extent)


class _CPURule(dl.ScheduleRule):
    """Applies only to LLVM targets; a failure leaves the function unscheduled (still correct)."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):  # noqa: ANN201 -- dlight's signature
        if target.kind.name != "llvm" or not isinstance(func, tirx.PrimFunc):
            return None
        try:
            return self._schedule(s_tir.Schedule(func), target)
        except Exception:  # noqa: BLE001 -- a schedule primitive refusing means "not my pattern"
            return None

    def _schedule(self, sch: s_tir.Schedule, target: Target) -> s_tir.Schedule | None:
        raise NotImplementedError


class ChannelsLastConv(_CPURule):
    """``[pad] -> conv2d NHWC (SSSS R..R) -> injective epilogue`` (pointwise, depthwise, stem)."""

    def _schedule(self, sch: s_tir.Schedule, target: Target) -> s_tir.Schedule | None:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        reductions = [b for b in blocks if _is_reduction(sch, b)]
        if len(reductions) != 1:
            return None
        conv = reductions[0]
        kinds = "".join("S" if iv.iter_type == tirx.IterVar.DataPar else "R" for iv in sch.get(conv).iter_vars)
        if not kinds.startswith("SSSS") or set(kinds[4:]) != {"R"}:
            return None
        names = [sch.get(b).name_hint for b in blocks]
        position = names.index(sch.get(conv).name_hint)
        producers, epilogue = blocks[:position], blocks[position + 1:]
        if any(_is_reduction(sch, b) for b in producers + epilogue):
            return None
        lanes = vector_lanes(target)
        loops = sch.get_loops(conv)
        if len(loops) != len(kinds):
            return None
        n, h, w, c = loops[:4]
        reduce_loops = loops[4:]
        width, channels = _extent(sch, w), _extent(sch, c)
        vec = _vector_width(channels, lanes)
        wt = _largest_divisor(width, _MAX_TILE_PIXELS)
        m = max(1, min(channels // vec, _MAX_ACCUMULATORS // wt))
        while (channels // vec) % m:
            m -= 1
        w_o, w_i = sch.split(w, [None, wt])
        c_o, c_m, c_v = sch.split(c, [None, m, vec])
        sch.reorder(n, h, c_o, w_o, *reduce_loops, w_i, c_m, c_v)
        sch.parallel(sch.fuse(n, h, c_o))
        sch.unroll(w_i)
        sch.unroll(c_m)
        if vec > 1:
            sch.vectorize(c_v)
        sch.set_scope(conv, 0, "local")  # the register tile
        for block in epilogue[:-1]:
            sch.compute_inline(block)
        if epilogue:
            last = epilogue[-1]
            sch.reverse_compute_at(last, w_o, preserve_unit_loops=True)
            inner = sch.get_loops(last)[-1]
            if vec > 1:
                _, v = sch.split(inner, [None, vec])
                sch.vectorize(v)
        init = sch.decompose_reduction(conv, reduce_loops[0])
        if vec > 1:
            sch.vectorize(sch.get_loops(init)[-1])
        for block in producers:
            self._schedule_pad(sch, block, lanes)
        return sch

    @staticmethod
    def _schedule_pad(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int) -> None:
        stmt = sch.get(block)
        if len(stmt.reads) == 1 and "if_then_else" not in str(stmt.body):
            sch.compute_inline(block)  # a plain copy (1x1 convolutions): read the input directly
            return
        loops = sch.get_loops(block)
        vec = _vector_width(_extent(sch, loops[-1]), lanes)
        sch.parallel(sch.fuse(*loops[:-1]))
        if vec > 1:
            _, v = sch.split(loops[-1], [None, vec])
            sch.vectorize(v)


class ParallelInjective(_CPURule):
    """Elementwise / transpose / slice / concat functions: one parallel, vectorised loop nest per block."""

    def _schedule(self, sch: s_tir.Schedule, target: Target) -> s_tir.Schedule | None:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        if not blocks or any(_is_reduction(sch, b) for b in blocks):
            return None
        for block in blocks[:-1]:
            try:
                sch.compute_inline(block)
            except Exception:  # noqa: BLE001 -- e.g. a concat input: keep it as its own loop nest
                pass
        lanes = vector_lanes(target)
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            loops = sch.get_loops(block)
            if not loops:
                continue
            total = 1
            for loop in loops:
                total *= _extent(sch, loop)
            inner = _extent(sch, loops[-1])
            fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
            vec = _vector_width(inner, lanes)
            if vec > 1:
                outer, v = sch.split(fused, [None, vec])
                sch.vectorize(v)
            else:
                outer = fused
            if total >= 4096:
                sch.parallel(outer)
        return sch


def default_cpu_rules() -> list[dl.ScheduleRule]:
    """The rules, in the order they are tried, for ``dl.ApplyDefaultSchedule``."""
    return [ChannelsLastConv(), ParallelInjective(), dl.cpu.GEMV(), dl.cpu.Reduction()]
