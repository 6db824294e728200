"""Checkpoint formats round-trip, and every bad file gets one clear error."""
import warnings

import pytest
import torch

from helpers import random_clip, seeded_model
from online_tsm import CheckpointError, OneWayShiftWarning, load_model, save_checkpoint
from online_tsm.checkpoint import detect_checkpoint_format


def _logits(model, seed=0):
    clip = random_clip(1, 4, model.input_size, seed=seed)
    with torch.inference_mode():
        return model.forward_clip(clip, "causal")


@pytest.mark.parametrize("fmt", ["online-tsm", "upstream-online", "upstream-offline"])
@pytest.mark.parametrize("config", [dict(seed=0), dict(seed=3, width_mult=0.5, input_size=96, n_class=10)])
def test_round_trip(tmp_path, fmt, config):
    model = seeded_model(**config)
    path = save_checkpoint(model, tmp_path / "ckpt.pth", fmt=fmt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_model(path, input_size=model.input_size if fmt != "online-tsm" else None)
    assert detect_checkpoint_format(torch.load(path, weights_only=True)) == fmt
    assert loaded.info.source_format == fmt
    assert loaded.width_mult == model.width_mult and loaded.n_class == model.n_class
    assert loaded.shift_blocks == model.shift_blocks
    assert (_logits(loaded) - _logits(model)).abs().max() == 0
    one_way = [w for w in caught if issubclass(w.category, OneWayShiftWarning)]
    assert bool(one_way) == (fmt == "upstream-offline")


def test_offline_keys_are_the_tsn_wrapper_layout(tmp_path):
    path = save_checkpoint(seeded_model(), tmp_path / "off.pth.tar", fmt="upstream-offline")
    keys = torch.load(path, weights_only=True)["state_dict"].keys()
    assert "module.base_model.features.3.conv.0.net.weight" in keys
    assert "module.base_model.features.2.conv.0.weight" in keys  # block 1 is not shifted
    assert "module.new_fc.weight" in keys and "module.base_model.classifier.weight" not in keys


def test_our_format_keeps_metadata_and_half(tmp_path):
    model = seeded_model(seed=1, width_mult=0.5, input_size=96, n_class=3)
    labels = ["left", "right", "still"]
    path = save_checkpoint(model, tmp_path / "m.pt", labels=labels, half=True, extra={"note": "x"})
    obj = torch.load(path, weights_only=True)
    assert obj["state_dict"]["classifier.weight"].dtype == torch.float16
    loaded = load_model(path)
    assert loaded.info.labels == labels and loaded.info.input_size == 96 and loaded.info.extra == {"note": "x"}
    assert loaded.classifier.weight.dtype == torch.float32
    assert (_logits(loaded) - _logits(model)).abs().max() < 0.05 * _logits(model).abs().max()


def test_old_checkpoints_without_num_batches_tracked_load(tmp_path):
    model = seeded_model(seed=4, width_mult=0.5, input_size=96, n_class=5)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    assert (_logits(load_model(tmp_path / "old.pth", input_size=96)) - _logits(model)).abs().max() == 0


def test_replace_classifier_for_fine_tuning(tmp_path):
    path = save_checkpoint(seeded_model(), tmp_path / "m.pt")
    model = load_model(path, n_class=5, replace_classifier=True)
    assert model.classifier.out_features == 5 and len(model.info.labels) == 5


# -- errors ---------------------------------------------------------------------------------

@pytest.fixture()
def good_state():
    return seeded_model(seed=5, width_mult=0.5, input_size=96, n_class=4).state_dict()


def _save(tmp_path, obj, name="bad.pth"):
    torch.save(obj, tmp_path / name)
    return tmp_path / name


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"no such checkpoint file: .*nope\.pth.*not a known weights name"):
        load_model(tmp_path / "nope.pth")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="is not a loadable PyTorch checkpoint"):
        load_model(tmp_path / "notes.txt")


def test_truncated_checkpoint(tmp_path, good_state):
    path = _save(tmp_path, good_state)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="is not a loadable PyTorch checkpoint"):
        load_model(path)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path):
    path = _save(tmp_path, {"state_dict": Evil()})
    with pytest.raises(CheckpointError, match="weights-only"):
        load_model(path)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(CheckpointError, match="expected a checkpoint file, got a directory"):
        load_model(tmp_path)


def test_unrecognised_keys(tmp_path):
    with pytest.raises(CheckpointError, match=r"unrecognised checkpoint keys \(first: encoder.w\)"):
        load_model(_save(tmp_path, {"encoder.w": torch.zeros(1)}))


def test_not_a_dict(tmp_path):
    with pytest.raises(CheckpointError, match="expected a state dict"):
        load_model(_save(tmp_path, [torch.zeros(1)]))


def test_missing_key_is_named(tmp_path, good_state):
    del good_state["features.5.conv.4.running_mean"]
    with pytest.raises(CheckpointError, match=r"format upstream-online: missing keys: features\.5\.conv\.4\.running_mean"):
        load_model(_save(tmp_path, good_state), input_size=96)


def test_unexpected_key_is_named(tmp_path, good_state):
    good_state["features.99.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"unexpected keys: features\.99\.weight"):
        load_model(_save(tmp_path, good_state), input_size=96)


def test_shape_mismatch_is_named(tmp_path, good_state):
    good_state["features.3.conv.0.weight"] = torch.zeros(7, 16, 1, 1)
    with pytest.raises(CheckpointError, match=r"shape mismatch: features\.3\.conv\.0\.weight \(7, 16, 1, 1\)"):
        load_model(_save(tmp_path, good_state), input_size=96)


def test_n_class_mismatch(tmp_path, good_state):
    with pytest.raises(CheckpointError, match="classifier.weight has 4 classes, n_class=27 was asked"):
        load_model(_save(tmp_path, good_state), n_class=27)


def test_unexpected_offline_key(tmp_path, good_state):
    state = {"module.base_model." + k: v for k, v in good_state.items()}
    state["module.consensus.w"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"unexpected keys for format upstream-offline: module\.consensus\.w"):
        load_model(_save(tmp_path, {"state_dict": state}))


def test_newer_format_version(tmp_path):
    path = save_checkpoint(seeded_model(seed=6, width_mult=0.5, input_size=96, n_class=2), tmp_path / "m.pt")
    obj = torch.load(path, weights_only=True)
    obj["version"] = 99
    with pytest.raises(CheckpointError, match="format version 99; this online-tsm reads up to version 1"):
        load_model(_save(tmp_path, obj))
