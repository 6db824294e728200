"""``README.txt`` of an artifact: what to copy to the device and how to run it there.

The README section "Export (tsm-export)" says the same things per target.
"""
from __future__ import annotations

from typing import Sequence

from online_tsm.export.manifest import Manifest
from online_tsm.export.targets import ExportTarget
from online_tsm.pacing import UPSTREAM_PACE, pace_from_metadata

_SCRIPT_USE = """{script} checks this folder and times it on the device, with numpy and the runtime only (no online-tsm):
  python3 {script} --json result.json   # sha256 of every file, logits vs PyTorch (reference.npz), p50/p90/p99
  python3 {script} --help               # --frames, --threads, --device, --no-timing{extra}
Back on a machine with online-tsm, put the result beside the paper's figures:
  tsm-bench --import result.json
The streaming loop to copy into an application is {script}'s {engine} class: names, shapes and the
shift-buffer pairs come from manifest.json; with online-tsm installed, open_runtime("{folder}") does it all.
"""

_TARGET_STEPS = {
    "host": """Runs on this machine (same CPU model: it was compiled for {mcpu}).
  tsm-export verify {folder}            # re-runs it against the PyTorch reference
""",
    "onnx": """Copy {folder}/ anywhere and run model.onnx with any ONNX runtime, e.g.
  pip install onnxruntime numpy
  python3 run_onnx.py --json result.json
On a Jetson, TensorRT (JetPack's) builds an engine from model.onnx on the device and caches it:
  python3 run_onnx.py --tensorrt --fp16 --json nano-trt.json
""",
    "raspberry-pi-4": """On the Pi (64-bit Raspberry Pi OS, Python >= 3.9, glibc >= 2.28):
  scp -r {folder} pi@raspberrypi:
  pip install apache-tvm==0.27.0.post1 numpy      # aarch64 manylinux_2_28 wheel
{link_step}  python3 run.py --json pi.json                  # verifies, then times it on the Pi
""",
    "android-arm64": """Android needs a .so linked by the NDK's clang against bionic (a GNU-linked .so will not load):
  export TVM_NDK_CC=$NDK/toolchains/llvm/prebuilt/linux-x86_64/bin/aarch64-linux-android24-clang
  tsm-export --weights ... --target android-arm64 -o {folder} --force --library so   # links model.so here
or link the shipped object archive yourself:
  mkdir objs && tar -xf {folder}/model.tar -C objs && $TVM_NDK_CC -shared -o model.so objs/*.o -lm -llog
Then package model.so + manifest.json with an app that embeds the TVM runtime (TVM's android_deploy /
android_rpc apps build it with the NDK), or push it to a device running the TVM RPC app and use
  tsm-bench --rpc HOST:PORT --target android-arm64 --artifact {folder}
""",
    "jetson-nano": """The library holds aarch64 (Cortex-A57) host code and CUDA kernels compiled for sm_53 by {cuda_compiler}.
It needs a TVM runtime built with CUDA on the Jetson (PyPI has no CUDA build for aarch64):
  scp -r {folder} jetson@nano:
  # on the Nano: build apache/tvm v0.27 runtime with -DUSE_CUDA=ON -DUSE_LLVM=OFF (runtime only), then
{link_step}  python3 run.py --json nano.json   (runs on the GPU: --device cuda is the default here)
Caveat: JetPack 4.6 (the Nano's last) ships CUDA 10.2; a cubin from a newer toolkit is not guaranteed to
load on that driver. The fall-back that always works on the device: TensorRT (JetPack's) from model.onnx
  python3 run.py --tensorrt --fp16 --json nano-trt.json   # builds and caches the engine on the Nano
""",
}

_LINK_TAR = """  mkdir objs && tar -xf {folder}/model.tar -C objs && gcc -shared -o {folder}/model.so objs/*.o -lm
  (the export shipped model.tar because no aarch64 cross compiler was found here)
"""


def _pace_lines(manifest: Manifest) -> list[str]:
    """How often to run the model, when its training recorded it (online_tsm.pacing)."""
    pace = pace_from_metadata(manifest.model)
    if pace == UPSTREAM_PACE:
        return []
    return [f"Pace: {pace.reason}: run it on one camera frame in {pace.every} and average the logits of the last "
            f"{pace.history} steps, as tsm-demo does (manifest: model.frame_stride, model.segments)."]


def artifact_readme(manifest: Manifest, row: ExportTarget, folder: str = "ARTIFACT",
                    files: Sequence[str] | None = None, roles: dict[str, str] | None = None) -> str:
    """The folder's README.txt; ``files``: the folder's files besides manifest.json (default: the manifest's);
    ``roles``: their roles (default: the manifest's), which say whether a run script is there."""
    roles = roles if roles is not None else {name: meta.get("role", "") for name, meta in manifest.files.items()}
    target = manifest.target or {}
    library = target.get("library")
    pre = manifest.preprocess
    if pre.get("folded"):
        frame_doc = (f"uint8 [{pre['camera_size'][0]}, {pre['camera_size'][1]}, 3] camera frames in "
                     f"{pre['color_order'].upper()} order; resize/crop/normalise happen inside the graph")
    else:
        frame_doc = (f"float32 [3, {manifest.input_size}, {manifest.input_size}]: shorter side to "
                     f"{pre['resize_shorter']}, centre crop, RGB, (x/255 - mean)/std (online_tsm.preprocess)")
    link_step = _LINK_TAR.format(folder=folder) if library and library.endswith(".tar") else ""
    steps = _TARGET_STEPS.get(row.name, "See the README section 'Export (tsm-export)'.\n").format(
        folder=folder, link_step=link_step, mcpu=(target.get("tvm_target_resolved") or {}).get("mcpu", "?"),
        cuda_compiler=(target.get("device_code") or {}).get("compiler", "NVRTC"))
    lines = [
        f"online-tsm artifact: {manifest.model.get('name')} for target {row.name} ({row.description})",
        "",
        f"Files: {', '.join(sorted(manifest.files if files is None else files))} and manifest.json (names, shapes, "
        "buffer pairing, sha256).",
        f"Input {manifest.frame_input}: {frame_doc}.",
        f"Shift buffers: {len(manifest.buffers)} pairs; shift_out_k of one frame is shift_k of the next; zeros "
        "before the first frame (and after a scene cut).",
        f"Output {manifest.logits_output}: [1, {manifest.model.get('n_class')}] class scores; labels in manifest.json.",
        *_pace_lines(manifest),
        "",
        "On the device:",
        steps.rstrip("\n"),
    ]
    script = next((name for name, role in (roles or {}).items() if role == "script"), None)
    if script:
        tensorrt = ", --tensorrt [--fp16]" if row.kind in ("onnx", "cuda") else ""
        lines += ["", _SCRIPT_USE.format(script=script, folder=folder,
                                         engine="TvmEngine" if library else "OnnxRuntimeEngine",
                                         extra=tensorrt).rstrip("\n")]
    for note in target.get("notes", []):
        lines.append(f"Note: {note}")
    lines += ["", f"Check the folder: tsm-export verify {folder}"
              + ("   (add --emulate to run it under qemu)" if row.kind == "cpu" and row.cross else "")]
    return "\n".join(lines) + "\n"
