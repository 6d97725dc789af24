"""Backdoor metrics: ACC, ASR, RA and the defense effectiveness rating DER.

* ACC — accuracy on the clean test set.
* ASR — fraction of *triggered test clips whose true label is not the target* that the
  model assigns to the target (target-class clips would count as "successes" for free).
* RA  — robust accuracy: the same triggered clips classified as their true label.
* DER — BackdoorBench's defense effectiveness rating (Wu et al., NeurIPS 2022 D&B):
  [max(0, ΔASR) − max(0, ΔACC) + 1] / 2 with Δ = before − after; 0.5 = no effect, 1 =
  backdoor removed at no accuracy cost.

The model is evaluated on its own device: :func:`bdlib.training.predict` moves each batch
of (CPU) features to it and the predictions back.
"""
from __future__ import annotations

import numpy as np
import torch

from .bars import keeps_acc
from .training import predict


def accuracy(model, feats: torch.Tensor, labels) -> float:
    labels = np.asarray(labels)
    return float(np.mean(predict(model, feats) == labels)) if len(labels) else float("nan")


def non_target_mask(labels, target: int) -> np.ndarray:
    return np.asarray(labels) != target


def attack_success_rate(model, triggered_feats: torch.Tensor, true_labels, target: int) -> float:
    """ASR over triggered clips; clips whose true label is the target are excluded."""
    mask = non_target_mask(true_labels, target)
    if not mask.any():
        return float("nan")
    preds = predict(model, triggered_feats[torch.as_tensor(mask)])
    return float(np.mean(preds == target))


def robust_accuracy(model, triggered_feats: torch.Tensor, true_labels, target: int) -> float:
    mask = non_target_mask(true_labels, target)
    if not mask.any():
        return float("nan")
    preds = predict(model, triggered_feats[torch.as_tensor(mask)])
    return float(np.mean(preds == np.asarray(true_labels)[mask]))


def evaluate(model, clean_feats, clean_labels, triggered_feats, triggered_labels, target: int) -> dict:
    return {
        "acc": accuracy(model, clean_feats, clean_labels),
        "asr": attack_success_rate(model, triggered_feats, triggered_labels, target),
        "ra": robust_accuracy(model, triggered_feats, triggered_labels, target),
    }


def der(before: dict, after: dict) -> float:
    d_asr = before["asr"] - after["asr"]
    d_acc = before["acc"] - after["acc"]
    return (max(0.0, d_asr) - max(0.0, d_acc) + 1.0) / 2.0


#: the bar an attack is held to (issue 3): ASR >= 90 % with clean accuracy within 3 points
BAR_MIN_ASR, BAR_MAX_ACC_DROP = 0.9, 0.03


def meets_bar(asr: float, acc_drop: float) -> bool:
    """Whether a victim's ASR and its ACC drop against the clean model meet the bar."""
    return bool(asr >= BAR_MIN_ASR and keeps_acc(acc_drop, BAR_MAX_ACC_DROP))
