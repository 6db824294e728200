"""``tsm-export --target triton``: a Triton Inference Server model repository, one stream per camera.

The repository holds two models with the same interface (the artifact's
frame input and logits output, names from ``manifest.json``)::

    REPO/README.txt
    REPO/online_tsm/config.pbtxt          python backend: runs on any Triton (also the one in nvidia-pytriton)
    REPO/online_tsm/1/model.py            -> online_tsm.runtimes.triton.model (per-sequence Streams)
    REPO/online_tsm/1/artifact/           the exported ONNX artifact (manifest.json, model.onnx, ...)
    REPO/online_tsm_ort/config.pbtxt      onnxruntime backend with Triton implicit state (full Triton servers)
    REPO/online_tsm_ort/1/model.onnx      the same graph, free batch dimension, state names zero-padded

Both use Triton's sequence batcher: every camera is a sequence (correlation
id), START resets its shift buffers, the ``oldest`` strategy batches
concurrent cameras.  The implicit-state model keeps the buffers inside Triton
(``sequence_batching.state``); Triton pairs the state inputs and outputs by
their sorted order (triton-inference-server/server#8586), so they are named
``state_in_00``... and ``state_out_00``... and checked here against the graph.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from online_tsm.errors import UserError
from online_tsm.manifest import (MANIFEST_NAME, TRITON_ARTIFACT_DIR, TRITON_PYTHON_MODEL, Manifest,
                                 load_manifest)

PYTHON_MODEL = TRITON_PYTHON_MODEL
ORT_MODEL = "online_tsm_ort"
ARTIFACT_DIR = TRITON_ARTIFACT_DIR
README_NAME = "README.txt"
MAX_BATCH = 8                    # concurrent cameras per batched step
IDLE_MICROSECONDS = 60_000_000   # a camera silent this long loses its buffers
QUEUE_DELAY_MICROSECONDS = 2000  # how long the oldest strategy waits to fill a batch
STATE_IN, STATE_OUT = "state_in_{:02d}", "state_out_{:02d}"
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8", "int64": "TYPE_INT64"}

MODEL_PY = '''"""Triton python-backend entry point: the online-tsm model with per-sequence shift buffers.

Triton's python stub does not see a virtual environment's packages; tsm-serve
passes them in ONLINE_TSM_SYS_PATH (or set the python backend's
EXECUTION_ENV_PATH to a packed environment with online-tsm installed).
"""
import os
import site

for _path in filter(None, os.environ.get("ONLINE_TSM_SYS_PATH", "").split(os.pathsep)):
    site.addsitedir(_path)

from online_tsm.runtimes.triton.model import TritonPythonModel  # noqa: E402,F401
'''


def _dims(shape: list[int]) -> str:
    return "[ " + ", ".join(str(int(d)) for d in shape) + " ]"


def _tensor(name: str, dtype: str, shape: list[int]) -> str:
    return f'  {{ name: "{name}" data_type: {TRITON_DTYPES[dtype]} dims: {_dims(shape)} }}'


def _oldest() -> str:
    return (f"  oldest {{ max_candidate_sequences: 1024 preferred_batch_size: [ {MAX_BATCH} ] "
            f"max_queue_delay_microseconds: {QUEUE_DELAY_MICROSECONDS} }}\n")


def python_config(manifest: Manifest, instances: int = 1, runtime_backend: str = "onnxruntime") -> str:
    """``config.pbtxt`` of the python-backend model (control inputs START, END, CORRID)."""
    frame, logits = manifest.spec(manifest.frame_input), manifest.spec(manifest.logits_output)
    controls = ",\n".join([
        '    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] }',
        '    { name: "END" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] }',
        '    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }'])
    return (f'name: "{PYTHON_MODEL}"\nbackend: "python"\nmax_batch_size: {MAX_BATCH}\n'
            f"input [\n{_tensor(frame.name, frame.dtype, frame.shape[1:])}\n]\n"
            f"output [\n{_tensor(logits.name, logits.dtype, logits.shape[1:])}\n]\n"
            f"sequence_batching {{\n  max_sequence_idle_microseconds: {IDLE_MICROSECONDS}\n"
            f"  control_input [\n{controls}\n  ]\n{_oldest()}}}\n"
            f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]\n"
            f'parameters {{ key: "artifact" value {{ string_value: "{ARTIFACT_DIR}" }} }}\n'
            f'parameters {{ key: "runtime_backend" value {{ string_value: "{runtime_backend}" }} }}\n')


def state_names(manifest: Manifest) -> list[tuple[str, str]]:
    """Implicit-state names per buffer, zero-padded so that sorting keeps inputs and outputs paired."""
    return [(STATE_IN.format(k), STATE_OUT.format(k)) for k in range(len(manifest.buffers))]


def ort_config(manifest: Manifest, instances: int = 1) -> str:
    """``config.pbtxt`` of the onnxruntime-backend model, its shift buffers as Triton implicit state."""
    frame, logits = manifest.spec(manifest.frame_input), manifest.spec(manifest.logits_output)
    states = []
    for (name_in, name_out), pair in zip(state_names(manifest), manifest.buffers):
        dtype, dims = TRITON_DTYPES[pair.dtype], _dims(pair.shape[1:])
        states.append(f'    {{ input_name: "{name_in}" output_name: "{name_out}" data_type: {dtype} dims: {dims}\n'
                      f'      initial_state {{ name: "zeros" data_type: {dtype} dims: {dims} zero_data: true }} }}')
    return (f'name: "{ORT_MODEL}"\nbackend: "onnxruntime"\nmax_batch_size: {MAX_BATCH}\n'
            f"input [\n{_tensor(frame.name, frame.dtype, frame.shape[1:])}\n]\n"
            f"output [\n{_tensor(logits.name, logits.dtype, logits.shape[1:])}\n]\n"
            f"sequence_batching {{\n  max_sequence_idle_microseconds: {IDLE_MICROSECONDS}\n"
            f"  state [\n" + ",\n".join(states) + f"\n  ]\n{_oldest()}}}\n"
            f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]\n")


def ort_graph(onnx_path: Path, manifest: Manifest) -> Any:
    """The artifact's graph with a free batch dimension and the buffers renamed to the state names."""
    import onnx

    from online_tsm.runtimes.onnx_batch import make_batch_dynamic

    model = make_batch_dynamic(onnx.load(str(onnx_path)))
    renames = {}
    for (state_in, state_out), pair in zip(state_names(manifest), manifest.buffers):
        renames[pair.input], renames[pair.output] = state_in, state_out
    graph = model.graph
    for value in list(graph.input) + list(graph.output):
        value.name = renames.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    onnx.checker.check_model(model)
    return model


# -- checks ----------------------------------------------------------------------------------

def parse_config(text: str) -> Any:
    """``config.pbtxt`` text -> ``tritonclient``'s ``ModelConfig`` message (raises on a malformed config)."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise UserError("checking a Triton config needs tritonclient: pip install 'online-tsm[serve]'") from None
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def check_ort_config(config_text: str, onnx_model: Any) -> list[str]:
    """Problems of an implicit-state config against its ONNX graph (names, dtypes, shapes, state pairing)."""
    from onnx import helper

    from tritonclient.grpc import model_config_pb2 as pb

    config = parse_config(config_text)
    graph = onnx_model.graph

    def shapes(values: Any) -> dict[str, tuple[str, list[Any]]]:
        out = {}
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
            out[v.name] = (helper.tensor_dtype_to_np_dtype(t.elem_type).name, dims)
        return out

    graph_in, graph_out = shapes(graph.input), shapes(graph.output)
    problems: list[str] = []
    batched = config.max_batch_size > 0

    def check(name: str, data_type: int, dims: list[int], table: dict[str, Any], where: str) -> None:
        if name not in table:
            problems.append(f"{where} {name!r} is not a graph {'input' if table is graph_in else 'output'} "
                            f"(graph has {', '.join(sorted(table))})")
            return
        dtype, gdims = table.pop(name)
        want = TRITON_DTYPES.get(dtype)
        if want is None or pb.DataType.Value(want) != data_type:
            problems.append(f"{where} {name!r}: config type {pb.DataType.Name(data_type)}, graph {dtype}")
        body = gdims[1:] if batched else gdims
        if batched and (not gdims or isinstance(gdims[0], int)):
            problems.append(f"{where} {name!r}: graph has no free batch dimension (max_batch_size "
                            f"{config.max_batch_size}), got {gdims}")
        if [int(d) for d in dims] != body:
            problems.append(f"{where} {name!r}: config dims {list(dims)}, graph {body}")

    for t in config.input:
        check(t.name, t.data_type, list(t.dims), graph_in, "input")
    for t in config.output:
        check(t.name, t.data_type, list(t.dims), graph_out, "output")
    states = list(config.sequence_batching.state)
    for s in states:
        check(s.input_name, s.data_type, list(s.dims), graph_in, "state input")
        check(s.output_name, s.data_type, list(s.dims), graph_out, "state output")
        if not s.initial_state or not any(i.zero_data for i in s.initial_state):
            problems.append(f"state {s.input_name!r} has no initial_state with zero_data: its first frame would "
                            "read uninitialised memory")
    by_in = sorted(states, key=lambda s: s.input_name)
    by_out = sorted(states, key=lambda s: s.output_name)
    if [s.input_name for s in by_in] != [s.input_name for s in by_out]:
        problems.append("state input and output names do not sort in the same order; Triton pairs them by "
                        "sorted index (name them with zero-padded numbers)")
    for name in sorted(graph_in):
        problems.append(f"graph input {name!r} is neither a config input nor a state")
    for name in sorted(graph_out):
        problems.append(f"graph output {name!r} is neither a config output nor a state")
    return problems


# -- the repository --------------------------------------------------------------------------

def repository_readme(manifest: Manifest, name: str) -> str:
    frame, logits = manifest.spec(manifest.frame_input), manifest.spec(manifest.logits_output)
    return f"""Triton Inference Server model repository for online TSM ({manifest.model.get('name', 'online-tsm')},
{len(manifest.labels)} classes, input {frame.dtype} {frame.shape[1:]}, {len(manifest.buffers)} shift buffers).

Every camera is one Triton sequence (correlation id): send its frames in order with the same
sequence_id, sequence_start=True on its first frame (and after a scene cut), sequence_end=True on
its last. Concurrent cameras are batched by the sequence batcher's oldest strategy (up to
{MAX_BATCH} per step). A camera silent for {IDLE_MICROSECONDS // 1_000_000} s loses its shift buffers and must
start again.
Input "{frame.name}" {frame.dtype} {frame.shape[1:]}; output "{logits.name}" {logits.dtype} {logits.shape[1:]}.

Models
  {PYTHON_MODEL}/      python backend (runs on any Triton, including the one in nvidia-pytriton).
                   model.py opens {PYTHON_MODEL}/1/{ARTIFACT_DIR}/ with online_tsm.runtimes.open_runtime
                   (ONNX Runtime) and keeps one stream per sequence; the Python that runs Triton's
                   python stub needs online-tsm installed (tsm-serve passes its environment in).
  {ORT_MODEL}/  onnxruntime backend, shift buffers as Triton implicit state
                   (sequence_batching.state, zero initial state). For full Triton servers (GPU
                   images); its config was checked against the graph, but it was not run here:
                   the Triton in nvidia-pytriton has only the python backend.

Serve (on this machine, with pip install 'online-tsm[serve]')
  tsm-serve {name} --grpc-port 8001 --http-port 8000 --metrics-port 8002
  (models whose backend the server lacks are skipped with a note)

Serve (a Triton container)
  tritonserver --model-repository=$PWD/{name}

Client
  from online_tsm.runtimes import open_runtime
  rt = open_runtime("{name}", backend="triton", address="127.0.0.1:8001")
  stream = rt.new_stream(); logits = stream.step(rt.preprocess(bgr_image))
"""


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise UserError(f"output folder {out} already exists and is not empty; pass --force to replace it")
        if not (out / PYTHON_MODEL / "1" / ARTIFACT_DIR / MANIFEST_NAME).is_file():
            raise UserError(f"refusing to replace {out}: it is not a Triton repository written by tsm-export "
                            f"(no {PYTHON_MODEL}/1/{ARTIFACT_DIR}/{MANIFEST_NAME}); choose another -o")


def export_repository(weights_or_model: Any, target: str, out_dir: str | os.PathLike, *, force: bool = False,
                      progress: bool = True, instances: int = 1, **options: Any) -> Path:
    """Export the artifact and lay it out as a Triton model repository at ``out_dir``; return the folder.

    Built in a hidden sibling folder and renamed into place, so a failed
    export leaves nothing half-written; ``force`` replaces only a repository
    this function wrote.
    """
    from online_tsm.export.api import export_artifact
    from online_tsm.console.progress import Progress

    import onnx

    out = Path(out_dir).expanduser()
    _check_out(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    say = Progress(progress)
    try:
        artifact = export_artifact(weights_or_model, target, work / PYTHON_MODEL / "1" / ARTIFACT_DIR,
                                   progress=progress, **options)
        manifest = load_manifest(artifact)
        (work / PYTHON_MODEL / "config.pbtxt").write_text(python_config(manifest, instances))
        (work / PYTHON_MODEL / "1" / "model.py").write_text(MODEL_PY)
        graph = ort_graph(artifact / manifest.file_with_role("onnx"), manifest)
        (work / ORT_MODEL / "1").mkdir(parents=True)
        onnx.save(graph, str(work / ORT_MODEL / "1" / "model.onnx"))
        config = ort_config(manifest, instances)
        (work / ORT_MODEL / "config.pbtxt").write_text(config)
        try:
            problems = check_ort_config(config, graph)
            parse_config(python_config(manifest, instances))
            say(f"checked both config.pbtxt with tritonclient; {ORT_MODEL} matches its graph")
        except UserError as exc:
            problems = []
            say(f"note: configs not checked ({exc})")
        if problems:
            raise UserError(f"{ORT_MODEL}/config.pbtxt does not match its graph: {'; '.join(problems)}")
        (work / README_NAME).write_text(repository_readme(manifest, out.name))
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            work.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    say(f"wrote Triton repository {out} (models {PYTHON_MODEL}, {ORT_MODEL})")
    return out
