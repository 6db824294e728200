"""The main job streams frames, says where its weights came from, and exports + verifies for this CPU."""
import pytest

from helpers import seeded_model
from online_tsm import save_checkpoint
from online_tsm.apps import quickstart
from online_tsm.apps.quickstart import main
from online_tsm.synthetic import GESTURES


def test_quickstart_without_a_shipped_default_says_random_weights(capsys, monkeypatch):
    monkeypatch.setattr(quickstart, "default_weights", lambda: None)
    assert main(["--frames", "2", "--stream-only"]) == 0
    out = capsys.readouterr().out
    assert "random weights" in out and out.count("top-1") == 2


@pytest.mark.skipif(quickstart.default_weights() is None, reason="needs the shipped default model")
@pytest.mark.parametrize("motion", ["swipe-left", "zoom-out"])
def test_quickstart_default_model_names_the_gesture_at_its_training_pace(motion, capsys):
    assert main(["--stream-only", "--motion", motion]) == 0
    out = capsys.readouterr().out
    assert "inference on every 4 frame(s)" in out and out.count("top-1") == 8   # 32 frames, one in 4
    shown = out.strip().splitlines()[-1]
    assert shown.startswith(f"after 32 frames: {GESTURES[motion]} "), shown


def test_quickstart_with_weights(tmp_path, capsys):
    path = save_checkpoint(seeded_model(seed=1, width_mult=0.5, input_size=96, n_class=3), tmp_path / "m.pt",
                           labels=["a", "b", "c"])
    assert main(["--weights", str(path), "--frames", "3", "--stream-only", "--motion", "zoom-in"]) == 0
    out = capsys.readouterr().out
    assert "96x96" in out and out.count("top-1") == 3 and "Zooming In" in out


def test_quickstart_bad_weights(tmp_path, capsys):
    assert main(["--weights", str(tmp_path / "missing.pt")]) == 2
    assert "error: no such checkpoint file" in capsys.readouterr().err


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache for the export-stage tests, so that the artifact is built once."""
    return tmp_path_factory.mktemp("quickstart-cache")


def _small():
    return seeded_model(seed=4, width_mult=0.5, input_size=64, n_class=5)


def test_export_and_verify_stage_builds_once_and_passes(shared_cache, monkeypatch, capsys):
    monkeypatch.setenv("ONLINE_TSM_CACHE", str(shared_cache))
    model = _small()
    folder = quickstart.export_and_verify(model)
    out = capsys.readouterr().out
    assert (folder / "manifest.json").is_file() and "max abs diff" in out and "PASS" in out
    assert folder.is_relative_to(shared_cache)
    assert quickstart.export_and_verify(model) == folder  # second run: the cached artifact, not a rebuild
    assert "building" not in capsys.readouterr().out


def test_export_and_verify_refuses_a_mismatch(shared_cache, monkeypatch):
    from online_tsm.export import verify
    monkeypatch.setenv("ONLINE_TSM_CACHE", str(shared_cache))
    real = verify.verify_artifact

    def failing(directory, **kwargs):
        result = real(directory, **kwargs)
        result.passed = False
        return result

    monkeypatch.setattr(verify, "verify_artifact", failing)
    with pytest.raises(quickstart.UserError, match="does not reproduce PyTorch"):
        quickstart.export_and_verify(_small())
