"""Store keys: one function per artifact kind, each carrying a fingerprint of the code that
produced the artifact.

Why: the store is content-addressed by configuration. Without the code in the key, an
edited attack kept serving victims trained by the old code (and a regression test could
pass on a warm store without computing anything). Each key below names the modules whose
source determines the artifact — the component's own file (an attack's, a defense's, a
model's) and the shared pipeline code that trains, poisons, extracts features and reads
audio — and :func:`bdlib.fingerprint.code_fingerprint` hashes their source text. Editing
``badnets.py`` changes the keys of BadNets victims and nothing else; editing
``training.py`` changes every model key, as it should.

The shared set is deliberately conservative (``pipeline.py`` is in it): a false "changed"
only costs recomputation, a false "unchanged" serves a wrong result.
"""
from __future__ import annotations

import inspect
import sys

from . import audio, features, metrics, training
from .attacks import ATTACKS
from .data import audioset, clips
from .defenses import DEFENSES
from .fingerprint import code_fingerprint
from .models import MODELS

# the pipeline's own computing code (imported lazily: pipeline imports this module)
_PIPELINE = "bdlib.pipeline"


def _pipeline_modules() -> tuple:
    import importlib

    return (importlib.import_module(_PIPELINE), training, features, audio, audioset, clips, metrics)


def data_code() -> str:
    """Reading audio and extracting features."""
    return code_fingerprint(features, audio, audioset, clips)


def features_key(dataset_id: str, split: str, features_config: dict, clip_policy: dict | None = None) -> dict:
    return {"dataset": dataset_id, "split": split, "features": features_config, "clip_policy": clip_policy,
            "code": data_code()}


def component_modules(obj) -> list:
    """The module defining ``obj`` and, transitively, every ``bdlib`` module it imports from
    (``gnft.py`` -> ``finetune.py`` -> ``training.py``): what a component's behaviour depends on."""
    seen: dict[str, object] = {}
    todo = [sys.modules[obj.__module__]]
    while todo:
        mod = todo.pop()
        if mod.__name__ in seen:
            continue
        seen[mod.__name__] = mod
        for value in vars(mod).values():
            name = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", None)
            if isinstance(name, str) and name.startswith("bdlib.") and name in sys.modules and name not in seen:
                todo.append(sys.modules[name])
    return [seen[k] for k in sorted(seen)]


def component_code(obj) -> str:
    """Fingerprint of a component's source and of the bdlib code it imports."""
    return code_fingerprint(*component_modules(obj))


def _model_code(model: str) -> str:
    return code_fingerprint(*component_modules(MODELS.get(model)), *_pipeline_modules())


def _attack_code(attack: str | None) -> str:
    if attack is None:
        return "clean"
    return component_code(ATTACKS.get(attack))


def surrogate_key(base: dict, model: str) -> dict:
    """The attacker's surrogate (trained on the validation split)."""
    return {**base, "model": model, "data": "val", "code": _model_code(model)}


def attack_fit_key(base: dict, attack: str, knobs: dict, rate: float, target: int, surrogate_epochs: int) -> dict:
    """A fitted attack's state (DABA's trigger and hosts, FlowMur's trigger, VSVC's voice)."""
    return {**base, "attack": attack, "attack_knobs": knobs, "poison_rate": rate, "target": target,
            "surrogate_epochs": surrogate_epochs,
            "code": _attack_code(attack) + "-" + _model_code("smallcnn")}


def triggered_key(fit_key: dict) -> dict:
    """The triggered non-target test clips of an attack (same inputs as its fit)."""
    return {**fit_key, "split": "test", "which": "non-target"}


def victim_key(base: dict, model: str, attack: str | None, knobs: dict | None = None, rate: float | None = None,
               target: int | None = None) -> dict:
    """A trained model: the clean reference (``attack=None``) or a backdoored victim."""
    cfg = {**base, "model": model, "attack": attack}
    if attack is not None:
        cfg.update({"attack_knobs": knobs, "poison_rate": rate, "target": target})
    cfg["code"] = _model_code(model) + "-" + _attack_code(attack)
    return cfg


def defense_key(victim: dict, defense: str, knobs: dict, clean_fraction: float, seed: int) -> dict:
    """A defense run on a victim (the victim's own key is nested, code fingerprint included)."""
    return {"victim": victim, "defense": defense, "defense_knobs": knobs, "clean_fraction": clean_fraction,
            "seed": seed,
            "code": code_fingerprint(*component_modules(DEFENSES.get(defense)), *_pipeline_modules())}


def budget_curve_key(victim: dict, defense: str, knobs: dict, n_clean: int, clean_fraction: float, seed: int,
                     eval_epochs: list[int], curve_code: str) -> dict:
    """One budget curve (:mod:`bdlib.budget`): a fine-tuning run on ``n_clean`` clips of the
    defender's ``clean_fraction`` pool, evaluated at the end of ``eval_epochs``; ``curve_code`` is
    the fingerprint of the module that runs it (passed in: keys does not import its callers)."""
    return {"victim": victim, "defense": defense, "defense_knobs": knobs, "n_clean": n_clean,
            "clean_fraction": clean_fraction, "seed": seed, "eval_epochs": list(eval_epochs),
            "code": code_fingerprint(*component_modules(DEFENSES.get(defense)), *_pipeline_modules()) + "-"
                    + curve_code}


def observation_key(victim: dict, defenses: dict, settings: dict, layers: list, loss_change_layers: list,
                    observation_code: str) -> dict:
    """One victim's observation (:mod:`bdlib.observation_cell`): the victim's key, the keys of the
    defense runs it observes (``{"ft": ..., "gnft": ...}``, code fingerprints nested), the
    observation's settings and layers, and ``observation_code``, the fingerprint of the modules
    that observe (passed in: keys does not import its callers)."""
    return {"victim": victim, "defenses": defenses, "settings": settings, "layers": list(layers),
            "loss_change_layers": list(loss_change_layers), "code": observation_code}
