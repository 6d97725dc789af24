"""Studies (bdlib/study.py): expansion into cells, strict pivots, labels that keep sweeps
apart, and the runner's refusal of parameters a notebook does not define."""
import subprocess
import sys

import nbformat
import pandas as pd
import pytest

from bdlib.pipeline import defense_label, resolve_target
from bdlib.registry import UnknownNameError
from bdlib.study import DuplicateCellsError, Study, collection_study, mean_sd, pivot


def test_study_expands_to_one_cell_per_model_attack_setting_and_seed():
    study = Study("smoke", attacks={"badnets": {}, "blended": {"alpha": 0.1}},
                  defenses={"ft": [{"lr": 1e-3}, {"lr": 1e-2}], "clp": {}}, seeds=[0, 1, 2])
    victims = study.victim_cells()
    assert len(victims) == 3 * (1 + 2)  # seeds x (clean + attacks)
    assert sum(v.attack is None for v in victims) == 3
    cells = study.defense_cells()
    assert len(cells) == 3 * 2 * 3  # seeds x attacks x (two ft settings + clp)
    assert {dict(c.knobs).get("lr") for c in cells if c.defense == "ft"} == {1e-3, 1e-2}
    assert {c.victim.seed for c in cells} == {0, 1, 2}
    # a blended victim keeps its knobs, and cells are hashable (Dask keys, caches)
    assert dict(next(c for c in cells if c.victim.attack == "blended").victim.attack_knobs) == {"alpha": 0.1}
    assert len(set(cells)) == len(cells)


def test_study_rejects_bad_names_and_shapes():
    with pytest.raises(UnknownNameError, match="valid attacks: .*badnets"):
        Study("smoke", attacks=["badnet"])
    with pytest.raises(UnknownNameError, match="valid defenses: .*gnft"):
        Study("smoke", defenses={"gn-ft": {}})
    with pytest.raises(TypeError, match="list of names"):
        Study("smoke", attacks="badnets")
    with pytest.raises(TypeError, match="seeds"):
        Study("smoke", seeds=0)
    with pytest.raises(TypeError, match="knob settings"):
        Study("smoke", defenses={"ft": [1e-3]})


def test_collection_study_is_the_notebooks_grid():
    study = collection_study("smoke")
    names = [(c.victim.attack, c.defense, dict(c.knobs).get("mode")) for c in study.defense_cells()]
    assert len(names) == 2 * 10  # smoke victims x (9 defenses, GN-FT twice)
    assert ("badnets", "gnft", "exact") in names and ("badnets_burst", "ibau", None) in names
    assert dict(next(c for c in study.defense_cells() if c.defense == "ibau").knobs)["epochs"] == 2


def _rows(**varying):
    base = {"attack": "badnets", "defense": "ft", "seed": 0, "asr_after": 0.5}
    return pd.DataFrame([{**base, **{k: v[i] for k, v in varying.items()}} for i in range(len(next(iter(varying.values()))))])


def test_pivot_refuses_to_average_a_sweep_and_names_the_knob():
    table = _rows(**{"defense.lr": [1e-3, 1e-2], "asr_after": [0.2, 0.8]})
    with pytest.raises(DuplicateCellsError, match=r"differ in \['defense.lr'\]"):
        pivot(table, "defense", "attack", "asr_after")
    assert pivot(table, ["defense", "defense.lr"], "attack", "asr_after").shape == (2, 1)
    with pytest.raises(DuplicateCellsError, match="the same run twice"):
        pivot(_rows(seed=[0, 0]), "defense", "attack", "asr_after")


def test_mean_sd_aggregates_over_seeds_explicitly():
    table = _rows(seed=[0, 1, 2], asr_after=[0.1, 0.2, 0.3])
    out = mean_sd(table, ["attack", "defense"], ["asr_after"])
    assert out.loc[0, "asr_after_n"] == 3
    assert out.loc[0, "asr_after_mean"] == pytest.approx(0.2) and out.loc[0, "asr_after_sd"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="seed"):
        mean_sd(table, ["attack", "seed"], ["asr_after"])


def test_defense_label_keeps_knob_settings_apart():
    def cfg(name, **knobs):
        from dataclasses import asdict

        from bdlib.defenses import DEFENSES
        return {"defense": name, "defense_knobs": {**asdict(DEFENSES.get(name).Config()), **knobs}}

    assert defense_label(cfg("gnft", mode="exact")) == "gnft-exact"
    assert defense_label(cfg("ft", epochs=5)) == "ft"  # the profile's budget is not a setting
    assert defense_label(cfg("ft", lr=1e-3)) == "ft(lr=0.001)" != defense_label(cfg("ft"))
    assert defense_label(cfg("gnft", mode="approx", alpha=0.9, r=0.1)) == "gnft-approx(alpha=0.9, r=0.1)"


def test_target_is_checked_against_the_classes():
    classes = ("yes", "no", "up")
    assert resolve_target("up", classes) == 2 and resolve_target(1, classes) == 1
    assert resolve_target("2", ("0", "1", "2", "3")) == 2
    with pytest.raises(ValueError, match="'left' is not a class of dataset 'x'; classes: yes, no, up"):
        resolve_target("left", classes, "x")
    with pytest.raises(ValueError, match="out of range"):
        resolve_target(99, classes)
    with pytest.raises(ValueError, match="out of range"):
        resolve_target(-1, classes)


def _notebook(path, params_source: str):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(params_source, metadata={"tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell("print(dataset)")],
                                  metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nbformat.write(nb, path)
    return path


def test_runner_refuses_a_parameter_the_notebook_does_not_define(tmp_path, monkeypatch):
    from bdlib import runner

    nb = _notebook(tmp_path / "00_probe.ipynb", 'profile = "smoke"\nseed = 0')
    monkeypatch.setattr(runner, "notebooks", lambda only=None: [nb])
    with pytest.raises(runner.ParameterError, match=r"00_probe.ipynb has no parameter\(s\) 'dataset'.*"
                                                    r"its parameters: profile, seed"):
        runner.run_all("smoke", output_dir=tmp_path / "out", dataset="spoken_digits", dataset_root=str(tmp_path))
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_cli_names_an_unknown_dataset_and_a_bad_regex():
    proc = subprocess.run([sys.executable, "-m", "bdlib", "run", "--dataset", "timit", "--no-study"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown dataset 'timit'" in proc.stderr and "speech_commands" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "bdlib", "run", "--only", "("], capture_output=True, text=True)
    assert proc.returncode == 2 and "--only '(' is not a regular expression" in proc.stderr


def test_every_notebook_takes_the_dataset_parameters():
    from bdlib.runner import notebook_parameters, notebooks

    for nb in notebooks():
        params = notebook_parameters(nb)
        assert {"profile", "seed", "dataset", "dataset_root"} <= set(params), nb.name


def test_local_cluster_layout_does_not_oversubscribe(monkeypatch):
    from bdlib.cluster import local_layout, worker_env

    monkeypatch.delenv("BDLIB_WORKERS", raising=False)
    assert local_layout(cores=2) == (1, 2)
    assert local_layout(cores=16) == (4, 4) and local_layout(cores=6) == (1, 6)
    assert local_layout(cores=16, workers=8) == (8, 2)
    monkeypatch.setenv("BDLIB_WORKERS", "2")
    assert local_layout(cores=2) == (2, 1)
    env = worker_env(3)
    assert env["OMP_NUM_THREADS"] == "3" and env["BDLIB_TORCH_THREADS"] == "3" and "MALLOC_MMAP_MAX_" in env
