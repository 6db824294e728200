"""A stand-in for TensorRT's Python module and the CUDA runtime, for the device script's TensorRT engine.

No GPU or TensorRT here: this fake has the API of TensorRT 8.2 (JetPack 4.6: binding indices, ``execute_v2``,
``max_workspace_size``) or of 10.x (named tensors, ``execute_async_v3``, memory pool limits, no bindings API),
as documented by NVIDIA, and nothing else -- calling the other version's API fails as it would on a device.
The engine "runs" by calling ``compute(inputs) -> outputs`` on host arrays (ONNX Runtime in the tests, or a
replay of the reference), so the script's device-buffer ping-pong is checked for real.

Runs on Python 3.6 with numpy 1.13 too (it is loaded into the JetPack-like interpreter of
tests/test_device_python36.py): no annotations that need newer Pythons.
"""
import types


class FakeCuda:
    """The script's ``_CudaRuntime``: device memory as bytes in a dict, pointers as ints."""

    memory = {}
    next_pointer = [4096]

    def __init__(self):
        pass

    def malloc(self, nbytes):
        pointer = self.next_pointer[0]
        self.next_pointer[0] += max(256, nbytes + 255) // 256 * 256
        self.memory[pointer] = bytearray(nbytes)
        return pointer

    def to_device(self, dst, array):
        data = array.tobytes()
        assert len(data) == len(self.memory[dst]), "copy of the wrong size to the device"
        self.memory[dst][:] = data

    def to_host(self, array, src):
        import numpy as np

        array[...] = np.frombuffer(bytes(self.memory[src]), dtype=array.dtype).reshape(array.shape)

    def stream(self):
        return 77

    def synchronize(self, stream):
        assert stream == 77


def make_tensorrt(version, specs, compute, calls):
    """A ``tensorrt`` module of ``version`` ("8.2.1.8" or "10.3.0"); ``specs``: {name: (shape, dtype, is_input)}
    in the engine's binding order; ``compute(feeds) -> outputs``; ``calls`` records what the script used."""
    import numpy as np

    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Logger(object):
        WARNING = 2

        def __init__(self, level):
            calls.append(("Logger", level))

    class NetworkDefinitionCreationFlag(object):
        EXPLICIT_BATCH = 0

    class BuilderFlag(object):
        FP16 = "FP16"

    class MemoryPoolType(object):
        WORKSPACE = "WORKSPACE"

    class Network(object):
        pass

    class OnnxParser(object):
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse(self, data):
            calls.append(("parse", len(data)))
            return True

    class Config82(object):
        __slots__ = ("max_workspace_size", "flags")

        def __init__(self):
            self.flags = []

        def set_flag(self, flag):
            self.flags.append(flag)
            calls.append(("set_flag", flag))

    class Config10(object):
        __slots__ = ("flags",)

        def __init__(self):
            self.flags = []

        def set_flag(self, flag):
            self.flags.append(flag)
            calls.append(("set_flag", flag))

        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool, size))

    class Builder(object):
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self):
            return Config10() if major >= 10 else Config82()

        def build_serialized_network(self, network, config):
            if major < 10:
                calls.append(("max_workspace_size", config.max_workspace_size))
            return b"plan-" + version.encode()

    def _run(addresses):
        memory = FakeCuda.memory
        feeds = {}
        for name, (shape, dtype, is_input) in specs.items():
            if is_input:
                feeds[name] = np.frombuffer(bytes(memory[addresses[name]]), dtype=dtype).reshape(shape).copy()
        outputs = compute(feeds)
        for name, (shape, dtype, is_input) in specs.items():
            if not is_input:
                data = np.ascontiguousarray(outputs[name], dtype=dtype).tobytes()
                memory[addresses[name]][:] = data
        return True

    names = list(specs)

    class Context82(object):
        def execute_v2(self, bindings):
            calls.append(("execute_v2",))
            return _run(dict(zip(names, bindings)))

    class Context10(object):
        def __init__(self):
            self.addresses = {}

        def set_tensor_address(self, name, pointer):
            assert name in specs, name
            self.addresses[name] = pointer

        def execute_async_v3(self, stream):
            calls.append(("execute_async_v3", stream))
            return _run(self.addresses)

    class Engine82(object):
        num_bindings = len(names)

        def get_binding_name(self, index):
            return names[index]

        def create_execution_context(self):
            return Context82()

    class Engine10(object):
        num_io_tensors = len(names)

        def get_tensor_name(self, index):
            return names[index]

        def create_execution_context(self):
            return Context10()

    class Runtime(object):
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            assert plan == b"plan-" + version.encode()
            return Engine10() if major >= 10 else Engine82()

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    trt.NetworkDefinitionCreationFlag, trt.BuilderFlag = NetworkDefinitionCreationFlag, BuilderFlag
    if major >= 10:
        trt.MemoryPoolType = MemoryPoolType
    return trt


def engine_specs(manifest):
    """``{name: (shape, dtype, is_input)}`` in manifest order (inputs, then outputs)."""
    specs = {}
    for spec in manifest["inputs"]:
        specs[spec["name"]] = (tuple(spec["shape"]), spec["dtype"], True)
    for spec in manifest["outputs"]:
        specs[spec["name"]] = (tuple(spec["shape"]), spec["dtype"], False)
    return specs


def replay(manifest, reference):
    """``compute`` that returns the reference logits frame by frame and passes each buffer through (what a
    device without the model can replay: the script's own code paths, numpy included, are what is checked)."""
    import numpy as np

    state = {"frame": 0}
    pairs = [(b["input"], b["output"]) for b in manifest["buffers"]]

    def compute(feeds):
        outputs = {manifest["logits_output"]: np.asarray(reference[state["frame"] % len(reference)])[None]}
        for source, target in pairs:
            outputs[target] = feeds[source]
        state["frame"] += 1
        return outputs

    return compute
