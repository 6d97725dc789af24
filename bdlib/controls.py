"""Clean-model controls: how much of an attack's "ASR" the backdoor accounts for.

Why: FlowMur's trigger is optimised on a surrogate to push clips towards the target, so it is
also a universal adversarial perturbation. Mixed loudly enough at test time it moves a model
that never saw a poisoned clip towards the target too (issue 12: at the GN-FT authors'
equal-weight, about 0 dB, test mix). An ASR is only the backdoor's once the same triggered clips
have been shown to the clean model: the victim's ASR minus the clean model's is the part
attributable to the poisoning. The clean model's ASR also counts its own errors into the target
class (what it answers on the same clips without a trigger): read it against that base rate.

:func:`snr_control` is that control over a sweep of test-time SNRs (the attack notebook's
loudness sweep, notebook 15): the trigger the victim was poisoned with, mixed into the same
non-target test clips at each SNR, evaluated on the clean reference model and on the victim.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable

import pandas as pd

from .attacks import make_attack, triggered_features
from .metrics import attack_success_rate

if TYPE_CHECKING:
    from .pipeline import Experiment

#: the loudness sweep of notebook 15: the training mix (30 dB) down to the GN-FT authors'
#: equal-weight test mix (about 0 dB)
TEST_SNRS_DB = (30, 20, 10, 0)
MODEL_KINDS = ("clean", "victim")


def snr_control(exp: "Experiment", attack: str = "flowmur", snr_dbs: Iterable[float] = TEST_SNRS_DB,
                models: tuple[str, ...] | None = None, rate: float | None = None,
                target: str | int | None = None, **knobs) -> pd.DataFrame:
    """ASR of the clean model and of the victim on triggered test clips, at each test-time SNR.

    ``attack`` must mix its trigger at a ``snr_db`` knob (FlowMur). ``knobs`` are the victim's
    attack knobs, over the profile's (``Profile.attack_knobs``), as the attack notebook trains
    it; ``rate`` and ``target`` are the victim's (``None``: the profile's). The trigger is the
    one the victim was poisoned with (fitted at the training ``snr_db``), re-mixed at each of
    ``snr_dbs`` at the same seeded positions into the test clips whose true class is not the
    target; the features of each mix are computed once and shown to both models. The clean
    model is the experiment's clean reference (``exp.backdoored_model(None, model)``: same
    architecture, data, seed and recipe, no poison); both come from the store or are trained.

    Returns a tidy frame, one row per (model, model_kind, snr_db) in the order of ``models``,
    ``MODEL_KINDS`` and ``snr_dbs``: ``model`` (architecture), ``model_kind`` (``"clean"`` /
    ``"victim"``), ``snr_db``, ``asr`` (fraction of the ``n`` triggered clips classified as the
    target) and ``n``.
    """
    snrs = list(snr_dbs)
    if not snrs or not all(math.isfinite(float(s)) for s in snrs):
        raise ValueError(f"snr_dbs must be one or more finite dB values, got {snrs}")
    knobs = {**exp.profile.attack_knobs.get(attack, {}), **knobs}
    atk = exp.attack(attack, rate, target, **knobs)  # the fitted trigger of the victim (validates the knobs)
    if "snr_db" not in vars(atk.config):
        raise ValueError(f"attack {attack!r} has no snr_db knob: its trigger is not mixed at an SNR")
    state = exp.fitted_state(attack, rate, target, **knobs)
    target_index = exp._target(target)
    test = exp.split("test")
    keep = test.labels != target_index
    labels = test.labels[keep]
    nets = {}
    for model in models or exp.profile.models:
        nets[(model, "clean")] = exp.backdoored_model(None, model)[0]
        nets[(model, "victim")] = exp.backdoored_model(attack, model, rate=rate, target=target, **knobs)[0]
    asr = {}
    for snr in snrs:
        probe = make_attack(attack, seed=exp.seed, **{**vars(atk.config), "snr_db": float(snr)})
        if probe.needs_fit:
            probe.load_state(state)
        feats = triggered_features(probe, test.waves[keep], test.sample_rate, exp.extractor)
        for key, net in nets.items():
            asr[key + (snr,)] = attack_success_rate(net, feats, labels, target_index)
    rows = [{"model": model, "model_kind": kind, "snr_db": snr, "asr": asr[(model, kind, snr)], "n": int(keep.sum())}
            for model, kind in nets for snr in snrs]
    return pd.DataFrame(rows, columns=["model", "model_kind", "snr_db", "asr", "n"])


def backdoor_share(control: pd.DataFrame) -> pd.DataFrame:
    """:func:`snr_control`'s table side by side: per (model, snr_db) the clean model's ASR, the
    victim's, and their difference ``backdoor`` (victim minus clean: what the poisoning adds)."""
    wide = control.pivot_table(index=["model", "snr_db"], columns="model_kind", values="asr", sort=False)
    wide = wide.reindex(columns=list(MODEL_KINDS))
    wide["backdoor"] = wide["victim"] - wide["clean"]
    wide.columns.name = None
    return wide


__all__ = ["MODEL_KINDS", "TEST_SNRS_DB", "backdoor_share", "snr_control"]
