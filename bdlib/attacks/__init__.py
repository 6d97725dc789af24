"""Attack registry: ``make_attack(name, seed=..., **knobs)``.

A new attack is one module defining an :class:`Attack` subclass plus one line below.
"""
from __future__ import annotations

from ..registry import Registry, make_component
from .badnets import BadNets, BadNetsBurst
from .base import Attack, FitContext, PoisonedTrainSet, poison_indices, poison_training_set, triggered_features
from .blended import Blended
from .daba import DABA
from .flowmur import FlowMur
from .jingleback import JingleBack
from .pbsm import PBSM
from .ultrasonic import Ultrasonic
from .vsvc import VSVC

ATTACKS: Registry[type[Attack]] = Registry("attack")
ATTACKS.add("badnets", BadNets)
ATTACKS.add("badnets_burst", BadNetsBurst)
ATTACKS.add("blended", Blended)
ATTACKS.add("ultrasonic", Ultrasonic)
ATTACKS.add("daba", DABA)
ATTACKS.add("jingleback", JingleBack)
ATTACKS.add("flowmur", FlowMur)
ATTACKS.add("pbsm", PBSM)
ATTACKS.add("vsvc", VSVC)


def make_attack(name: str, seed: int = 0, **knobs) -> Attack:
    return make_component(ATTACKS, name, seed, knobs)


__all__ = ["ATTACKS", "Attack", "FitContext", "PoisonedTrainSet", "make_attack", "poison_indices", "poison_training_set",
           "triggered_features"]
