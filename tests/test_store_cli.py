import json
import subprocess
import sys

import pytest
import torch

from bdlib.models import build_model
from bdlib.profiles import get_profile
from bdlib.registry import UnknownNameError
from bdlib.store import Store, config_key


def test_model_and_metrics_round_trip(tmp_path):
    store = Store(tmp_path)
    net = build_model("smallcnn", (101, 40), 10)
    cfg = {"attack": "badnets", "seed": 1}
    store.save_model("models", cfg, net, {"acc": 0.9, "poison_idx": [1, 2]})
    assert store.has("models", cfg) and not store.has("models", {**cfg, "seed": 2})
    other = store.load_model_into("models", cfg, build_model("smallcnn", (101, 40), 10))
    for k, v in net.state_dict().items():
        torch.testing.assert_close(other.state_dict()[k], v)
    assert store.load_metrics("models", cfg) == {"acc": 0.9, "poison_idx": [1, 2]}
    assert [r["config"] for r in store.records("models")] == [cfg]


def test_interrupted_write_is_never_trusted(tmp_path):
    store = Store(tmp_path)
    cfg = {"x": 1}
    half = tmp_path / "models" / f".tmp-{config_key(cfg)}-999"
    half.mkdir(parents=True)
    (half / "config.json").write_text(json.dumps(cfg))
    assert not store.has("models", cfg) and store.records("models") == []
    store.save("models", cfg, {"ok": True})
    assert store.has("models", cfg) and store.load_metrics("models", cfg) == {"ok": True}


def test_config_key_is_order_independent():
    assert config_key({"a": 1, "b": 2}) == config_key({"b": 2, "a": 1}) != config_key({"a": 1, "b": 3})


def test_unknown_profile_lists_valid_ones():
    with pytest.raises(UnknownNameError, match="valid profiles: budget, default, paper, smoke"):
        get_profile("fast")
    assert get_profile("smoke", train_epochs=1).train_epochs == 1
    with pytest.raises(UnknownNameError, match="'epochs'"):
        get_profile("smoke", epochs=1)


def test_cli_rejects_unknown_profile():
    proc = subprocess.run([sys.executable, "-m", "bdlib", "run", "--profile", "fast"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown profile 'fast'; valid profiles: budget, default, paper, smoke" in proc.stderr


def test_defense_notebooks_cover_the_profiles_victims():
    from bdlib.attacks import ATTACKS
    from bdlib.pipeline import victim_attacks
    from bdlib.study import defend_victims

    assert victim_attacks("smoke") == ["badnets", "badnets_burst"]
    assert set(victim_attacks("default")) == set(ATTACKS) and len(victim_attacks("default")) == len(ATTACKS.names())
    with pytest.raises(UnknownNameError, match="valid attacks: .*badnets"):  # before any data or training
        defend_victims("ft", "smoke", attacks=["badnet"])


def test_cli_store_verify_names_a_corrupt_entry_and_removes_it(tmp_path):
    import os

    store = Store(tmp_path / "store")
    store.save("models", {"a": 1}, {"acc": 0.5}, {"w": torch.ones(100)})
    store.save("models", {"a": 2}, {"acc": 0.6}, {"w": torch.ones(100)})
    weights = store.path("models", {"a": 1}) / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-40:] = bytes(40)
    weights.write_bytes(bytes(data))
    env = {**os.environ, "BDLIB_DATA": str(tmp_path)}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "bdlib", "store", *args], capture_output=True, text=True,
                              env=env)

    proc = cli("verify")
    assert proc.returncode == 1 and f"models/{config_key({'a': 1})}" in proc.stdout and "1 problem(s)" in proc.stdout
    assert cli("verify", "--remove").returncode == 0
    assert cli("verify").returncode == 0 and not store.has("models", {"a": 1}) and store.has("models", {"a": 2})
    assert cli("remove", "models", config_key({"a": 2})).returncode == 0 and not store.has("models", {"a": 2})
    assert cli("remove", "models", "0000").returncode == 2
