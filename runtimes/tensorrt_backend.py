"""TensorRT backend (Jetson, NVIDIA GPUs): an engine built from the artifact's ``model.onnx``, buffers on the GPU.

Not runnable on the machines this project is developed on (no TensorRT, no
GPU): only the import guard is tested here.  The code follows TensorRT's
Python API (8.2 on JetPack 4.6 with ``execute_async_v2`` and binding
indices; 8.5+ and 10.x with named tensor addresses and ``execute_async_v3``)
and pycuda for allocations.

The engine is built on first use on the device itself (engines are specific
to the GPU and the TensorRT version) and cached in
``~/.cache/online-tsm/tensorrt`` (``$ONLINE_TSM_CACHE`` overrides), named
after the ONNX file's sha256, the TensorRT version, the GPU and the precision.
Each stream owns two sets of device buffers; a step binds set A as inputs
and set B as outputs, the next step the other way round, so buffers never
leave the GPU.  Only the frame goes up and the logits come down, through
page-locked host memory.
"""
from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from online_tsm.fileio import cached_file
from online_tsm.runtimes.artifact import open_artifact
from online_tsm.runtimes.base import BackendUnavailable, Runtime, RuntimeOpenError
from online_tsm.weights import cache_dir

INSTALL_HINT = ("pip install 'online-tsm[jetson]' (on a Jetson, TensorRT comes with JetPack: "
                "sudo apt install python3-libnvinfer, then pip install pycuda)")
WORKSPACE_BYTES = 1 << 28


def missing_packages() -> list[str]:
    return [name for name in ("tensorrt", "pycuda") if importlib.util.find_spec(name) is None]


def import_tensorrt() -> tuple[Any, Any]:
    """``(tensorrt, pycuda.driver)`` with a CUDA context made current, or one clear line saying what is missing."""
    missing = missing_packages()
    if missing:
        raise BackendUnavailable(f"backend tensorrt needs the Python packages {' and '.join(missing)}, which are "
                                 f"not installed: {INSTALL_HINT}")
    import tensorrt as trt
    import pycuda.driver as cuda

    try:
        import pycuda.autoinit  # noqa: F401 -- creates the CUDA context on GPU 0
    except Exception as exc:  # noqa: BLE001 -- pycuda raises its own error types
        raise BackendUnavailable(f"backend tensorrt found no usable CUDA GPU: {exc}") from None
    return trt, cuda


class TensorRtRuntime(Runtime):
    backend = "tensorrt"

    def __init__(self, source: str | os.PathLike, *, fp16: bool = False,
                 engine_dir: str | os.PathLike | None = None) -> None:
        self._trt, self._cuda = trt, cuda = import_tensorrt()
        self.artifact = open_artifact(source, self.backend)
        onnx_path = self.artifact.file("onnx", self.backend)
        m = self.artifact.manifest
        self._logger = trt.Logger(trt.Logger.WARNING)
        engine_path = self._engine_path(onnx_path, fp16, engine_dir)
        # Two processes opening one model: the second waits for the first's engine instead of building its own,
        # and a build killed half-way never leaves a truncated engine under the final name.
        cached_file(engine_path, lambda: self._build(onnx_path, fp16))
        self._engine = trt.Runtime(self._logger).deserialize_cuda_engine(engine_path.read_bytes())
        if self._engine is None:
            raise RuntimeOpenError(f"TensorRT could not load the cached engine {engine_path}; delete it to rebuild")
        self._context = self._engine.create_execution_context()
        self._stream = cuda.Stream()
        fields = self.artifact.runtime_fields()
        self._frame_name, self._logits_name = m.frame_input, m.logits_output
        self._pairs = [(b.input, b.output, int(np.prod(b.shape)) * np.dtype(b.dtype).itemsize) for b in m.buffers]
        self._frame_host = cuda.pagelocked_empty(tuple(fields["frame_shape"]), np.dtype(fields["frame_dtype"]))
        logits = m.spec(m.logits_output)
        self._logits_host = cuda.pagelocked_empty(tuple(logits.shape), np.dtype(logits.dtype))
        self._frame_dev = cuda.mem_alloc(self._frame_host.nbytes)
        self._logits_dev = cuda.mem_alloc(self._logits_host.nbytes)
        gpu = cuda.Context.get_device().name()
        super().__init__(**fields, description=f"TensorRT {trt.__version__} on {gpu} "
                                               f"({'fp16' if fp16 else 'fp32'}), engine {engine_path.name}")

    # -- engine -----------------------------------------------------------------------------
    def _engine_path(self, onnx_path: Path, fp16: bool, engine_dir: str | os.PathLike | None) -> Path:
        digest = self.artifact.manifest.files[onnx_path.name]["sha256"][:16]
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", self._cuda.Context.get_device().name()).strip("-")
        folder = Path(engine_dir) if engine_dir else cache_dir() / "tensorrt"
        return folder / f"{digest}-trt{self._trt.__version__}-{gpu}-{'fp16' if fp16 else 'fp32'}.engine"

    def _build(self, onnx_path: Path, fp16: bool) -> bytes:
        trt = self._trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeOpenError(f"TensorRT {trt.__version__} could not parse {onnx_path.name}: {errors[:300]} "
                                   "(TensorRT 8.2 reads ONNX opsets <= 13, 8.6 <= 17: export for jetson-nano or "
                                   "jetson-orin-nano, whose model.onnx is opset 13)")
        config = builder.create_builder_config()
        if hasattr(config, "set_memory_pool_limit"):
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        else:  # TensorRT 8.2
            config.max_workspace_size = WORKSPACE_BYTES
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeOpenError(f"TensorRT could not build an engine from {onnx_path.name} (see its log above)")
        return bytes(serialized)

    def _execute(self, addresses: dict[str, int]) -> None:
        if hasattr(self._context, "set_tensor_address"):  # TensorRT >= 8.5
            for name, pointer in addresses.items():
                self._context.set_tensor_address(name, pointer)
            ok = self._context.execute_async_v3(self._stream.handle)
        else:  # TensorRT 8.2 (JetPack 4.6): bindings by index
            bindings = [0] * self._engine.num_bindings
            for name, pointer in addresses.items():
                bindings[self._engine.get_binding_index(name)] = pointer
            ok = self._context.execute_async_v2(bindings, self._stream.handle)
        if not ok:
            raise RuntimeError("TensorRT failed to enqueue the step")

    # -- hooks ------------------------------------------------------------------------------
    def _zero_state(self) -> dict[str, Any]:
        sets = []
        for _ in range(2):
            allocations = [self._cuda.mem_alloc(nbytes) for _, _, nbytes in self._pairs]
            for allocation, (_, _, nbytes) in zip(allocations, self._pairs):
                self._cuda.memset_d8(allocation, 0, nbytes)
            sets.append(allocations)
        return {"sets": sets, "phase": 0}

    def _run(self, frames: np.ndarray, state: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        current, following = state["sets"][state["phase"]], state["sets"][state["phase"] ^ 1]
        addresses = {self._frame_name: int(self._frame_dev), self._logits_name: int(self._logits_dev)}
        for (name_in, name_out, _), src, dst in zip(self._pairs, current, following):
            addresses[name_in], addresses[name_out] = int(src), int(dst)
        np.copyto(self._frame_host, frames)
        self._cuda.memcpy_htod_async(self._frame_dev, self._frame_host, self._stream)
        self._execute(addresses)
        self._cuda.memcpy_dtoh_async(self._logits_host, self._logits_dev, self._stream)
        self._stream.synchronize()
        state["phase"] ^= 1
        return self._logits_host.copy(), state

    def _release(self) -> None:
        self._context = self._engine = None
