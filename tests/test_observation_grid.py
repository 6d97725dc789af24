"""Notebook 31's observation as store cells (bdlib/observation_cell.py, built by bdlib/observation_grid.py): computed once, read back
exactly, keyed by its settings and by the defense runs it observes; a model without units is
refused before anything trains."""
import pickle

import numpy as np
import pandas as pd
import pytest

import bdlib.observation_cell as oc
from bdlib.observation import CLASSES
from bdlib.observation_cell import ObservationSettings
from bdlib.observation_grid import observation_cells, observation_results, observed_units
from bdlib.profiles import get_profile

from test_study_on_real_layouts import TINY, make_folder_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_folder_corpus(tmp_path_factory.mktemp("corpus") / "words")


def _cells(corpus, data, **kw):
    prof = get_profile("smoke", **TINY)
    return observation_cells(prof, seeds=[0], attacks=["badnets"], dataset="folder", dataset_root=corpus,
                             data_root=data, loss_change_clips=4, **kw)


def test_an_observation_is_stored_once_and_read_back_exactly(corpus, tmp_path, monkeypatch):
    cells = _cells(corpus, tmp_path / "data")
    assert len(cells) == 1 and pickle.loads(pickle.dumps(cells[0])) == cells[0]
    computed = []
    real = oc.observation_table
    monkeypatch.setattr(oc, "observation_table", lambda *a, **kw: computed.append(real(*a, **kw)) or computed[-1])
    table, stages = observation_results(cells, progress=False)
    # what the store gives back is what observation_table returned, dtypes and categories included
    assert len(computed) == 1
    pd.testing.assert_frame_equal(table, computed[0].assign(model="smallcnn", seed=0), check_exact=True)
    units = observed_units(cells)
    # every unit of every observed layer, once per stage; classes fixed on the victim
    assert len(table) == 3 * sum(units.values())
    assert list(stages.stage) == list(oc.STAGES) and stages[["acc", "asr"]].notna().all().all()
    for col in ("class", "class_at_stage", "class_lc"):
        assert list(table[col].cat.categories) == list(CLASSES)
    first = [layer for model, layer in units][0]
    assert table.loc[table.layer == first, "class_lc"].isna().all()  # the loss change skips the first layer
    assert table["class_lc"].notna().any()
    store = cells[0].victim.experiment().store
    assert len(store.records(oc.KIND)) == 1
    # the key fingerprints what observes (observation, observation_cell), not the grid builders
    import bdlib.observation as observation
    from bdlib.fingerprint import code_fingerprint

    assert store.records(oc.KIND)[0]["config"]["code"] == code_fingerprint(observation, oc)
    n_defenses = len(store.records("defenses"))

    def fail(*a, **kw):
        raise AssertionError("recomputed an observation the store holds")

    monkeypatch.setattr(oc, "observation_table", fail)
    again, stages_again = observation_results(cells, progress=False)
    pd.testing.assert_frame_equal(table, again, check_exact=True)
    pd.testing.assert_frame_equal(stages, stages_again, check_exact=True)
    # the profile's own epoch count spelt out, and the default loss-change layers named: the same entry
    spelt = _cells(corpus, tmp_path / "data", epochs=TINY["defense_epochs"], loss_change_layers=["conv2", "conv3", "fc1"])
    pd.testing.assert_frame_equal(observation_results(spelt, progress=False)[0], table, check_exact=True)
    monkeypatch.undo()

    # another class rule is another observation; the FT and GN-FT runs it observes are reused
    other = _cells(corpus, tmp_path / "data", backdoor_ratio=3.0)
    table3, _ = observation_results(other, progress=False)
    assert len(store.records(oc.KIND)) == 2 and len(store.records("defenses")) == n_defenses
    np.testing.assert_array_equal(table3.grad_norm, table.grad_norm)  # the rule changes labels, not gradients
    assert (table3["class"] == "backdoor").sum() <= (table["class"] == "backdoor").sum()
    # another FT learning rate is another FT run and another observation (its key nests the run's)
    table4, stages4 = observation_results(_cells(corpus, tmp_path / "data", ft_lr=0.05), progress=False)
    assert len(store.records(oc.KIND)) == 3 and len(store.records("defenses")) == n_defenses + 1
    after_ft = table4.stage == "after FT"
    assert not np.array_equal(table4.grad_norm[after_ft], table.grad_norm[after_ft])
    np.testing.assert_array_equal(table4.grad_norm[~after_ft], table.grad_norm[~after_ft])


def test_a_model_without_units_is_refused_before_anything_is_computed(capsys):
    with pytest.raises(ValueError, match="'rnn' has no conv or linear units"):
        observation_cells("smoke", models=["smallcnn", "rnn"])
    with pytest.raises(ValueError, match=r"loss_change_layers \['fc9'\] are not unit layers of 'smallcnn'"):
        observation_cells("smoke", loss_change_layers=["fc9"])
    # `bdlib run` computes nothing for a notebook that will refuse to run, says so, and runs the others
    from bdlib.plan import plan

    assert plan("smoke", ["31_observation_gradients"], {"models": ["smallcnn", "rnn"]}) == []
    assert "no units to observe in rnn" in capsys.readouterr().err
    assert plan("default", ["31_observation_gradients"], {"model_rows": {"rnn": ["badnets"]}}) == []
    assert "no units to observe in rnn" in capsys.readouterr().err
    assert [p.label for p in plan("smoke", ["31_observation_gradients", "50_main_table"], {"models": ["rnn"]})] == [
        "the main table"]


@pytest.mark.parametrize("bad,match", [
    ({"grad_mode": "test"}, "grad_mode"), ({"loss_change_clips": 0}, "loss_change_clips"),
    ({"backdoor_ratio": 1.2}, "clean_ratio < backdoor_ratio"), ({"dormant_fraction": 1.5}, "dormant_fraction"),
    ({"mode": "exactly"}, "exactly"), ({"ft_lr": -1.0}, "lr"), ({"epochs": 0}, "epochs"),
    ({"attacks": "blended"}, "attacks takes a non-empty list"), ({"seeds": []}, "seeds takes a non-empty list"),
    ({"attacks": ["blend"]}, "valid attacks"), ({"models": ["smalcnn"]}, "valid models: .*smallcnn"),
])
def test_a_bad_setting_fails_when_the_cells_are_built(bad, match):
    with pytest.raises(ValueError, match=match):
        observation_cells("smoke", **bad)


def test_defaults_follow_the_profile():
    smoke, default = observation_cells("smoke"), observation_cells("default", seed=2)
    assert {(c.victim.seed, c.victim.attack) for c in smoke} == {(0, "badnets"), (0, "badnets_burst")}
    assert smoke[0].settings.loss_change_clips == 16 and default[0].settings.loss_change_clips == 128
    assert sorted({c.victim.seed for c in default}) == [2, 3, 4]
    assert [c.victim.attack for c in default[:3]] == ["badnets", "blended", "jingleback"]


def test_every_parameter_reaches_the_cells_by_name():
    """Each notebook parameter lands in its own field (distinct values: a swap of two would show)."""
    cells = observation_cells("default", seed=1, seeds=[2, 5], attacks=["blended", "pbsm"], models=["largecnn"],
                              clean_fraction=0.04, epochs=7, mode="exact", r=0.02, alpha=0.6, lr=2e-3, ft_lr=0.02,
                              grad_mode="eval", backdoor_ratio=3.0, clean_ratio=1.1, dormant_fraction=0.2,
                              loss_change_layers=["fc1", "fc2"], loss_change_clips=33, target="down")
    assert {c.settings for c in cells} == {ObservationSettings(
        clean_fraction=0.04, epochs=7, mode="exact", r=0.02, alpha=0.6, lr=2e-3, ft_lr=0.02, grad_mode="eval",
        backdoor_ratio=3.0, clean_ratio=1.1, dormant_fraction=0.2, loss_change_layers=("fc1", "fc2"),
        loss_change_clips=33)}
    assert [(c.victim.seed, c.victim.model, c.victim.attack, c.victim.target) for c in cells] == [
        (s, "largecnn", a, "down") for s in (2, 5) for a in ("blended", "pbsm")]


def test_the_model_rows_are_observed_at_the_run_seed_with_their_own_loss_change_layers():
    from bdlib.observation_grid import observation_grid

    grid = observation_grid("default", seed=1, loss_change_clips=64)
    assert len(grid.cells) == 9 and grid.all == grid.cells + grid.row_cells
    assert [(c.victim.seed, c.victim.model, c.victim.attack) for c in grid.row_cells] == [
        (1, m, a) for m in ("lstmatt", "resnet") for a in ("badnets", "blended", "jingleback")]
    assert {c.settings.loss_change_clips for c in grid.row_cells} == {64}
    assert observation_grid("default", model_rows={"resnet": ["blended"]}).row_cells[0].victim.model == "resnet"
    assert {c.victim.seed for c in observation_grid("default", seeds=[2, 5]).row_cells} == {0}  # notebook 90's seed
    # loss-change layers named for the main models leave the rows to their own (their last three)
    named = observation_grid("default", loss_change_layers=["conv3", "fc1"])
    assert {c.settings.loss_change_layers for c in named.row_cells} == {None}
    assert observation_grid("default", models=["smallcnn"]).row_cells == ()  # models given: no rows (as in 90)
    assert observation_grid("smoke").row_cells == ()
    for rows, match in (({"resnet": "blended"}, "non-empty list of attacks"), ({"rnn": ["badnets"]}, "'rnn' has no"),
                        ({"resnet": ["blend"]}, "valid attacks")):
        with pytest.raises(ValueError, match=match):
            observation_grid("default", model_rows=rows)
