"""Default CPU schedules for the NHWC MobileNetV2 graph: fast without tuning.

TVM 0.27's ready-made dlight rules are GPU rules (plus CPU GEMV/reduction);
nothing schedules a convolution on a CPU, and an unscheduled Relax build is
~10x slower than ONNX Runtime.  These rules give every fused
``conv2d + bias + ReLU6 (+ residual)`` function the classic direct-convolution
register tiling used by CPU inference libraries:

* channels-last data (``to_channels_last``), 1x1 weights packed in panels of
  one vector of output channels (``pack_pointwise_weights``);
* an output tile of pixels x channel vectors held in vector registers (a
  ``local`` buffer that LLVM promotes to registers), vectorised along the
  output channels, sized to the target's register file (:func:`_register_tile`);
* reduction loops (input channels, kernel window) outside the register tile,
  so each weight vector is reused for every pixel of the tile;
* the epilogue (bias, clip, residual add) applied to the tile while it is hot;
  a convolution without epilogue still accumulates in registers;
* parallel over tiles (TVM's thread pool); depthwise padding inlined as a
  bounds test, the stem's padding computed once, vectorised.

They are rules, not tuned records, so they serve every target (x86 AVX-512,
AVX2, Arm NEON) by reading the vector width and register count from the
target's CPU features.  MetaSchedule
tuning (``--tune``) can still replace them per function.
"""
from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.target import Target
from tvm.target.codegen import llvm_get_system_triple, llvm_get_vector_width, target_has_features

_MAX_TILE_PIXELS = 8
_SMALL_WEIGHT_BYTES = 16 * 1024  # half an L1 data cache
# Below this many elements an injective function (the shift's slice/concat, ~20 calls a frame) runs on one
# thread: waking the thread pool costs more than it saves (0.45 against 0.75 ms a frame for the shift at 224).
_PARALLEL_MIN_ELEMENTS = 1 << 17


def _has(feature: str, target: Target) -> bool:
    try:
        return bool(target_has_features(feature, target))
    except Exception:  # noqa: BLE001 -- an LLVM that does not know the feature name
        return False


def vector_bits(target: Target) -> int:
    """Width of the SIMD registers the code may use.

    Read from the CPU features, not from ``llvm_get_vector_width``: TVM 0.27
    reports 512 bits for every x86 CPU (an AVX2-only Zen 3 included), and a
    register tile sized for AVX-512 spills on AVX2.
    """
    if _has("avx512f", target):
        return 512
    if _has("avx", target):
        return 256
    bits = llvm_get_vector_width(target)
    return min(bits, 128) if bits > 0 else 128  # SSE, NEON (SVE lengths are not known at compile time)


def vector_registers(target: Target) -> int:
    """Architectural SIMD registers: 32 on AVX-512 and AArch64, 16 on AVX2/SSE."""
    triple = str(target.attrs.get("mtriple", "") or llvm_get_system_triple())
    return 32 if _has("avx512f", target) or triple.startswith(("aarch64", "arm64")) else 16


def vector_lanes(target: Target, dtype_bits: int = 32) -> int:
    """float32 lanes of the target's SIMD registers (at least 4)."""
    return max(4, vector_bits(target) // dtype_bits)


def _vector_width(extent: int, lanes: int) -> int:
    """The widest of lanes, lanes/2, ..., 4 that divides ``extent`` (1 if none)."""
    width = lanes
    while width >= 4:
        if extent % width == 0:
            return width
        width //= 2
    return 1


def _divisors(n: int, limit: int) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def _register_tile(rows: int, cols: int, vectors: int, target: Target, pointwise: bool) -> tuple[int, int, int]:
    """(rows, columns, channel vectors) of the output tile held in registers.

    Accumulators get three quarters of the registers (12 on AVX2): the rest
    hold the weight vectors and the broadcast input (14 accumulators spilled
    on Zen 3).  A pointwise (1x1) step loads one broadcast per pixel and one
    weight vector per channel vector for ``pixels * vectors`` FMAs, so the
    tile maximises that ratio, over a block of rows x columns (7x7 and 14x14
    maps have few divisors).  A depthwise or stem step shares only the
    weight vector across pixels: a run of pixels along one row.
    """
    registers = vector_registers(target)
    budget = registers * 3 // 4
    best, best_key = (1, 1, 1), (-1.0, 0)
    for ht in _divisors(rows, _MAX_TILE_PIXELS) if pointwise else [1]:
        for wt in _divisors(cols, _MAX_TILE_PIXELS):
            for m in _divisors(vectors, 4):
                p = ht * wt
                if p * m > budget or p > _MAX_TILE_PIXELS:
                    continue
                key = (p * m / (p + m) if pointwise else float(p * m), wt)
                if key > best_key:
                    best, best_key = (ht, wt, m), key
    return best


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
        if not epilogue:
            # a conv writing the function's output directly (a projection without residual): accumulate in a
            # register tile and copy it out, like the fused cases
            epilogue = [sch.cache_write(conv, 0, "local")]
        else:
            sch.set_scope(conv, 0, "local")  # the register tile
        loops = sch.get_loops(conv)
        n, h, w, c = loops[:4]
        reduce_loops = loops[4:]
        pointwise = all(_extent(sch, r) == 1 for r in reduce_loops[:-1])
        depthwise = not pointwise and _extent(sch, reduce_loops[-1]) == 1
        channels = _extent(sch, c)
        vec = _vector_width(channels, lanes)
        ht, wt, m = _register_tile(_extent(sch, h), _extent(sch, w), channels // vec, target, pointwise)
        h_o, h_i = sch.split(h, [None, ht])
        w_o, w_i = sch.split(w, [None, wt])
        c_o, c_m, c_v = sch.split(c, [None, m, vec])
        if pointwise:
            # Large weights: output-channel panels outside the pixels, so one panel of weights stays in cache
            # over every pixel.  Small weights (few input channels) stay in cache anyway: pixels outside, so
            # each input tile is read once and each output pixel written in one go.
            small = _extent(sch, reduce_loops[-1]) * channels * 4 <= _SMALL_WEIGHT_BYTES
            order = [n, h_o, w_o, c_o] if small else [n, c_o, h_o, w_o]
            sch.reorder(*order, *reduce_loops, h_i, w_i, c_m, c_v)
            anchor = sch.fuse(*order)
            sch.parallel(anchor)
        else:
            # row by row, and at each pixel tile every channel panel: the window's input pixels are read whole
            # (a panel at a time over a row would use a fraction of each cache line and come back for the rest)
            sch.reorder(n, h_o, w_o, c_o, *reduce_loops, h_i, w_i, c_m, c_v)
            sch.parallel(sch.fuse(n, h_o))
            anchor = c_o
        sch.unroll(h_i)
        sch.unroll(w_i)
        sch.unroll(c_m)
        if vec > 1:
            sch.vectorize(c_v)
        for block in epilogue[:-1]:
            sch.compute_inline(block)
        last = epilogue[-1]
        sch.reverse_compute_at(last, anchor, preserve_unit_loops=True)
        inner = sch.get_loops(last)[-1]
        if vec > 1:
            _, v = sch.split(inner, [None, vec])
            sch.vectorize(v)
        init = sch.decompose_reduction(conv, reduce_loops[0])
        if vec > 1:
            sch.vectorize(sch.get_loops(init)[-1])
        for block in producers:
            self._schedule_pad(sch, block, lanes, inline=depthwise)
        return sch

    @staticmethod
    def _schedule_pad(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int, inline: bool) -> None:
        """Inline a plain copy, and a depthwise padding; pad other inputs once, in parallel.

        Inlined, the zero padding becomes a bounds test on the row and column
        of the window, which does not depend on the (vectorised) channels; a
        separate pass would write and re-read a padded copy of the input
        through memory (5 MB for the first depthwise layer at 224).  The
        stem's three input channels are too few for that test to pay off.
        """
        stmt = sch.get(block)
        if inline or (len(stmt.reads) == 1 and "if_then_else" not in str(stmt.body)):
            sch.compute_inline(block)
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
            if total >= _PARALLEL_MIN_ELEMENTS:
                sch.parallel(outer)
        return sch


def default_cpu_rules() -> list[dl.ScheduleRule]:
    """The rules, in the order they are tried, for ``dl.ApplyDefaultSchedule``."""
    return [ChannelsLastConv(), ParallelInjective(), dl.cpu.GEMV(), dl.cpu.Reduction()]
