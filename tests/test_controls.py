"""The clean-model control of bdlib.controls (issue 12): FlowMur's ASR at each test-time SNR,
on the clean reference model and on the victim, on a tiny smoke experiment."""
import numpy as np
import pandas as pd
import pytest
import torch

from bdlib.attacks import make_attack, triggered_features
from bdlib.controls import MODEL_KINDS, backdoor_share, snr_control
from bdlib.metrics import attack_success_rate
from bdlib.pipeline import load_experiment

#: a 3/2/2-speaker embedded set (30 train, 20 val, 20 test clips): 3 target-class training
#: clips, 2 of them poisoned (clean-label), two epochs; a 3-step trigger optimisation
DATA = {"speakers_train": 3, "speakers_val": 2, "speakers_test": 2, "seed": 11}
BUDGET = {"train_epochs": 2, "train_batch_size": 16, "poison_rate": 0.67}
KNOBS = {"steps": 3, "batch_size": 8}
SNRS = (30, 10, 0, -10)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The control computed once, with every model the function asked the pipeline for."""
    root = tmp_path_factory.mktemp("controls")
    exp = load_experiment("smoke", progress=False, dataset_options=DATA, dataset_root=root / "embedded",
                          root=root, device="cpu", **BUDGET)
    asked = []
    real = exp.backdoored_model

    def spy(attack, model="smallcnn", **kw):
        net, rec = real(attack, model, **kw)
        asked.append((attack, model, rec["metrics"]["n_poisoned"], net))
        return net, rec

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(exp, "backdoored_model", spy)
        table = snr_control(exp, "flowmur", SNRS, **KNOBS)
    return exp, table, asked


def test_the_table_is_tidy_with_both_models_at_every_snr_asked(run):
    exp, table, _ = run
    assert list(table.columns) == ["model", "model_kind", "snr_db", "asr", "n"]
    assert len(table) == len(MODEL_KINDS) * len(SNRS)
    for kind in MODEL_KINDS:
        assert table[table.model_kind == kind].snr_db.tolist() == list(SNRS)  # in the order asked
    assert set(table.model) == {"smallcnn"}
    assert table.asr.between(0, 1).all()
    test = exp.split("test")
    assert (table.n == int((test.labels != exp.target_index).sum())).all() and table.n.iloc[0] > 0
    assert ((table.asr * table.n).round(6) % 1 == 0).all()  # a fraction of the n clips


def test_the_clean_model_is_trained_without_poison_and_is_not_the_victim(run):
    exp, table, asked = run
    by_attack = {a: (n_poisoned, net) for a, _, n_poisoned, net in asked}
    assert set(by_attack) == {None, "flowmur"}
    (clean_poisoned, clean), (victim_poisoned, victim) = by_attack[None], by_attack["flowmur"]
    assert clean_poisoned == 0 and victim_poisoned == 2
    assert any(not torch.equal(a, b) for a, b in zip(clean.state_dict().values(), victim.state_dict().values()))
    # each row is the ASR of its own model on the trigger re-mixed at its SNR
    state = exp.fitted_state("flowmur", steps=3, batch_size=8)
    test = exp.split("test")
    keep = test.labels != exp.target_index
    for snr in (0, 30):
        probe = make_attack("flowmur", seed=exp.seed, steps=3, batch_size=8, snr_db=snr)
        probe.load_state(state)
        feats = triggered_features(probe, test.waves[keep], test.sample_rate, exp.extractor)
        for kind, net in (("clean", clean), ("victim", victim)):
            row = table[(table.model_kind == kind) & (table.snr_db == snr)]
            assert row.asr.item() == attack_success_rate(net, feats, test.labels[keep], exp.target_index)
    # at the training mix (30 dB) the victim's ASR is the one the pipeline stored with it
    stored = exp.backdoored_model("flowmur", steps=3, batch_size=8)[1]["metrics"]["asr"]
    assert table[(table.model_kind == "victim") & (table.snr_db == 30)].asr.item() == pytest.approx(stored)


def test_a_louder_mix_changes_the_clips_and_the_backdoor_share_is_victim_minus_clean(run):
    exp, table, _ = run
    atk = exp.attack("flowmur", steps=3, batch_size=8)
    clips = exp.split("test").waves[:4]
    quiet = make_attack("flowmur", steps=3, batch_size=8, snr_db=30)
    loud = make_attack("flowmur", steps=3, batch_size=8, snr_db=0)
    for probe in (quiet, loud):
        probe.trigger_wave = atk.trigger_wave
    assert np.abs(loud.apply(clips, 16000) - clips).mean() > 10 * np.abs(quiet.apply(clips, 16000) - clips).mean()
    wide = backdoor_share(table)
    assert list(wide.columns) == ["clean", "victim", "backdoor"]
    assert wide.index.get_level_values("snr_db").tolist() == [float(s) for s in SNRS]
    pd.testing.assert_series_equal(wide.backdoor, wide.victim - wide.clean, check_names=False)


def test_it_refuses_an_attack_without_an_snr_and_an_empty_sweep(run):
    exp, _, _ = run
    with pytest.raises(ValueError, match="no snr_db knob"):
        snr_control(exp, "badnets")
    with pytest.raises(ValueError, match="finite dB"):
        snr_control(exp, "flowmur", [], **KNOBS)
    with pytest.raises(ValueError, match="finite dB"):
        snr_control(exp, "flowmur", [float("inf")], **KNOBS)
