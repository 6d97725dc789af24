"""One victim's observation of GN-FT's Sec. 3.1 finding (notebook 31), as a store cell.

Why a cell: observing one victim — its units' activations on clean and triggered clips, the
authors' loss-change labelling (``ft_reg.py``'s ``get_loss_change``) and the units' clean-loss
gradient norms in the victim, after FT and after GN-FT (:func:`bdlib.observation.observation_table`)
— is about a minute of CPU on the default profile, and notebook 31 observed its nine victims in
its kernel, one after another, whatever cluster was at hand (613 s on one thread, stop 34). As a
cell, the observation is computed by ``python -m bdlib run`` with every other notebook's cells
(:mod:`bdlib.plan`; serially or on Dask workers), stored, and the notebook reads the tables back.
Which cells a notebook asks for is :mod:`bdlib.observation_grid`'s business, not this module's.

The store key nests the victim's and both defense runs' keys (each with its code fingerprint and
the defense's resolved knobs), what else decides the table (the gradient mode, the class rule,
the loss-change clip count, the batch size and the clean fraction, as used) and the fingerprints
of :mod:`bdlib.observation` and this module (as :mod:`bdlib.budget` is in its curves' keys: any
edit of either observes anew, about a minute per victim; editing the grid builders does not).

The FT and GN-FT runs a cell observes are the store's defense runs: the cell computes them when
they are missing. In a whole run they are the main table's (notebook 50, seeds 0-2), whose part
:mod:`bdlib.plan` puts first; on Dask a cell that reaches one of them while a worker is still
computing it waits for it on the store's lock (one computes, the other reads).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from . import keys, observation
from .defenses import make_defense
from .fingerprint import code_fingerprint
from .models import build_model
from .observation import (CLASSES, MODES, classify_by_loss_change, classify_units, observation_table, unit_layers,
                          unit_loss_changes)
from .registry import check_choice
from .study import VictimCell

KIND = "observations"
#: the stages observed, in the notebook's order
STAGES = ("victim", "after FT", "after GN-FT")
#: the table's label columns (categorical over :data:`bdlib.observation.CLASSES`)
LABEL_COLUMNS = ("class", "class_at_stage", "class_lc")


@dataclass(frozen=True)
class ObservationSettings:
    """Notebook 31's parameters that decide what one victim's observation is.

    ``epochs`` None: the profile's defense epochs; ``mode``, ``r``, ``alpha``, ``lr``: GN-FT's
    (authors' ``ft_reg.py``); ``ft_lr``: FT's (notebook 20, BackdoorBench); ``grad_mode``: the
    gradient as fine-tuning sees it (``train``) or the deployed model's (``eval``);
    ``backdoor_ratio``, ``clean_ratio``, ``dormant_fraction``: the activation rule
    (:func:`bdlib.observation.classify_units`); ``loss_change_layers`` None: the model's last
    three unit layers; ``loss_change_clips``: the seeded subset of paired test clips the loss
    changes are measured on."""

    clean_fraction: float = 0.05
    epochs: int | None = None
    mode: str = "approx"
    r: float = 0.05
    alpha: float = 0.7
    lr: float = 1e-3
    ft_lr: float = 0.01
    grad_mode: str = "train"
    backdoor_ratio: float = 2.0
    clean_ratio: float = 1.25
    dormant_fraction: float = 0.1
    loss_change_layers: tuple[str, ...] | None = None
    loss_change_clips: int = 128

    def __post_init__(self):
        """Every setting checked here, before a victim trains: the rule as
        :func:`bdlib.observation.classify_units` takes it, FT's and GN-FT's knobs as the defenses
        take them (a bad value names the knob and the valid range)."""
        check_choice(self.grad_mode, MODES, "gradient mode (grad_mode)")
        if isinstance(self.loss_change_clips, bool) or int(self.loss_change_clips) != self.loss_change_clips \
                or self.loss_change_clips < 1:
            raise ValueError(f"loss_change_clips must be a whole number >= 1, got {self.loss_change_clips!r}")
        classify_units(np.ones(1), np.ones(1), **self.rule)
        budget = {} if self.epochs is None else {"epochs": self.epochs}
        make_defense("ft", lr=self.ft_lr, **budget)
        make_defense("gnft", mode=self.mode, r=self.r, alpha=self.alpha, lr=self.lr, **budget)

    @property
    def rule(self) -> dict:
        return {"backdoor_ratio": self.backdoor_ratio, "clean_ratio": self.clean_ratio,
                "dormant_fraction": self.dormant_fraction}


def _table_to_json(table: pd.DataFrame) -> dict:
    """Columns as lists; a label column's missing entries (a layer the loss change skips) as None."""
    out = {}
    for col in table.columns:
        values = table[col].tolist()
        out[col] = [None if pd.isna(v) else str(v) for v in values] if col in LABEL_COLUMNS else values
    return out


def _table_from_json(columns: dict) -> pd.DataFrame:
    table = pd.DataFrame(columns)
    table["unit"] = table["unit"].astype(np.int64)
    for col in ("grad_norm", "act_clean", "act_triggered"):
        table[col] = table[col].astype(np.float64)
    for col in LABEL_COLUMNS:
        if col in table:
            table[col] = pd.Categorical(table[col], CLASSES)
    return table


@dataclass(frozen=True)
class ObservationCell:
    """One victim's observation: its table over :data:`STAGES` and each stage's ACC and ASR."""

    victim: VictimCell
    settings: ObservationSettings

    @property
    def task_name(self) -> str:
        return f"observation-{self.victim.attack}"

    def record(self, _victim_record: dict | None = None) -> dict:
        """The observation's record, computed or read back from the store (the victim's record
        only orders the cell after its victim on Dask). The FT and GN-FT runs it observes are
        the store's defense runs (computed here when missing)."""
        v, st = self.victim, self.settings
        layers, lc_layers = observed_layers(v.model, st.loss_change_layers)  # checked before anything trains
        exp = v.experiment()
        knobs = v.victim_kwargs()
        net, victim_rec = exp.backdoored_model(v.attack, v.model, **knobs)
        ft = exp.defend("ft", v.attack, v.model, clean_fraction=st.clean_fraction, attack_knobs=knobs,
                        epochs=st.epochs, lr=st.ft_lr)
        gn = exp.defend("gnft", v.attack, v.model, clean_fraction=st.clean_fraction, attack_knobs=knobs,
                        epochs=st.epochs, mode=st.mode, r=st.r, alpha=st.alpha, lr=st.lr)
        bs = exp.profile.defense_batch_size
        fraction = exp.profile.clean_fraction if st.clean_fraction is None else st.clean_fraction
        # what decides the table beyond the victim and the two runs (their keys hold the defenses' settings,
        # resolved): values as used, so `epochs=None` and the profile's own count are one entry
        observe = {"grad_mode": st.grad_mode, "rule": st.rule, "loss_change_clips": st.loss_change_clips,
                   "batch_size": bs, "clean_fraction": fraction}
        cfg = keys.observation_key(victim_rec["config"], {"ft": ft["config"], "gnft": gn["config"]}, observe,
                                   list(layers), list(lc_layers), code_fingerprint(observation, sys.modules[__name__]))

        def load():
            return {"config": cfg, "metrics": exp.store.load_metrics(KIND, cfg)}

        def compute():
            trig_x, _ = exp.triggered_test(v.attack, **knobs)  # non-target test clips, triggered
            test = exp.split("test")
            keep = test.labels != exp.target_index
            clean_x, clean_y = exp.features("test")[keep], test.labels[keep]  # the same clips, clean
            pick = torch.randperm(len(clean_x), generator=torch.Generator().manual_seed(v.seed))
            pick = pick[:st.loss_change_clips].sort().values
            clc = unit_loss_changes(net, lc_layers, clean_x[pick], clean_y[pick.numpy()], bs)
            blc = unit_loss_changes(net, lc_layers, trig_x[pick], [exp.target_index] * len(pick), bs)
            class_lc = {name: classify_by_loss_change(clc[name], blc[name]) for name in lc_layers}
            clean, _ = exp.clean_data(fraction)
            models = {"victim": net, "after FT": _defended(exp, ft), "after GN-FT": _defended(exp, gn)}
            table = observation_table(v.attack, models, layers, clean_x, trig_x, clean.features, clean.labels,
                                      batch_size=bs, mode=st.grad_mode, seed=v.seed, rule=st.rule,
                                      more_classes={"class_lc": class_lc})
            vm = victim_rec["metrics"]
            stages = [{"stage": "victim", "acc": vm["acc"], "asr": vm["asr"]}] + [
                {"stage": name, "acc": rec["metrics"]["after"]["acc"], "asr": rec["metrics"]["after"]["asr"]}
                for name, rec in (("after FT", ft), ("after GN-FT", gn))]
            metrics = {"table": _table_to_json(table), "stages": stages, "layers": list(layers),
                       "loss_change_layers": list(lc_layers)}
            exp.store.save(KIND, cfg, metrics)
            return {"config": cfg, "metrics": metrics}

        return exp._cached(KIND, cfg, compute, load)

    def table(self, record: dict | None = None) -> pd.DataFrame:
        """One row per (stage, layer, unit) (:func:`bdlib.observation.observation_table`), with
        the victim's ``model`` and ``seed``."""
        m = (record or self.record())["metrics"]
        return _table_from_json(m["table"]).assign(model=self.victim.model, seed=self.victim.seed)

    def stage_metrics(self, record: dict | None = None) -> list[dict]:
        """ACC and ASR of the victim, after FT and after GN-FT."""
        v = self.victim
        return [{"model": v.model, "attack": v.attack, "seed": v.seed, **s}
                for s in (record or self.record())["metrics"]["stages"]]


#: an input shape for a model built only to read its layers' names and sizes (an output channel
#: count does not depend on the input's size)
NOMINAL_INPUT = (40, 101)


def observed_layers(model: str, loss_change_layers=None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The layers whose units are observed in ``model`` (:func:`bdlib.observation.unit_layers`)
    and those the loss change is measured on (``None``: the last three; conv1 is the costly
    one). A model without conv or linear units, or a loss-change layer that is not one of
    them, is refused here, before anything is computed."""
    layers = unit_layers(probe_model(model))
    if not layers:
        raise ValueError(f"model {model!r} has no conv or linear units to observe (bdlib.observation.unit_layers); "
                         f"observe a convolutional or linear model")
    lc = tuple(layers[-3:] if loss_change_layers is None else loss_change_layers)
    unknown = [name for name in lc if name not in layers]
    if unknown:
        raise ValueError(f"loss_change_layers {unknown} are not unit layers of {model!r}: {', '.join(layers)}")
    return layers, lc


def observable(model: str) -> bool:
    """Whether ``model`` has units to observe."""
    return bool(unit_layers(probe_model(model)))


def probe_model(model: str) -> torch.nn.Module:
    """``model`` built at :data:`NOMINAL_INPUT` (seed 0) to read its layers' names and sizes."""
    return build_model(model, NOMINAL_INPUT, 10, seed=0)


def _defended(exp, record: dict) -> torch.nn.Module:
    """The defended weights the store holds for a defense record."""
    net = build_model(record["config"]["victim"]["model"], exp.input_shape, len(exp.class_names), seed=exp.seed)
    return exp.store.load_model_into("defenses", record["config"], net).to(exp.device)  # beside the victim


__all__ = ["KIND", "LABEL_COLUMNS", "NOMINAL_INPUT", "ObservationCell", "ObservationSettings", "STAGES", "observable",
           "observed_layers", "probe_model"]
