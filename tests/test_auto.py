"""``backend="auto"``: measured once per artifact, CPU and thread count, cached, overridable.

Timing is never asserted: the measurement runs on fake runtimes whose every
step advances a fake clock by a fixed cost, so which backend "is faster" is
decided by the test, and the real artifact only provides the folder (its
manifest sha256 keys the cache).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from runtime_artifacts import copy_artifact, small_artifact  # noqa: F401 -- fixture

from online_tsm.runtimes import open_runtime, resolve_auto
from online_tsm.runtimes.auto import (ENV_CHOICE, AutoChoice, cache_path, cpu_model, measure_backends,
                                      resolve_choice)
from online_tsm.runtimes.base import BackendUnavailable, Runtime, RuntimeOpenError


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeRuntime(Runtime):
    """Each step costs ``cost_ms`` on the fake clock; logits are zeros."""

    def __init__(self, name: str, cost_ms: float, clock: FakeClock) -> None:
        super().__init__(labels=["a", "b"], input_size=8, frame_shape=(1, 3, 8, 8), description=f"fake {name}")
        self.backend, self.cost_ms, self.clock = name, cost_ms, clock
        self.steps = 0
        self.closed = False

    def _zero_state(self) -> None:
        return None

    def _run(self, frames: np.ndarray, state: None) -> tuple[np.ndarray, None]:
        self.clock.now += self.cost_ms / 1e3
        self.steps += 1
        return np.zeros((1, 2), np.float32), state

    def close(self) -> None:
        self.closed = True


class Opener:
    """Records which backends were opened; ``costs`` gives each fake runtime's ms per frame."""

    def __init__(self, costs: dict[str, float], clock: FakeClock) -> None:
        self.costs, self.clock = costs, clock
        self.opened: dict[str, FakeRuntime] = {}

    def __call__(self, name: str) -> FakeRuntime:
        self.opened[name] = FakeRuntime(name, self.costs[name], self.clock)
        return self.opened[name]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ONLINE_TSM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(ENV_CHOICE, raising=False)
    return tmp_path / "cache"


def _choose(folder, costs, **kwargs):
    clock = FakeClock()
    opener = Opener(costs, clock)
    choice, runtime = resolve_choice(folder, clock=clock, opener=opener, **kwargs)
    return choice, runtime, opener


def test_measurement_interleaves_and_reports_each_backends_median():
    clock = FakeClock()
    runtimes = {"onnxruntime": FakeRuntime("onnxruntime", 6.5, clock), "tvm": FakeRuntime("tvm", 11.9, clock)}
    ms, frames = measure_backends(runtimes, clock=clock, budget_s=0.2, warmup=2, round_frames=4, min_rounds=3,
                                  max_rounds=10)
    assert ms == pytest.approx({"onnxruntime": 6.5, "tvm": 11.9})
    # the budget (0.2 s of fake time) stops it after the minimum rounds: 3 rounds x 4 frames each
    assert frames == {"onnxruntime": 12, "tvm": 12}
    assert runtimes["tvm"].steps == 2 + 3 * (3 + 4)  # warm-up, then per round 3 settling + 4 timed frames


def test_first_open_measures_keeps_the_fastest_and_caches(small_artifact, cache):
    choice, runtime, opener = _choose(small_artifact, {"onnxruntime": 2.0, "tvm": 5.0})
    assert choice.backend == "onnxruntime" and choice.reason == "measured"
    assert runtime is opener.opened["onnxruntime"] and not runtime.closed
    assert opener.opened["tvm"].closed  # the slower one is released
    assert choice.ms_per_frame == pytest.approx({"onnxruntime": 2.0, "tvm": 5.0})
    assert choice.describe().startswith("auto: onnxruntime 2.00 ms/frame vs tvm 5.00 ms, measured ")
    path = cache_path(small_artifact, None)
    assert path.parent == cache / "auto"
    stored = json.loads(path.read_text())
    assert stored["backend"] == "onnxruntime" and stored["cpu"] == cpu_model()
    assert not list(path.parent.glob("*.tmp"))  # written through a temp file, renamed

    # second open: the cache answers, nothing is opened or measured
    again, runtime, opener = _choose(small_artifact, {"onnxruntime": 9.0, "tvm": 1.0})
    assert again.backend == "onnxruntime" and again.reason == "cached" and runtime is None and not opener.opened
    assert again.ms_per_frame == pytest.approx({"onnxruntime": 2.0, "tvm": 5.0})
    assert "cached" in again.describe()


def test_cache_key_holds_threads_and_artifact(small_artifact, cache, tmp_path):
    _choose(small_artifact, {"onnxruntime": 2.0, "tvm": 5.0})
    other_threads, _, opener = _choose(small_artifact, {"onnxruntime": 5.0, "tvm": 2.0}, threads=1)
    assert other_threads.reason == "measured" and other_threads.backend == "tvm" and opener.opened
    assert cache_path(small_artifact, 1) != cache_path(small_artifact, None)

    from online_tsm.manifest import load_manifest, write_manifest

    changed = copy_artifact(small_artifact, tmp_path / "changed")
    manifest = load_manifest(changed)
    manifest.model["name"] = "renamed"
    write_manifest(changed, manifest)
    assert cache_path(changed, None) != cache_path(small_artifact, None)
    fresh, _, _ = _choose(changed, {"onnxruntime": 5.0, "tvm": 2.0})
    assert fresh.reason == "measured" and fresh.backend == "tvm"


def test_remeasure_and_a_corrupt_cache_measure_again(small_artifact, cache):
    _choose(small_artifact, {"onnxruntime": 2.0, "tvm": 5.0})
    again, _, _ = _choose(small_artifact, {"onnxruntime": 5.0, "tvm": 2.0}, remeasure=True)
    assert again.reason == "measured" and again.backend == "tvm"
    cache_path(small_artifact, None).write_text("{not json")
    after, _, _ = _choose(small_artifact, {"onnxruntime": 2.0, "tvm": 5.0})
    assert after.reason == "measured" and after.backend == "onnxruntime"


def test_environment_and_option_skip_the_measurement(small_artifact, cache, monkeypatch):
    monkeypatch.setenv(ENV_CHOICE, "tvm")
    choice, runtime, opener = _choose(small_artifact, {"onnxruntime": 1.0, "tvm": 9.0})
    assert (choice.backend, choice.reason, runtime, opener.opened) == ("tvm", ENV_CHOICE, None, {})
    assert choice.describe() == f"auto: tvm ({ENV_CHOICE})"
    option, _, opener = _choose(small_artifact, {"onnxruntime": 9.0, "tvm": 1.0}, choose="onnxruntime")
    assert (option.backend, option.reason, opener.opened) == ("onnxruntime", "option", {})
    assert not (cache / "auto").exists()  # nothing measured, nothing cached


def test_unknown_choice_is_one_clear_line(small_artifact, cache, monkeypatch):
    monkeypatch.setenv(ENV_CHOICE, "openvino")
    with pytest.raises(RuntimeOpenError) as exc:
        resolve_auto(small_artifact)
    assert str(exc.value) == (f"{ENV_CHOICE} names 'openvino'; expected one of onnxruntime, tvm, litert (or unset "
                              "it to measure)")


def test_a_forced_backend_that_cannot_run_says_why(small_artifact, cache, tmp_path):
    from online_tsm.manifest import load_manifest, write_manifest

    folder = copy_artifact(small_artifact, tmp_path / "onnx-only")
    manifest = load_manifest(folder)
    (folder / manifest.file_with_role("library")).unlink()
    write_manifest(folder, manifest)
    with pytest.raises(BackendUnavailable) as exc:
        resolve_auto(folder, choose="tvm")
    assert str(exc.value) == (f"choose=tvm but tvm cannot run {folder} here: the export folder has no library "
                              "file (target host)")
    only, runtime, opener = _choose(folder, {"onnxruntime": 1.0, "tvm": 1.0})
    assert (only.backend, only.reason, opener.opened) == ("onnxruntime", "only candidate", {})


def test_an_option_only_one_backend_takes_narrows_the_candidates(small_artifact, cache):
    choice, _, opener = _choose(small_artifact, {"onnxruntime": 9.0, "tvm": 1.0}, options={"batched": False})
    assert choice.backend == "onnxruntime" and choice.reason == "only candidate" and not opener.opened


def test_open_runtime_auto_measures_for_real_and_runs_the_chosen_backend(small_artifact, cache):
    frame = np.random.default_rng(0).standard_normal((3, 96, 96)).astype(np.float32)
    with open_runtime(small_artifact, threads=1) as rt:
        choice = rt.auto_choice
        assert isinstance(choice, AutoChoice) and choice.reason == "measured"
        assert rt.backend == choice.backend and set(choice.ms_per_frame) == {"onnxruntime", "tvm"}
        assert rt.description.startswith(f"auto: {choice.backend} ")
        got = rt.new_stream().step(frame)
    with open_runtime(small_artifact, choice.backend, threads=1) as direct:
        np.testing.assert_allclose(got, direct.new_stream().step(frame), rtol=0, atol=1e-5)
    assert resolve_auto(small_artifact, threads=1) == choice.backend  # cached: same answer, nothing measured
    assert resolve_auto("jester") == "torch"
