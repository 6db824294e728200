"""``tsm-export --tune``: MetaSchedule records for this CPU, and the check that they beat the default schedules.

Records are kept per target row and CPU model (:func:`tuning_dir`), so a
machine with another CPU finds none and uses the default schedules.  A
tuned build ships only when it runs faster here than the default schedules
(:func:`faster_of_tuned_and_default`): a short search can leave functions
slower than the hand-written schedules it replaces.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from online_tsm.export.targets import ExportTarget
from online_tsm.export.tvm.build import cpu_graph_rewrites, cpu_pipeline, input_specs, resolve_tvm_target
from online_tsm.manifest import Manifest
from online_tsm.console.progress import Say


def tuning_dir(row: ExportTarget, target_dict: dict[str, Any]) -> Path:
    """The MetaSchedule record folder for this target and CPU model (in the user's cache; none ship)."""
    from online_tsm.weights import cache_dir

    return cache_dir() / "tuning" / f"{row.name}-{target_dict.get('mcpu', 'generic')}"


def open_database(row: ExportTarget, target_dict: dict[str, Any]):  # noqa: ANN202
    from tvm.s_tir import meta_schedule as ms

    folder = tuning_dir(row, target_dict)
    if not (folder / "database_tuning_record.json").is_file():
        return None, []
    return ms.database.JSONDatabase(work_dir=str(folder), allow_missing=False), [str(folder)]


def tune_cpu(mod, row: ExportTarget, target, trials_per_task: int, progress: Say) -> Path:  # noqa: ANN001
    """MetaSchedule-tune every fused function here (``trials_per_task`` each); records go to the cache."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    cache = tuning_dir(row, resolve_tvm_target(row))
    cache.mkdir(parents=True, exist_ok=True)
    with target:
        fused = tvm.transform.Sequential(cpu.library_dispatch_passes(target) + cpu.legalize_passes(target))(
            cpu_graph_rewrites(mod, target))
    n_tasks = sum(1 for _, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
    progress(f"tuning {n_tasks} functions x {trials_per_task} trials with MetaSchedule (records in {cache})")
    # MetaSchedule appends to the record files of its work folder, and the records point into its workload
    # file by line number: two tuning runs at once would interleave both.  One at a time (and two tuning runs
    # on one CPU would disturb each other's measurements anyway).
    from online_tsm.fileio import file_lock

    def waiting() -> None:
        progress(f"waiting for another tuning run that writes to {cache}")

    from tvm.s_tir import meta_schedule as ms

    from online_tsm.export.tvm.tuning_builder import candidate_builder, cost_model_name
    from online_tsm.export.tvm.tuning_progress import tuning_progress

    total = trials_per_task * n_tasks
    cost_model = cost_model_name()
    if cost_model != "xgb":
        progress("xgboost is not installed, so candidates are picked at random instead of by MetaSchedule's "
                 "cost model; pip install 'online-tsm[tune]' for a better search in the same trials")
    with file_lock(cache / ".tune.lock", waiting), target, tuning_progress(cache, total, progress):
        ms.relax_integration.tune_relax(fused, {}, target, str(cache), max_trials_global=total,
                                        max_trials_per_task=trials_per_task, builder=candidate_builder(),
                                        cost_model=cost_model)
    return cache



TIMING_ROUNDS = 6        # rounds, in rotating order, when a tuned build is timed against the default schedules
FRAMES_PER_ROUND = 10


def faster_of_tuned_and_default(tuned, mod, target, manifest: Manifest, tuning: dict[str, Any],  # noqa: ANN001
                                 progress: Say):  # noqa: ANN202
    """The tuned build, unless the default schedules run faster here; ``tuning`` says which and by how much.

    Tuning records hold the best candidate MetaSchedule *measured*, not the
    best schedule there is: a short search (``--tune 2``) can leave a
    function slower than the hand-written default schedule it replaces (the
    default model ran 2.4x slower with 2 trials per function).  So a host
    build with records is timed against one without, on this CPU, and the
    faster one ships.
    """
    import tvm

    progress("timing the tuned build against the default schedules on this CPU")
    default = tvm.compile(mod, target, relax_pipeline=cpu_pipeline(target, None))
    ms_per_frame = time_executables({"tuned": tuned, "default": default}, input_specs(manifest))
    tuning["ms_per_frame_here"] = ms_per_frame
    winner = "tuned" if ms_per_frame["tuned"] <= ms_per_frame["default"] else "default"
    tuning["schedules"] = winner
    comparison = (f"{ms_per_frame['tuned']:.2f} ms/frame tuned vs {ms_per_frame['default']:.2f} ms with the default "
                  "schedules, timed here")
    if winner == "default":
        tuning["records"] = (f"not used: slower than the default schedules ({comparison}); more --tune trials may "
                             "find faster ones")
    progress(f"{winner} schedules kept: {comparison}")
    return tuned if winner == "tuned" else default


def time_executables(executables: dict[str, Any], inputs: dict[str, tuple[list[int], str]]) -> dict[str, float]:
    """Median ms per frame of each compiled Relax executable on this CPU, timed in interleaved rounds.

    The inputs are zeros (a convolution network's time does not depend on
    the values); the rounds rotate their order (:mod:`online_tsm.machine.interleave`)
    so a busy moment of the machine hits every build alike.  Each build is timed from a linked copy,
    as the runtime loads it: a virtual machine made on the in-memory
    executable itself changes what it later writes (TVM then warns for
    every function on saving and loading).
    """
    import tempfile

    import tvm

    from online_tsm.machine.interleave import interleaved_samples
    from online_tsm.runtimes.tvm_backend import ENTRY, config_threadpool_keeping_affinity, default_threads

    config_threadpool_keeping_affinity(tvm, default_threads())
    device = tvm.cpu()
    machines = {}
    with tempfile.TemporaryDirectory(prefix="online-tsm-timing-") as tmp:
        for name, executable in executables.items():
            path = Path(tmp) / f"{name}.so"
            executable.export_library(str(path))
            vm = tvm.relax.VirtualMachine(tvm.runtime.load_module(str(path)), device)
            vm.set_input(ENTRY, *(tvm.runtime.tensor(np.zeros(shape, dtype), device)
                                  for shape, dtype in inputs.values()))
            vm.time_evaluator("invoke_stateful", device, number=3, repeat=1)(ENTRY)   # warm-up
            machines[name] = vm
        timers = {name: vm.time_evaluator("invoke_stateful", device, number=FRAMES_PER_ROUND, repeat=1)
                  for name, vm in machines.items()}
        samples = interleaved_samples({name: (lambda timer=timer: timer(ENTRY).mean * 1e3)
                                       for name, timer in timers.items()},
                                      lambda turn: 1 if turn < TIMING_ROUNDS else 0)
    return {name: round(float(np.median(values)), 3) for name, values in samples.items()}
