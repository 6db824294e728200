"""Every way a user can feed a runtime the wrong thing gives one clear line naming what was expected."""
from __future__ import annotations

import shutil
import struct
import subprocess
import tarfile

import numpy as np
import pytest

from online_tsm.manifest import ManifestError, load_manifest, write_manifest
from online_tsm.runtimes import BackendUnavailable, FrameError, RuntimeOpenError, open_runtime
from online_tsm.runtimes.library import LibraryError, host_arch
from runtime_artifacts import copy_artifact, free_port, small_artifact  # noqa: F401 -- fixture

EM_AARCH64, EM_X86_64 = 183, 62


@pytest.fixture(scope="module")
def ort_runtime(small_artifact):
    with open_runtime(small_artifact, "onnxruntime") as rt:
        yield rt


def single_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# -- frames -----------------------------------------------------------------------------------------
def test_frame_of_the_wrong_shape(ort_runtime):
    with pytest.raises(FrameError) as exc:
        ort_runtime.new_stream().step(np.zeros((3, 64, 64), np.float32))
    assert single_line(exc) == ("expected a frame of shape [3, 96, 96] or [1, 3, 96, 96] (normalised float32 CHW, "
                                "see runtime.preprocess), got [3, 64, 64]")


def test_frame_of_the_wrong_dtype(ort_runtime):
    with pytest.raises(FrameError, match=r"expected a float32 frame of shape \[3, 96, 96\] .* got dtype float64$"):
        ort_runtime.new_stream().step(np.zeros((3, 96, 96), np.float64))


def test_raw_camera_image_points_to_preprocess(ort_runtime):
    with pytest.raises(FrameError, match=r"got dtype uint8; pass camera images through runtime.preprocess\(image\)"):
        ort_runtime.new_stream().step(np.zeros((96, 96, 3), np.uint8))


def test_frame_in_hwc_layout_where_chw_is_expected(ort_runtime):
    with pytest.raises(FrameError) as exc:
        ort_runtime.new_stream().step(np.zeros((96, 96, 3), np.float32))
    assert single_line(exc).endswith("got [96, 96, 3]: that is HWC layout, this model takes CHW "
                                     "(frame.transpose(2, 0, 1), or use runtime.preprocess)")


def test_frame_that_is_not_an_array(ort_runtime):
    with pytest.raises(FrameError, match=r"expected a numpy float32 frame of shape \[3, 96, 96\] .*got list"):
        ort_runtime.new_stream().step([[0.0]])


def test_a_rejected_frame_leaves_the_stream_untouched(ort_runtime):
    stream = ort_runtime.new_stream()
    with pytest.raises(FrameError):
        stream.step(np.zeros((1, 3, 96, 95), np.float32))
    assert stream.frames_seen == 0


def test_torch_backend_checks_frames_too(model_small):
    rt = open_runtime(model_small, "torch")
    with pytest.raises(FrameError, match=r"that is HWC layout, this model takes CHW"):
        rt.new_stream().step(np.zeros((96, 96, 3), np.float32))


# -- step_many --------------------------------------------------------------------------------------
def test_step_many_with_mismatched_lengths(ort_runtime):
    streams = [ort_runtime.new_stream() for _ in range(2)]
    with pytest.raises(ValueError) as exc:
        ort_runtime.step_many(streams, [np.zeros((3, 96, 96), np.float32)] * 3)
    assert single_line(exc) == "step_many needs one frame per stream: got 2 streams but 3 frames"


def test_step_many_with_a_stream_of_another_runtime(ort_runtime, model_small):
    foreign = open_runtime(model_small, "torch").new_stream()
    with pytest.raises(ValueError, match=r"all streams must come from this runtime"):
        ort_runtime.step_many([ort_runtime.new_stream(), foreign], [np.zeros((3, 96, 96), np.float32)] * 2)


def test_step_many_with_the_same_stream_twice(ort_runtime):
    stream = ort_runtime.new_stream()
    with pytest.raises(ValueError, match=r"a stream appears twice"):
        ort_runtime.step_many([stream, stream], [np.zeros((3, 96, 96), np.float32)] * 2)


def test_step_many_with_one_bad_frame_changes_no_stream(ort_runtime):
    streams = [ort_runtime.new_stream() for _ in range(2)]
    with pytest.raises(FrameError, match=r"got \[96, 96, 3\]"):
        ort_runtime.step_many(streams, [np.zeros((3, 96, 96), np.float32), np.zeros((96, 96, 3), np.float32)])
    assert [s.frames_seen for s in streams] == [0, 0]


# -- sources ----------------------------------------------------------------------------------------
def test_missing_manifest(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(ManifestError) as exc:
        open_runtime(tmp_path, "onnxruntime")
    assert single_line(exc) == f"{tmp_path} has no manifest.json: expected a folder written by tsm-export"


def test_no_such_export_folder(tmp_path):
    with pytest.raises(RuntimeOpenError, match=r"no such export folder: .*nowhere \(tsm-export writes one\)"):
        open_runtime(tmp_path / "nowhere", "onnxruntime")


def test_manifest_not_matching_its_files(small_artifact, tmp_path):
    folder = copy_artifact(small_artifact, tmp_path / "tampered")
    with open(folder / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    for backend in ("onnxruntime", "tvm"):
        with pytest.raises(ManifestError) as exc:
            open_runtime(folder, backend)
        assert "model.onnx does not match manifest.json (sha256 expected" in single_line(exc)
        assert single_line(exc).endswith("re-export it")


def test_file_listed_in_the_manifest_but_missing(small_artifact, tmp_path):
    folder = copy_artifact(small_artifact, tmp_path / "incomplete")
    (folder / "model.onnx").unlink()
    with pytest.raises(ManifestError, match=r"file model.onnx listed in manifest.json is missing"):
        open_runtime(folder, "onnxruntime")


def _retarget_library(small_artifact, tmp_path, machine: int):
    folder = copy_artifact(small_artifact, tmp_path / "retargeted")
    manifest = load_manifest(folder)
    library = folder / manifest.file_with_role("library")
    data = bytearray(library.read_bytes())
    data[18:20] = struct.pack("<H", machine)  # e_machine of the ELF header
    library.write_bytes(bytes(data))
    write_manifest(folder, manifest)  # sha256 matches: only the architecture is wrong
    return folder


@pytest.mark.skipif(host_arch() != "x86_64", reason="the test rewrites an x86-64 library's header")
def test_library_of_another_architecture(small_artifact, tmp_path):
    folder = _retarget_library(small_artifact, tmp_path, EM_AARCH64)
    with pytest.raises(LibraryError) as exc:
        open_runtime(folder, "tvm")
    name = load_manifest(folder).file_with_role("library")
    assert single_line(exc) == (f"{name} is built for aarch64, but this machine is x86_64: run it on an aarch64 "
                                "device (or through backend tvm-rpc), or export for target 'host' here")
    from online_tsm.runtimes import available_backends, resolve_auto

    assert "built for aarch64, this machine is x86_64" in available_backends(folder)["tvm"]
    assert resolve_auto(folder) == "onnxruntime"


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None or host_arch() == "aarch64",
                    reason="needs the aarch64 cross compiler (apt-get install gcc-aarch64-linux-gnu) on another CPU")
def test_library_cross_compiled_for_aarch64(small_artifact, tmp_path):
    folder = copy_artifact(small_artifact, tmp_path / "cross")
    manifest = load_manifest(folder)
    library = folder / manifest.file_with_role("library")
    source = tmp_path / "f.c"
    source.write_text("int f(void) { return 1; }\n")
    subprocess.run(["aarch64-linux-gnu-gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    write_manifest(folder, manifest)
    with pytest.raises(LibraryError, match=rf"is built for aarch64, but this machine is {host_arch()}"):
        open_runtime(folder, "tvm")
    with open_runtime(folder) as rt:  # auto falls back to the ONNX model
        assert rt.backend == "onnxruntime"


def test_library_that_is_a_tar_of_objects(small_artifact, tmp_path):
    folder = copy_artifact(small_artifact, tmp_path / "tarred")
    manifest = load_manifest(folder)
    library = folder / manifest.file_with_role("library")
    library.unlink()
    with tarfile.open(library, "w") as tar:
        tar.add(folder / "manifest.json", arcname="lib0.o")
    write_manifest(folder, manifest)
    with pytest.raises(LibraryError, match=r"is a tar of object files, not a shared library: link it into a .so"):
        open_runtime(folder, "tvm")


def test_artifact_without_a_library_for_tvm(small_artifact, tmp_path):
    folder = copy_artifact(small_artifact, tmp_path / "onnx-only")
    manifest = load_manifest(folder)
    (folder / manifest.file_with_role("library")).unlink()
    write_manifest(folder, manifest)
    with pytest.raises(RuntimeOpenError, match=r"backend tvm needs a compiled TVM library \(role 'library'\), but"):
        open_runtime(folder, "tvm")


def test_checkpoint_given_to_an_artifact_backend(tmp_path):
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"x")
    with pytest.raises(RuntimeOpenError, match=r"backend onnxruntime runs an export folder \(with manifest.json\), "
                                                r"got the file .*model.pt; a checkpoint runs with backend torch"):
        open_runtime(weights, "onnxruntime")


def test_model_object_given_to_an_artifact_backend(model_small):
    with pytest.raises(RuntimeOpenError, match=r"backend tvm runs an export folder .* got a MobileNetV2TSM"):
        open_runtime(model_small, "tvm")


def test_export_folder_given_to_torch(small_artifact):
    with pytest.raises(RuntimeOpenError, match=r"backend torch runs a checkpoint .* got the export folder"):
        open_runtime(small_artifact, "torch")


# -- backends and options ---------------------------------------------------------------------------
def test_unknown_backend(small_artifact):
    with pytest.raises(RuntimeOpenError) as exc:
        open_runtime(small_artifact, "tflite")    # the LiteRT row's alias, not a backend name
    assert single_line(exc) == ("unknown backend 'tflite'; expected one of auto, torch, onnxruntime, tvm, tvm-rpc, "
                                "tensorrt, triton, litert")


def test_unknown_option(small_artifact):
    with pytest.raises(RuntimeOpenError, match=r"backend onnxruntime does not take option\(s\) adress; it takes "
                                                r"threads, batched"):
        open_runtime(small_artifact, "onnxruntime", adress="1.2.3.4:9090")
    with pytest.raises(RuntimeOpenError) as exc:   # the engine runs on the GPU: there are no CPU threads to set
        open_runtime(small_artifact, "tensorrt", threads=2)
    assert single_line(exc) == "backend tensorrt does not take option(s) threads; it takes fp16, engine_dir"


def test_tensorrt_not_installed_says_how_to_install(small_artifact):
    from online_tsm.runtimes.tensorrt_backend import missing_packages

    if not missing_packages():
        pytest.skip("TensorRT and pycuda are installed here")
    with pytest.raises(BackendUnavailable) as exc:
        open_runtime(small_artifact, "tensorrt")
    message = single_line(exc)
    assert message.startswith("backend tensorrt needs the Python packages ")
    assert "pip install 'online-tsm[jetson]'" in message and "JetPack" in message


def test_tvm_rpc_needs_an_address(small_artifact):
    with pytest.raises(RuntimeOpenError, match=r"backend tvm-rpc needs the device's RPC server: pass "
                                                r"address='HOST:PORT'"):
        open_runtime(small_artifact, "tvm-rpc")
    with pytest.raises(RuntimeOpenError, match=r"backend tvm-rpc expects address HOST:PORT .* got 'device'"):
        open_runtime(small_artifact, "tvm-rpc", address="device")


def test_tvm_rpc_without_a_server(small_artifact):
    port = free_port()  # nothing listens there
    with pytest.raises(RuntimeOpenError) as exc:
        open_runtime(small_artifact, "tvm-rpc", address=f"127.0.0.1:{port}")
    assert single_line(exc).startswith(f"could not connect to a TVM RPC server at 127.0.0.1:{port}")
    assert f"python -m tvm.exec.rpc_server --host DEVICE_IP --port {port}" in str(exc.value)
    assert "0.0.0.0" not in str(exc.value) and "trusted network" in str(exc.value)  # the server is unauthenticated


def test_one_address_parser_for_every_host_port():
    """tvm-rpc, triton, --serve and --rpc share one HOST:PORT parser; each caller keeps its own words."""
    from online_tsm.console.address import AddressError, format_host_port, parse_host_port

    assert parse_host_port("192.168.1.20:9090") == ("192.168.1.20", 9090)
    assert parse_host_port("[::1]:8001") == ("::1", 8001)
    assert format_host_port("::1", 8001) == "[::1]:8001" and format_host_port("nano", 9090) == "nano:9090"
    assert parse_host_port("8765", default_host="127.0.0.1") == ("127.0.0.1", 8765)
    for bad in ("nano", ":9090", "nano:", "nano:port", "nano:70000"):
        with pytest.raises(AddressError) as info:
            parse_host_port(bad, expected="--rpc expects HOST:PORT")
        assert str(info.value) == f"--rpc expects HOST:PORT, got {bad!r}"
    with pytest.raises(RuntimeOpenError, match=r"^backend tvm-rpc expects address HOST:PORT \(e\.g\. "):
        open_runtime(".", backend="tvm-rpc", address="nano")
