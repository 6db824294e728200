"""How MetaSchedule builds each tuning candidate: without loading every GPU's tensor intrinsics first.

MetaSchedule's stock builder starts fresh worker processes for every batch of
candidates (to contain a memory leak of long-lived workers), and each worker
imports ``tvm.s_tir.tensor_intrin`` before it compiles anything.  That import
parses the TVMScript of every intrinsic of every GPU and CPU family; it took
21.5 s of the 22.6 s that one trivial candidate needed on a 2-core Zen 4
(CUDA's alone 15 s), so tuning the default model at 2 trials per function
would spend 15 to 30 minutes importing (an estimate: 44 to 88 batches).

The intrinsics are only looked up by name while a schedule is *made*
(``tensorize``, in the tuning process); a candidate handed to the builder
already carries their bodies, so compiling it needs nothing but the lowering
pipeline.  :func:`build_candidate` is the stock build minus that import.

MetaSchedule ranks candidates with an XGBoost cost model, which needs the
optional ``xgboost`` package; :func:`cost_model_name` picks it when present.
"""
from __future__ import annotations

import importlib.util
from typing import Any


def build_candidate(mod: Any, target: Any, _params: Any) -> Any:
    """Compile one scheduled candidate for the CPU (MetaSchedule's ``f_build`` contract)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def candidate_builder() -> Any:
    """A MetaSchedule ``LocalBuilder`` that compiles with :func:`build_candidate`."""
    from tvm.s_tir import meta_schedule as ms

    return ms.builder.LocalBuilder(f_build=build_candidate)


def cost_model_name() -> str:
    """MetaSchedule's XGBoost cost model when ``xgboost`` is installed (the ``tune`` extra), else random picks.

    MetaSchedule imports XGBoost only once the first candidates come back, so
    without this check a run fails after minutes of work instead of before.
    """
    return "xgb" if importlib.util.find_spec("xgboost") is not None else "random"
