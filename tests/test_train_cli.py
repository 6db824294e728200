"""``tsm-train`` (train, eval, make-synthetic) and ``tsm-convert`` end to end, on tiny runs.

These check the plumbing (files written, metadata, clip vs streamed accuracy,
one-line errors), not that anything is learned: that is tests/test_train_proof.py.
"""
from __future__ import annotations

import json

import pytest
import torch

from online_tsm.checkpoint import load_model, save_checkpoint
from online_tsm.models import MobileNetV2TSM
from online_tsm.synthetic import GESTURES
from online_tsm.training import cli, convert

# The smallest run that goes through every stage: 8 clips (one per class), one epoch, 32x32.
TINY = ["--data", "synthetic", "--width", "0.25", "--input-size", "32", "--segments", "4", "--train-clips", "8",
        "--val-clips", "8", "--epochs", "1", "--batch-size", "4", "--threads", "1", "--no-progress"]
NO_WIDTH = TINY[:2] + TINY[4:]  # with --init the width comes from the checkpoint


def small_model(n_class: int = 8) -> MobileNetV2TSM:
    torch.manual_seed(0)
    return MobileNetV2TSM(n_class=n_class, width_mult=0.25, input_size=32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert cli.main(TINY + ["--out", str(out)]) == 0
        assert torch.get_num_threads() == 2  # --threads 1 was for the run only, not for the calling program
    finally:
        torch.set_num_threads(threads)
    return out


def test_train_writes_checkpoint_metrics_and_confusion(trained, capsys):
    model = load_model(trained / "best.pt")
    assert model.info.source_format == "online-tsm"
    assert list(model.info.labels) == list(GESTURES.values())
    assert (model.width_mult, model.input_size, len(model.shift_blocks)) == (0.25, 32, 10)
    extra = model.info.extra
    assert extra["trained_shift"] == "causal" and extra["segments"] == 4
    # 8 synthetic clips of 24-40 frames cut into 4 segments: the stride the demo will stream at
    assert 6.0 <= extra["frame_stride"] <= 10.0
    assert extra["command"].startswith("tsm-train --data synthetic")
    assert extra["split"] == {"val_fraction": 0.2, "seed": 0}  # int8 calibration holds out the same clips
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["clip_top1"] == metrics["stream_top1"]
    assert metrics["clip_stream_max_abs_diff"] < 1e-4
    assert set(metrics["direction_pair_accuracy"]) == {
        "Swiping Left / Swiping Right", "Swiping Up / Swiping Down",
        "Zooming In With Full Hand / Zooming Out With Full Hand"}
    assert metrics["config"]["augment"] is True
    assert (trained / "confusion.png").stat().st_size > 1000


def test_eval_reports_clip_and_stream(trained, tmp_path, capsys):
    out = tmp_path / "m.json"
    rc = cli.main(["eval", "--weights", str(trained / "best.pt"), "--data", "synthetic", "--train-clips", "8",
                   "--val-clips", "8", "--threads", "1", "--no-progress", "--json", str(out),
                   "--confusion", str(tmp_path / "c.png")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "clip mode (causal shift)" in text and "streamed frame by frame" in text
    metrics = json.loads(out.read_text())
    assert metrics["segments"] == 4 and metrics["clips"] == 8
    assert metrics["clip_top1"] == metrics["stream_top1"] and not metrics.get("stream_mismatch")
    assert (tmp_path / "c.png").is_file()


def test_no_augment_and_tsn_baseline(tmp_path):
    out = tmp_path / "tsn"
    assert cli.main(TINY + ["--shift", "none", "--no-augment", "--out", str(out)]) == 0
    model = load_model(out / "best.pt")
    assert model.shift_blocks == ()  # a TSN model is saved without shift, so it streams exactly
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["augment"] is False and metrics["config"]["shift"] == "none"
    assert metrics["clip_stream_max_abs_diff"] < 1e-4


def test_fine_tune_from_a_checkpoint_replaces_the_classifier(tmp_path, capsys):
    base = save_checkpoint(small_model(5), tmp_path / "base.pt",
                           labels=[f"c{i}" for i in range(5)])
    out = tmp_path / "ft"
    rc = cli.main(NO_WIDTH + ["--init", str(base), "--freeze-backbone", "--out", str(out)])
    assert rc == 0
    assert "new classifier: 5 -> 8 classes" in capsys.readouterr().err
    tuned = load_model(out / "best.pt")
    assert tuned.n_class == 8
    before = load_model(base)
    assert torch.equal(tuned.features[3].conv[0].weight, before.features[3].conv[0].weight)  # frozen


def test_train_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["--data", str(tmp_path / "missing"), "--threads", "1"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: data not found")
    base = save_checkpoint(small_model(), tmp_path / "w.pt")
    assert cli.main(NO_WIDTH + ["--init", str(base), "--width", "0.5", "--out", str(tmp_path / "o")]) == 2
    assert "contradicts --init" in capsys.readouterr().err
    assert cli.main(["--data", "synthetic", "--input-size", "100"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert cli.main(["--data", "synthetic", "--warmup-epochs", "-1"]) == 2
    assert "warm-up epochs must be >= 0, got -1.0" in capsys.readouterr().err


def test_make_synthetic_writes_class_folders(tmp_path, capsys):
    assert cli.main(["make-synthetic", str(tmp_path / "set"), "--clips", "8", "--size", "64x48"]) == 0
    folders = sorted(p.name for p in (tmp_path / "set").iterdir())
    assert folders == sorted(GESTURES.values())
    assert cli.main(["make-synthetic", str(tmp_path / "x"), "--size", "big"]) == 2
    assert "--size must look like 160x120" in capsys.readouterr().err


def test_convert_to_half_keeps_the_model(tmp_path, capsys):
    src = save_checkpoint(small_model(), tmp_path / "plain.pt", fmt="upstream-online")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(GESTURES.values()) + "\n")
    assert convert.main([str(src), str(tmp_path / "ours.pt"), "--labels", str(labels), "--input-size", "32",
                         "--half"]) == 0
    assert "8 classes" in capsys.readouterr().out
    model = load_model(tmp_path / "ours.pt")
    assert list(model.info.labels) == list(GESTURES.values()) and model.input_size == 32
    assert convert.main([str(src), str(tmp_path / "y.pt"), "--labels", "jester"]) == 2
    assert "jester has 27 labels but the model has 8 classes" in capsys.readouterr().err


def test_fine_tune_on_a_subset_of_the_checkpoint_classes_keeps_their_rows(tmp_path, capsys):
    from online_tsm.labels import JESTER_LABELS

    base_model = small_model(len(JESTER_LABELS))
    torch.nn.init.normal_(base_model.classifier.weight)
    base = save_checkpoint(base_model, tmp_path / "jester-like.pt", labels=JESTER_LABELS)
    out = tmp_path / "ft"
    rc = cli.main(NO_WIDTH + ["--init", str(base), "--lr", "1e-12", "--out", str(out)])  # lr ~0: rows as loaded
    assert rc == 0
    assert "classifier: the rows of 8 of its 27 classes kept" in capsys.readouterr().err
    tuned = load_model(out / "best.pt")
    rows = [list(JESTER_LABELS).index(name) for name in GESTURES.values()]
    assert torch.allclose(tuned.classifier.weight, base_model.classifier.weight[rows], atol=1e-6)
