"""The attack interface: a trigger plus a poisoning rule.

Why two domains: the GN-FT paper's BadNets-audio stamps a patch on the MFCC map (a
trigger that exists only in feature space), while every physically playable trigger
(noise burst, ultrasonic tone, music, style, FlowMur) acts on the waveform. An attack
declares its ``domain``; :func:`triggered_features` routes a clean waveform batch through
the right path, so training, metrics and defenses never need to know which it is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal

import numpy as np
import torch

from ..audio import snr_db


@dataclass
class FitContext:
    """What an attacker that selects or optimises its trigger gets to see (DABA, FlowMur, VSVC).

    ``train`` is the training set it poisons; ``aux`` is auxiliary data disjoint from it
    (FlowMur's "limited knowledge" setting: the surrogate never sees the victim's data);
    ``surrogate`` is a model trained on ``aux`` with the victim's feature front end, on the
    experiment's device; an attack that runs it moves its (CPU) features there
    (:func:`bdlib.device.model_device`; :func:`bdlib.training.predict` does it for DABA).
    """

    train: Any  # AudioSet
    aux: Any  # AudioSet
    extractor: Callable
    surrogate: torch.nn.Module | None
    rate: float
    target: int
    progress: bool = False


class Attack:
    """Base class. Subclasses set ``name``, ``domain``, ``Config`` and implement
    :meth:`apply` (waveform domain) or :meth:`apply_features` (feature domain)."""

    name: ClassVar[str] = "attack"
    domain: ClassVar[Literal["waveform", "features"]] = "waveform"
    #: "dirty": poisoned clips are relabelled to the target; "clean": target-class clips only
    labeling: ClassVar[Literal["dirty", "clean"]] = "dirty"
    #: True when the trigger or the poisoned subset is chosen from data or a model; the
    #: pipeline then calls :meth:`fit` once and caches its state in the store
    needs_fit: ClassVar[bool] = False
    #: False for triggers that transform the clip (styles, voice conversion) rather than add a sound
    additive: ClassVar[bool] = True
    #: the front end the attack runs at (``load_experiment(..., features=...)``); ultrasonic: "44k"
    features: ClassVar[str] = "16k"
    Config: ClassVar[type]

    def __init__(self, config, seed: int = 0):
        self.config = config
        self.seed = seed

    # --- the trigger -----------------------------------------------------------------
    def apply(self, waves: np.ndarray, sample_rate: int) -> np.ndarray:
        """Return triggered copies of ``waves`` (N, samples), same shape/dtype, in [-1, 1]."""
        raise NotImplementedError(f"{self.name} is a {self.domain}-domain attack")

    def apply_features(self, feats: torch.Tensor) -> torch.Tensor:
        """Return triggered copies of feature maps (N, 1, frames, coefficients)."""
        raise NotImplementedError(f"{self.name} is a {self.domain}-domain attack")

    def poison(self, waves: np.ndarray, sample_rate: int) -> np.ndarray:
        """The training-time form of the trigger; the test-time :meth:`apply` unless an
        attack varies it while poisoning (DABA's loudness variants)."""
        return self.apply(waves, sample_rate)

    # --- data- or model-dependent triggers ----------------------------------------------
    def fit(self, ctx: FitContext) -> dict[str, torch.Tensor]:
        """Select/optimise the trigger; return the state that :meth:`load_state` restores."""
        raise NotImplementedError(f"{self.name} needs no fitting")

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError(f"{self.name} needs no fitting")

    def _require_fitted(self, attr: str) -> None:
        if getattr(self, attr, None) is None:
            raise RuntimeError(f"{self.name} must be fitted first: use Experiment.attack({self.name!r}) "
                               "or call .fit(FitContext(...)) / .load_state(...)")

    def trigger_alone(self, n_samples: int, sample_rate: int) -> np.ndarray | None:
        """The added sound by itself, as it is mixed in (for listening and plots); None
        for transforming triggers and feature-domain patches."""
        if self.domain != "waveform" or not self.additive:
            return None
        return self.apply(np.zeros((1, n_samples), dtype=np.float32), sample_rate)[0]

    def trigger_snr_db(self, waves: np.ndarray, sample_rate: int) -> np.ndarray:
        """Clip-to-trigger SNR per clip (dB); NaN for feature-domain triggers, which have
        no waveform to measure."""
        if self.domain != "waveform":
            return np.full(len(waves), np.nan)
        return snr_db(waves, self.apply(waves, sample_rate))

    # --- the poisoning rule ----------------------------------------------------------
    def select_poison(self, labels: np.ndarray, rate: float, target: int, rng: np.random.Generator) -> np.ndarray:
        """Indices of the training clips to poison (sorted)."""
        return poison_indices(labels, rate, target, rng, labeling=self.labeling)

    def describe(self) -> dict:
        return {"attack": self.name, "domain": self.domain, "labeling": self.labeling, **vars(self.config)}


def poison_indices(labels: np.ndarray, rate: float, target: int, rng: np.random.Generator,
                   labeling: str = "dirty") -> np.ndarray:
    """Exactly ``round(rate × N)`` clips.

    Dirty-label (BadNets, Gu et al. 2017): drawn among non-target clips, which are then
    relabelled to the target, so every poisoned clip carries a wrong label. Clean-label
    (FlowMur's setting): ``rate`` is a fraction of the *target class*, labels unchanged.
    """
    labels = np.asarray(labels)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"poisoning rate must be in [0, 1], got {rate}")
    if labeling == "dirty":
        pool = np.flatnonzero(labels != target)
        n = int(round(rate * len(labels)))
    elif labeling == "clean":
        pool = np.flatnonzero(labels == target)
        n = int(round(rate * len(pool)))
    else:
        raise ValueError(f"unknown labeling {labeling!r}; valid: 'dirty', 'clean'")
    if n > len(pool):
        raise ValueError(f"cannot poison {n} clips: only {len(pool)} eligible ({labeling}-label, target {target})")
    return np.sort(rng.choice(pool, size=n, replace=False))


def triggered_features(attack: Attack, waves: np.ndarray, sample_rate: int, extractor,
                       training: bool = False) -> torch.Tensor:
    """Features of triggered clips, whichever domain the trigger lives in (``training``
    selects the poisoning-time form, :meth:`Attack.poison`)."""
    if attack.domain == "waveform":
        return extractor(attack.poison(waves, sample_rate) if training else attack.apply(waves, sample_rate))
    return attack.apply_features(extractor(waves))


@dataclass
class PoisonedTrainSet:
    features: torch.Tensor
    labels: torch.Tensor
    poison_idx: np.ndarray  # indices into the training split that carry the trigger


def poison_training_set(attack: Attack, waves: np.ndarray, labels: np.ndarray, clean_feats: torch.Tensor,
                        sample_rate: int, extractor, rate: float, target: int, seed: int) -> PoisonedTrainSet:
    """Replace the selected clips' features by triggered ones (and relabel, if dirty-label).

    Only the poisoned rows are re-featurised; the clean features are reused.
    """
    idx = attack.select_poison(labels, rate, target, np.random.default_rng(seed))
    feats = clean_feats.clone()
    new_labels = torch.as_tensor(np.asarray(labels), dtype=torch.long).clone()
    if len(idx):
        feats[idx] = triggered_features(attack, waves[idx], sample_rate, extractor, training=True)
        new_labels[idx] = target
    return PoisonedTrainSet(feats, new_labels, idx)
