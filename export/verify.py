"""``tsm-export verify DIR``: check an artifact folder against the PyTorch reference stored in it.

Artifacts that run here (``onnx`` with ONNX Runtime, ``host`` with TVM) are
re-run over the verification frames with the shift buffers carried by the
manifest's names, and compared with ``reference.npz``.  Artifacts for other
machines (aarch64, CUDA) are checked statically: every sha256 of the
manifest, the ELF machine of the library (of each object in a ``.tar``) and,
for CUDA targets, the device code of the target's architecture inside it;
an fp16 CUDA library's numerics are recomputed with the same mixed-precision
module compiled for this CPU.
Numbers for those need the device, TVM RPC, or ``--emulate`` (aarch64 CPU
targets under qemu, :mod:`online_tsm.export.device.emulate`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from online_tsm.manifest import Manifest, ManifestError, load_manifest
from online_tsm.export.reference import REFERENCE_FRAMES, frames_for, read_reference


@dataclass
class VerifyResult:
    """Outcome of a verification; ``passed`` False makes the CLI exit non-zero."""

    directory: Path
    target: str
    mode: str                      # "numerical (onnxruntime)", "numerical (tvm)", "static", "emulated"
    passed: bool
    max_abs_diff: float | None = None
    tolerance: float | None = None
    lines: list[str] = field(default_factory=list)


def _numerical(directory: Path, manifest: Manifest, backend: str) -> VerifyResult:
    """Stream the verification frames through ``backend`` and judge them by the manifest's rule."""
    from online_tsm.runtimes import open_runtime

    reference = _reference(directory, manifest)
    frames = frames_for(manifest, REFERENCE_FRAMES)
    _role(manifest, {"onnxruntime": "onnx", "litert": "tflite"}.get(backend, "library"), directory)  # if absent
    with open_runtime(directory, backend) as runtime:  # the same streaming loop users run
        stream = runtime.new_stream()
        actual = np.stack([stream.step(frame) for frame in frames])
    precision = manifest.precision
    # LiteRT's kernels sum in another order than PyTorch's on any CPU: judged by the other-machine rule, as at export
    check = manifest.rule().check(actual, reference[:len(frames)], same_machine=backend != "litert")
    verdict = "PASS" if check["passed"] else "FAIL"
    lines = [f"{len(frames)} streamed frames, buffers carried by the manifest names: max abs diff "
             f"{check['max_abs_diff']:.3e} vs PyTorch, top-1 agreement {check['top1_agreement']:.0%} "
             f"(tolerance {check['tolerance']:.3g}, the manifest's {precision} rule: {check['rule']}): {verdict}"]
    agreement = (manifest.model.get("quantization") or {}).get("agreement") or {}
    if agreement:
        lines.append(f"stored at export: top-1 agreement {agreement.get('top1_agreement_frames', float('nan')):.1%} of "
                     f"{agreement.get('frames')} held-out frames, {agreement.get('top1_agreement_last_frame', 0):.1%} "
                     f"of {agreement.get('clips')} clips' last frames ({agreement.get('data', '?')})")
    mode = f"numerical ({backend}{', ' + precision if precision != 'fp32' else ''})"
    return VerifyResult(directory, manifest.target.get("name", "?"), mode, check["passed"], check["max_abs_diff"],
                        check["tolerance"], lines)


def _reference(directory: Path, manifest: Manifest) -> np.ndarray:
    """The float32 PyTorch logits stored at export."""
    return read_reference(directory / (manifest.file_with_role("reference") or "reference.npz"))


def _role(manifest: Manifest, role: str, directory: Path) -> str:
    name = manifest.file_with_role(role)
    if name is None:
        raise ManifestError(f"{directory}: manifest lists no file with role {role!r}")
    return name


def _static(directory: Path, manifest: Manifest) -> VerifyResult:
    from online_tsm.export.device import elf
    from online_tsm.export.targets import ExportTarget

    target = manifest.target
    name = target.get("name", "?")
    library = _role(manifest, "library", directory)
    lines = [f"sha256 of {len(manifest.files)} files: OK"]
    expected = ExportTarget.from_manifest(target).elf_machine
    passed = True
    try:
        machines = elf.library_machines(directory / library)
    except (elf.ElfError, OSError) as exc:
        machines, passed = {}, False
        lines.append(f"{library}: not a library ({exc})")
    if machines:
        kinds = sorted({elf.machine_name(m) for m in machines.values()})
        ok = expected is None or set(machines.values()) == {expected}
        passed &= ok
        lines.append(f"{library}: {len(machines)} ELF object(s), machine {', '.join(kinds)}"
                     + ("" if ok else f" -- expected {elf.machine_name(expected)}: FAIL"))
    if target.get("kind") == "cuda":
        ok, line = check_device_code(directory / library, target)
        passed &= ok
        lines.append(line)
    if manifest.model.get("precision") == "fp16" and manifest.file_with_role("onnx"):
        ok, line = recheck_fp16(directory, manifest)
        passed &= ok
        lines.append(line)
    if (manifest.model.get("onnx_graph") or {}).get("profile") and manifest.file_with_role("onnx"):
        for ok, line in recheck_profile_onnx(directory, manifest):
            passed &= ok
            lines.append(line)
    lines.append(f"numerical verification of {name} needs the device (tsm-bench/runtimes over TVM RPC) "
                 + ("or --emulate (aarch64 under qemu)" if target.get("kind") == "cpu" else
                    "(CUDA kernels cannot run without an NVIDIA GPU)"))
    return VerifyResult(directory, name, "static", passed, lines=lines)


def check_device_code(library: Path, target: dict) -> tuple[bool, str]:
    """The CUDA device code in the library's bytes against the manifest's ``device_code`` (format, arch, ISA).

    PTX: its ISA (the ``.version`` line) decides the oldest driver that JIT-compiles it, so it must be the one
    recorded, and the recorded ``min_cuda_driver`` no older than that ISA needs.  Older manifests without a
    ``device_code.format`` held cubins for ``tvm_target.arch``.
    """
    from online_tsm.export.device import elf
    from online_tsm.export.tvm.nvptx import PtxError, min_cuda_for_isa, version_key

    code = target.get("device_code") or {}
    kind = code.get("format", "cubin")
    arch = code.get("arch") or (target.get("tvm_target") or {}).get("arch", "")
    images = [i for i in elf.embedded_cuda_images(library) if i.kind == kind and i.arch == arch]
    if not images:
        return False, f"CUDA device code: no {arch} {kind} found (kernels kept as source?): FAIL"
    if kind == "cubin":
        return True, (f"CUDA device code: {len(images)} {arch} cubin(s) with "
                      f"{len(elf.cubin_kernel_names(library, images[0]))} kernels"
                      + (f", for CUDA drivers >= {code['min_cuda_driver']}" if code.get("min_cuda_driver") else ""))
    isas = sorted({str(i.isa) for i in images})
    kernels = sum(len(elf.ptx_kernel_names(library, i)) for i in images)
    recorded, minimum = code.get("ptx_isa"), code.get("min_cuda_driver")
    problems = []
    if isas != [recorded]:
        problems.append(f"the bytes say ISA {', '.join(isas)}, the manifest {recorded}")
    try:
        needs = max((min_cuda_for_isa(isa) for isa in isas), key=version_key)
        if minimum is None or version_key(minimum) < version_key(needs):
            problems.append(f"ISA {', '.join(isas)} needs a CUDA {needs} driver, the manifest says {minimum}")
    except (PtxError, ValueError) as exc:
        problems.append(str(exc))
    if not kernels:
        problems.append("no kernel is declared .entry (a driver could launch none)")
    text = (f"CUDA device code: {arch} PTX, ISA {', '.join(isas)} (in the bytes), {kernels} kernels; JIT-compiled by "
            f"CUDA drivers >= {minimum} (manifest target.device_code.min_cuda_driver)")
    return not problems, text + (f" -- {'; '.join(problems)}: FAIL" if problems else "")


def recheck_profile_onnx(directory: Path, manifest: Manifest) -> list[tuple[bool, str]]:
    """A row's own ``model.onnx`` (TensorRT 8.2's, for the CUDA rows): its opset and nodes against the operator
    table again, and its logits against PyTorch's through ONNX Runtime (the float32 rule for another machine,
    as at export) -- the part of the device's TensorRT route this machine can run."""
    import onnx

    from online_tsm.export.formats.onnx import stream_onnxruntime
    from online_tsm.export.formats.onnx_tensorrt import operator_table, tensorrt_problems

    path = directory / _role(manifest, "onnx", directory)
    profile = manifest.model["onnx_graph"]["profile"]
    problems = tensorrt_problems(onnx.load(str(path)))
    table = f"TensorRT {operator_table()['tensorrt']}'s operator table"
    checks = [(not problems, f"{path.name} ({profile}) against {table}: "
                             + (f"{'; '.join(str(p) for p in problems[:3])}: FAIL" if problems else "every node: OK"))]
    frames = frames_for(manifest, REFERENCE_FRAMES)
    result = manifest.rule("fp32").check(stream_onnxruntime(path, manifest, frames), _reference(directory, manifest),
                                         same_machine=False)
    checks.append((result["passed"], f"{path.name} through ONNX Runtime, {len(frames)} streamed frames: max abs diff "
                                     f"{result['max_abs_diff']:.3e} vs PyTorch (tolerance {result['tolerance']:.1e}, "
                                     f"{result['rule']}): {'PASS' if result['passed'] else 'FAIL'}"))
    return checks


def recheck_fp16(directory: Path, manifest: Manifest) -> tuple[bool, str]:
    """The fp16 library's numerics, as far as this machine can show them: the same mixed-precision module
    compiled for this CPU, against the stored float32 reference (the export's gate, recomputed)."""
    from online_tsm.export.tvm.mixed_precision import measure_fp16

    reference = _reference(directory, manifest)
    check = measure_fp16(directory / _role(manifest, "onnx", directory), manifest,
                         frames_for(manifest, REFERENCE_FRAMES), reference)
    stored = (manifest.model.get("fp16_check") or {}).get("relative_max_diff")
    return check["passed"], (
        f"fp16 numerics on this CPU (the same mixed-precision module for llvm), {check['frames']} frames: "
        f"max |logit diff| {check['relative_max_diff']:.2%} of max |logit|"
        + (f" (at export {stored:.2%})" if isinstance(stored, float) else "")
        + f", top-1 agreement {check['top1_agreement']:.0%} (the fp16 rule: {check['rule']}): "
        + ("PASS" if check["passed"] else "FAIL"))


def verify_artifact(directory: str | Path, *, emulate: bool = False) -> VerifyResult:
    """Verify ``directory``; raises :class:`ManifestError` for a missing/corrupt manifest or a sha256 mismatch."""
    directory = Path(directory).expanduser()
    manifest = load_manifest(directory)  # checks every sha256
    target = manifest.target or {}
    kind = target.get("kind")
    if emulate:
        return _emulated(directory, target)
    if manifest.file_with_role("tflite"):
        return _numerical(directory, manifest, "litert")
    if kind == "onnx" or not manifest.file_with_role("library"):
        return _numerical(directory, manifest, "onnxruntime")
    if target.get("runs_here") and kind == "cpu":
        import platform

        if target.get("machine") and target.get("machine") != platform.machine():
            return _static(directory, manifest)
        return _numerical(directory, manifest, "tvm")
    return _static(directory, manifest)


def _emulated(directory: Path, target: dict) -> VerifyResult:
    try:
        from online_tsm.export.device.emulate import verify_emulated
    except ImportError as exc:
        raise RuntimeError(f"--emulate is not available in this installation ({exc})") from None
    check = verify_emulated(directory, n_frames=REFERENCE_FRAMES)
    lines = list(getattr(check, "notes", []) or [])
    diff, tolerance, passed = check.max_abs_diff, check.tolerance, bool(check.passed)
    if diff is not None:
        lines.insert(0, f"aarch64 {check.cpu or 'max'} under qemu, {REFERENCE_FRAMES} streamed frames: max abs diff "
                        f"{diff:.3e} vs PyTorch (tolerance {tolerance:.1e}): {'PASS' if passed else 'FAIL'}")
    return VerifyResult(directory, target.get("name", "?"), "emulated", passed, diff, tolerance, lines)
