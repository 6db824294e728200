"""The Jetson Nano as shipped (JetPack 4.6): TensorRT 8.2's ONNX model, PTX a CUDA 10.2 driver loads, the rows.

Contracts and numerics only; what needs a GPU is in tests/gpu/run.sh.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from online_tsm.export.cli import main as cli_main
from online_tsm.export.device import elf
from online_tsm.export.formats.onnx import ExportError, stream_onnxruntime
from online_tsm.export.formats.onnx_tensorrt import (check_tensorrt_ready, export_tensorrt_onnx, operator_table,
                                                     tensorrt_problems)
from online_tsm.export.reference import frames_for, read_reference
from online_tsm.export.targets import get_target
from online_tsm.export.tvm import nvptx
from online_tsm.manifest import load_manifest
from online_tsm.verification import FP32


@pytest.fixture(scope="module")
def nano(export_cache, small_weights) -> Path:
    return export_cache("small-jetson-nano", small_weights, "jetson-nano")


# -- the TensorRT 8.2 operator table and its check ----------------------------------------------------------

def test_operator_table_is_onnx_tensorrt_8_2_with_its_source():
    table = operator_table()
    assert table["tensorrt"] == "8.2" and (table["min_opset"], table["max_opset"]) == (7, 13)
    assert table["source"]["ref"] == "release/8.2-GA" and len(table["source"]["commit"]) == 40
    ops = table["operators"]
    assert len(ops) > 150 and all({"supported", "types"} <= set(row) for row in ops.values())
    for op in ("Conv", "Clip", "Slice", "Concat", "Add", "ReduceMean", "Gemm"):   # what the model uses
        assert ops[op]["supported"], op
    assert not ops["Mod"]["supported"] and not ops["NonZero"]["supported"]
    assert ops["Conv"]["constant_inputs"] == [1] and ops["Clip"]["constant_inputs"] == [1, 2]
    assert "UINT8" not in table["tensor_types"]


def _graph(nodes, inputs, outputs, initializers=(), opset=13) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers)),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


def _tensor(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def test_check_names_the_node_tensorrt_8_2_would_refuse():
    x, y = _tensor("x", [1, 4]), _tensor("y", [1, 4])
    bound = helper.make_tensor("hi", TensorProto.FLOAT, [], [6.0])
    ok = _graph([helper.make_node("Clip", ["x", "", "hi"], ["y"], name="relu6")], [x], [y], [bound])
    assert tensorrt_problems(ok) == []
    mod = _graph([helper.make_node("Mod", ["x", "x"], ["y"], name="the_mod", fmod=1)], [x], [y])
    assert [str(p) for p in tensorrt_problems(mod)] == [
        "node the_mod (Mod): TensorRT 8.2 does not support the operator Mod"]
    computed = _graph([helper.make_node("Clip", ["x", "", "x"], ["y"], name="clip_x")], [x], [y])
    assert "node clip_x (Clip): input 2 (x) must be an initializer" in str(tensorrt_problems(computed)[0])
    dynamic = _graph([helper.make_node("Relu", ["x"], ["y"], name="r")], [_tensor("x", ["N", 4])], [y])
    problem = str(tensorrt_problems(dynamic)[0])
    assert "graph input 'x'" in problem and "static shapes" in problem
    uint8 = _graph([helper.make_node("Cast", ["x"], ["y"], name="c", to=TensorProto.FLOAT)],
                   [_tensor("x", [1, 4], TensorProto.UINT8)], [y])
    assert "graph input 'x': is UINT8" in str(tensorrt_problems(uint8)[0])
    opset18 = _graph([helper.make_node("Relu", ["x"], ["y"], name="r")], [x], [y], opset=18)
    assert [str(p) for p in tensorrt_problems(opset18)] == ["model: is opset 18; TensorRT 8.2 reads opsets 7-13"]


def test_unsupported_node_fails_the_check_naming_it(tmp_path):
    x, y = _tensor("x", [1, 4]), _tensor("y", [1, 4])
    path = tmp_path / "bad.onnx"
    onnx.save(_graph([helper.make_node("NonZero", ["x"], ["y"], name="where_nonzero")], [x], [y]), str(path))
    with pytest.raises(ExportError, match=r"TensorRT 8\.2 parses: node where_nonzero \(NonZero\): TensorRT 8\.2 "
                                          r"does not support the operator NonZero"):
        check_tensorrt_ready(path)


def test_folded_preprocessing_graph_is_refused_for_its_uint8_frame(model_small, tmp_path):
    from online_tsm.export.formats.folded import FoldedPreprocess

    wrapper = FoldedPreprocess(model_small, (120, 160), "bgr", mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    with pytest.raises(ExportError, match="graph input 'frame': is UINT8"):
        export_tensorrt_onnx(wrapper, tmp_path / "folded.onnx")


def test_nano_export_with_folded_preprocessing_fails_saying_what_to_do(small_weights, tmp_path, capsys):
    assert cli_main(["--weights", str(small_weights), "--target", "jetson-nano", "--fold-preprocess",
                     "-o", str(tmp_path / "nano")]) != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "graph input 'frame': is UINT8" in err and "export this target without --fold-preprocess" in err
    assert not (tmp_path / "nano").exists()


def test_paper_setting_graph_is_opset_13_tensorrt_ready_and_matches_pytorch(model_224, tmp_path):
    """The paper's model (MobileNetV2 1.0, 224): the same ops, every one in TensorRT 8.2's table, and its logits
    PyTorch's (ONNX Runtime, the float32 rule for another machine)."""
    from online_tsm.export.formats.onnx import build_manifest, stream_torch

    path = export_tensorrt_onnx(model_224, tmp_path / "paper.onnx")
    manifest = build_manifest(model_224)
    frames = frames_for(manifest, 6)
    reference = stream_torch(model_224, frames)
    assert FP32.check(stream_onnxruntime(path, manifest, frames), reference, same_machine=False)["passed"]
    graph = onnx.load(str(path))
    assert [(o.domain, o.version) for o in graph.opset_import] == [("", 13)]
    assert {n.op_type for n in graph.graph.node} <= {"Conv", "Clip", "Slice", "Concat", "Add", "ReduceMean", "Gemm"}
    assert [i.name for i in graph.graph.input][:2] == ["frame", "shift_0"]
    assert [o.name for o in graph.graph.output][:2] == ["logits", "shift_out_0"]


# -- the jetson-nano artifact -----------------------------------------------------------------------------------

def test_nano_model_onnx_is_opset_13_passes_the_check_and_matches_pytorch(nano):
    manifest = load_manifest(nano)
    path = nano / manifest.file_with_role("onnx")
    graph = onnx.load(str(path))
    assert max(o.version for o in graph.opset_import) <= 13
    assert tensorrt_problems(graph) == []
    assert [i.name for i in graph.graph.input] == [s.name for s in manifest.inputs]   # same names and contract
    assert [o.name for o in graph.graph.output] == [s.name for s in manifest.outputs]
    reference = read_reference(nano / "reference.npz")
    logits = stream_onnxruntime(path, manifest, frames_for(manifest))
    assert FP32.check(logits, reference, same_machine=False)["passed"]   # the other-machine rule
    record = manifest.model["onnx_graph"]
    assert record["profile"] == "tensorrt-8.2" and record["opset"] == 13
    assert record["max_abs_diff"] <= record["tolerance"] == pytest.approx(FP32.tolerance(reference, False))


def test_nano_verify_reads_the_ptx_isa_from_the_bytes(nano, capsys):
    assert cli_main(["verify", str(nano)]) == 0
    out = capsys.readouterr().out
    assert "sm_53 PTX, ISA 4.2 (in the bytes)" in out and "JIT-compiled by CUDA drivers >= 7.0" in out
    assert "model.onnx (tensorrt-8.2) against TensorRT 8.2's operator table: every node: OK" in out
    assert re.search(r"model\.onnx through ONNX Runtime, 16 streamed frames: max abs diff \S+ vs PyTorch .*: PASS", out)


def test_verify_fails_when_the_manifest_claims_an_older_driver_than_the_ptx_needs(nano, tmp_path, capsys):
    from online_tsm.manifest import write_manifest

    folder = Path(shutil.copytree(nano, tmp_path / "nano"))
    manifest = load_manifest(folder)
    manifest.target["device_code"]["min_cuda_driver"] = "6.5"     # ISA 4.2 needs CUDA 7.0
    write_manifest(folder, manifest, {name: meta["role"] for name, meta in manifest.files.items()})
    assert cli_main(["verify", str(folder)]) == 1
    assert "ISA 4.2 needs a CUDA 7.0 driver, the manifest says 6.5: FAIL" in capsys.readouterr().out


def test_ptx_tools_and_table():
    assert nvptx.find_libdevice() is not None and nvptx.find_ptxas() is not None   # the nvcc wheel (setup.cfg)
    assert nvptx.min_cuda_for_isa("6.5") == "10.2" and nvptx.min_cuda_for_isa("4.2") == "7.0"
    assert nvptx.ptx_header(".version 4.2\n.target sm_53\n.address_size 64\n") == ("4.2", "sm_53")
    text, count = nvptx.mark_kernels(".visible .func k0(\n.visible .func helper(\n", ["k0"])
    assert count == 1 and ".visible .entry k0(" in text and ".visible .func helper(" in text
    with pytest.raises(nvptx.PtxError, match="ptxas refused the sm_53 PTX"):
        nvptx.assemble(".version 4.2\n.target sm_53\n.address_size 64\nthis is not ptx\n", "sm_53")


# -- the rows -------------------------------------------------------------------------------------------------

def test_cuda_rows_say_what_they_ship():
    import tvm

    nano, orin, gpu = get_target("jetson-nano"), get_target("jetson-orin-nano"), get_target("cuda")
    assert nano.tvm_target["kind"] == "nvptx" and nano.tvm_target["mcpu"] == "sm_53"
    assert gpu.tvm_target == nano.tvm_target and gpu.triple is None   # the Nano's kernels, this machine's host
    tag = tvm.target.Target("nvidia/jetson-orin-nano")   # TVM's tag, with the Orin's own CPU as host
    assert {k: v for k, v in orin.tvm_target.items() if k != "kind"}.items() <= dict(tag.attrs).items()
    assert orin.tvm_host["mcpu"] == "cortex-a78ae" and orin.qemu_cpu == "cortex-a76"
    assert all(row.onnx_profile == "tensorrt-8.2" for row in (nano, orin, gpu))
    assert all(row.precisions == ("fp32", "fp16") for row in (nano, orin, gpu))


@pytest.mark.slow
def test_orin_nano_exports_cubins_and_verifies_its_host_side_build(small_weights, tmp_path, capsys):
    from online_tsm.export.api import export_artifact

    folder = export_artifact(small_weights, "jetson-orin-nano", tmp_path / "orin", progress=False)
    manifest = load_manifest(folder)
    code = manifest.target["device_code"]
    assert code["format"] == "cubin" and code["arch"] == "sm_87" and code["min_cuda_driver"] == "12.0"
    library = folder / manifest.file_with_role("library")
    assert set(elf.library_machines(library).values()) == {elf.EM_AARCH64}
    assert {i.arch for i in elf.embedded_cuda_images(library) if i.kind == "cubin"} == {"sm_87"}
    assert cli_main(["verify", str(folder)]) == 0
    assert "sm_87 cubin(s)" in capsys.readouterr().out
    assert max(o.version for o in onnx.load(str(folder / "model.onnx")).opset_import) <= 13


@pytest.mark.slow
def test_cuda_row_builds_this_machines_host_code_with_the_nanos_ptx(small_weights, tmp_path):
    from online_tsm.export.api import export_artifact

    folder = export_artifact(small_weights, "cuda", tmp_path / "gpu", progress=False)
    manifest = load_manifest(folder)
    code = manifest.target["device_code"]
    assert (code["format"], code["arch"], code["ptx_isa"]) == ("ptx", "sm_53", "4.2")
    library = folder / manifest.file_with_role("library")
    assert library.suffix == ".so" and elf.machine_name(elf.library_machines(library)[library.name]) == "x86_64"
    assert json.loads((folder / "manifest.json").read_text())["target"]["runs_here"] is False

