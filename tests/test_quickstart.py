"""The main job streams frames and reports where its weights came from."""
from helpers import seeded_model
from online_tsm import save_checkpoint
from online_tsm.quickstart import main


def test_quickstart_default(capsys):
    assert main(["--frames", "2"]) == 0
    out = capsys.readouterr().out
    assert "random weights" in out and out.count("top-1") == 2


def test_quickstart_with_weights(tmp_path, capsys):
    path = save_checkpoint(seeded_model(seed=1, width_mult=0.5, input_size=96, n_class=3), tmp_path / "m.pt",
                           labels=["a", "b", "c"])
    assert main(["--weights", str(path), "--frames", "3"]) == 0
    out = capsys.readouterr().out
    assert "96x96" in out and out.count("top-1") == 3


def test_quickstart_bad_weights(tmp_path, capsys):
    assert main(["--weights", str(tmp_path / "missing.pt")]) == 2
    assert "error: no such checkpoint file" in capsys.readouterr().err
