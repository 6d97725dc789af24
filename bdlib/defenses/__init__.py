"""Defense registry: ``make_defense(name, seed=..., **knobs)``.

A new defense is one module defining a :class:`Defense` subclass plus one line below.
"""
from __future__ import annotations

from ..registry import Registry, make_component
from .anp import ANP
from .base import CleanData, Defense, clean_subset_indices
from .clp import CLP
from .fp import FinePruning
from .ft import FineTuning
from .ftsam import FTSAM
from .gnft import GNFT
from .gnft_prune import GNFTPrune
from .ibau import IBAU
from .nad import NAD
from .tsbd import TSBD

DEFENSES: Registry[type[Defense]] = Registry("defense")
DEFENSES.add("ft", FineTuning)
DEFENSES.add("gnft", GNFT)
DEFENSES.add("gnft_prune", GNFTPrune)
DEFENSES.add("fp", FinePruning)
DEFENSES.add("ftsam", FTSAM)
DEFENSES.add("clp", CLP)
DEFENSES.add("nad", NAD)
DEFENSES.add("tsbd", TSBD)
DEFENSES.add("anp", ANP)
DEFENSES.add("ibau", IBAU)


def make_defense(name: str, seed: int = 0, **knobs) -> Defense:
    return make_component(DEFENSES, name, seed, knobs)


__all__ = ["DEFENSES", "CleanData", "Defense", "clean_subset_indices", "make_defense"]
