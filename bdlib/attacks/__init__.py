"""Attack registry: ``make_attack(name, seed=..., **knobs)``.

A new attack is one module defining an :class:`Attack` subclass plus one line below.
"""
from __future__ import annotations

from ..registry import Registry, make_component
from .badnets import BadNets, BadNetsBurst
from .base import Attack, PoisonedTrainSet, poison_indices, poison_training_set, triggered_features

ATTACKS: Registry[type[Attack]] = Registry("attack")
ATTACKS.add("badnets", BadNets)
ATTACKS.add("badnets_burst", BadNetsBurst)


def make_attack(name: str, seed: int = 0, **knobs) -> Attack:
    return make_component(ATTACKS, name, seed, knobs)


__all__ = ["ATTACKS", "Attack", "PoisonedTrainSet", "make_attack", "poison_indices", "poison_training_set",
           "triggered_features"]
