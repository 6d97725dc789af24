"""The store verifies what it serves: every file of an entry is checksummed at save and
checked on load; a corrupt entry fails naming itself, the file and the command that
removes it, or is moved aside and recomputed when asked to."""
import json
import math
import os
import pickle
import shutil
import subprocess
import warnings

import pytest
import torch

import bdlib.store as store_mod
from bdlib.models import build_model
from bdlib.store import Store, StoreError, StoreIntegrityError, StoreWarning, config_key

VICTIM = {"attack": "badnets", "seed": 0}
OTHER = {"attack": "blended", "seed": 0}
SHAPE = (101, 40)


def _net(seed=0):
    return build_model("smallcnn", SHAPE, 3, seed=seed)


def _saved(tmp_path, **kw):
    """A store with two victims of one architecture (different weights), and their paths."""
    store = Store(tmp_path, **kw)
    a = store.save_model("models", VICTIM, _net(0), {"acc": 0.9, "asr": 1.0, "ra": float("nan")})
    b = store.save_model("models", OTHER, _net(1), {"acc": 0.8, "asr": 0.13, "ra": 0.5})
    return store, a, b


def _flip(path, n=4000, offset=None):
    data = bytearray(path.read_bytes())
    start = len(data) // 2 if offset is None else offset
    for i in range(start, start + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _reads(store, cfg):
    """Every way the pipeline reads an entry."""
    return {"load_tensors": lambda: store.load_tensors("models", cfg),
            "load_model_into": lambda: store.load_model_into("models", cfg, _net(5)),
            "load_metrics": lambda: store.load_metrics("models", cfg),
            "records": lambda: store.records("models")}


def _assert_fails_naming(store, cfg, path, file, reason, records=True):
    for how, read in _reads(store, cfg).items():
        if how == "records" and not records:
            continue
        with pytest.raises(StoreIntegrityError) as info:
            read()
        e = info.value
        assert (e.kind, e.key, e.path, e.file) == ("models", config_key(cfg), str(path), file), how
        msg = str(e)
        assert f"models/{config_key(cfg)}" in msg and f"rm -rf {path}" in msg and file in msg, how
        assert reason in msg, (how, msg)
        assert "remove('models'" in msg  # the API way of removing it


def test_flipped_bytes_in_weights_are_detected(tmp_path):
    store, a, _ = _saved(tmp_path)
    _flip(a / "weights.safetensors")  # a still-parsable file: the old store served these weights
    _assert_fails_naming(store, VICTIM, a, "weights.safetensors", "SHA-256")
    assert [(p.key, p.file) for p in store.verify()] == [(config_key(VICTIM), "weights.safetensors")]
    assert store.has("models", VICTIM)  # on_corrupt="raise": has() is a cheap existence test


def test_weights_copied_from_another_victim_are_detected(tmp_path):
    store, a, b = _saved(tmp_path)
    shutil.copyfile(b / "weights.safetensors", a / "weights.safetensors")  # same size, valid, wrong
    _assert_fails_naming(store, VICTIM, a, "weights.safetensors", "replaced by another entry's")
    torch.testing.assert_close(store.load_tensors("models", OTHER), _net(1).state_dict())  # b is fine


def test_entries_swapped_by_directory_are_detected(tmp_path):
    """Both directories renamed onto each other: every file matches its own manifest, only the
    key says the entry is not the one asked for."""
    store, a, b = _saved(tmp_path)
    os.rename(a, tmp_path / "x")
    os.rename(b, a)
    os.rename(tmp_path / "x", b)
    _assert_fails_naming(store, VICTIM, a, "manifest.json", f"written for key '{config_key(OTHER)}'", records=False)
    with pytest.raises(StoreIntegrityError, match="another entry's files"):
        store.records("models")
    assert {p.key for p in store.verify()} == {config_key(VICTIM), config_key(OTHER)}


def test_edited_metrics_are_detected(tmp_path):
    store, a, _ = _saved(tmp_path)
    m = json.loads((a / "metrics.json").read_text())
    m["asr"] = 0.1  # same length: only the checksum can tell
    text = json.dumps(m, indent=1)
    assert len(text) == (a / "metrics.json").stat().st_size
    (a / "metrics.json").write_text(text)
    _assert_fails_naming(store, VICTIM, a, "metrics.json", "SHA-256")


def test_edited_config_is_detected(tmp_path):
    store, a, _ = _saved(tmp_path)
    (a / "config.json").write_text((a / "config.json").read_text().replace("badnets", "Badnets"))
    _assert_fails_naming(store, VICTIM, a, "config.json", "SHA-256")


@pytest.mark.parametrize("size", [0, 1000, "half"], ids=["empty", "header-cut", "half"])
def test_truncated_weights_fail_naming_the_path(tmp_path, size):
    store, a, _ = _saved(tmp_path)
    w = a / "weights.safetensors"
    full = w.stat().st_size
    keep = full // 2 if size == "half" else size
    w.write_bytes(w.read_bytes()[:keep])
    _assert_fails_naming(store, VICTIM, a, "weights.safetensors",
                         f"{'empty' if keep == 0 else 'truncated'}: {keep} bytes, {full} were saved")


def _unchecked(entry):
    """Rewrite an entry's manifest the way the store wrote it before checksums (format 1)."""
    m = json.loads((entry / "manifest.json").read_text())
    (entry / "manifest.json").write_text(json.dumps({"format": 1, "files": m["files"], "nonfinite": m["nonfinite"]}))


@pytest.mark.parametrize("size", [0, 1000, "half"], ids=["empty", "header-cut", "half"])
def test_truncated_weights_of_entries_without_checksums_fail_naming_the_path(tmp_path, size):
    """Without a checksum to compare, the safetensors error itself is reported with the path."""
    store, a, _ = _saved(tmp_path)
    _unchecked(a)
    w = a / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:w.stat().st_size // 2 if size == "half" else size])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)
        _assert_fails_naming(store, VICTIM, a, "weights.safetensors", "not a readable safetensors file")


@pytest.mark.parametrize("checked", [True, False], ids=["checksummed", "before-checksums"])
def test_malformed_metrics_fail_naming_the_path(tmp_path, checked):
    store, a, _ = _saved(tmp_path)
    if not checked:
        _unchecked(a)
    (a / "metrics.json").write_text('{"acc": 0.9, "asr": ')
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)
        _assert_fails_naming(store, VICTIM, a, "metrics.json", "bytes" if checked else "not valid JSON")


def test_malformed_manifest_fails_naming_the_path(tmp_path):
    store, a, _ = _saved(tmp_path)
    (a / "manifest.json").write_text('{"format": 2, "files"')
    with pytest.raises(StoreIntegrityError, match="manifest.json: not valid JSON") as info:
        store.load_metrics("models", VICTIM)
    assert info.value.path == str(a)
    assert not store.has("models", VICTIM)  # as before: an unreadable manifest is no complete entry


def test_the_command_in_the_message_removes_the_entry(tmp_path):
    store, a, _ = _saved(tmp_path)
    _flip(a / "weights.safetensors")
    with pytest.raises(StoreIntegrityError) as info:
        store.load_tensors("models", VICTIM)
    command = next(line.strip() for line in str(info.value).splitlines() if line.strip().startswith("rm -rf "))
    subprocess.run(command, shell=True, check=True)
    assert not store.has("models", VICTIM) and store.verify() == []


def test_verify_and_remove(tmp_path):
    store, a, b = _saved(tmp_path)
    store.save("features", {"split": "test"}, {"n": 3}, {"x": torch.ones(3, 4)})
    assert store.verify() == [] and store.verify("models") == []
    _flip(b / "weights.safetensors", n=10)
    (tmp_path / "features" / config_key({"split": "test"}) / "metrics.json").write_text("{}")
    problems = store.verify()
    assert [(p.kind, p.key, p.file) for p in problems] == [
        ("features", config_key({"split": "test"}), "metrics.json"),
        ("models", config_key(OTHER), "weights.safetensors")]
    assert "models/" in str(problems[1]) and str(b) in str(problems[1])
    assert [p.kind for p in store.verify("models")] == ["models"]
    for p in problems:
        assert store.remove(p.kind, p.key)
    assert store.verify() == [] and not store.has("models", OTHER) and store.has("models", VICTIM)
    assert not store.remove("models", OTHER)
    assert store.remove("models", VICTIM) and not a.exists()  # by config too
    assert not list(tmp_path.glob("*/.tmp-*"))


def test_recompute_mode_moves_a_corrupt_entry_aside_and_has_says_no(tmp_path, monkeypatch):
    monkeypatch.setenv("BDLIB_STORE_ON_CORRUPT", "recompute")
    store, a, _ = _saved(tmp_path)
    assert store.on_corrupt == "recompute" and store.has("models", VICTIM)
    _flip(a / "weights.safetensors")
    with pytest.warns(StoreWarning, match="moved aside"):
        assert not store.has("models", VICTIM)
    aside = list((tmp_path / "models").glob(f".corrupt-{config_key(VICTIM)}-*"))
    assert len(aside) == 1 and (aside[0] / "weights.safetensors").exists()  # kept for inspection
    assert not a.exists() and [r["config"] for r in store.records("models")] == [OTHER]
    # the pipeline's "has, else compute and save" now recomputes it
    store.save_model("models", VICTIM, _net(0), {"acc": 0.9, "asr": 1.0})
    torch.testing.assert_close(store.load_tensors("models", VICTIM), _net(0).state_dict())
    assert store.verify() == [] and store.clean_stale() == [] and aside[0].exists()
    # a corrupt entry met by a load (not has) is moved aside too, and the error says so
    (a / "metrics.json").write_text("{}")
    with pytest.warns(StoreWarning), pytest.raises(StoreIntegrityError, match="moved aside to .*recomputed") as info:
        store.load_metrics("models", VICTIM)
    assert info.value.moved_to and not a.exists()
    # records leave a corrupt entry out
    _flip(tmp_path / "models" / config_key(OTHER) / "weights.safetensors", n=1)
    with pytest.warns(StoreWarning):
        assert store.records("models") == []


def test_on_corrupt_is_validated(tmp_path, monkeypatch):
    assert Store(tmp_path).on_corrupt == "raise" and Store(tmp_path, on_corrupt="recompute").on_corrupt == "recompute"
    with pytest.raises(ValueError, match="not one of: raise, recompute"):
        Store(tmp_path, on_corrupt="ignore")
    monkeypatch.setenv("BDLIB_STORE_ON_CORRUPT", "fix")
    with pytest.raises(ValueError, match="BDLIB_STORE_ON_CORRUPT"):
        Store(tmp_path)


def test_saving_over_a_corrupt_entry_replaces_it(tmp_path):
    """Entries are immutable — except a corrupt one: a writer that computed the artifact
    again puts its copy in place of it (the corrupt one is kept aside)."""
    store, a, _ = _saved(tmp_path)
    _flip(a / "weights.safetensors")
    with pytest.warns(StoreWarning, match="moved aside"):
        store.save_model("models", VICTIM, _net(0), {"acc": 0.9, "asr": 1.0})
    torch.testing.assert_close(store.load_tensors("models", VICTIM), _net(0).state_dict())
    assert len(list((tmp_path / "models").glob(".corrupt-*"))) == 1
    store.save_model("models", VICTIM, _net(3), {"acc": 0.1})  # an intact entry is kept
    assert store.load_metrics("models", VICTIM)["acc"] == 0.9


def test_old_entries_without_checksums_load_with_one_warning(tmp_path):
    store = Store(tmp_path)
    net = _net(0)
    paths = [store.save_model("models", {"old": i}, net, {"acc": 0.5, "asr": float("nan")}) for i in range(3)]
    for p in paths[:2]:
        _unchecked(p)  # written by the store before checksums (format 1)
    (paths[2] / "manifest.json").unlink()  # written before manifests
    with pytest.warns(StoreWarning, match="served without verification") as rec:
        for i in range(3):
            torch.testing.assert_close(store.load_tensors("models", {"old": i}), net.state_dict())
            assert i == 2 or math.isnan(store.load_metrics("models", {"old": i})["asr"])
        assert len(store.records("models")) == 3
    assert len([w for w in rec if issubclass(w.category, StoreWarning)]) == 1  # once per kind and process
    assert store.verify() == []
    assert {p.key for p in store.verify(strict=True)} == {config_key({"old": i}) for i in range(3)}


@pytest.mark.filterwarnings("ignore:entries of")
def test_an_old_entry_whose_config_hashes_elsewhere_warns(tmp_path):
    store = Store(tmp_path)
    p = store.save("models", {"old": 1}, {"acc": 0.5})
    _unchecked(p)
    (p / "config.json").write_text(json.dumps({"old": 2}))
    with pytest.warns(StoreWarning, match=f"hashes to key {config_key({'old': 2})}"):
        assert store.load_metrics("models", {"old": 1}) == {"acc": 0.5}


def test_a_config_that_does_not_hash_back_still_verifies(tmp_path):
    """Keys hash ``default=str`` renderings; a numpy knob is written as a number, so its
    config.json cannot re-derive the key: the manifest says so and the key is trusted."""
    import numpy as np

    store = Store(tmp_path)
    cfg = {"lr": np.float32(0.01), "seed": 0}
    p = store.save("defenses", cfg, {"acc": 1.0})
    assert json.loads((p / "manifest.json").read_text())["config_rehashes"] is False
    assert store.load_metrics("defenses", cfg) == {"acc": 1.0} and store.verify() == []


def test_verification_is_cached_but_never_masks_a_later_change(tmp_path, monkeypatch):
    store, a, _ = _saved(tmp_path)
    calls = []
    real = store_mod._hash_fd
    monkeypatch.setattr(store_mod, "_hash_fd", lambda fd: calls.append(fd) or real(fd))
    for _ in range(3):
        store.load_model_into("models", VICTIM, _net(5))
        store.load_metrics("models", VICTIM)
    assert calls == []  # hashed at save, trusted while the file is the same
    w = a / "weights.safetensors"
    st = w.stat()
    _flip(w, n=8)
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with its old mtime (ctime still moves)
    with pytest.raises(StoreIntegrityError, match="SHA-256"):
        store.load_tensors("models", VICTIM)
    assert len(calls) == 1


def test_integrity_error_is_a_store_error_and_pickles(tmp_path):
    e = StoreIntegrityError("models", "abc", str(tmp_path / "models" / "abc"), "metrics.json", "SHA-256 differs")
    assert isinstance(e, StoreError)
    back = pickle.loads(pickle.dumps(e))
    assert str(back) == str(e) and (back.kind, back.key, back.file) == ("models", "abc", "metrics.json")


def test_entries_record_checksums_of_every_file(tmp_path):
    store, a, _ = _saved(tmp_path)
    m = json.loads((a / "manifest.json").read_text())
    assert m["key"] == a.name and m["format"] == 2 and m["config_rehashes"] is True
    import hashlib

    for name in ("config.json", "metrics.json", "weights.safetensors"):
        assert m["sha256"][name] == hashlib.sha256((a / name).read_bytes()).hexdigest()
        assert m["size"][name] == (a / name).stat().st_size


def test_merge_from_copies_missing_verified_entries_and_refuses_corrupt_ones(tmp_path):
    src, dst = Store(tmp_path / "a"), Store(tmp_path / "b")
    src.save("models", {"k": 1}, {"acc": 0.5}, {"w": torch.ones(10)})
    src.save("models", {"k": 2}, {"acc": 0.6}, {"w": torch.ones(10)})
    dst.save("models", {"k": 2}, {"acc": 0.9}, {"w": torch.zeros(10)})  # already there: kept
    assert dst.merge_from(src.root) == 1
    assert dst.load_metrics("models", {"k": 1}) == {"acc": 0.5} and dst.load_metrics("models", {"k": 2}) == {"acc": 0.9}
    assert dst.verify(strict=True) == [] and not list((tmp_path / "b" / "models").glob(".tmp-*"))
    src.save("models", {"k": 3}, {"acc": 0.7}, {"w": torch.ones(10)})
    (src.path("models", {"k": 3}) / "metrics.json").write_text('{"acc": 1.0}')
    with pytest.raises(StoreIntegrityError):
        dst.merge_from(src)
    assert not dst.has("models", {"k": 3})
