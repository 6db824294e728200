"""``tsm-export --precision int8``: same graph contract, agreement measured and stored, verify against it; and the
shift rewrite for ONNX Runtime's blocked layout, exact against the plain graph.

No speed is asserted (benchmarks/RESULTS.md has the measurements); the int8
numerics are checked against an independent float32 reference (PyTorch,
streamed with buffers carried) with an explicit tolerance.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from runtime_artifacts import small_artifact  # noqa: F401 -- fixture

from online_tsm.errors import UserError
from online_tsm.export.api import export_artifact
from online_tsm.export.options import ExportOptions, check_options, rows_taking
from online_tsm.export.precision.calibration import load_calibration
from online_tsm.manifest import MANIFEST_NAME, load_manifest
from online_tsm.export.formats.onnx import ExportError, deterministic_frames, stream_onnxruntime, stream_torch
from online_tsm.export.targets import get_target
from online_tsm.export.verify import verify_artifact
from online_tsm.synthetic import write_dataset


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory):
    """A tsm-train class folder: 16 synthetic clips as mp4 in 8 gesture classes."""
    return write_dataset(tmp_path_factory.mktemp("calib") / "data", 16, seed=3, height=96, width=96,
                         n_frames=(12, 16))


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory, small_weights, class_folder):
    out = tmp_path_factory.mktemp("int8") / "small-int8"
    # a random-weight model has many near-tied logits: the gate is exercised apart (test_min_agreement_...)
    return export_artifact(small_weights, "host", out, precision="int8", calibration=str(class_folder),
                           min_agreement=0.0, drift_frames=200, progress=False)


def test_int8_keeps_the_contract_and_stores_its_agreement(int8_export, small_artifact):
    m, fp32 = load_manifest(int8_export), load_manifest(small_artifact)
    assert m.model["precision"] == "int8" and fp32.model["precision"] == "fp32"
    assert [(s.name, s.shape, s.dtype) for s in m.inputs + m.outputs] == \
           [(s.name, s.shape, s.dtype) for s in fp32.inputs + fp32.outputs]
    graph = onnx.load(str(int8_export / "model.onnx"))
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert [i.name for i in graph.graph.input] == [s.name for s in m.inputs]
    assert m.file_with_role("library") is None  # int8 runs on ONNX Runtime; no TVM library
    readme = (int8_export / "README.txt").read_text()
    assert f"Precision: int8 (QDQ model.onnx for ONNX Runtime; float32 inputs and outputs); top-1 agreement with " \
           f"float32 on {m.model['quantization']['agreement']['top1_agreement_frames']:.1%}" in readme
    q = m.model["quantization"]
    a = q["agreement"]
    assert q["activations"] == "uint8" and q["calibration"]["frames"] > 0
    assert a["clips"] >= 4 and 0.0 <= a["top1_agreement_frames"] <= 1.0 and 0.0 <= a["top1_agreement_last_frame"] <= 1
    assert 0 < a["mean_abs_logit_diff"] <= a["max_abs_logit_diff"]
    assert a["drift"]["frames"] == 200 and a["accuracy_fp32"] is None is a["clip_accuracy_fp32"]  # gesture folders are not the model's classes


def test_int8_logits_follow_float32_pytorch(int8_export, model_small):
    """Independent reference: the PyTorch model streamed frame by frame; int8 error well below the logit spread."""
    from online_tsm.preprocess import preprocess_frame
    from online_tsm.synthetic import synthetic_frames

    manifest = load_manifest(int8_export)
    # camera-like frames, as calibrated on (a gesture the calibration clips did not contain at this seed)
    frames = np.stack([preprocess_frame(f, manifest.input_size)
                       for f in synthetic_frames(24, 96, 96, motion="swipe-right", seed=11)])
    reference = stream_torch(model_small, frames)
    got = stream_onnxruntime(int8_export / "model.onnx", manifest, frames)
    spread = reference.std()
    # seeded random weights quantize worse than trained ones (measured here: mean |diff| ~18 % of the logits'
    # spread; the trained default model: ~0.2 on logits of magnitude up to ~100)
    assert np.abs(got - reference).mean() < 0.25 * spread, (np.abs(got - reference).mean(), spread)
    assert (got.argmax(1) == reference.argmax(1)).mean() >= 0.6


def test_verify_checks_the_stored_agreement(int8_export, tmp_path):
    import shutil

    result = verify_artifact(int8_export)
    assert result.passed and result.mode == "numerical (onnxruntime, int8)"
    stored = load_manifest(int8_export).model["quantization"]["verification"]["max_abs_diff"]
    assert result.max_abs_diff == pytest.approx(stored, rel=1e-3)  # same model, same frames, same CPU
    tampered = shutil.copytree(int8_export, tmp_path / "tampered")
    data = json.loads((tampered / MANIFEST_NAME).read_text())
    rule = data["verification"]["rules"]["int8"]           # the rule the export measured and wrote once
    assert data["verification"]["precision"] == "int8" and rule["absolute"] == pytest.approx(1.5 * stored + 1e-3)
    rule["absolute"] = stored / 10
    (tampered / MANIFEST_NAME).write_text(json.dumps(data))
    assert not verify_artifact(tampered).passed


def test_auto_opens_an_int8_artifact_with_onnxruntime(int8_export, tmp_path, monkeypatch):
    from online_tsm.runtimes import open_runtime

    monkeypatch.setenv("ONLINE_TSM_CACHE", str(tmp_path))
    with open_runtime(int8_export) as rt:
        assert rt.backend == "onnxruntime" and rt.auto_choice.reason == "only candidate"


def test_min_agreement_refuses_the_export(small_weights, class_folder, tmp_path, monkeypatch):
    from online_tsm.export.precision import quantize
    monkeypatch.setattr(quantize.Agreement, "gate", lambda self: 0.5)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # quantization writes nothing into the user's working directory
    with pytest.raises(ExportError) as exc:
        export_artifact(small_weights, "onnx", tmp_path / "out", precision="int8", calibration=str(class_folder),
                        drift_frames=0, progress=False)
    assert "agrees with float32 on 50.0% of held-out frames" in str(exc.value)
    assert "below --min-agreement 98%" in str(exc.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert not any(workdir.iterdir())


@pytest.mark.parametrize("kwargs, message", [
    (dict(target="host", tune=2, precision="fp32", library="auto"), None),
    (dict(target="host", precision="int8"), "--precision int8 needs --calibration DATA for these weights: a "
                                            "tsm-train class folder (or its train/ split), a video, a folder of "
                                            "frames, or 'synthetic'"),
    (dict(target="raspberry-pi-4", precision="int8", calibration="synthetic"),
     f"--precision int8 is for {', '.join(rows_taking('int8'))}; raspberry-pi-4 takes fp32"),
    (dict(target="host", precision="int4"), "--precision must be one of fp32, fp16, int8, got 'int4'"),
    (dict(target="host", precision="fp16"), f"--precision fp16 is for {', '.join(rows_taking('fp16'))}; host runs "
                                            "on a CPU, use fp32 or int8"),
    (dict(target="onnx", precision="fp16"), f"--precision fp16 is for {', '.join(rows_taking('fp16'))}; fp16 is a "
                                            "build option of TensorRT, not of the ONNX file: export fp32 and build "
                                            "with trtexec --fp16 (or the tensorrt backend's fp16=True)"),
    (dict(target="host", calibration="synthetic"), "--calibration is for --precision int8"),
    (dict(target="jetson-nano", tune=2), "--tune measures candidates on this machine, so it works for host only "
                                         "(not jetson-nano)"),
    (dict(target="onnx", library="so"), "--library chooses how a TVM library is written; onnx has none (it takes "
                                        "--library auto)"),
    (dict(target="host", precision="int8", calibration="synthetic", min_agreement=98.0),
     "--min-agreement must be a fraction between 0 and 1, got 98.0"),
])
def test_precision_option_errors(small_weights, tmp_path, kwargs, message):
    target = kwargs.pop("target")
    if message is None:            # what a row accepts passes the validator (checked alone: no export is run)
        check_options(get_target(target), ExportOptions(**kwargs))
        return
    with pytest.raises(UserError) as exc:
        export_artifact(small_weights, target, tmp_path / "out", progress=False, **kwargs)
    assert str(exc.value) == message


def test_calibration_sources(tmp_path, class_folder):
    from online_tsm.synthetic import synthetic_frames, write_video

    video = write_video(list(synthetic_frames(30, 64, 64)), tmp_path / "one.mp4")
    single = load_calibration(str(video), ["a", "b"])
    assert len(single.held_out) == 1 and len(single.held_out[0].frames) == 10 and not single.labelled
    assert sum(len(c.frames) for c in single.calibration) == 20
    folder = load_calibration(str(class_folder), ["Swiping Left"])  # not every class is the model's: unlabelled
    assert folder.calibration and folder.held_out and not folder.labelled
    # the clips held out are the ones tsm-train validated on (same fraction and seed), none it trained on
    from online_tsm.training.data import scan_folder

    for fraction, seed in ((None, 0), (0.5, 1)):
        split = scan_folder(class_folder, 0.2 if fraction is None else fraction, seed)
        got = load_calibration(str(class_folder), ["x"], seed=seed, val_fraction=fraction)
        assert sorted(c.name for c in got.held_out) == sorted(c.name for c in split.val)
        assert not {c.name for c in got.calibration} & {c.name for c in split.val}
    synthetic = load_calibration("synthetic", ["x"], every=4, n_calibration=8, n_held_out=4)
    assert len(synthetic.held_out) == 4 and all(len(c.frames) <= 10 for c in synthetic.held_out)
    with pytest.raises(UserError) as exc:
        load_calibration(str(tmp_path / "missing"), ["a"])
    assert str(exc.value) == (f"--calibration {tmp_path / 'missing'}: not found (expected a tsm-train class folder, a "
                              "video, a folder of frames, or 'synthetic')")


def test_shift_as_convolutions_is_exact_and_has_no_channel_slicing(small_artifact, tmp_path):
    from online_tsm.export.formats.shift_fold import fold_shift_into_convs

    manifest = load_manifest(small_artifact)
    graph, count = fold_shift_into_convs(onnx.load(str(small_artifact / "model.onnx")))
    assert count == len(manifest.buffers)
    assert not {"Slice", "Concat", "Split"} & {n.op_type for n in graph.graph.node}
    assert [i.name for i in graph.graph.input] == [s.name for s in manifest.inputs]
    assert [o.name for o in graph.graph.output] == [s.name for s in manifest.outputs]
    onnx.save(graph, str(tmp_path / "folded.onnx"))
    frames = deterministic_frames(12, manifest.input_size, seed=2)
    plain = stream_onnxruntime(small_artifact / "model.onnx", manifest, frames)
    folded = stream_onnxruntime(tmp_path / "folded.onnx", manifest, frames)
    assert np.abs(plain).max() > 0.5
    np.testing.assert_allclose(folded, plain, rtol=0, atol=1e-5)


def test_compare_times_contestants_in_one_process(small_artifact, tmp_path, monkeypatch):
    from online_tsm.benchmarks.compare import compare

    monkeypatch.setenv("ONLINE_TSM_CACHE", str(tmp_path))
    result = compare([f"plain={small_artifact}:ort-plain", f"ort={small_artifact}:onnxruntime"], threads=1,
                     frames=4, warmup=1, round_size=2)
    plain, ort = result["rows"]
    assert (plain["name"], ort["name"]) == ("plain", "ort") and plain["runs"] == ort["runs"] == 4
    assert plain["speedup_vs_first_p50"] == 1.0
    assert ort["speedup_vs_first_p50"] == pytest.approx(plain["p50_ms"] / ort["p50_ms"])


def test_compare_bad_contestant_is_one_line(capsys):
    from online_tsm.benchmarks.compare import main

    assert main(["nofolder"]) != 0
    assert "expected NAME=FOLDER[:BACKEND], got 'nofolder'" in capsys.readouterr().err


# -- fp16 (GPU targets) ------------------------------------------------------------------------------

def test_fp16_llvm_module_follows_float32_pytorch(small_artifact):
    """The mixed-precision module the GPU gets, built for this CPU, against float32 PyTorch (buffers carried)."""
    from online_tsm.export.tvm.mixed_precision import fp16_agreement, stream_fp16_llvm
    from online_tsm.verification import FP16
    from online_tsm.export.reference import frames_for, read_reference

    manifest = load_manifest(small_artifact)
    reference = read_reference(small_artifact / manifest.file_with_role("reference"))
    frames = frames_for(manifest, len(reference))
    logits = stream_fp16_llvm(small_artifact / "model.onnx", manifest, frames)
    check = fp16_agreement(logits, reference)
    assert logits.dtype == np.float32 and logits.shape == reference.shape
    assert 0.0 < check["relative_max_diff"] <= FP16.relative  # float16 is not exact, and stays close
    assert 0.0 < check["max_abs_diff"] <= check["tolerance"] == FP16.tolerance(reference, same_machine=True)
    assert check["top1_agreement"] == 1.0 and check["passed"]


@pytest.mark.slow
def test_jetson_fp16_export_holds_sm53_ptx_and_records_numerics(small_weights, tmp_path):
    from online_tsm.export.device import elf
    folder = export_artifact(small_weights, "jetson-nano", tmp_path / "nano-fp16", precision="fp16", progress=False)
    manifest = load_manifest(folder)
    assert manifest.model["precision"] == "fp16"
    check = manifest.model["fp16_check"]
    assert check["relative_max_diff"] <= 0.04 and check["top1_agreement"] == 1.0
    library = folder / manifest.file_with_role("library")
    ptx = [i for i in elf.embedded_cuda_images(library) if i.kind == "ptx"]
    assert ptx and {i.arch for i in ptx} == {"sm_53"} and {i.isa for i in ptx} == {"4.2"}
    assert manifest.target["device_code"]["precision"] == "fp16"
    assert manifest.verification["precision"] == "fp16" and "fp16" in manifest.verification["rules"]
    assert [s.name for s in manifest.inputs][0] == manifest.frame_input
    assert all(s.dtype == "float32" for s in manifest.inputs + manifest.outputs)
    assert "Precision: fp16 kernels with float32 accumulation" in (folder / "README.txt").read_text()
    result = verify_artifact(folder)   # static checks, plus the fp16 numerics recomputed on this CPU
    assert result.passed and any(line.startswith("fp16 numerics on this CPU") and line.endswith("PASS")
                                 for line in result.lines), result.lines


def test_verify_fails_fp16_numerics_that_drift(small_weights, tmp_path, monkeypatch):
    """The recomputed fp16 check is a real gate: logits far from float32 fail verify."""
    from online_tsm.export.tvm import mixed_precision
    from online_tsm.export.reference import read_reference

    folder = export_artifact(small_weights, "onnx", tmp_path / "fake-fp16", progress=False)
    data = json.loads((folder / MANIFEST_NAME).read_text())
    data["model"]["precision"] = "fp16"
    (folder / MANIFEST_NAME).write_text(json.dumps(data))
    reference = read_reference(folder / "reference.npz")
    drifted = lambda onnx_path, manifest, frames: reference[:len(frames)][:, ::-1].copy()  # noqa: E731
    monkeypatch.setattr(mixed_precision, "stream_fp16_llvm", drifted)
    from online_tsm.export.verify import recheck_fp16

    ok, line = recheck_fp16(folder, load_manifest(folder, verify_files=False))
    assert not ok and line.endswith("FAIL")


class _ScriptedRuntime:
    """Stands in for a runtime: each stream returns the scripted logits of its clip, one row per frame."""

    def __init__(self, logits_by_clip: list[np.ndarray]) -> None:
        self._clips = iter(logits_by_clip)

    def preprocess(self, image: np.ndarray, color_order: str = "bgr") -> np.ndarray:
        return image

    def new_stream(self):
        rows = iter(next(self._clips))
        return type("Stream", (), {"step": lambda self, frame: next(rows)})()


def test_agreement_reports_last_frame_and_clip_accuracy_apart():
    """A clip whose last frame is wrong but whose mean is right counts for clip accuracy only (as tsm-train)."""
    from online_tsm.export.precision.calibration import CalibrationClip
    from online_tsm.export.precision.quantize import measure_agreement

    right_then_wrong = np.array([[5.0, 0.0], [5.0, 0.0], [0.0, 1.0]])   # label 0: mean right, last frame wrong
    wrong = np.array([[0.0, 5.0], [0.0, 5.0], [0.0, 5.0]])              # label 0: wrong throughout
    clips = [CalibrationClip("a", [np.zeros(1)] * 3, label=0), CalibrationClip("b", [np.zeros(1)] * 3, label=0)]
    fp32 = _ScriptedRuntime([right_then_wrong, wrong])
    int8 = _ScriptedRuntime([right_then_wrong, right_then_wrong])      # int8 changes clip b's prediction
    a = measure_agreement(int8, fp32, clips, drift_frames=0)
    assert (a.accuracy_fp32, a.accuracy_int8) == (0.0, 0.0)
    assert (a.clip_accuracy_fp32, a.clip_accuracy_int8) == (0.5, 1.0)
    assert a.top1_agreement_frames == pytest.approx(4 / 6) and a.top1_agreement_last_frame == 1.0
    assert any("averaged over its frames" in line and "float32 50.0%, int8 100.0%" in line for line in a.lines())


@pytest.mark.parametrize("flags, saturates, vnni", [
    ({"avx2", "fma"}, True, False),                        # Zen 3, Haswell
    ({"avx2", "avx512bw"}, True, False),                   # Skylake-X: AVX-512 without VNNI
    ({"avx2", "avx512bw", "avx512_vnni"}, False, True),    # Zen 4, Ice Lake
    ({"avx2", "avx_vnni"}, False, True),                   # Alder Lake
    ({"sse4_1", "sse4_2"}, False, False),                  # no AVX2: products widened first
    ({"asimd", "asimddp"}, False, False),                  # arm64
    (set(), False, False),
])
def test_which_cpus_overflow_onnxruntime_int8_kernels(flags, saturates, vnni):
    from online_tsm.machine.cpuinfo import has_vnni, int8_kernels, int8_kernels_saturate

    assert int8_kernels_saturate(frozenset(flags)) is saturates and has_vnni(frozenset(flags)) is vnni
    assert ("saturating" in int8_kernels(frozenset(flags))) is saturates


def _weights_of(model_path) -> list[np.ndarray]:
    from onnx import numpy_helper

    graph = onnx.load(str(model_path)).graph
    inits = {i.name: i for i in graph.initializer}
    return [numpy_helper.to_array(inits[n.input[0]]) for n in graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits
            and inits[n.input[0]].data_type == onnx.TensorProto.INT8]


def test_an_int8_export_on_a_cpu_whose_kernels_saturate_uses_7_bit_weights(small_weights, class_folder, tmp_path,
                                                                             monkeypatch, int8_export, capsys):
    from online_tsm.machine import cpuinfo

    here = load_manifest(int8_export).model["quantization"]["weight_bits"]
    assert here == (7 if cpuinfo.int8_kernels_saturate() else 8)          # the fixture was exported on this CPU
    if here == 8:
        full = _weights_of(int8_export / "model.onnx")
        assert full and max(int(np.abs(w).max()) for w in full) > 64
    monkeypatch.setattr(cpuinfo, "cpu_flags", lambda: frozenset({"avx2", "fma"}))   # as on a Zen 3
    out = export_artifact(small_weights, "host", tmp_path / "int8-7bit", precision="int8",
                          calibration=str(class_folder), min_agreement=0.0, drift_frames=20, progress=True)
    q = load_manifest(out).model["quantization"]
    assert q["weight_bits"] == 7 and q["weights"].endswith("7-bit range")
    assert "saturating" in q["int8_kernels_at_export"]
    weights = _weights_of(out / "model.onnx")
    assert weights and all(-64 <= int(w.min()) and int(w.max()) <= 64 for w in weights)  # 2*255*64 < 2**15
    assert "8-bit weights would overflow them, so the weights are quantized to 7 bits" in capsys.readouterr().err


@pytest.mark.parametrize("bits", [8, 7])
def test_an_8_bit_int8_model_warns_on_a_cpu_whose_kernels_saturate(int8_export, monkeypatch, tmp_path, bits):
    import shutil
    import warnings

    from online_tsm.machine import cpuinfo
    from online_tsm.runtimes import open_runtime

    artifact = shutil.copytree(int8_export, tmp_path / f"int8-{bits}bit")   # as exported on another CPU
    data = json.loads((artifact / MANIFEST_NAME).read_text())
    data["model"]["quantization"]["weight_bits"] = bits
    (artifact / MANIFEST_NAME).write_text(json.dumps(data))
    monkeypatch.setattr(cpuinfo, "cpu_flags", lambda: frozenset({"avx2", "avx512_vnni"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_runtime(artifact, "onnxruntime").close()                        # VNNI: exact, nothing to say
    monkeypatch.setattr(cpuinfo, "cpu_flags", lambda: frozenset({"avx2"}))
    if bits == 8:
        with pytest.warns(RuntimeWarning, match="8-bit weights, which overflow ONNX Runtime's int8 kernels"):
            open_runtime(artifact, "onnxruntime").close()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            open_runtime(artifact, "onnxruntime").close()                    # 7-bit weights cannot overflow
