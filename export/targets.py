"""The export targets: one table of data, one row per device.

In the spirit of TVM's target tags and Ultralytics' export-format table,
adding a device is adding a row here -- no code elsewhere branches on a
device name.  ``tsm-export --list-targets`` prints this table.
"""
from __future__ import annotations

import platform
import shutil
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from online_tsm.machine.elf import EM_AARCH64, MACHINE_NAMES, normalize_arch


@dataclass(frozen=True)
class ExportTarget:
    """How to compile for one device, and what the artifact will hold.

    ``kind``: ``onnx`` (no compilation), ``cpu`` (TVM LLVM) or ``cuda``
    (TVM CUDA kernels plus an LLVM host part).  ``tvm_target`` is TVM's dict
    form (CLI strings no longer parse in TVM 0.27); ``tvm_host`` is the host
    part of a GPU target.  ``triple`` is the host triple the library is built
    for (``None``: this machine).  ``linker`` names the cross compiler that
    turns the objects into a shared library; ``linker_env`` an environment
    variable that overrides it (Android's NDK clang).  ``layout``: the data
    layout the CPU convolutions are scheduled in.  ``packager``
    (``module:function``) lays the exported artifact out for a serving system
    (a Triton model repository); ``None``: the artifact folder is the output.
    ``device_steps``: the "On the device" part of the artifact's README.txt
    (:mod:`online_tsm.export.readme` fills in ``{folder}``, ``{link_step}``,
    ``{mcpu}`` and ``{cuda_compiler}``); it is not written into manifests.

    What a row accepts is data too, read by one validator
    (:mod:`online_tsm.export.options`): ``precisions`` it can be exported in
    (the first is the default), ``options`` among :data:`ROW_OPTIONS` it takes,
    and ``precision_hints``: a row's own advice when a precision is asked of it
    that it does not take.  ``qemu_cpu``: the CPU model ``verify --emulate``
    runs its code on (the device's core, not qemu's feature-rich default).
    ``onnx_profile``: which ONNX model the artifact ships when the device's
    runtime needs an older one than the exporter's default (``tensorrt-8.2``:
    opset 13, checked node by node against TensorRT 8.2's operator table, see
    :mod:`online_tsm.export.formats.onnx_tensorrt`); ``None``: the default graph.
    """

    name: str
    kind: str
    description: str
    tvm_target: dict[str, Any] | None = None
    tvm_host: dict[str, Any] | None = None
    triple: str | None = None
    cpu: str = ""
    linker: str | None = None
    linker_env: str | None = None
    library_glibc: bool = True
    device_notes: str = ""
    aliases: tuple[str, ...] = field(default=())
    packager: str | None = None
    device_steps: str = ""
    precisions: tuple[str, ...] = ("fp32",)
    options: frozenset[str] = frozenset()
    precision_hints: tuple[tuple[str, str], ...] = ()
    qemu_cpu: str | None = None
    onnx_profile: str | None = None

    @property
    def cross(self) -> bool:
        """True when the library is built for another architecture than this machine's."""
        return self.triple is not None

    @property
    def runs_here(self) -> bool:
        """Whether ``tsm-export verify`` can execute the artifact numerically on this machine."""
        return self.kind in ("onnx", "litert") or (self.kind == "cpu" and not self.cross)

    @property
    def needs_ndk(self) -> bool:
        """A loadable ``.so`` needs the Android NDK's clang (``linker_env``): the C library is not glibc."""
        return bool(self.linker_env) and not self.library_glibc

    @property
    def elf_machine(self) -> int | None:
        """``e_machine`` the library's host code must have (``None``: this machine's, not checked)."""
        if self.triple is None:
            return None
        arch = normalize_arch(self.triple.split("-", 1)[0])
        return next((code for code, name in MACHINE_NAMES.items() if name == arch), None)

    @property
    def emulated(self) -> bool:
        """``tsm-export verify --emulate`` can run it here: aarch64 code under qemu user-mode emulation (a LiteRT
        model runs in the aarch64 LiteRT runtime, the phone's)."""
        return self.elf_machine == EM_AARCH64 or self.kind == "litert"

    @classmethod
    def from_manifest(cls, target: dict[str, Any]) -> "ExportTarget":
        """The row as an artifact's ``manifest.json`` recorded it (its ``target`` object)."""
        names = {f.name for f in fields(cls)}
        row = {key: value for key, value in target.items() if key in names}
        row["aliases"] = tuple(row.get("aliases") or ())
        row["precisions"] = tuple(row.get("precisions") or ("fp32",))
        row["options"] = frozenset(row.get("options") or ())
        row["precision_hints"] = tuple(tuple(pair) for pair in row.get("precision_hints") or ())
        row.setdefault("name", "?")
        row.setdefault("kind", "?")
        row.setdefault("description", "")
        return cls(**row)

    def library_suffix(self, linker_available: bool) -> str | None:
        """``.so`` when a loadable shared library can be linked here, else ``.tar`` of objects."""
        if self.kind == "onnx":
            return None
        if not self.cross:
            return ".so"
        return ".so" if linker_available else ".tar"

    def find_linker(self, env: dict[str, str] | None = None) -> str | None:
        """Path of the cross linker for this target, if one is installed (or given via ``linker_env``)."""
        import os

        env = os.environ if env is None else env
        if self.linker_env and env.get(self.linker_env):
            return env[self.linker_env]
        if self.needs_ndk:
            return None  # a GNU cross gcc links against glibc, which bionic (Android) will not load
        return shutil.which(self.linker) if self.linker else None

    def to_manifest(self, *, library: str | None) -> dict[str, Any]:
        """The row as written into ``manifest.json`` (plus the library that was produced)."""
        row = asdict(self)
        del row["device_steps"]  # README.txt text, not data a runtime reads
        row["aliases"] = list(self.aliases)
        row["precisions"] = list(self.precisions)
        row["options"] = sorted(self.options)
        row["precision_hints"] = [list(pair) for pair in self.precision_hints]
        row["library"] = library
        row["runs_here"] = self.runs_here
        row["machine"] = platform.machine()
        return row


# "On the device" steps of README.txt, per row (export/readme.py fills in the {placeholders}).
_HOST_STEPS = """Runs on this machine (same CPU model: it was compiled for {mcpu}).
  tsm-export verify {folder}            # re-runs it against the PyTorch reference
"""
_ONNX_STEPS = """Copy {folder}/ anywhere and run model.onnx with any ONNX runtime, e.g.
  pip install onnxruntime numpy
  python3 run_onnx.py --json result.json
With TensorRT 10 (opsets 9-20), an engine is built from model.onnx on the device and cached:
  python3 run_onnx.py --tensorrt --fp16 --json trt.json
TensorRT 8.2 (JetPack 4.6) reads opsets up to 13 and 8.6 (JetPack 6.0) up to 17: for a Jetson, export
--target jetson-nano or jetson-orin-nano, whose model.onnx is opset 13 and checked against TensorRT 8.2.
"""
_PI_STEPS = """On the Pi (64-bit Raspberry Pi OS, Python >= 3.9, glibc >= 2.28):
  scp -r {folder} pi@raspberrypi:
  pip install apache-tvm==0.27.0.post1 numpy      # aarch64 manylinux_2_28 wheel
{link_step}  python3 run.py --json pi.json                  # verifies, then times it on the Pi
"""
_ANDROID_STEPS = """Android needs a .so linked by the NDK's clang against bionic (a GNU-linked .so will not load):
  export TVM_NDK_CC=$NDK/toolchains/llvm/prebuilt/linux-x86_64/bin/aarch64-linux-android24-clang
  tsm-export --weights ... --target android-arm64 -o {folder} --force --library so   # links model.so here
or link the shipped object archive yourself:
  mkdir objs && tar -xf {folder}/model.tar -C objs && $TVM_NDK_CC -shared -o model.so objs/*.o -lm -llog
Then package model.so + manifest.json with an app that embeds the TVM runtime (TVM's android_deploy /
android_rpc apps build it with the NDK), or push it to a device running the TVM RPC app and use
  tsm-bench --rpc HOST:PORT --target android-arm64 --artifact {folder}
"""
_LITERT_STEPS = """Android, nothing to build: time it with LiteRT's prebuilt benchmark_model for Android (arm64), over adb.
It feeds random inputs, so it times the model but does not check its numbers (verified: run_litert.py, below):
  cd {folder}          # the logs land beside manifest.json, which names the model for tsm-bench
  adb push model.tflite /data/local/tmp/
  adb push benchmark_model /data/local/tmp/ && adb shell chmod +x /data/local/tmp/benchmark_model
  adb shell /data/local/tmp/benchmark_model --graph=/data/local/tmp/model.tflite --num_threads=4 \\
      --use_xnnpack=true | tee phone-cpu.txt
  adb shell /data/local/tmp/benchmark_model --graph=/data/local/tmp/model.tflite --use_gpu=true | tee phone-gpu.txt
  tsm-bench --import phone-cpu.txt --import phone-gpu.txt    # beside the paper's Galaxy Note8 figure
In an app: LiteRT's Interpreter, signature "serving_default"; feed frame and shift_k by name, carry shift_out_k.
A phone or board with a Linux userland and Python >= 3.10 (Termux, a Raspberry Pi) checks and times it itself:
  pip install ai-edge-litert numpy
  python3 run_litert.py --json phone.json
"""
_JETSON_STEPS = """Two engines read this folder; run.py picks TVM where it is installed, else TensorRT.
TensorRT, nothing to install on JetPack 4.6 (Python 3.6, TensorRT 8.2, CUDA 10.2), from model.onnx (opset 13):
  scp -r {folder} jetson@nano:
  python3 run.py --tensorrt --fp16 --json nano-trt.json   # builds and caches the engine on the Nano (minutes)
  /usr/src/tensorrt/bin/trtexec --onnx=model.onnx --fp16 --exportTimes=trtexec-times.json   # timing only
TVM, from the library: aarch64 (Cortex-A57) host code and sm_53 CUDA kernels from {cuda_compiler}.
It needs a TVM runtime built with CUDA on the Jetson (PyPI has no CUDA build for aarch64; see docs/on-device.md):
{link_step}  python3 run.py --engine tvm --json nano.json   (runs on the GPU; run.py refuses a driver older than
  the kernels need, manifest.json target.device_code.min_cuda_driver)
"""
_ORIN_STEPS = """JetPack 6 (Python 3.10, CUDA 12.2+, TensorRT 8.6/10). TensorRT from model.onnx:
  scp -r {folder} jetson@orin:
  python3 run.py --tensorrt --fp16 --json orin-trt.json
TVM, from the library: aarch64 (Cortex-A78AE) host code and sm_87 CUDA kernels from {cuda_compiler}; it needs a
TVM runtime built with CUDA on the board (see docs/on-device.md):
{link_step}  python3 run.py --engine tvm --json orin.json
"""
_CUDA_STEPS = """Any NVIDIA GPU (sm_53 or newer): the kernels come from {cuda_compiler}, compiled by the
driver for the GPU it finds. The apache-tvm wheel for x86-64 Linux runs CUDA:
  pip install apache-tvm==0.27.0.post1 numpy
  python3 run.py --json gpu.json                      # TVM on the GPU, verified against PyTorch, then timed
  python3 run.py --tensorrt --fp16 --json gpu-trt.json    # with TensorRT's Python package (pip install tensorrt)
tests/gpu/run.sh in online-tsm does all of it in one call, fp32 and fp16.
"""

_AARCH64_GNU = "aarch64-linux-gnu"
#: The Nano's kernels as PTX through LLVM's NVPTX back end (export/tvm/nvptx.py): ISA 4.2, which CUDA 10.2 loads.
_NANO_PTX = {"kind": "nvptx", "mcpu": "sm_53", "mtriple": "nvptx64-nvidia-cuda", "max_num_threads": 1024,
             "thread_warp_size": 32}
#: Options a row may take (see :mod:`online_tsm.export.options`): ``tune`` measures schedules on this machine,
#: ``library`` chooses ``.so``/``.tar`` for a TVM library.
ROW_OPTIONS = frozenset({"tune", "library"})
_CPU_ONLY_FP16 = (("fp16", "{name} runs on a CPU, use fp32 or int8"),)

TARGETS: tuple[ExportTarget, ...] = (
    ExportTarget(
        name="host",
        kind="cpu",
        description="this machine's CPU (LLVM, -mcpu=native), NHWC schedules, multi-threaded",
        tvm_target={"kind": "llvm", "mcpu": "native"},
        device_notes="runs here; verify compares it with PyTorch numerically",
        device_steps=_HOST_STEPS,
        precisions=("fp32", "int8"),
        options=frozenset({"tune", "library"}),
        precision_hints=_CPU_ONLY_FP16,
    ),
    ExportTarget(
        name="jetson-nano",
        kind="cuda",
        description="NVIDIA Jetson Nano: CUDA sm_53 kernels + aarch64 Cortex-A57 host code",
        tvm_target=_NANO_PTX,
        tvm_host={"kind": "llvm", "mtriple": _AARCH64_GNU, "mcpu": "cortex-a57", "mattr": ["+neon"]},
        triple=_AARCH64_GNU,
        cpu="cortex-a57",
        linker="aarch64-linux-gnu-gcc",
        device_notes="TensorRT 8.2 (JetPack 4.6) runs model.onnx as shipped; TVM needs a runtime built with CUDA on "
                     "the Nano; kernels are sm_53 PTX (ISA 4.2, LLVM NVPTX) that CUDA 10.2 loads",
        aliases=("jetson", "nano"),
        device_steps=_JETSON_STEPS,
        precisions=("fp32", "fp16"),
        options=frozenset({"library"}),
        qemu_cpu="cortex-a57",
        onnx_profile="tensorrt-8.2",
    ),
    ExportTarget(
        name="jetson-orin-nano",
        kind="cuda",
        description="NVIDIA Jetson Orin Nano (JetPack 6): CUDA sm_87 kernels + aarch64 Cortex-A78AE host code",
        # TVM's tag nvidia/jetson-orin-nano, with the Orin's own CPU as host (the tag's host is Xavier's Carmel)
        tvm_target={"kind": "cuda", "arch": "sm_87", "max_num_threads": 1024, "thread_warp_size": 32,
                    "max_shared_memory_per_block": 49152, "registers_per_block": 65536},
        tvm_host={"kind": "llvm", "mtriple": _AARCH64_GNU, "mcpu": "cortex-a78ae", "mattr": ["+neon"]},
        triple=_AARCH64_GNU,
        cpu="cortex-a78ae",
        linker="aarch64-linux-gnu-gcc",
        device_notes="TensorRT 8.6/10 runs model.onnx; TVM needs a runtime built with CUDA on the board; kernels "
                     "are sm_87 cubins (NVRTC 12.9) for a CUDA 12 driver",
        aliases=("orin-nano", "orin"),
        device_steps=_ORIN_STEPS,
        precisions=("fp32", "fp16"),
        options=frozenset({"library"}),
        qemu_cpu="cortex-a76",
        onnx_profile="tensorrt-8.2",
    ),
    ExportTarget(
        name="cuda",
        kind="cuda",
        description="any NVIDIA GPU (sm_53+) on this machine's CPU (x86-64): the Nano's PTX kernels, JIT-compiled "
                    "by the driver",
        tvm_target=_NANO_PTX,
        tvm_host={"kind": "llvm"},
        device_notes="the Jetson Nano's kernels checked on any NVIDIA GPU: run.py here with a GPU, or tests/gpu/run.sh",
        aliases=("gpu", "nvidia-gpu"),
        device_steps=_CUDA_STEPS,
        precisions=("fp32", "fp16"),
        options=frozenset({"library"}),
        onnx_profile="tensorrt-8.2",
    ),
    ExportTarget(
        name="android-arm64",
        kind="cpu",
        description="Android arm64 phones (Galaxy Note8 class: Cortex-A73/A53), NEON",
        tvm_target={"kind": "llvm", "mtriple": "aarch64-linux-android", "mcpu": "cortex-a73", "mattr": ["+neon"]},
        triple="aarch64-linux-android",
        cpu="cortex-a73",
        linker=None,
        linker_env="TVM_NDK_CC",
        library_glibc=False,
        device_notes="a loadable .so needs the NDK's clang (set TVM_NDK_CC); otherwise a .tar to link with the NDK",
        aliases=("android",),
        device_steps=_ANDROID_STEPS,
        options=frozenset({"library"}),
        precision_hints=_CPU_ONLY_FP16,
        qemu_cpu="cortex-a53",
    ),
    ExportTarget(
        name="android-litert",
        kind="litert",
        description="Android phones with nothing built: a LiteRT (TFLite) model.tflite, XNNPACK on the CPU or the "
                    "GPU delegate",
        cpu="cortex-a53",
        device_notes="LiteRT's prebuilt benchmark_model times it over adb; run_litert.py (numpy + ai-edge-litert) "
                     "verifies and times it where Python runs; verify --emulate runs it on a Cortex-A53 under qemu",
        aliases=("litert", "tflite"),
        device_steps=_LITERT_STEPS,
        precisions=("fp32", "fp16", "int8"),
        qemu_cpu="cortex-a53",
    ),
    ExportTarget(
        name="raspberry-pi-4",
        kind="cpu",
        description="Raspberry Pi 4 (Cortex-A72, 64-bit OS), NEON",
        tvm_target={"kind": "llvm", "mtriple": _AARCH64_GNU, "mcpu": "cortex-a72", "mattr": ["+neon"]},
        triple=_AARCH64_GNU,
        cpu="cortex-a72",
        linker="aarch64-linux-gnu-gcc",
        device_notes="pip install apache-tvm on the Pi (manylinux_2_28_aarch64 wheels) and load the .so",
        aliases=("rpi4", "raspberry-pi", "pi4"),
        device_steps=_PI_STEPS,
        options=frozenset({"library"}),
        precision_hints=_CPU_ONLY_FP16,
        qemu_cpu="cortex-a72",
    ),
    ExportTarget(
        name="onnx",
        kind="onnx",
        description="ONNX only (ONNX Runtime, TensorRT on the device, ...); no compilation",
        device_notes="any ONNX runtime; verify runs it with ONNX Runtime here",
        device_steps=_ONNX_STEPS,
        precisions=("fp32", "int8"),
        precision_hints=(("fp16", "fp16 is a build option of TensorRT, not of the ONNX file: export fp32 and build "
                                  "with trtexec --fp16 (or the tensorrt backend's fp16=True)"),),
    ),
    ExportTarget(
        name="triton",
        kind="onnx",
        description="Triton Inference Server model repository: one sequence per camera (python and "
                    "onnxruntime backends)",
        device_notes="tsm-serve REPO serves it here (pip install 'online-tsm[serve]'); clients use "
                     "open_runtime(REPO, backend='triton', address=HOST:PORT)",
        packager="online_tsm.export.formats.triton:export_repository",
        precisions=("fp32", "int8"),
    ),
)


def target_names() -> list[str]:
    return [t.name for t in TARGETS]


def get_target(name: str) -> ExportTarget:
    """The row called ``name`` (or one of its aliases); a clear error listing known targets otherwise."""
    key = str(name).strip().lower()
    for row in TARGETS:
        if key == row.name or key in row.aliases:
            return row
    raise ValueError(f"unknown target {name!r}; known targets: {', '.join(target_names())} "
                     "(tsm-export --list-targets describes them)")


def format_table() -> str:
    """The targets table as printed by ``tsm-export --list-targets``."""
    rows = [("target", "kind", "host triple", "library", "description")]
    for t in TARGETS:
        if t.kind == "onnx":
            lib = "-"
        elif t.kind == "litert":
            lib = "- (model.tflite)"
        elif not t.cross:
            lib = "model.so"
        elif t.needs_ndk:
            lib = f"model.tar (.so with ${t.linker_env})"
        else:
            lib = f"model.so ({t.linker}) / .tar"
        host = "any (portable)" if t.kind == "litert" else t.triple or "this machine"
        rows.append((t.name, t.kind, host, lib, t.description))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)
