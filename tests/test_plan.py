"""What `python -m bdlib run` computes before the notebooks (bdlib/plan.py): exactly the cells the
notebooks then ask for, built from the parameters they get; parts limited by --only; shared cells
computed once on Dask."""
import io
import json
import pickle
import re
import sys
from dataclasses import dataclass

import pytest

from bdlib import plan as plan_mod
from bdlib.plan import NOTEBOOK_CELLS, Cells, compute_plan, plan
from bdlib.runner import NOTEBOOK_DIR, notebook_parameters, notebooks
from bdlib.study import compute_cells

STEMS = [nb.stem for nb in notebooks()]


def _code_cells(stem: str) -> list[str]:
    nb = json.loads((NOTEBOOK_DIR / f"{stem}.ipynb").read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def _notebook_setup(stem: str, profile: str, monkeypatch, **parameters) -> dict:
    """Execute a notebook's parameters cell (with ``parameters`` injected after it, as papermill
    does) and its next code cell, which builds the grid; return the namespace."""
    from bdlib.curve_grids import CurveGrid

    monkeypatch.setenv("BDLIB_PROFILE", profile)
    monkeypatch.setattr(CurveGrid, "describe", lambda self, cells: "")  # loads data; not what is tested
    monkeypatch.setattr("bdlib.observation_grid.observed_units", lambda cells: {})  # likewise
    params, setup = _code_cells(stem)[:2]
    ns: dict = {}
    exec(params, ns)
    ns.update(parameters)
    exec(setup, ns)
    return ns


def _notebook_cells(stem: str, ns: dict) -> tuple[list, list]:
    if "cells" in ns:  # the budget notebooks' curves; 31's observations (and its model rows')
        cells = list(ns["cells"]) + list(ns.get("row_cells", []))
        return list(dict.fromkeys(c.victim for c in cells)), cells
    return ns["study"].victim_cells(), ns["study"].defense_cells()


@pytest.mark.parametrize("profile", ["smoke", "default"])
@pytest.mark.parametrize("stem,parameters", [
    ("31_observation_gradients", {}),
    ("31_observation_gradients", {"seed": 1, "attacks": ["blended"], "backdoor_ratio": 3.0, "models": ["resnet"]}),
    ("31_observation_gradients", {"seed": 3, "seeds": [2, 5], "model_rows": {"resnet": ["blended"]},
                                  "loss_change_layers": ["conv3", "fc1"]}),
    ("31_observation_gradients", {  # every parameter distinct from its default and from the others
        "seed": 1, "seeds": [2, 5], "attacks": ["blended", "pbsm"], "models": ["largecnn"], "clean_fraction": 0.04,
        "epochs": 7, "mode": "exact", "r": 0.02, "alpha": 0.6, "lr": 2e-3, "ft_lr": 0.02, "grad_mode": "eval",
        "backdoor_ratio": 3.0, "clean_ratio": 1.1, "dormant_fraction": 0.2, "loss_change_layers": ["fc1", "fc2"],
        "loss_change_clips": 33, "target": "down"}),
    ("41_ablation_budget", {}), ("41_ablation_budget", {"seed": 3, "lrs": [5e-3], "grid": "full"}),
    ("42_ablation_gnft", {}), ("42_ablation_gnft", {"seed": 2, "attacks": ["blended"], "alphas": [0.5]}),
    ("43_ablation_poison_rate", {}), ("43_ablation_poison_rate", {"rates": [0.02], "models": ["lstmatt"]}),
    ("44_ablation_budget_lr", {}), ("44_ablation_budget_lr", {"seeds": [4], "n_clean": [40], "target": "down"}),
    ("50_main_table", {}), ("50_main_table", {"seed": 1, "defenses": ["ft", "gnft:approx"]}),
])
def test_the_run_precomputes_exactly_the_cells_the_notebook_asks_for(stem, parameters, profile, monkeypatch):
    """The notebook's own code and the plan, given the same parameters, name the same cells (equal
    by value: the same store keys and Dask keys)."""
    ns = _notebook_setup(stem, profile, monkeypatch, **parameters)
    parts = plan(profile, [stem], parameters)
    assert len(parts) == 1
    victims, dependents = _notebook_cells(stem, ns)
    assert parts[0].victims == victims and parts[0].dependents == dependents
    assert len(dependents) > 0


def test_each_builder_takes_its_notebooks_parameters():
    """A builder takes every parameter of the notebooks it serves but the profile (read from
    the environment) and those it declares it ignores (a bar; how the notebook runs; what
    another builder computes)."""
    for entry in NOTEBOOK_CELLS:
        served = [s for s in STEMS if re.search(entry.notebooks, s)]
        assert served, entry.notebooks
        for stem in served:
            defined = set(notebook_parameters(NOTEBOOK_DIR / f"{stem}.ipynb")) - {"profile"}
            if entry.build is plan_mod.collection_cells and stem.startswith("30_"):
                assert entry.takes <= defined, stem  # 30's attacks, defenses, clean_fraction: it computes its own
            else:
                assert entry.takes | entry.ignores == defined, stem


def test_only_selects_parts_and_a_parameter_a_builder_cannot_take_leaves_the_notebook_to_itself():
    log = io.StringIO()
    labels = [p.label for p in plan("smoke", ["41_ablation_budget", "43_ablation_poison_rate"], {"asr_bar": 0.1})]
    assert labels == ["budget curves (smoke)", "poisoning rates"]  # asr_bar changes only what is shown
    assert [p.label for p in plan("smoke", ["90_results"], {})] == ["the collection grid (smallcnn)"]
    assert [p.label for p in plan("default", ["90_results"], {})] == [
        "the collection grid (smallcnn)", "model rows (lstmatt)", "model rows (resnet)"]
    rows = plan("default", ["90_results"], {"model_rows": {"resnet": ["badnets"]}})
    assert [(p.label, len(p.victims)) for p in rows] == [("the collection grid (smallcnn)", 10),
                                                         ("model rows (resnet)", 2)]
    assert [p.label for p in plan("default", ["90_results"], {"models": ["resnet"]})] == ["the collection grid (resnet)"]
    assert plan("smoke", ["30_defenses_across_attacks"], {"defenses": ["ft"]}, log=log) == []
    assert "30_defenses_across_attacks: parameter(s) defenses change what the notebook computes" in log.getvalue()
    # the attack and defense notebooks alone, and 45, compute their own (a whole grid would be wasted on them)
    assert plan("default", ["10_attack_badnets", "20_defense_ft", "45_ablation_budget_long"], {}) == []
    assert [(p.label, len(p.victims), len(p.dependents)) for p in plan("default", ["31_observation_gradients"], {})
            ] == [("observations", 15, 15)]  # three attacks x three seeds, and the two model rows' three at seed 0


def test_a_victim_shared_by_notebooks_is_one_cell_whatever_the_models():
    """With models given, every notebook's builder names a shared victim by the same cell (equal
    objects: one Dask task), not one per notebook that trains it twice at once."""
    for models in (None, ["smallcnn", "lstmatt"]):
        parts = plan("default", STEMS, {} if models is None else {"models": models})
        by_key: dict = {}
        for v in (v for p in parts for v in p.victims):
            by_key.setdefault((v.seed, v.model, v.attack, v.rate, v.attack_knobs), set()).add(v)
        assert by_key and all(len(cells) == 1 for cells in by_key.values())
        if models is not None:  # no model rows then: every lstmatt victim is a notebook's own grid's
            assert {key[1] for key in by_key} == {"smallcnn", "lstmatt"}
            assert sum(1 for key in by_key if key[1] == "lstmatt") == sum(1 for key in by_key if key[1] == "smallcnn")


def test_cells_pickle_for_dask_workers():
    for part in plan("smoke", STEMS, {}):
        for cell in part.victims[:1] + part.dependents[:1]:
            assert pickle.loads(pickle.dumps(cell)) == cell


def test_cli_run_computes_the_cells_of_the_notebooks_it_runs(monkeypatch, tmp_path):
    import bdlib.__main__ as cli
    import bdlib.runner as runner

    computed = []
    monkeypatch.setattr(plan_mod, "compute_plan", lambda parts, **kw: computed.append([p.label for p in parts]))
    monkeypatch.setattr(runner, "run_all", lambda *a, **kw: 0)
    monkeypatch.setenv("BDLIB_DATA", str(tmp_path))
    assert cli.main(["run", "--profile", "smoke", "--only", "^(43|50)_", "--serial"]) == 0
    assert computed == [["poisoning rates", "the main table"]]
    assert cli.main(["run", "--profile", "smoke", "--only", "^50_", "--no-study"]) == 0
    assert len(computed) == 1
    # a parameter no notebook defines fails before anything is computed
    assert cli.main(["run", "--profile", "smoke", "--only", "^50_", "-p", "rates=[0.1]"]) == 2
    assert len(computed) == 1
    from bdlib.timings import run_summary, timings_path

    ended = [e.split(" at ")[0] for e in run_summary(timings_path(tmp_path)).ended]
    assert ended == ["exited 0", "exited 0", "failed (ParameterError)"]  # each run's start and end are marked


def test_an_interrupted_cells_step_says_what_is_kept_and_runs_no_notebook(monkeypatch, tmp_path, capsys):
    import bdlib.__main__ as cli
    import bdlib.runner as runner

    def interrupted(parts, **kw):
        raise KeyboardInterrupt

    ran = []
    monkeypatch.setattr(plan_mod, "compute_plan", interrupted)
    monkeypatch.setattr(runner, "run_all", lambda *a, **kw: ran.append(a) or 0)
    monkeypatch.setenv("BDLIB_DATA", str(tmp_path))
    assert cli.main(["run", "--profile", "smoke", "--only", "^50_"]) == 130
    assert ran == [] and "every cell that finished is stored" in capsys.readouterr().err
    from bdlib.timings import run_summary, timings_path

    runs = run_summary(timings_path(tmp_path))
    assert len(runs) == 1 and runs.ended.iloc[0].startswith("exited 130 at ") and runs.started.notna().all()


def test_cli_run_builds_the_cells_from_the_parameters_the_notebooks_get(monkeypatch, tmp_path):
    """-p seed=3 reaches the plan as it reaches the notebook (seeds 3, 4, 5); --seed wins over it,
    as in the notebooks' parameters (bdlib.runner.run_parameters)."""
    import bdlib.__main__ as cli
    import bdlib.runner as runner

    got = []
    monkeypatch.setattr(plan_mod, "compute_plan", lambda parts, **kw: got.append(parts))
    monkeypatch.setattr(runner, "run_all", lambda *a, **kw: got.append(kw["parameters"]) or 0)
    monkeypatch.setenv("BDLIB_DATA", str(tmp_path))
    assert cli.main(["run", "--profile", "smoke", "--only", "^50_", "-p", "seed=3"]) == 0
    parts, parameters = got
    assert parameters == {"seed": 3} and {v.seed for v in parts[0].victims} == {3, 4, 5}
    got.clear()
    assert cli.main(["run", "--profile", "smoke", "--only", "^50_", "-p", "seed=3", "--seed", "1"]) == 0
    assert {v.seed for v in got[0][0].victims} == {1, 2, 3}
    assert runner.run_parameters(got[1], seed=1) == {"seed": 1}  # what run_all hands the notebook


def test_a_command_typed_without_the_malloc_settings_restarts_with_them(monkeypatch):
    import bdlib.__main__ as cli
    from bdlib.allocator import ALLOCATOR_ENV

    calls = []
    monkeypatch.setattr(cli.os, "execve", lambda path, args, env: calls.append((args, env)))
    monkeypatch.setattr(cli.sys, "argv", ["bdlib", "run", "--profile", "smoke"])
    for key in ALLOCATOR_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "7")  # a value already set wins
    cli._restart_with_allocator_settings()
    (args, env), = calls
    assert args[1:] == ["-m", "bdlib", "run", "--profile", "smoke"]
    assert env["MALLOC_MMAP_MAX_"] == "7" and env["MALLOC_TRIM_THRESHOLD_"] == ALLOCATOR_ENV["MALLOC_TRIM_THRESHOLD_"]
    for key, value in ALLOCATOR_ENV.items():
        monkeypatch.setenv(key, value)
    cli._restart_with_allocator_settings()
    assert len(calls) == 1  # set: no restart


# --- computing: part by part serially, one graph on Dask ------------------------------------
RAN: list = []


@dataclass(frozen=True)
class _Victim:
    name: str

    @property
    def task_name(self) -> str:
        return f"victim-{self.name}"

    def record(self) -> dict:
        RAN.append(self.name)
        return {"victim": self.name}


@dataclass(frozen=True)
class _Run:
    victim: _Victim
    name: str

    @property
    def task_name(self) -> str:
        return f"run-{self.name}"

    def record(self, victim_record=None) -> dict:
        RAN.append(self.name)
        return {"run": self.name, "after": victim_record}


def _parts():
    a, b = _Victim("a"), _Victim("b")
    return [Cells("one", [a], [_Run(a, "a1"), _Run(a, "a2")]),
            Cells("two", [a, b], [_Run(b, "b1"), _Run(a, "a1")])]


def test_serial_plan_runs_part_by_part_and_reports_each():
    RAN.clear()
    seen = []
    compute_plan(_parts(), serial=True, progress=False, on_part=lambda p, s: seen.append((p.label, len(p))))
    assert seen == [("one", 3), ("two", 4)]
    assert RAN == ["a", "a1", "a2", "a", "b", "b1", "a1"]  # stored cells read back: cheap; each part is whole


def test_dask_plan_is_one_graph_with_each_shared_cell_once():
    from distributed import LocalCluster

    RAN.clear()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        seen = []
        compute_plan(_parts(), scheduler=cluster.scheduler_address, progress=False,
                     on_part=lambda p, s: seen.append((p.label, len(p))))
        assert len(seen) == 1 and seen[0][1] == 2 + 3  # victims a, b; runs a1, a2, b1
        assert sorted(RAN) == ["a", "a1", "a2", "b", "b1"]
        assert RAN.index("b") < RAN.index("b1") and RAN.index("a") < min(RAN.index("a1"), RAN.index("a2"))
        # a run whose victim is not listed gets its victim as a task of its own, first
        RAN.clear()
        c = _Victim("c")
        v, d = compute_cells([], [_Run(c, "c1")], scheduler=cluster.scheduler_address, progress=False)
        assert v == [] and d == [{"run": "c1", "after": {"victim": "c"}}] and RAN == ["c", "c1"]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
