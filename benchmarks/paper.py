"""Figures that were not measured here, kept as data and labelled as such.

Two kinds:

* the paper's per-frame latencies (Lin, Gan & Han, ICCV 2019, online TSM on
  MobileNetV2 at 224x224) -- printed beside measured rows as
  "paper, not measured here";
* a roofline table of devices' published peak compute and memory bandwidth,
  from which :func:`roofline_bound_ms` gives the *least* time a frame could
  take on that device -- "bound, not a measurement".  Real MobileNetV2 runs
  reach a small fraction of peak (depthwise convolutions are memory-bound),
  so a measured latency is typically several times the bound.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

PAPER_LABEL = "paper, not measured here"
BOUND_LABEL = "bound, not a measurement"
PAPER_CITATION = ("Lin, Gan & Han, 'TSM: Temporal Shift Module for Efficient Video Understanding', ICCV 2019, "
                  "online TSM (MobileNetV2, 224x224) per-frame latency")


@dataclass(frozen=True)
class PaperRow:
    device: str
    runtime: str
    latency_ms: float
    citation: str = PAPER_CITATION

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fps": 1000.0 / self.latency_ms, "source": PAPER_LABEL}


PAPER_ROWS: tuple[PaperRow, ...] = (
    PaperRow("NVIDIA Jetson Nano", "TVM (GPU)", 13.0),
    PaperRow("Samsung Galaxy Note8", "TVM (CPU)", 35.0),
)


@dataclass(frozen=True)
class DevicePeak:
    """Published (or derived-from-published) peak FP32 compute and DRAM bandwidth of one device."""

    device: str
    unit: str                 # which part computes: GPU, CPU
    peak_gflops: float        # FP32
    bandwidth_gbs: float
    source: str               # where both figures come from

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Sources, one per row, so that a reader can check every figure:
# - Jetson Nano GPU: NVIDIA's Jetson Nano module datasheet / developer-kit page give 472 GFLOPS (FP16)
#   from 128 Maxwell CUDA cores at 921.6 MHz; FP32 is half of that, 128 x 2 x 0.9216 GHz = 236 GFLOPS.
#   Memory: 4 GB 64-bit LPDDR4 at 25.6 GB/s (same datasheet).
# - Jetson Nano CPU: 4x Cortex-A57 at 1.43 GHz (same datasheet); 8 FP32 FLOPs/cycle/core
#   (a 4-wide NEON FMA per cycle, as measured by vfpbench for the A57/A72 class) -> 45.8 GFLOPS.
# - Raspberry Pi 4 Model B: 4x Cortex-A72 at 1.5 GHz and LPDDR4-3200 on a 32-bit bus (Raspberry Pi 4
#   product brief) -> 4 x 1.5 GHz x 8 FLOPs = 48 GFLOPS; 3200 MT/s x 4 bytes = 12.8 GB/s.
ROOFLINE_DEVICES: dict[str, DevicePeak] = {
    d.device: d
    for d in (
        DevicePeak("jetson-nano-gpu", "GPU (128 Maxwell cores)", 236.0, 25.6,
                   "NVIDIA Jetson Nano datasheet: 472 GFLOPS FP16 (FP32 = half), 25.6 GB/s LPDDR4"),
        DevicePeak("jetson-nano-cpu", "CPU (4x Cortex-A57 1.43 GHz)", 45.8, 25.6,
                   "NVIDIA Jetson Nano datasheet (cores, clock, memory) x 8 FP32 FLOPs/cycle (NEON FMA)"),
        DevicePeak("raspberry-pi-4", "CPU (4x Cortex-A72 1.5 GHz)", 48.0, 12.8,
                   "Raspberry Pi 4 product brief (cores, clock, LPDDR4-3200 32-bit) x 8 FP32 FLOPs/cycle"),
    )
}


def roofline_bound_ms(flops: float, bytes_moved: float, device: DevicePeak) -> float:
    """Least time (ms) for ``flops`` and ``bytes_moved`` on ``device``: max(compute, memory) at peak."""
    compute_s = flops / (device.peak_gflops * 1e9)
    memory_s = bytes_moved / (device.bandwidth_gbs * 1e9)
    return 1e3 * max(compute_s, memory_s)


def roofline_rows(flops: float, bytes_moved: float, devices: list[str] | None = None) -> list[dict[str, Any]]:
    """One bound row per device, each labelled "bound, not a measurement"."""
    names = devices if devices is not None else list(ROOFLINE_DEVICES)
    rows = []
    for name in names:
        if name not in ROOFLINE_DEVICES:
            raise ValueError(f"no published peak figures for device {name!r}; known: {', '.join(ROOFLINE_DEVICES)}")
        device = ROOFLINE_DEVICES[name]
        bound = roofline_bound_ms(flops, bytes_moved, device)
        rows.append({**device.to_dict(), "flops": flops, "bytes": bytes_moved, "bound_ms": bound,
                     "limited_by": "compute" if flops / device.peak_gflops >= bytes_moved / device.bandwidth_gbs
                     else "memory", "source_label": BOUND_LABEL})
    return rows
