"""Facts that go beside the timings: what the model costs and what machine ran it.

FLOPs are counted from the exported ONNX graph rather than from the PyTorch
module, because the graph is what the runtimes execute (after BatchNorm
folding).  Convention, stated in every report: one multiply-add (MAC) is two
FLOPs; the paper's "FLOPs" of MobileNetV2 (~0.3 G at 224) are MACs.
"""
from __future__ import annotations

import os
import platform
import resource
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from online_tsm.machine.cpuinfo import cpu_name, cpuinfo_text
from online_tsm.machine.elf import normalize_arch

# Elementwise ops: one FLOP per output element (ReLU6 is a Clip).
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Clip", "Relu", "Sigmoid", "HardSwish", "HardSigmoid", "Max", "Min"}
# Pure data movement: no FLOPs (the shift is one of these: Slice + Concat).
_MOVEMENT = {"Concat", "Slice", "Split", "Reshape", "Flatten", "Transpose", "Identity", "Squeeze", "Unsqueeze",
             "Shape", "Gather", "Cast", "Constant"}
_DTYPE_BYTES = {1: 4, 10: 2, 11: 8, 7: 8, 6: 4, 2: 1, 3: 1, 9: 1, 16: 2}


@dataclass
class GraphCost:
    """What one frame costs according to the ONNX graph."""

    macs: int                      # multiply-adds of Conv / Gemm / MatMul
    flops: int                     # 2 x MACs + elementwise and reduction FLOPs
    params: int                    # elements of all initializers (weights after BN folding)
    weight_bytes: int
    io_bytes: int                  # graph inputs + outputs of one frame (frame, buffers, logits)
    activation_bytes: int          # every op's inputs and outputs once, no fusion: traffic of a naive runtime
    macs_by_op: dict[str, int] = field(default_factory=dict)
    movement_bytes: int = 0        # bytes written by pure data-movement ops (the shift's Slice/Concat among them)

    @property
    def compulsory_bytes(self) -> int:
        """Weights read once plus the frame's inputs and outputs: no runtime can move less."""
        return self.weight_bytes + self.io_bytes

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["compulsory_bytes"] = self.compulsory_bytes
        return out


def _shape_of(value_info: Any) -> tuple[list[int], int] | None:
    t = value_info.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    if any(d is None for d in dims):
        return None
    return [int(d) for d in dims], _DTYPE_BYTES.get(t.elem_type, 4)


def count_graph_cost(onnx_path: str | os.PathLike) -> GraphCost:
    """Count MACs, FLOPs, parameters and bytes of a fixed-shape ONNX graph (batch 1)."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    graph = model.graph
    shapes: dict[str, tuple[list[int], int]] = {}
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        found = _shape_of(vi)
        if found:
            shapes[vi.name] = found
    params = weight_bytes = 0
    for init in graph.initializer:
        arr = numpy_helper.to_array(init)
        shapes[init.name] = (list(arr.shape), arr.dtype.itemsize)
        params += int(arr.size)
        weight_bytes += int(arr.nbytes)
    initializers = {i.name for i in graph.initializer}

    def numel(name: str) -> int:
        return int(np.prod(shapes[name][0])) if name in shapes else 0

    def nbytes(name: str) -> int:
        return numel(name) * shapes[name][1] if name in shapes else 0

    macs = flops = activation = movement = 0
    by_op: dict[str, int] = {}
    for node in graph.node:
        out = node.output[0] if node.output else ""
        m = f = 0
        if node.op_type == "Conv" and out in shapes and node.input[1] in shapes:
            w = shapes[node.input[1]][0]            # [C_out, C_in / group, kH, kW]
            m = numel(out) * int(np.prod(w[1:]))
            f = 2 * m + (numel(out) if len(node.input) > 2 and node.input[2] else 0)
        elif node.op_type in ("Gemm", "MatMul") and out in shapes and node.input[0] in shapes:
            k = shapes[node.input[0]][0][-1]
            m = numel(out) * int(k)
            f = 2 * m + (numel(out) if len(node.input) > 2 and node.input[2] else 0)
        elif node.op_type in _ELEMENTWISE:
            f = numel(out)
        elif node.op_type in ("ReduceMean", "GlobalAveragePool", "ReduceSum"):
            f = numel(node.input[0])
        elif node.op_type in _MOVEMENT:
            movement += sum(nbytes(o) for o in node.output)
        macs += m
        flops += f
        if m:
            by_op[node.op_type] = by_op.get(node.op_type, 0) + m
        activation += sum(nbytes(i) for i in node.input if i and i not in initializers)
        activation += sum(nbytes(o) for o in node.output if o)
    io = sum(nbytes(v.name) for v in list(graph.input) + list(graph.output) if v.name not in initializers)
    return GraphCost(macs=macs, flops=flops, params=params, weight_bytes=weight_bytes, io_bytes=io,
                     activation_bytes=activation, macs_by_op=by_op, movement_bytes=movement)


def count_parameters(model: Any) -> int:
    """Trainable parameters of a torch module (before BN folding)."""
    return int(sum(p.numel() for p in model.parameters()))


def folder_size_bytes(path: str | os.PathLike) -> int:
    """Size of a file, or of every file under a folder (an export artifact)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (the whole benchmark, all backends loaded)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def current_rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


_X86_VENDORS = ("GenuineIntel", "AuthenticAMD", "HygonGenuine")


def emulation_evidence(status: str | None = None, cpuinfo: str | None = None,
                       machine: str | None = None) -> str | None:
    """Why this process looks emulated (qemu-user), or ``None``.

    Under ``qemu-aarch64`` on an x86 host the process is called ``qemu-...``
    in ``/proc/self/status`` and ``/proc/cpuinfo`` still describes the x86
    host while Python reports aarch64.  Timings taken there are ~20x off and
    must never be reported as latency.
    """
    def read(path: str) -> str:
        try:
            return Path(path).read_text()
        except OSError:
            return ""

    status = read("/proc/self/status") if status is None else status
    cpuinfo = cpuinfo_text() if cpuinfo is None else cpuinfo
    machine = (machine or platform.machine()).lower()
    name = next((line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("Name:")), "")
    if name.startswith("qemu-"):
        return f"the process runs inside {name} (a CPU emulator)"
    vendor = next((v for v in _X86_VENDORS if v in cpuinfo), None)
    if vendor and normalize_arch(machine) not in ("x86_64", "x86"):
        return f"Python reports {machine} but the CPU is an x86 {vendor} (an emulator translates every instruction)"
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


LIBRARIES = ("online-tsm", "torch", "onnx", "onnxruntime", "apache-tvm", "apache-tvm-ffi", "numpy",
             "opencv-python-headless", "tensorrt")


def machine_description() -> dict[str, Any]:
    """CPU model, cores, memory, OS and library versions: what a reader needs to compare numbers."""
    import psutil

    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": cpu_name(),
        "arch": platform.machine(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_average_at_start": load,
        "libraries": {name: v for name in LIBRARIES if (v := _version(name))},
    }


def machine_label(machine: dict[str, Any]) -> str:
    """Short phrase for 'measured here on <machine>'."""
    return f"{machine['cpu']}, {machine['usable_cores']} cores"
