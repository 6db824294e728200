"""Stream frames through compiled TVM libraries -- run by an aarch64 Python under qemu.

This file is executed as a script by the emulated interpreter of the
aarch64 sysroot (see ``online_tsm.export.emulate``), where only TVM, numpy
and the standard library exist, so it must not import ``online_tsm``.

It reads one job file (JSON) that lists several checks, because ``import
tvm`` alone costs seconds under emulation and is paid once per process.
For each check it loads the library with the aarch64 TVM runtime, streams
the given frames with the shift buffers carried from one step to the next
(names and order from the artifact's manifest) and saves the logits.

Before each check it records ``"started"`` in the results file, and after it
``"ok"`` or ``"error"``: if a broken library kills the whole process (a
segmentation fault in ``dlopen``), the host sees which check crashed it and
runs the remaining ones in a fresh process.

Usage: ``python3 emulated_check.py JOB.json``
"""
from __future__ import annotations

import json
import os
import platform
import sys
import traceback

# Python puts this script's folder first on sys.path; that folder (online_tsm's ``export/``) holds a ``tvm.py``
# that would shadow the real TVM.  Only the sysroot's site folder may provide packages here.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


def _write_results(path: str, results: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(results, fh, indent=1)
    os.replace(tmp, path)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    # TVM errors put the useful sentence last, after a backtrace.
    useful = [line for line in lines if not line.startswith(("File ", "at ", "Stack trace", "0:", "1:", "2:"))]
    return (useful[-1] if useful else type(exc).__name__)[:500]


def _load_vm(tvm, library: str):
    try:
        lib = tvm.runtime.load_module(library)
    except Exception as exc:  # noqa: BLE001 -- any load failure is reported as text
        message = _first_line(exc)
        kind = "needs_cuda" if "cuda" in str(exc).lower() else "error"
        raise _CheckFailure(kind, f"the aarch64 TVM runtime could not load {os.path.basename(library)}: {message}")
    try:
        return tvm.runtime.vm.VirtualMachine(lib, tvm.cpu())
    except Exception as exc:  # noqa: BLE001
        message = _first_line(exc)
        kind = "needs_cuda" if "cuda" in str(exc).lower() else "error"
        raise _CheckFailure(kind, f"{os.path.basename(library)} loaded but its VM could not start on the CPU: "
                                  f"{message}")


class _CheckFailure(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _param_names(vm, function: str) -> list[str] | None:
    """The compiled function's parameter names, or None if this runtime cannot tell."""
    try:
        arity = int(vm.module["get_function_arity"](function))
        return [str(vm.module["get_function_param_name"](function, i)) for i in range(arity)]
    except Exception:  # noqa: BLE001 -- optional introspection
        return None


def run_check(tvm, np, check: dict) -> None:
    vm = _load_vm(tvm, check["library"])
    function = check.get("function", "main")
    inputs = list(check["inputs"])
    params = _param_names(vm, function)
    if params is not None and params != inputs:
        raise _CheckFailure("error", f"the library's {function}() takes inputs {params} but the manifest lists "
                                     f"{inputs}; the artifact is inconsistent, re-export it")
    outputs = list(check["outputs"])
    frames = np.load(check["frames"])
    dev = tvm.cpu()
    state = {b["input"]: tvm.runtime.tensor(np.zeros(b["shape"], dtype=b["dtype"]), dev) for b in check["buffers"]}
    out_index = {name: i for i, name in enumerate(outputs)}
    logits = []
    for t, frame in enumerate(frames):
        feed = dict(state)
        feed[check["frame_input"]] = tvm.runtime.tensor(np.ascontiguousarray(frame[None]), dev)
        missing = [name for name in inputs if name not in feed]
        if missing:
            raise _CheckFailure("error", f"manifest inputs {missing} are neither the frame nor a shift buffer")
        try:
            result = vm[function](*[feed[name] for name in inputs])
        except Exception as exc:  # noqa: BLE001
            raise _CheckFailure("error", f"running {function}() on frame {t} failed: {_first_line(exc)}")
        result = [result] if isinstance(result, tvm.runtime.Tensor) else list(result)
        if len(result) != len(outputs):
            raise _CheckFailure("error", f"{function}() returned {len(result)} outputs, the manifest lists "
                                         f"{len(outputs)} ({outputs})")
        logits.append(result[out_index[check["logits_output"]]].numpy().reshape(-1))
        state = {b["input"]: result[out_index[b["output"]]] for b in check["buffers"]}
    np.save(check["output"], np.stack(logits).astype(np.float32))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: emulated_check.py JOB.json", file=sys.stderr)
        return 2
    with open(argv[1]) as fh:
        job = json.load(fh)
    results_path = job["results"]
    results = {"machine": platform.machine(), "python": platform.python_version(), "checks": {}}
    if os.path.exists(results_path):  # a previous process crashed: keep what it found
        with open(results_path) as fh:
            results["checks"] = json.load(fh).get("checks", {})
    import numpy as np
    import tvm
    import tvm.runtime.vm  # noqa: F401 -- makes tvm.runtime.vm available

    results.update(tvm=tvm.__version__, numpy=np.__version__)
    for check in job["checks"]:
        if check["id"] in results["checks"]:
            continue
        results["checks"][check["id"]] = {"status": "started"}
        _write_results(results_path, results)
        try:
            run_check(tvm, np, check)
            results["checks"][check["id"]] = {"status": "ok"}
        except _CheckFailure as exc:
            results["checks"][check["id"]] = {"status": exc.kind, "message": str(exc)}
        except Exception as exc:  # noqa: BLE001 -- report, go on with the next check
            results["checks"][check["id"]] = {
                "status": "error", "message": f"{type(exc).__name__}: {_first_line(exc)}",
                "traceback": traceback.format_exc()[-2000:]}
        _write_results(results_path, results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
