"""The weights registry: download to a cache with sha256 checks, never the network in tests."""
import dataclasses

import pytest

from helpers import seeded_model
from online_tsm import load_model, save_checkpoint, weights
from online_tsm.labels import JESTER_LABELS
from online_tsm.weights import WeightsError, fetch_weights, find_entry, sha256_file


def test_registry_has_upstream_jester_entry():
    entry = find_entry("jester")
    assert entry is find_entry("jester-mobilenetv2-online")
    assert entry.labels == JESTER_LABELS and len(entry.labels) == 27
    assert all(u.startswith("https://") and u.endswith("mobilenetv2_jester_online.pth.tar") for u in entry.urls)


@pytest.fixture()
def local_entry(tmp_path, monkeypatch):
    """Registry entry pointing at a file:// URL the test creates."""
    src = tmp_path / "src" / "w.pth"
    src.parent.mkdir()
    save_checkpoint(seeded_model(seed=7, width_mult=0.5, input_size=96, n_class=27), src, fmt="upstream-online")
    entry = dataclasses.replace(weights.WEIGHTS["jester-mobilenetv2-online"], urls=(src.as_uri(),),
                                sha256=sha256_file(src), input_size=96)
    monkeypatch.setitem(weights.WEIGHTS, entry.name, entry)
    monkeypatch.setenv("ONLINE_TSM_CACHE", str(tmp_path / "cache"))
    return entry, src


def test_fetch_downloads_verifies_and_caches(local_entry, tmp_path):
    entry, src = local_entry
    path = fetch_weights("jester")
    assert path == tmp_path / "cache" / entry.filename and path.read_bytes() == src.read_bytes()
    src.unlink()  # a second call must use the cache
    assert fetch_weights("jester") == path
    model = load_model("jester")
    assert model.info.labels == list(JESTER_LABELS) and model.input_size == 96


def test_sha256_mismatch(local_entry, monkeypatch):
    entry, _ = local_entry
    monkeypatch.setitem(weights.WEIGHTS, entry.name, dataclasses.replace(entry, sha256="0" * 64))
    with pytest.raises(WeightsError, match="sha256 mismatch .* expected 0000"):
        fetch_weights("jester")


def test_trust_on_first_use_records_digest(local_entry, monkeypatch, capsys):
    entry, src = local_entry
    monkeypatch.setitem(weights.WEIGHTS, entry.name, dataclasses.replace(entry, sha256=None))
    path = fetch_weights("jester")
    assert "no published sha256" in capsys.readouterr().err
    path.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        fetch_weights("jester")


def test_offline_message(local_entry, monkeypatch):
    entry, _ = local_entry
    # Port 9 on loopback refuses at once: an offline machine without touching any network.
    monkeypatch.setitem(weights.WEIGHTS, entry.name, dataclasses.replace(entry, urls=("http://127.0.0.1:9/w.pth",)))
    with pytest.raises(WeightsError, match=r"could not download jester-mobilenetv2-online \(offline\?\)"):
        fetch_weights("jester")


def test_unknown_name():
    with pytest.raises(WeightsError, match="unknown weights name 'kinetics'"):
        fetch_weights("kinetics")
