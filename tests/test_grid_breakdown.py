"""benchmarks/study_grid.py's breakdown reads a store shared with other studies: only the entries of
the asked seeds and data set count (the README's default-grid costs are read this way)."""
import importlib.util
import json

from bdlib.paths import REPO_ROOT


def _load():
    spec = importlib.util.spec_from_file_location("study_grid", REPO_ROOT / "benchmarks" / "study_grid.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _entry(store, kind, key, config, metrics):
    d = store / kind / key
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(config))
    (d / "metrics.json").write_text(json.dumps(metrics))


def test_breakdown_counts_only_the_asked_seeds_and_data_set(tmp_path):
    grid = _load()
    for i, (seed, data) in enumerate([(0, "a"), (1, "a"), (0, "b")]):
        _entry(tmp_path, "models", f"m{i}", {"seed": seed, "dataset": data}, {"train_time_s": 10.0 * (i + 1)})
        _entry(tmp_path, "defenses", f"d{i}", {"defense": "gnft", "defense_knobs": {"mode": "approx"},
                                              "seed": seed, "victim": {"seed": seed, "dataset": data}},
               {"time_s": 1.0 * (i + 1)})
    assert grid.breakdown(tmp_path) == {"victims": 60.0, "defense gnft-approx": 6.0}
    assert grid.breakdown(tmp_path, seeds=[0], dataset="a") == {"victims": 10.0, "defense gnft-approx": 1.0}
    assert grid.breakdown(tmp_path, seeds=[0, 1], dataset="a") == {"victims": 30.0, "defense gnft-approx": 3.0}
