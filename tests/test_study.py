"""Studies (bdlib/study.py): expansion into cells, strict pivots, labels that keep sweeps
apart, and the runner's refusal of parameters a notebook does not define."""
import subprocess
import sys

import nbformat
import pandas as pd
import pytest

from bdlib.pipeline import defense_label, resolve_target
from bdlib.registry import UnknownNameError
from bdlib.study import DuplicateCellsError, Study, collection_study, main_table_study, matched_ft_knobs, mean_sd, pivot


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


def test_main_table_study_adds_the_fair_ft_row_and_keeps_a_named_subset():
    full = main_table_study("default", seeds=[0, 1, 2])
    grid = collection_study("default", seeds=[0, 1, 2])
    approx = next(k for k in grid.defenses["gnft"] if k["mode"] == "approx")
    assert full.defenses["ft"] == [grid.defenses["ft"], matched_ft_knobs(approx)]  # BackdoorBench's FT + the fair one
    assert len(full.defense_cells()) == len(grid.defense_cells()) + len(grid.attacks) * 3  # one more row per victim
    sub = main_table_study("default", seeds=[0, 1, 2], attacks=["jingleback", "badnets"], defenses=["ft", "gnft:approx"])
    assert list(sub.attacks) == ["jingleback", "badnets"] and not sub.include_clean
    rows = {(c.defense, dict(c.knobs).get("mode"), dict(c.knobs)["lr"]) for c in sub.defense_cells()}
    assert rows == {("ft", None, 0.01), ("ft", None, approx["lr"]), ("gnft", "approx", approx["lr"])}
    assert len(sub.defense_cells()) == 2 * 3 * 3  # attacks x rows x seeds
    # the subset's cells are the full grid's cells (same store keys), not look-alikes
    assert set(sub.defense_cells()) <= set(full.defense_cells())


def test_main_table_study_names_a_bad_subset_and_the_valid_choices():
    with pytest.raises(ValueError, match="'nosuch'.*valid.*badnets"):
        main_table_study("default", attacks=["badnets", "nosuch"])
    with pytest.raises(ValueError, match="'gnft:fast'.*valid"):
        main_table_study("default", defenses=["gnft:fast"])
    with pytest.raises(ValueError, match="'ft:approx'"):
        main_table_study("default", defenses=["ft:approx"])
    with pytest.raises(TypeError, match="list of names"):
        main_table_study("default", attacks="badnets")
    smoke = main_table_study("smoke", seeds=[0, 1, 2])  # CI's nbval budget: one attack, the cheap rows
    assert len(smoke.attacks) == 1 and not smoke.include_clean
    assert sorted({c.defense for c in smoke.defense_cells()}) == ["ft", "gnft"] and len(smoke.defense_cells()) == 9


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


def test_every_notebook_takes_the_models_parameter():
    """Issue 13: `models` reaches every notebook (`bdlib run --models ...` / `-p models=[...]` would
    be refused by a notebook without it), and no notebook's code names a model of its own."""
    from bdlib.runner import notebook_parameters, notebooks

    for nb in notebooks():
        assert "models" in notebook_parameters(nb), nb.name
        code = [c.source for c in nbformat.read(nb, as_version=4).cells if c.cell_type == "code"]
        hard_coded = [line for src in code for line in src.splitlines()
                      if "smallcnn" in line.split("#", 1)[0].lower()]  # comments may give it as the example
        assert not hard_coded, (nb.name, hard_coded)


def test_cli_refuses_an_unknown_model_and_a_models_string():
    proc = subprocess.run([sys.executable, "-m", "bdlib", "run", "--models", "cnn9", "--no-study"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown model 'cnn9'" in proc.stderr and "smallcnn" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "bdlib", "run", "-p", "models=smallcnn", "--no-study"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "models takes a list of names" in proc.stderr


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


def test_local_cluster_workers_get_the_malloc_settings(monkeypatch):
    """A Dask task runs in a worker thread: without one malloc arena its steps ran 2x slower
    (bdlib/cluster.py). The spawned worker process must see every setting."""
    from bdlib.allocator import ALLOCATOR_ENV
    from bdlib.cluster import WORKER_MALLOC_ENV, get_client

    for k in (*ALLOCATOR_ENV, *WORKER_MALLOC_ENV):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.delenv("BDLIB_SCHEDULER", raising=False)
    monkeypatch.setenv("BDLIB_WORKERS", "1")
    with get_client() as client:
        seen = client.submit(lambda keys: {k: __import__("os").environ.get(k) for k in keys},
                             [*ALLOCATOR_ENV, *WORKER_MALLOC_ENV], pure=False).result(timeout=60)
    assert seen == {**ALLOCATOR_ENV, **WORKER_MALLOC_ENV}


def test_a_second_local_cluster_gets_its_own_thread_counts_and_the_environment_is_restored(monkeypatch):
    """Dask's nanny writes its pre-spawn variables into the parent's os.environ, where they then
    override the next cluster's config: 2 workers started after a 1-worker cluster ran 2 torch
    threads each on 2 cores (found by make test running this file before test_study_on_real_layouts)."""
    import os

    from bdlib.cluster import get_client

    monkeypatch.delenv("BDLIB_SCHEDULER", raising=False)
    monkeypatch.delenv("BDLIB_TORCH_THREADS", raising=False)
    before = dict(os.environ)

    def threads_seen():
        return client.run(lambda: __import__("os").environ.get("BDLIB_TORCH_THREADS"))

    with get_client(workers=1) as client:
        first = threads_seen()
    assert dict(os.environ) == before
    with get_client(workers=2) as client:
        second = threads_seen()
    assert dict(os.environ) == before
    n = len(os.sched_getaffinity(0))
    assert set(first.values()) == {str(n)} and set(second.values()) == {str(max(1, n // 2))}


# --- issue 13: a defense that cannot act on a model is a "not applicable" row, not a failed study ----------
class _FakeStore:
    def __init__(self):
        self.saved = set()

    @staticmethod
    def _key(kind, cfg):
        import json

        return kind, json.dumps(cfg, sort_keys=True, default=str)

    def has(self, kind, cfg):
        return self._key(kind, cfg) in self.saved


class _FakeExperiment:
    """What a Study cell asks of an Experiment, without data or training: victims and defense runs
    return fixed metrics and are logged; the refusal (bdlib.study.refusal: the defense's declared
    check) is the real one, on real models of these maps. ``fail`` maps (defense, model) to an
    exception its run raises."""

    from bdlib.pipeline import Experiment as _E

    defense_knobs = _E.defense_knobs  # the real knob resolution (the profile's budget, then the given knobs)
    input_shape = (26, 13)  # about the smallest map every model takes (tests/test_models_contract.py)
    class_names = ("yes", "no", "up")

    def __init__(self, profile, seed, log, fail, store):
        self.profile, self.seed, self.log, self.fail, self.store = profile, seed, log, fail, store

    def attack_config(self, attack, model="smallcnn", rate=None, target=None, **knobs):
        return {"dataset": "fake", "seed": self.seed, "model": model, "attack": attack, "attack_knobs": knobs,
                "poison_rate": self.profile.poison_rate if rate is None else rate, "target": 2}

    def backdoored_model(self, attack, model="smallcnn", rate=None, target=None, **knobs):
        cfg = self.attack_config(attack, model, rate, target, **knobs)
        self.log.append(("victim", model, attack, cfg["poison_rate"], self.seed))
        self.store.saved.add(self.store._key("models", cfg))
        return None, {"config": cfg, "metrics": {"acc": 0.9, "asr": 1.0, "ra": 0.0, "train_time_s": 1.0,
                                                 "n_poisoned": 3, "n_train": 320}}

    def defend(self, defense, attack, model="smallcnn", clean_fraction=None, attack_knobs=None, **knobs):
        from bdlib import keys

        _, rec = self.backdoored_model(attack, model, **(attack_knobs or {}))  # as Experiment.defend forwards them
        self.log.append(("defend", defense, model, attack, rec["config"]["poison_rate"], self.seed))
        if (defense, model) in self.fail:
            raise self.fail[(defense, model)]
        full = self.defense_knobs(defense, **knobs)
        cfg = keys.defense_key(rec["config"], defense, full, 0.05, self.seed)
        self.store.saved.add(self.store._key("defenses", cfg))
        return {"config": cfg, "metrics": {"before": {"acc": 0.9, "asr": 1.0, "ra": 0.0},
                                           "after": {"acc": 0.85, "asr": 0.4 + 0.1 * self.seed, "ra": 0.5},
                                           "der": 0.8, "time_s": 2.0}}


@pytest.fixture
def fake_cells(monkeypatch):
    """Every cell's Experiment is a _FakeExperiment (one per profile and seed); yields (log, fail)."""
    from bdlib import study as study_mod

    log, fail, store, made = [], {}, _FakeStore(), {}

    def experiment(profile, dataset, seed, features, target, data_root, device=None):
        key = (profile.name, seed)
        if key not in made:
            made[key] = _FakeExperiment(profile, seed, log, fail, store)
        return made[key]

    monkeypatch.setattr(study_mod, "_experiment", experiment)
    return log, fail


def test_refusal_is_decided_without_training_naming_defense_model_and_part():
    import torch

    from bdlib.study import refusal

    before = torch.get_rng_state()
    assert refusal("anp", {"epochs": 1}, "rnn", (26, 13), 3).startswith(
        "ANP cannot defend StackedLSTM: it has no norm_layers (BatchNorm")
    assert refusal("clp", {}, "rnn", (26, 13), 3).startswith("CLP cannot defend StackedLSTM: it has no conv_norm_pairs")
    assert refusal("anp", {"epochs": 1}, "smallcnn", (26, 13), 3) is None  # has BatchNorm
    assert refusal("ft", {"epochs": 1}, "rnn", (26, 13), 3) is None
    assert "3 betas for 2 attention layers" in refusal("nad", {}, "lstmatt", (26, 13), 3)  # refused for its knobs
    assert torch.equal(torch.get_rng_state(), before), "refusal moved the global RNG"
    from bdlib.models.contract import DefenseNotApplicable
    from bdlib.registry import InvalidFieldError

    with pytest.raises(InvalidFieldError, match=r"^ft defense: field lr = -1.0 is invalid") as bad:
        refusal("ft", {"lr": -1.0}, "rnn", (26, 13), 3)
    assert not isinstance(bad.value, DefenseNotApplicable)  # a bad knob is an error, never "not applicable"


def test_refusal_asks_the_declared_check_and_never_runs_the_defense(monkeypatch):
    """``refusal`` is ``Defense.check`` on a fresh model of the architecture: a defense whose
    ``defend`` must not run is refused (or not) by its ``check`` alone."""
    import torch.nn as nn

    from bdlib import defenses
    from bdlib.defenses import Defense
    from bdlib.models.contract import DefenseNotApplicable
    from bdlib.study import refusal

    checked = []

    class _Declared(Defense):
        def check(self, model: nn.Module) -> None:
            checked.append((type(model).__name__, model.training))
            if self.config == "refuse":
                raise DefenseNotApplicable(f"Declared cannot defend {type(model).__name__}: it has no part")

        def defend(self, model, clean, progress=True):
            raise AssertionError("refusal ran defend")

    monkeypatch.setattr(defenses, "make_defense", lambda name, seed=0, **knobs: _Declared(name, seed))
    assert refusal("refuse", {}, "rnn", (26, 13), 3) == "Declared cannot defend StackedLSTM: it has no part"
    assert refusal("accept", {}, "smallcnn", (26, 13), 3) is None
    assert checked == [("StackedLSTM", True), ("SmallCNN", True)]  # a freshly built model each time


def test_study_records_a_refused_defense_as_not_applicable_and_runs_the_rest(fake_cells):
    from bdlib.tables import main_table, passes_bar

    log, _ = fake_cells
    study = Study("smoke", models=["smallcnn", "rnn"], attacks=["badnets"], seeds=[0, 1], include_clean=False,
                  defenses={"ft": {}, "anp": {}, "clp": {}})
    table = study.run(serial=True, progress=False)
    runs = table[table.defense != "none"]
    assert len(runs) == 2 * 2 * 3  # models x seeds x defenses: every cell has its row
    refused = runs[runs.status == "not applicable"]
    assert sorted(set(zip(refused.model, refused.defense))) == [("rnn", "anp"), ("rnn", "clp")]
    assert refused.reason.str.contains("cannot defend StackedLSTM: it has no").all()
    assert refused[["acc_after", "asr_after", "der"]].isna().all().all()
    assert (refused.acc_before == 0.9).all()  # the victim's own numbers before
    ran = runs[runs.status == "ok"]
    assert len(ran) == 8 and ran.asr_after.notna().all() and ran.reason.isna().all()
    # the refusal was decided before anything ran: no defense run was even started on a refused cell
    started = {(e[1], e[2]) for e in log if e[0] == "defend"}
    assert started == {("ft", "smallcnn"), ("anp", "smallcnn"), ("clp", "smallcnn"), ("ft", "rnn")}
    # the tables show it as n/a: never averaged, never blank, never best
    pivoted = pivot(runs[runs.seed == 0], ["model", "label"], "attack", "asr_after")
    assert pivoted.loc[("rnn", "anp"), "badnets"] == "n/a" and pivoted.loc[("smallcnn", "ft"), "badnets"] == 0.4
    assert pivot(runs[runs.seed == 0], ["model", "label"], "attack", "asr_after", not_applicable=None).loc[
        ("rnn", "anp"), "badnets"] != "n/a"
    main = main_table(table, row=["model", "label"])
    assert main.frame().loc["rnn / anp", ("badnets", "ASR")] == "n/a"
    assert main.frame().loc["smallcnn / ft", ("badnets", "ASR")].startswith("45.00 ± 7.07")  # (a tie: best)
    assert not main.cells[main.cells.status == "not applicable"].best.any()
    assert "n/a: the defense cannot act on this model" in main.markdown()
    bar = passes_bar(table)
    assert set(bar.loc[bar.status == "not applicable", "label"]) == {"anp", "clp"} and not bar.passes.any()
    agg = mean_sd(runs, ["model", "defense"], ["asr_after"])
    assert agg.set_index(["model", "defense"]).loc[("rnn", "anp"), "status"] == "not applicable"
    assert mean_sd(runs, ["defense"], ["asr_after"]).set_index("defense").loc["anp", "status"] == \
        "not applicable in 2 of 4"


def test_a_refusal_from_inside_the_run_is_recorded_and_other_errors_still_fail(fake_cells):
    from bdlib.models.contract import DefenseNotApplicable

    _, fail = fake_cells
    fail[("ft", "smallcnn")] = DefenseNotApplicable("FT cannot defend SmallCNN: found out late")
    study = Study("smoke", models=["smallcnn"], attacks=["badnets"], include_clean=False, defenses={"ft": {}})
    row = study.run(serial=True, progress=False).query("defense == 'ft'").iloc[0]
    assert row.status == "not applicable" and row.reason == "FT cannot defend SmallCNN: found out late"
    fail[("ft", "smallcnn")] = RuntimeError("a real bug")
    with pytest.raises(RuntimeError, match="a real bug"):
        study.run(serial=True, progress=False)
    with pytest.raises(DefenseNotApplicable, match="ANP cannot defend StackedLSTM"):  # a single cell still raises
        Study("smoke", models=["rnn"], attacks=["badnets"], defenses={"anp": {}}).defense_cells()[0].run()


def test_a_study_read_back_from_the_store_shows_the_refused_cells(fake_cells):
    study = Study("smoke", models=["rnn"], attacks=["badnets"], include_clean=False, defenses={"ft": {}, "anp": {}})
    with pytest.raises(LookupError, match="not in the store yet"):
        study.table()
    study.run(serial=True, progress=False)
    table = study.table()  # computes nothing: ft is stored, anp is decided again by its check
    assert dict(zip(table.defense, table.status)) == {"none": "ok", "ft": "ok", "anp": "not applicable"}


# --- issue 12: per-cell poisoning rates --------------------------------------------------------------------
def test_rates_expand_victims_and_reach_the_victim_and_its_defense_runs(fake_cells):
    import inspect

    from bdlib.pipeline import Experiment

    log, _ = fake_cells
    study = Study("smoke", attacks=["badnets"], rates=[0.005, 0.1], defenses={"ft": {}}, include_clean=True)
    victims = study.victim_cells()
    assert [(v.attack, v.rate) for v in victims] == [(None, None), ("badnets", 0.005), ("badnets", None)]  # 10 %: the profile's
    assert victims[2] == Study("smoke", attacks=["badnets"], defenses={"ft": {}}).victim_cells()[1]  # the same cell
    table = study.run(serial=True, progress=False)
    assert sorted(table.poison_rate.unique()) == [0.005, 0.1]
    assert table.groupby("poison_rate").size().to_dict() == {0.005: 2, 0.1: 2}  # victim + ft at each rate
    assert ("defend", "ft", "smallcnn", "badnets", 0.005, 0) in log  # the defense ran on the 0.5 % victim
    # what DefenseCell relies on: Experiment.defend forwards attack_knobs to these, and each takes `rate`
    for method in (Experiment.backdoored_model, Experiment.evaluate, Experiment.attack_config):
        assert "rate" in inspect.signature(method).parameters
    with pytest.raises(TypeError, match="rates"):
        Study("smoke", rates=0.01)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        Study("smoke", rates=[0.01, 5])
    with pytest.raises(ValueError, match="repeat"):
        Study("smoke", rates=[0.01, 0.01])


def test_poison_rate_grid_and_its_tables(fake_cells):
    from bdlib import poison_rate as pr

    assert pr.RATES == (0.005, 0.01, 0.02, 0.05, 0.1)  # the rates, all available with rates=RATES
    rates = pr.grid_for("default")["rates"]  # the committed CPU run: a subset spanning 0.5-10 %
    assert set(rates) <= set(pr.RATES) and min(rates) == 0.005 and max(rates) == 0.1 and len(rates) >= 3
    assert set(pr.grid_for("default")["attacks"]) == {"badnets", "pbsm", "vsvc"} and pr.grid_for("paper")["seeds"]
    study = pr.rate_study("smoke", seeds=[0, 1], models=["smallcnn"])
    assert len(study.defense_cells()) == 2 * 2 * 3  # seeds x rates x methods
    rows = pr.rate_rows(study.run(serial=True, progress=False))
    assert list(rows.method.unique()) == [pr.NO_DEFENSE, pr.FT_BACKDOORBENCH, pr.FT_MATCHED, pr.GNFT_APPROX]
    assert not rows.duplicated(["model", "attack", "poison_rate", "method", "seed"]).any() and len(rows) == 16
    summary = pr.rate_summary(rows)
    assert len(summary) == 8 and (summary.asr_after_n == 2).all()
    frame = pr.rate_frame(summary)
    assert frame.loc[("smallcnn", "badnets", 1.0), (pr.GNFT_APPROX, "ASR")] == "45.0 ± 7.1"
    assert frame.loc[("smallcnn", "badnets", 10.0), (pr.NO_DEFENSE, "ASR")] == "100.0 ± 0.0"
    counts = pr.poisoned_counts(study)
    assert set(counts.poison_rate) == {0.01, 0.1} and (counts.n_train == 320).all()


def test_defend_victims_skips_a_refused_model_naming_it_and_runs_the_rest(fake_cells, capsys):
    """A defense notebook (bdlib.study.defend_victims) over two models, one of which ANP
    refuses: the refused victim is reported by name and reason, the other is defended."""
    from bdlib.profiles import get_profile
    from bdlib.study import defend_victims

    log, _ = fake_cells
    smoke = get_profile("smoke", models=("smallcnn", "rnn"))
    records = defend_victims("anp", smoke, attacks=["badnets"], progress=False)
    assert [r["config"]["victim"]["model"] for r in records] == ["smallcnn"]
    assert all("status" not in r for r in records)  # only runs that happened come back
    out = capsys.readouterr().out
    assert "anp does not apply to rnn (badnets): ANP cannot defend StackedLSTM" in out
    assert {(e[1], e[2]) for e in log if e[0] == "defend"} == {("anp", "smallcnn")}


def test_model_rows_are_the_profiles_other_architectures_on_their_attacks_only():
    from bdlib.profiles import get_profile
    from bdlib.study import model_rows_studies

    assert model_rows_studies("smoke") == []  # CI's profile trains no other architecture
    lstmatt, resnet = model_rows_studies("default")
    grid = collection_study("default")
    for study, model in ((lstmatt, "lstmatt"), (resnet, "resnet")):
        assert study.models == (model,) and list(study.attacks) == ["badnets", "blended", "jingleback"]
        # every defense of the collection grid per victim, plus the model's clean model
        assert len(study.defense_cells()) == 3 * len(grid.defense_cells()) // len(grid.attacks)
        assert sum(v.attack is None for v in study.victim_cells()) == 1
    # the same knobs, but NAD's betas cut to LSTM-att's two attention layers (the deepest two)
    assert resnet.defenses == grid.defenses
    assert {k: v for k, v in lstmatt.defenses.items() if k != "nad"} == {k: v for k, v in grid.defenses.items()
                                                                          if k != "nad"}
    assert lstmatt.defenses["nad"] == {**grid.defenses["nad"], "betas": (1000.0, 1000.0)}
    # models with different attack lists are different studies; a bare string is refused
    split = model_rows_studies(get_profile("smoke", model_rows={"resnet": ["badnets"], "smallcnn": ["blended"]}))
    assert sorted((s.models, tuple(s.attacks)) for s in split) == [(("resnet",), ("badnets",)),
                                                                    (("smallcnn",), ("blended",))]
    with pytest.raises(TypeError, match="model_rows\\['resnet'\\] takes a list"):
        model_rows_studies(get_profile("smoke", model_rows={"resnet": "badnets"}))


def test_study_step_adds_model_rows_unless_models_are_given(monkeypatch, tmp_path):
    import argparse

    import bdlib.__main__ as cli

    monkeypatch.setenv("BDLIB_DATA", str(tmp_path))  # its timings record, not the repository's
    ran = []
    monkeypatch.setattr(Study, "run", lambda self, **kw: ran.append((self.models, tuple(self.attacks))) or setattr(
        self, "last_run", {"wall_s": 0.0}))
    args = argparse.Namespace(profile="default", dataset="embedded", dataset_root=None, target=None, device=None,
                              scheduler=None, serial=True, models=None)
    cli._study(args, seeds=[0])
    three = ("badnets", "blended", "jingleback")
    assert ran == [(("smallcnn",), tuple(collection_study("default").attacks)), (("lstmatt",), three),
                   (("resnet",), three)]
    ran.clear()
    cli._study(args, seeds=[0], models=["resnet"])  # --models: exactly those, on the whole grid
    assert len(ran) == 1 and ran[0][0] == ("resnet",)
