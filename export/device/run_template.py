#!/usr/bin/env python3
"""Check and time this online-tsm artifact on the device: ``python3 run.py [--json RESULT.json]``.

Needs only numpy and one runtime: the TVM runtime for the compiled library
(``run.py``), or ONNX Runtime / TensorRT for ``model.onnx`` (``run_onnx.py``,
or ``run.py --engine onnxruntime`` / ``--tensorrt``).  No online-tsm, torch or
OpenCV: copy the folder, install the runtime, run it.

What it does, in this order, and why:

1. reads ``manifest.json`` beside it: input/output names, shapes, dtypes and
   the shift-buffer pairs come from there, nothing is hard-coded;
2. checks the sha256 of every file the manifest lists and refuses to load
   anything on a mismatch (a truncated copy or a stale library would
   otherwise give wrong numbers or crash inside ``dlopen``);
3. reads the library's ELF header and refuses a library built for another
   CPU architecture, before loading it;
4. verifies: streams the export's verification frames with the shift buffers
   carried and compares the logits with ``reference.npz`` (PyTorch's, computed
   at export time) under the same tolerance rule as ``tsm-export verify``;
   a library that computes something else gets no timing;
5. times it: warm-up frames, then N frames with buffers carried, each frame
   timed with its input copy and logits read-back; p50/p90/p99/mean and FPS,
   plus TVM's ``time_evaluator`` figure for the TVM engine;
6. with ``--json``, writes the machine, the artifact, the figures and the
   verification result, for ``tsm-bench --import RESULT.json``.

Any failure is one line on stderr and a non-zero exit status.  Under a CPU
emulator (qemu) it refuses to time: such numbers say nothing about a device.

This file is a template shipped by online-tsm (``online_tsm/export/device/run_template.py``);
it must run on Python >= 3.6 with numpy >= 1.13 -- a Jetson Nano's last JetPack
(4.6: Python 3.6.9, apt's numpy 1.13.3, TensorRT 8.2 with Python 3.6 bindings
only) -- and import nothing outside the standard library but numpy and the
chosen runtime.  So: no postponed annotations, dataclasses, walrus, or numpy
keywords newer than 1.13 (``max(initial=...)``); tests/test_device_python36.py
runs it under Python 3.6.
"""

import argparse
import ctypes
import datetime
import hashlib
import json
import os
import platform
import struct
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))

SCHEMA = "online-tsm-device-run/1"
MANIFEST_NAME = "manifest.json"
ARTIFACT_FORMAT = "online-tsm-artifact"
ARTIFACT_VERSION = 1
#: online_tsm.verification's float32 rule, used only for a manifest that carries no rule at all (the oldest).
DEFAULT_RULE = {"absolute": 1e-4, "relative": 1e-5, "relative_other_machine": 1e-4}
#: A copy of online_tsm.machine.elf's names (this file runs without online-tsm); tests/test_device_kit.py keeps them equal.
ELF_MACHINES = {3: "x86", 8: "mips", 20: "ppc", 21: "ppc64", 40: "arm", 62: "x86_64", 183: "aarch64", 190: "cuda",
                243: "riscv64"}
MACHINE_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "i386": "x86", "i686": "x86",
                   "armv7l": "arm", "armv6l": "arm", "armv8l": "arm"}
ENGINES = ("tvm", "onnxruntime", "tensorrt", "litert")


class RunError(Exception):
    """A failure reported as one line; ``stage`` says how far the run got (written to the JSON)."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


# -- the artifact ----------------------------------------------------------------------------------
def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: str) -> dict:
    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise RunError("manifest", f"no {MANIFEST_NAME} in {folder}: run this script inside a folder written by "
                                   "tsm-export (copy the whole folder)")
    try:
        with open(path) as fh:
            manifest = json.load(fh)
    except ValueError as exc:
        raise RunError("manifest", f"{path} is not valid JSON ({exc}); copy the folder again")
    if not isinstance(manifest, dict) or manifest.get("format") != ARTIFACT_FORMAT:
        raise RunError("manifest", f"{path} is not an online-tsm manifest (expected format {ARTIFACT_FORMAT!r})")
    if int(manifest.get("format_version", 0)) > ARTIFACT_VERSION:
        raise RunError("manifest", f"{path} has format_version {manifest.get('format_version')}; this run.py reads "
                                   f"up to {ARTIFACT_VERSION}: use the run.py exported with it")
    return manifest


def check_files(folder: str, manifest: dict) -> dict:
    """sha256 of every listed file against the manifest; ``{name: sha256}``.  Nothing is loaded before this."""
    hashes = {}
    for name, meta in sorted(manifest.get("files", {}).items()):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise RunError("sha256", f"{name} is listed in {MANIFEST_NAME} but missing from {folder}: copy the "
                                     "whole folder")
        actual = sha256_of(path)
        if actual != meta.get("sha256"):
            raise RunError("sha256", f"{name} does not match {MANIFEST_NAME} (sha256 expected "
                                     f"{str(meta.get('sha256'))[:12]}..., got {actual[:12]}...): the copy is corrupt "
                                     "or the file was changed; refusing to load it (copy the folder again or "
                                     "re-export it)")
        hashes[name] = actual
    return hashes


def file_with_role(manifest: dict, role: str):
    return next((n for n, meta in sorted(manifest.get("files", {}).items()) if meta.get("role") == role), None)


def host_arch() -> str:
    machine = platform.machine().lower()
    return MACHINE_ALIASES.get(machine, machine)


def elf_arch(path: str) -> str:
    """The CPU a shared library is built for, from its ELF header (read, never loaded)."""
    with open(path, "rb") as fh:
        header = fh.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        raise RunError("architecture", f"{os.path.basename(path)} is not an ELF shared library (expected a .so "
                                       "written by tsm-export)")
    (machine,) = struct.unpack(("<" if header[5] == 1 else ">") + "H", header[18:20])
    return ELF_MACHINES.get(machine, f"ELF machine {machine}")


def library_path(folder: str, manifest: dict, link_hint: str) -> tuple:
    """``(path, note)`` of the shared library to load; a ``.tar`` of objects must be linked into a ``.so`` first."""
    name = file_with_role(manifest, "library")
    if name is None:
        raise RunError("library", "this artifact has no compiled library: use --engine onnxruntime or --tensorrt "
                                  "with its model.onnx")
    if not name.endswith(".tar"):
        return os.path.join(folder, name), None
    linked = os.path.join(folder, name[:-len(".tar")] + ".so")
    if not os.path.isfile(linked):
        raise RunError("library", f"{name} holds object files; link them into {os.path.basename(linked)} first: "
                                  f"{link_hint}")
    return linked, (f"{os.path.basename(linked)} was linked on this machine from {name} (whose sha256 was "
                    "checked); the linked file itself is not in the manifest")


# -- verification --------------------------------------------------------------------------------
def verification_frames(np, manifest: dict, n: int):
    """The frames the export verified with (closed forms of online_tsm.export.reference.frames_for)."""
    pre = manifest["preprocess"]
    if pre.get("folded"):
        spec = next(s for s in manifest["inputs"] if s["name"] == manifest.get("frame_input", "frame"))
        _, height, width, _ = spec["shape"]
        t, y, x, c = np.meshgrid(np.arange(n), np.arange(height), np.arange(width), np.arange(3), indexing="ij")
        value = 127.5 + 100.0 * np.sin(0.045 * x * (c + 1) + 0.031 * y + 0.4 * t) \
            * np.cos(0.017 * y - 0.011 * x * c + 0.25 * t)
        return np.floor(value).astype(np.uint8)
    size = int(pre["input_size"])
    t, c, y, x = np.meshgrid(np.arange(n), np.arange(3), np.arange(size), np.arange(size), indexing="ij")
    phase = 0.05 * (x + 1) * (c + 1) + 0.07 * y + 0.3 * t
    return (2.0 * np.sin(phase) * np.cos(0.013 * x * y / (c + 1) + 0.2 * t)).astype(np.float32)


def verification_rule(manifest, precision=None):
    """``(precision, rule)``: the manifest's rule for what this run computes (its own precision by default).

    The export writes one rule per precision into ``manifest.json`` (``verification.rules``); this script
    never restates the numbers.  Manifests from before the rules moved there carry the float32 rule in
    ``target.verification``.
    """
    verification = manifest.get("verification") or {}
    precision = precision or verification.get("precision") or (manifest.get("model") or {}).get("precision") \
        or "fp32"
    rule = (verification.get("rules") or {}).get(precision)
    if rule is None and precision == "fp32":
        rule = (manifest.get("target") or {}).get("verification") or DEFAULT_RULE
    if not rule:
        raise RunError("manifest", "manifest.json has no {} verification rule: re-export the artifact with a "
                                   "current online-tsm".format(precision))
    return precision, rule


def run_precision(manifest, engine_name, fp16=False):
    """What this run computes in: the library is the artifact's precision (fp16 kernels, say); model.onnx is
    float32 unless the artifact is int8 (a QDQ graph); a TensorRT ``--fp16`` engine computes in fp16."""
    precision = (manifest.get("verification") or {}).get("precision") or (manifest.get("model") or {}).get(
        "precision") or "fp32"
    if engine_name == "tensorrt" and fp16:
        return "fp16"
    if engine_name in ("tvm", "litert") or precision == "int8":
        return precision
    return "fp32"


def tolerance_rule(manifest, same_machine, fp16=False, precision=None):
    """``(absolute, relative, min_top1_agreement, why)``: max abs diff allowed is
    ``max(absolute, relative x max |reference|)``, by the rule of ``precision`` (:func:`run_precision`; the
    artifact's own by default); TensorRT ``--fp16`` is judged by the fp16 rule."""
    precision, rule = verification_rule(manifest, precision or ("fp16" if fp16 else None))
    relative = rule["relative"] if same_machine else rule.get("relative_other_machine", rule["relative"])
    where = ("same CPU architecture as the export's reference" if same_machine else
             "another architecture or a GPU than the export's reference: sums run in another order")
    return rule["absolute"], relative, rule.get("min_top1_agreement"), "the manifest's {} rule, {}".format(
        precision, where)


def _abs_max(np, array):
    """max |array|, 0 for an empty one (numpy 1.13 has no ``max(initial=...)``)."""
    return float(np.abs(array).max()) if array.size else 0.0


def verify(np, engine, manifest, reference, n_frames, rule):
    frames = verification_frames(np, manifest, n_frames)
    stream = engine.new_stream()
    logits = np.stack([stream.step(frame) for frame in frames])
    expected = reference[:n_frames]
    if logits.shape != expected.shape:
        diff, agreement = float("inf"), 0.0
    else:
        diff = _abs_max(np, logits.astype(np.float64) - expected.astype(np.float64))
        diff = diff if np.isfinite(diff) else float("inf")
        agreement = float(np.mean(logits.argmax(-1) == expected.argmax(-1)))
    largest = _abs_max(np, expected)
    absolute, relative, min_top1, why = rule
    tolerance = max(absolute, relative * largest)
    passed = bool(diff <= tolerance) and (min_top1 is None or agreement >= min_top1)
    text = "max({:g}, {:g} x max |reference logit|)".format(absolute, relative)
    if min_top1 is not None:
        text += ", top-1 agreement >= {:.0%}".format(min_top1)
    return {"passed": passed, "frames": int(n_frames), "buffers": len(manifest["buffers"]), "max_abs_diff": diff,
            "max_abs_reference": largest, "tolerance": tolerance, "top1_agreement": agreement,
            "min_top1_agreement": min_top1, "rule": text, "rule_reason": why,
            "reference": "PyTorch logits computed at export time (reference.npz)"}


# -- engines: load, new_stream().step(frame) -> logits -------------------------------------------
def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("File ", "Traceback", "at ", "0:", "1:", "2:"))]
    return (useful[-1] if useful else type(exc).__name__)[:300]


def _need(module: str, install: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise RunError("package", f"Python package {module} is missing: {install}") from None


class _Stream:
    def __init__(self, engine, state) -> None:
        self.engine, self.state = engine, state

    def step(self, frame):
        logits, self.state = self.engine.run(frame, self.state)
        return logits


class TvmEngine:
    """The compiled library in TVM's Relax VM; buffers stay on the device between frames."""

    name = "tvm"

    def __init__(self, np, manifest: dict, library: str, device: str, threads) -> None:
        install = ("pip install apache-tvm==0.27.0.post1 (or build Apache TVM's runtime with CUDA on the device, "
                   "see README.txt)" if device == "cuda" else "pip install apache-tvm==0.27.0.post1")
        tvm = _need("tvm", install)
        self.np, self.tvm, self.manifest = np, tvm, manifest
        self.device = tvm.cuda(0) if device == "cuda" else tvm.cpu(0)
        if device == "cuda" and not self.device.exist:
            raise RunError("device", "no CUDA GPU visible to TVM (is this TVM built with -DUSE_CUDA=ON, and does "
                                     "the driver work?); --device cpu cannot run CUDA kernels either")
        if device == "cpu" and threads:
            # TVM's thread binding also pins this (calling) thread to core 0; keep the caller's cores.
            os.environ.setdefault("TVM_BIND_THREADS", "0")
            saved = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
            tvm.get_global_func("runtime.config_threadpool")(1, int(threads))
            if saved is not None and os.sched_getaffinity(0) != saved:
                os.sched_setaffinity(0, saved)
        try:
            self.vm = tvm.relax.VirtualMachine(tvm.runtime.load_module(library), self.device)
        except Exception as exc:  # noqa: BLE001 -- dlopen and VM errors come in many types
            raise RunError("load", f"TVM could not load {os.path.basename(library)}: {_first_line(exc)}") from None
        self.main = self.vm["main"]
        names = [s["name"] for s in manifest["inputs"]]
        outputs = [s["name"] for s in manifest["outputs"]]
        self.frame_slot = names.index(manifest["frame_input"])
        self.buffer_slots = [names.index(b["input"]) for b in manifest["buffers"]]
        self.buffer_from = [outputs.index(b["output"]) for b in manifest["buffers"]]
        self.logits_at = outputs.index(manifest["logits_output"])
        frame = next(s for s in manifest["inputs"] if s["name"] == manifest["frame_input"])
        self.frame = tvm.runtime.empty(tuple(frame["shape"]), frame["dtype"], self.device)
        self.zeros = [tvm.runtime.tensor(np.zeros(b["shape"], b["dtype"]), self.device) for b in manifest["buffers"]]
        self.description = f"TVM {tvm.__version__} Relax VM on {device}"
        if device == "cuda":
            self.description += f" ({getattr(self.device, 'device_name', 'GPU')})"

    def new_stream(self) -> _Stream:
        return _Stream(self, list(self.zeros))

    def _arguments(self, state) -> list:
        args = [None] * (1 + len(state))
        args[self.frame_slot] = self.frame
        for slot, tensor in zip(self.buffer_slots, state):
            args[slot] = tensor
        return args

    def run(self, frame, state):
        self.frame.copyfrom(self.np.ascontiguousarray(frame[None]))
        outputs = self.main(*self._arguments(state))
        if isinstance(outputs, self.tvm.runtime.Tensor):   # a graph without buffers returns one tensor
            outputs = (outputs,)
        return outputs[self.logits_at].numpy()[0], [outputs[i] for i in self.buffer_from]

    def device_time(self, number: int, repeat: int) -> dict:
        """TVM's own figure: ``repeat`` means of ``number`` calls of ``main``, timed by the runtime."""
        self.vm.set_input("main", *self._arguments(self.zeros))
        result = self.vm.time_evaluator("invoke_stateful", self.device, number=number, repeat=repeat)("main")
        ms = self.np.asarray(result.results, dtype=self.np.float64) * 1e3
        return {"mean_ms": float(ms.mean()), "median_ms": float(self.np.median(ms)), "min_ms": float(ms.min()),
                "max_ms": float(ms.max()), "number": number, "repeat": repeat,
                "how": "TVM time_evaluator: the library's main() on the device, buffers zero, no frame copy"}


class OnnxRuntimeEngine:
    """``model.onnx`` in an ONNX Runtime session; buffers carried as numpy arrays by the manifest's names."""

    name = "onnxruntime"

    def __init__(self, np, manifest: dict, onnx_path: str, device: str, threads) -> None:
        ort = _need("onnxruntime", "pip install onnxruntime (on a Jetson: the onnxruntime-gpu wheel for your "
                                   "JetPack from NVIDIA's Jetson Zoo)")
        self.np, self.manifest = np, manifest
        provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
        if provider not in ort.get_available_providers():
            raise RunError("device", f"this onnxruntime has no {provider} (it has "
                                     f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu or use "
                                     "--device cpu")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(onnx_path, options, providers=[provider])
        except Exception as exc:  # noqa: BLE001
            raise RunError("load", f"ONNX Runtime could not load {os.path.basename(onnx_path)}: "
                                   f"{_first_line(exc)}") from None
        self.outputs = [manifest["logits_output"]] + [b["output"] for b in manifest["buffers"]]
        self.description = f"ONNX Runtime {ort.__version__} {provider}, numpy buffers"

    def new_stream(self) -> _Stream:
        return _Stream(self, {b["input"]: self.np.zeros(b["shape"], b["dtype"]) for b in self.manifest["buffers"]})

    def run(self, frame, state):
        feeds = dict(state)
        feeds[self.manifest["frame_input"]] = self.np.ascontiguousarray(frame[None])
        results = self.session.run(self.outputs, feeds)
        return results[0][0], {b["input"]: r for b, r in zip(self.manifest["buffers"], results[1:])}


class LiteRtEngine:
    """``model.tflite`` in LiteRT's interpreter (XNNPACK on the CPU); buffers carried as numpy arrays by the
    manifest's names through the model's one signature (never by position: LiteRT sorts names as strings)."""

    name = "litert"

    def __init__(self, np, manifest: dict, tflite_path: str, threads) -> None:
        _need("ai_edge_litert", "pip install ai-edge-litert (Python >= 3.10, x86-64 or aarch64 Linux, macOS)")
        from ai_edge_litert.interpreter import Interpreter
        import ai_edge_litert

        self.np, self.manifest = np, manifest
        signature = ((manifest.get("model") or {}).get("litert") or {}).get("signature", "serving_default")
        try:
            interpreter = Interpreter(model_path=tflite_path, num_threads=int(threads))
            self.runner = interpreter.get_signature_runner(signature)
        except Exception as exc:  # noqa: BLE001
            raise RunError("load", "LiteRT could not load {}: {}".format(os.path.basename(tflite_path),
                                                                           _first_line(exc))) from None
        have = sorted(self.runner.get_input_details())
        want = sorted(s["name"] for s in manifest["inputs"])
        if have != want:
            raise RunError("load", "{} takes {}, manifest.json says {}: re-export the folder".format(
                os.path.basename(tflite_path), ", ".join(have), ", ".join(want)))
        self.description = "LiteRT {} XNNPACK CPU, signature {}, {} threads, numpy buffers".format(
            getattr(ai_edge_litert, "__version__", "?"), signature, threads)

    def new_stream(self) -> _Stream:
        return _Stream(self, {b["input"]: self.np.zeros(b["shape"], b["dtype"]) for b in self.manifest["buffers"]})

    def run(self, frame, state):
        feeds = dict(state)
        feeds[self.manifest["frame_input"]] = self.np.ascontiguousarray(frame[None])
        out = self.runner(**feeds)
        return out[self.manifest["logits_output"]][0], {b["input"]: out[b["output"]] for b in self.manifest["buffers"]}


def _version_key(text) -> tuple:
    return tuple(int(part) for part in str(text).split("."))


def cuda_driver_version():
    """The CUDA version the driver library reports (``"10.2"``), or None where none loads."""
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        version = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(version)) == 0 and version.value > 0:
            return "{}.{}".format(version.value // 1000, version.value % 1000 // 10)
    return None


def check_cuda_driver(target: dict):
    """Refuse, in one line, a driver older than the oldest that loads the library's kernels.

    ``target.device_code.min_cuda_driver`` is written at export from the kernels themselves (a PTX ISA a driver
    must know to JIT-compile it; a cubin's CUDA major version).  Returns the driver's version, or None when no
    driver library loads (TVM then reports the missing GPU itself).
    """
    code = target.get("device_code") or {}
    need, have = code.get("min_cuda_driver"), cuda_driver_version()
    if need and have and _version_key(have) < _version_key(need):
        isa = ", PTX ISA {}".format(code["ptx_isa"]) if code.get("ptx_isa") else ""
        raise RunError("cuda", "this CUDA driver reports CUDA {}, older than the {} the library's kernels need ({} {}"
                               "{}, {}): update the driver, or run model.onnx with --tensorrt, which builds its engine "
                               "on this device".format(have, need, code.get("arch", "?"), code.get("format", "?"),
                                                       isa, code.get("compiler", "?")))
    return have


class _CudaRuntime:
    """The few CUDA runtime calls TensorRT needs for its buffers, through ctypes (no pycuda needed)."""

    NAMES = ("libcudart.so", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so.10.2",
             "/usr/local/cuda/lib64/libcudart.so")

    def __init__(self) -> None:
        self.lib = None
        for name in self.NAMES:
            try:
                self.lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        if self.lib is None:
            raise RunError("package", "the CUDA runtime library (libcudart.so) was not found: it ships with "
                                      "JetPack / the CUDA toolkit (add its lib64 folder to LD_LIBRARY_PATH)")
        self.lib.cudaMalloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t]
        self.lib.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self.lib.cudaMemset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
        self.lib.cudaFree.argtypes = [ctypes.c_void_p]
        self.lib.cudaStreamCreate.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        self.lib.cudaStreamSynchronize.argtypes = [ctypes.c_void_p]

    def _check(self, code: int, what: str) -> None:
        if code != 0:
            raise RunError("cuda", f"CUDA runtime call {what} failed with error {code}")

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self._check(self.lib.cudaMalloc(ctypes.byref(ptr), nbytes), "cudaMalloc")
        self._check(self.lib.cudaMemset(ptr, 0, nbytes), "cudaMemset")
        return int(ptr.value)

    def to_device(self, dst: int, array) -> None:
        self._check(self.lib.cudaMemcpy(dst, array.ctypes.data, array.nbytes, 1), "cudaMemcpy (to device)")

    def to_host(self, array, src: int) -> None:
        self._check(self.lib.cudaMemcpy(array.ctypes.data, src, array.nbytes, 2), "cudaMemcpy (to host)")

    def stream(self) -> int:
        handle = ctypes.c_void_p()
        self._check(self.lib.cudaStreamCreate(ctypes.byref(handle)), "cudaStreamCreate")
        return int(handle.value or 0)

    def synchronize(self, stream: int) -> None:
        self._check(self.lib.cudaStreamSynchronize(stream), "cudaStreamSynchronize")


class TensorRtEngine:
    """A TensorRT engine built from ``model.onnx`` on this device (cached), buffers ping-ponged on the GPU.

    Two Python APIs, chosen by what the ``tensorrt`` module has: TensorRT 8.2 (JetPack 4.6: binding indices,
    ``execute_v2``, ``max_workspace_size``) and 8.5+/10.x (named tensor addresses, ``execute_async_v3`` on a
    stream, memory pool limits).  The two only differ in how an engine is built and called.
    """

    name = "tensorrt"
    WORKSPACE = 1 << 28     # 256 MiB of scratch for the builder: enough for this network, small for a Nano

    def __init__(self, np, manifest: dict, onnx_path: str, fp16: bool, say) -> None:
        trt = _need("tensorrt", "TensorRT's Python bindings ship with JetPack (apt install python3-libnvinfer); "
                                "on a PC: pip install tensorrt")
        self.np, self.manifest, self.cuda = np, manifest, _CudaRuntime()
        logger = trt.Logger(trt.Logger.WARNING)
        plan = self._engine_bytes(trt, logger, onnx_path, fp16, say)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RunError("load", "TensorRT could not deserialize the cached engine {}; delete it".format(
                self.plan_path))
        self.context = self.engine.create_execution_context()
        self.v3 = hasattr(self.context, "set_tensor_address") and hasattr(self.context, "execute_async_v3")
        specs = {s["name"]: s for s in manifest["inputs"] + manifest["outputs"]}
        names = self._engine_names()
        if set(names) != set(specs):
            raise RunError("load", "the TensorRT engine's tensors ({}) are not manifest.json's ({})".format(
                ", ".join(sorted(names)), ", ".join(sorted(specs))))
        self.pointers = {}
        for name, spec in specs.items():
            nbytes = int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize
            self.pointers[name] = self.cuda.malloc(nbytes)
        # Ping-pong: each buffer pair has two device arrays; a step reads one and writes the other.
        self.spare = {b["input"]: self.cuda.malloc(int(np.prod(b["shape"])) * np.dtype(b["dtype"]).itemsize)
                      for b in manifest["buffers"]}
        self.logits = np.zeros(specs[manifest["logits_output"]]["shape"], specs[manifest["logits_output"]]["dtype"])
        self.stream = self.cuda.stream() if self.v3 else 0
        api = "named tensors, execute_async_v3" if self.v3 else "bindings, execute_v2"
        self.description = "TensorRT {} {} engine built on this device ({}; cached: {})".format(
            trt.__version__, "fp16" if fp16 else "fp32", api, os.path.basename(self.plan_path))

    def _engine_names(self) -> list:
        if hasattr(self.engine, "num_io_tensors"):
            return [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        return [self.engine.get_binding_name(i) for i in range(self.engine.num_bindings)]

    def _engine_bytes(self, trt, logger, onnx_path: str, fp16: bool, say) -> bytes:
        folder = os.path.join(os.path.dirname(onnx_path), "tensorrt-cache")
        key = "{}-trt{}-{}.plan".format(sha256_of(onnx_path)[:16], trt.__version__, "fp16" if fp16 else "fp32")
        self.plan_path = os.path.join(folder, key)
        if os.path.isfile(self.plan_path):
            with open(self.plan_path, "rb") as fh:
                return fh.read()
        say("building a TensorRT {} engine from {} (first run only; minutes on a Jetson Nano)".format(
            "fp16" if fp16 else "fp32", os.path.basename(onnx_path)))
        builder = trt.Builder(logger)
        major = int(str(trt.__version__).split(".")[0])
        flag = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
        # TensorRT 8 parses ONNX into explicit-batch networks only; 10 has no other kind and deprecates the flag.
        network = builder.create_network(0 if flag is None or major >= 10 else 1 << int(flag))
        parser = trt.OnnxParser(network, logger)
        with open(onnx_path, "rb") as fh:
            if not parser.parse(fh.read()):
                errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise RunError("load", "TensorRT could not parse {}: {}".format(os.path.basename(onnx_path),
                                                                                errors[:300]))
        config = builder.create_builder_config()
        if hasattr(config, "set_memory_pool_limit"):      # TensorRT 8.4 and later
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.WORKSPACE)
        else:                                             # TensorRT 8.2 (JetPack 4.6)
            config.max_workspace_size = self.WORKSPACE
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RunError("load", "TensorRT could not build an engine from model.onnx (see its messages above)")
        data = bytes(serialized)
        os.makedirs(folder, exist_ok=True)
        tmp = self.plan_path + ".tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, self.plan_path)
        return data

    def new_stream(self) -> _Stream:
        np = self.np
        for b in self.manifest["buffers"]:
            zeros = np.zeros(b["shape"], b["dtype"])
            self.cuda.to_device(self.pointers[b["input"]], zeros)
        return _Stream(self, None)

    def _address(self, name: str) -> int:
        """Where tensor ``name`` lives this step: a buffer's output goes to the spare of its pair."""
        out_of = next((b for b in self.manifest["buffers"] if b["output"] == name), None)
        return self.spare[out_of["input"]] if out_of else self.pointers[name]

    def run(self, frame, state):
        m = self.manifest
        self.cuda.to_device(self.pointers[m["frame_input"]], self.np.ascontiguousarray(frame[None]))
        if self.v3:
            for name in self.pointers:
                self.context.set_tensor_address(name, self._address(name))
            if not self.context.execute_async_v3(self.stream):
                raise RunError("run", "TensorRT's execute_async_v3 failed (see its messages above)")
            self.cuda.synchronize(self.stream)
        else:
            bindings = [self._address(self.engine.get_binding_name(i)) for i in range(self.engine.num_bindings)]
            if not self.context.execute_v2(bindings):
                raise RunError("run", "TensorRT's execute_v2 failed (see its messages above)")
        self.cuda.to_host(self.logits, self.pointers[m["logits_output"]])
        for b in m["buffers"]:    # the outputs just written become the next frame's inputs
            self.pointers[b["input"]], self.spare[b["input"]] = self.spare[b["input"]], self.pointers[b["input"]]
        return self.logits[0].copy(), None


# -- timing ----------------------------------------------------------------------------------------
def emulation_evidence():
    """Why this process looks emulated (qemu-user), or None (as online_tsm.benchmarks.facts decides)."""
    def read(path: str) -> str:
        try:
            with open(path) as fh:
                return fh.read()
        except OSError:
            return ""

    name = next((line.split(":", 1)[1].strip() for line in read("/proc/self/status").splitlines()
                 if line.startswith("Name:")), "")
    if name.startswith("qemu-"):
        return f"the process runs inside {name} (a CPU emulator)"
    cpuinfo = read("/proc/cpuinfo")
    vendor = next((v for v in ("GenuineIntel", "AuthenticAMD", "HygonGenuine") if v in cpuinfo), None)
    if vendor and host_arch() not in ("x86_64", "x86"):
        return f"Python reports {platform.machine()} but the CPU is an x86 {vendor} (an emulator)"
    return None


def percentile(np, samples, q: float) -> float:
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q))


def time_frames(np, engine, frames, warmup: int, n: int) -> dict:
    """Per-frame wall time of ``step`` (frame copy in, model, logits out), buffers carried, after a warm-up."""
    stream = engine.new_stream()
    for i in range(warmup):
        stream.step(frames[i % len(frames)])
    samples = []
    clock = time.perf_counter
    for i in range(n):
        frame = frames[i % len(frames)]
        start = clock()
        stream.step(frame)
        samples.append((clock() - start) * 1e3)
    mean = float(np.mean(samples))
    return {"frames": n, "warmup": warmup, "p50_ms": percentile(np, samples, 50), "p90_ms": percentile(np, samples, 90),
            "p99_ms": percentile(np, samples, 99), "mean_ms": mean, "min_ms": float(np.min(samples)),
            "max_ms": float(np.max(samples)), "std_ms": float(np.std(samples)), "fps": 1000.0 / mean,
            "samples_ms": [round(s, 4) for s in samples],
            "how": "wall time per frame: frame copied in, model run, logits read back; shift buffers carried; "
                   "FPS = 1000 / mean"}


# -- the machine -----------------------------------------------------------------------------------
def _read_first(paths) -> str:
    for path in paths:
        try:
            with open(path, "rb") as fh:
                text = fh.read().decode(errors="replace").strip("\x00 \n")
            if text:
                return text
        except OSError:
            continue
    return ""


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            lines = fh.read().splitlines()
    except OSError:
        lines = []
    for key in ("model name", "hardware", "cpu model", "model"):
        for line in lines:
            if line.lower().startswith(key) and ":" in line:
                return line.split(":", 1)[1].strip()
    parts = [line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("cpu part") and ":" in line]
    arm = {"0xd03": "Cortex-A53", "0xd07": "Cortex-A57", "0xd08": "Cortex-A72", "0xd09": "Cortex-A73",
           "0xd0b": "Cortex-A76"}
    names = sorted({arm.get(p, p) for p in parts})
    return ", ".join(names) if names else (platform.processor() or platform.machine())


def os_name() -> str:
    try:
        with open("/etc/os-release") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"') + f" ({platform.system()} {platform.release()})"
    except OSError:
        pass
    return platform.platform()


def physical_cores() -> int:
    """Cores this process may use, counting SMT siblings once (TVM's thread pool wants physical cores)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    seen = set()
    for cpu in cpus:
        base = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        seen.add((_read_first([base + "physical_package_id"]), _read_first([base + "core_id"]) or str(cpu)))
    return len(seen) or len(cpus) or 1


def machine_description(engine, cores: int) -> dict:
    """The machine, as far as known: called before anything loads (a failed run still says where it ran)."""
    versions = {"python": platform.python_version()}
    for module in ("numpy", "tvm", "onnxruntime", "tensorrt", "ai_edge_litert"):
        if module in sys.modules:
            versions[module] = getattr(sys.modules[module], "__version__", "?")
    return {"cpu": cpu_model(), "device_model": _read_first(["/proc/device-tree/model", "/sys/firmware/devicetree/"
                                                              "base/model"]) or None,
            "arch": platform.machine(), "logical_cores": os.cpu_count(), "physical_cores": cores,
            "os": os_name(), "libraries": versions, "engine": getattr(engine, "description", None),
            "emulated": emulation_evidence()}


# -- the run -------------------------------------------------------------------------------------
def build_parser(default_engine: str, default_device: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=os.path.basename(sys.argv[0] or "run.py"),
        description="Verify this online-tsm artifact against its PyTorch reference, then time it on this device. "
                    "Needs only numpy and the runtime of the engine.")
    parser.add_argument("--engine", choices=ENGINES, default=None,
                        help=f"tvm: the compiled library; onnxruntime or tensorrt: model.onnx; litert: model.tflite "
                             f"(default here: {default_engine})")
    parser.add_argument("--tensorrt", action="store_true", help="same as --engine tensorrt (builds and caches an "
                                                                "engine from model.onnx on this device)")
    parser.add_argument("--fp16", action="store_true", help="TensorRT: build the engine in half precision")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help=f"where the model runs (default here: {default_device})")
    parser.add_argument("--frames", type=int, default=200, help="timed frames (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed warm-up frames (default 20)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: TVM, this machine's physical cores; ONNX Runtime, its own)")
    parser.add_argument("--verify-frames", type=int, default=None,
                        help="reference frames to verify with (default: all in reference.npz)")
    parser.add_argument("--json", metavar="RESULT.json", help="write the result here (for tsm-bench --import)")
    parser.add_argument("--no-timing", action="store_true", help="verify only (what an emulator may do)")
    parser.add_argument("--artifact", metavar="DIR", default=None, help="artifact folder (default: this file's)")
    return parser


def _write_json(path: str, data: dict) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, path)


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _defaults(manifest: dict) -> tuple:
    """``(engine, device)`` when not told: the library with TVM; on a GPU board without TVM (a Jetson Nano as
    JetPack ships it), TensorRT from model.onnx; ONNX Runtime for a folder without a library, and for
    ``run_onnx.py`` (this file under the name that says it runs model.onnx)."""
    target = manifest.get("target") or {}
    onnx_only = os.path.basename(sys.argv[0] or "").startswith("run_onnx")
    engine = "tvm" if file_with_role(manifest, "library") and not onnx_only else "onnxruntime"
    if file_with_role(manifest, "tflite") and not file_with_role(manifest, "onnx"):
        engine = "litert"
    if engine == "tvm" and target.get("kind") == "cuda" and not _importable("tvm") and _importable("tensorrt"):
        engine = "tensorrt"
    return engine, _default_device(manifest, engine)


def _default_device(manifest: dict, engine: str) -> str:
    """TensorRT runs on the GPU; TVM where the library's kernels are; ONNX Runtime on the CPU unless told."""
    if engine == "tensorrt" or engine == "tvm" and (manifest.get("target") or {}).get("kind") == "cuda":
        return "cuda"
    return "cpu"


def run(argv, say) -> int:
    folder = _HERE
    for i, arg in enumerate(argv):   # the folder decides the defaults shown by --help
        if arg == "--artifact" and i + 1 < len(argv):
            folder = os.path.abspath(argv[i + 1])
        elif arg.startswith("--artifact="):
            folder = os.path.abspath(arg.split("=", 1)[1])
    try:
        manifest = read_manifest(folder)
        defaults = _defaults(manifest)
    except RunError:
        manifest, defaults = None, ("tvm", "cpu")
    args = build_parser(*defaults).parse_args(argv)
    folder = os.path.abspath(args.artifact or folder)
    result = {"schema": SCHEMA, "tool": os.path.basename(sys.argv[0] or "run.py"),
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join([os.path.basename(sys.argv[0] or "run.py")] + list(argv)), "status": "failed",
              "artifact": {"folder": folder}, "verification": None, "timing": None, "device_timing": None,
              "notes": []}
    try:
        code = _run(args, folder, result, say)
    except RunError as exc:
        result["error"] = {"stage": exc.stage, "message": str(exc)}
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    if args.json:
        _write_json(args.json, result)
        say(f"result written to {args.json}")
    return code


def _run(args, folder: str, result: dict, say) -> int:
    manifest = read_manifest(folder)
    engine_name, device = _engine_and_device(args, manifest)
    target = manifest.get("target") or {}
    _describe_artifact(result, folder, manifest, args, engine_name, device)
    cores = physical_cores()    # before any runtime starts: TVM's pool pins this thread to one core
    result["machine"] = machine_description(None, cores)
    emulated = emulation_evidence()
    if emulated and not args.no_timing:
        raise RunError("timing", f"refusing to time under emulation ({emulated}): the numbers would say nothing "
                                 "about a device; pass --no-timing to verify only")
    result["artifact"]["files"] = check_files(folder, manifest)
    say(f"sha256 of {len(result['artifact']['files'])} files: OK")
    np = _need("numpy", "pip install numpy")
    reference, n_verify = _read_reference(np, folder, manifest, args.verify_frames)
    if engine_name == "tvm" and device == "cuda":
        result["cuda_driver"] = check_cuda_driver(target)
    engine = _open_engine(np, args, folder, manifest, engine_name, device, cores, result, say)
    result["machine"] = machine_description(engine, cores)
    say(f"engine: {engine.description}")
    _verify_or_refuse(np, engine, manifest, reference, n_verify, engine_name, device, args, result, say)
    if args.no_timing:
        result["status"] = "verified"
        result["notes"].append("--no-timing: verified only, not timed")
        return 0
    _time(np, engine, manifest, reference, args, result, say)
    result["status"] = "ok"
    return 0


def _engine_and_device(args, manifest: dict) -> tuple:
    """The engine and device this run uses, and the arguments checked against them."""
    engine_name = "tensorrt" if args.tensorrt else (args.engine or _defaults(manifest)[0])
    device = "cuda" if engine_name == "tensorrt" else (args.device or _default_device(manifest, engine_name))
    if args.fp16 and engine_name != "tensorrt":
        raise RunError("arguments", "--fp16 needs --tensorrt (the other engines run the float32 model)")
    for flag, value, least in (("--frames", args.frames, 1), ("--warmup", args.warmup, 0),
                               ("--threads", args.threads or 1, 1)):
        if value < least:
            raise RunError("arguments", f"{flag} must be at least {least}, got {value}")
    return engine_name, device


def _describe_artifact(result: dict, folder: str, manifest: dict, args, engine_name: str, device: str) -> None:
    """What the JSON result says of the artifact and the settings, written before anything can fail."""
    result["artifact"].update(
        manifest_sha256=sha256_of(os.path.join(folder, MANIFEST_NAME)), target=manifest.get("target") or {},
        model={k: v for k, v in manifest.get("model", {}).items() if k != "labels"},
        input={"shape": next(s["shape"] for s in manifest["inputs"] if s["name"] == manifest["frame_input"]),
               "input_size": manifest["preprocess"].get("input_size"),
               "folded": bool(manifest["preprocess"].get("folded"))},
        compiler=manifest.get("compiler", {}))
    result["settings"] = {"engine": engine_name, "device": device, "frames": args.frames, "warmup": args.warmup,
                          "threads": args.threads, "fp16": bool(args.fp16)}


def _read_reference(np, folder: str, manifest: dict, verify_frames) -> tuple:
    """``(reference logits, frames to verify)`` from ``reference.npz``, one line when it is unreadable."""
    reference_name = file_with_role(manifest, "reference") or "reference.npz"
    try:
        with np.load(os.path.join(folder, reference_name), allow_pickle=False) as data:
            reference = np.asarray(data["logits"], np.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise RunError("reference", f"{reference_name} is not a readable reference (expected an .npz with "
                                    f"'logits'): {exc}")
    n_verify = reference.shape[0] if verify_frames is None else verify_frames
    if not 1 <= n_verify <= reference.shape[0]:
        raise RunError("arguments", f"--verify-frames must be between 1 and {reference.shape[0]} (the frames in "
                                    f"{reference_name}), got {n_verify}")
    return reference, n_verify


def _open_engine(np, args, folder: str, manifest: dict, engine_name: str, device: str, cores: int, result: dict,
                 say):
    """The engine over the artifact's file for it: the TVM library, model.tflite or model.onnx."""
    target = manifest.get("target") or {}
    if engine_name == "tvm":
        library, note = library_path(folder, manifest, "gcc -shared -o model.so objs/*.o -lm after "
                                                       "mkdir objs && tar -xf model.tar -C objs (see README.txt)")
        if note:
            result["notes"].append(note)
        arch, here = elf_arch(library), host_arch()
        if arch != here:
            raise RunError("architecture", f"{os.path.basename(library)} is built for {arch} but this machine is "
                                           f"{here}: copy the folder to the device it was exported for (target "
                                           f"{target.get('name', '?')}), or export for this machine")
        threads = args.threads or (cores if device == "cpu" else None)
        result["settings"]["threads"] = threads
        return TvmEngine(np, manifest, library, device, threads)
    if engine_name == "litert":
        tflite_name = file_with_role(manifest, "tflite")
        if tflite_name is None or device != "cpu":
            raise RunError("library", "the litert engine runs model.tflite (role 'tflite') on the CPU; this "
                                      "artifact has none" if tflite_name is None else "the litert engine runs on "
                                      "the CPU here (--device cpu); its GPU delegate is timed with benchmark_model")
        result["settings"]["threads"] = args.threads or cores
        return LiteRtEngine(np, manifest, os.path.join(folder, tflite_name), args.threads or cores)
    onnx_name = file_with_role(manifest, "onnx")
    if onnx_name is None:
        raise RunError("library", "this artifact has no model.onnx (role 'onnx' in manifest.json)")
    onnx_path = os.path.join(folder, onnx_name)
    if engine_name == "onnxruntime":
        return OnnxRuntimeEngine(np, manifest, onnx_path, device, args.threads)
    return TensorRtEngine(np, manifest, onnx_path, args.fp16, say)


def _verify_or_refuse(np, engine, manifest: dict, reference, n_verify: int, engine_name: str, device: str, args,
                      result: dict, say) -> None:
    """Stream the reference frames and judge them by the manifest's rule; a build that fails is not timed."""
    machine = str((manifest.get("target") or {}).get("machine", "")).lower()
    # LiteRT's kernels sum in another order than PyTorch's on any CPU: judged as another machine, as at export
    same = device == "cpu" and engine_name != "litert" and host_arch() == MACHINE_ALIASES.get(machine, machine)
    precision = run_precision(manifest, engine_name, args.fp16)
    result["settings"]["precision"] = precision
    check = verify(np, engine, manifest, reference, n_verify, tolerance_rule(manifest, same, precision=precision))
    result["verification"] = check
    say(f"verification: {check['frames']} frames streamed, {check['buffers']} shift buffers carried: max abs diff "
        f"{check['max_abs_diff']:.3e} vs PyTorch, tolerance {check['tolerance']:.3e} = {check['rule']} "
        f"(max |reference logit| {check['max_abs_reference']:.3g}; {check['rule_reason']}): "
        f"{'PASS' if check['passed'] else 'FAIL'}")
    if not check["passed"]:
        raise RunError("verification", f"verification FAILED: max abs diff {check['max_abs_diff']:.3g}, top-1 "
                                       f"agreement {check['top1_agreement']:.0%} against the rule {check['rule']} "
                                       f"= {check['tolerance']:.3g}: this build does not compute what PyTorch "
                                       "computed, so it is not timed")


def _time(np, engine, manifest: dict, reference, args, result: dict, say) -> None:
    """Per-frame wall time with buffers carried, and TVM's own device timing where the engine has it."""
    frames = verification_frames(np, manifest, min(8, reference.shape[0]))
    timing = time_frames(np, engine, frames, args.warmup, args.frames)
    result["timing"] = timing
    say(f"timing: {args.frames} frames after {args.warmup} warm-up, buffers carried: p50 {timing['p50_ms']:.2f} ms, "
        f"p90 {timing['p90_ms']:.2f}, p99 {timing['p99_ms']:.2f}, mean {timing['mean_ms']:.2f} "
        f"({timing['fps']:.1f} FPS)")
    if isinstance(engine, TvmEngine):
        try:
            result["device_timing"] = engine.device_time(number=10, repeat=max(3, args.frames // 10))
            say(f"TVM time_evaluator: {result['device_timing']['mean_ms']:.2f} ms per call "
                f"(median {result['device_timing']['median_ms']:.2f})")
        except Exception as exc:  # noqa: BLE001 -- an extra figure must not sink the run
            result["notes"].append(f"TVM time_evaluator not available: {_first_line(exc)}")


def main(argv=None) -> int:
    def say(message: str) -> None:
        print(message, flush=True)

    return run(list(sys.argv[1:] if argv is None else argv), say)


if __name__ == "__main__":
    sys.exit(main())
