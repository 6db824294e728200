"""``README.txt`` of an artifact: what to copy to the device and how to run it there.

The per-device steps are data: the ``device_steps`` of each row of
:mod:`online_tsm.export.targets`; docs/export.md says the same things per target.
"""
from __future__ import annotations

from typing import Sequence

from online_tsm.manifest import Manifest
from online_tsm.export.targets import ExportTarget
from online_tsm.streaming.pacing import UPSTREAM_PACE, pace_from_metadata

_SCRIPT_USE = """{script} checks this folder and times it on the device, with numpy and the runtime only (no online-tsm):
  python3 {script} --json result.json   # sha256 of every file, logits vs PyTorch (reference.npz), p50/p90/p99
  python3 {script} --help               # --frames, --threads, --device, --no-timing{extra}
Back on a machine with online-tsm, put the result beside the paper's figures:
  tsm-bench --import result.json
The streaming loop to copy into an application is {script}'s {engine} class: names, shapes and the
shift-buffer pairs come from manifest.json; with online-tsm installed, open_runtime("{folder}") does it all.
"""


_DEFAULT_STEPS = "See docs/export.md of online-tsm (the section on this target).\n"

_LINK_TAR = """  mkdir objs && tar -xf {folder}/model.tar -C objs && gcc -shared -o {folder}/model.so objs/*.o -lm
  (the export shipped model.tar because no aarch64 cross compiler was found here)
"""


def _pace_lines(manifest: Manifest) -> list[str]:
    """How often to run the model, when its training recorded it (online_tsm.streaming.pacing)."""
    pace = pace_from_metadata(manifest.model)
    if pace == UPSTREAM_PACE:
        return []
    return [f"Pace: {pace.reason}: run it on one camera frame in {pace.every} and average the logits of the last "
            f"{pace.history} steps, as tsm-demo does (manifest: model.frame_stride, model.segments)."]


def _precision_lines(manifest: Manifest) -> list[str]:
    """What a reduced-precision artifact computes in, and how far it was measured from float32."""
    model = manifest.model
    if model.get("precision") == "int8":
        agreement = (model.get("quantization") or {}).get("agreement") or {}
        measured = (f"; top-1 agreement with float32 on {agreement['top1_agreement_frames']:.1%} of held-out frames"
                    if "top1_agreement_frames" in agreement else "")
        form = ("full-integer model.tflite for LiteRT" if manifest.file_with_role("tflite")
                else "QDQ model.onnx for ONNX Runtime")
        return [f"Precision: int8 ({form}; float32 inputs and outputs){measured} "
                "(manifest: model.quantization)."]
    if model.get("precision") == "fp16":
        check = model.get("fp16_check") or {}
        measured = (f"; checked against float32 on the exporting CPU: max |logit diff| "
                    f"{check['relative_max_diff']:.2%} of max |logit|" if "relative_max_diff" in check else "")
        if manifest.file_with_role("tflite"):
            return [f"Precision: fp16 weights in model.tflite, float32 inputs and outputs; max |logit diff| "
                    f"{check.get('max_abs_diff', float('nan')):.3g} from float32 PyTorch on the verification frames "
                    "(manifest: model.fp16_check)."]
        return [f"Precision: fp16 kernels with float32 accumulation, float32 inputs and outputs{measured} "
                "(manifest: model.fp16_check)."]
    return []


def _schedule_lines(manifest: Manifest) -> list[str]:
    """Which schedules a host build with this CPU's --tune records shipped, and the timing that decided it."""
    tuning = (manifest.target or {}).get("tuning") or {}
    timed = tuning.get("ms_per_frame_here")
    if not timed:
        return []
    return [f"Schedules: {tuning['schedules']} (timed on the exporting CPU: {timed['tuned']:.2f} ms/frame with its "
            f"--tune records, {timed['default']:.2f} ms with the default schedules; manifest: target.tuning)."]


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
    steps = (row.device_steps or _DEFAULT_STEPS).format(
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
        *_precision_lines(manifest),
        *_schedule_lines(manifest),
        "",
        "On the device:",
        steps.rstrip("\n"),
    ]
    script = next((name for name, role in (roles or {}).items() if role == "script"), None)
    if script:
        tensorrt = ", --tensorrt [--fp16]" if row.kind in ("onnx", "cuda") else ""
        lines += ["", _SCRIPT_USE.format(script=script, folder=folder,
                                         engine="TvmEngine" if library else (
                                             "LiteRtEngine" if row.kind == "litert" else "OnnxRuntimeEngine"),
                                         extra=tensorrt).rstrip("\n")]
    for note in target.get("notes", []):
        lines.append(f"Note: {note}")
    lines += ["", f"Check the folder: tsm-export verify {folder}"
              + ("   (add --emulate to run it under qemu)" if (row.kind == "cpu" and row.cross)
                 or row.kind == "litert" else "")]
    return "\n".join(lines) + "\n"
