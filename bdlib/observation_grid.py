"""Notebook 31's observation cells (:class:`bdlib.observation_cell.ObservationCell`, one per
victim) from the notebook's parameters: its seeds × models × attacks, and the profile's model
rows (other architectures at one seed, as notebook 90 shows them); and the tables read back.

Why apart from the cell: these builders decide *which* victims are observed, not what an
observation is, so they stay out of the cell's code fingerprint (editing them recomputes nothing).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pandas as pd

from .attacks import ATTACKS
from .observation import unit_module
from .observation_cell import ObservationCell, ObservationSettings, observed_layers, probe_model
from .profiles import Profile, get_profile
from .study import DatasetSpec, VictimCell, profile_models


def default_attacks(profile: str) -> tuple[str, ...]:
    """BadNets, Blended and JingleBack; on smoke the two victims its collection grid trains."""
    return ("badnets", "badnets_burst") if profile == "smoke" else ("badnets", "blended", "jingleback")


@dataclass(frozen=True)
class ObservationGrid:
    """Notebook 31's cells: ``cells``, the victims of its ``models`` over its seeds, and
    ``row_cells``, the profile's model rows (other architectures on a few attacks, as notebook
    90 shows them) at one seed."""

    cells: tuple[ObservationCell, ...]
    row_cells: tuple[ObservationCell, ...]

    @property
    def all(self) -> tuple[ObservationCell, ...]:
        return self.cells + self.row_cells


def observation_grid(profile: str | Profile = "default", seed: int = 0, seeds=None, attacks=None, models=None,
                     model_rows=None, clean_fraction: float = 0.05, epochs: int | None = None, mode: str = "approx",
                     r: float = 0.05, alpha: float = 0.7, lr: float = 1e-3, ft_lr: float = 0.01,
                     grad_mode: str = "train", backdoor_ratio: float = 2.0, clean_ratio: float = 1.25,
                     dormant_fraction: float = 0.1, loss_change_layers=None, loss_change_clips: int | None = None,
                     dataset: str = "embedded", dataset_root=None, target=None, device: str | None = None,
                     data_root=None) -> ObservationGrid:
    """Notebook 31's cells from its parameters, seed by seed, model by model, attack by attack,
    and beside them the model rows.

    ``seeds`` None: ``[seed]`` on smoke, else ``seed`` and the next two (one victim's counts move
    with its training); ``attacks`` None: :func:`default_attacks`; ``models`` None: the
    profile's; ``loss_change_clips`` None: 16 on smoke, else 128; the rest are
    :class:`~bdlib.observation_cell.ObservationSettings`. ``model_rows`` ({model: [attacks]};
    None: the profile's, none on smoke; none when ``models`` is given, as in notebook 90) are
    observed at victim seed ``seed`` only — notebook 90's row victims, with their FT and GN-FT
    runs — with the same settings but each model's own loss-change layers (its last three)."""
    prof = get_profile(profile)
    smoke = prof.name == "smoke"
    rows = {} if models else dict(prof.model_rows if model_rows is None else model_rows)
    for name, value in (("seeds", seeds), ("attacks", attacks), ("models", models),
                        ("loss_change_layers", loss_change_layers)):
        if isinstance(value, str) or (value is not None and len(value) == 0):
            raise ValueError(f"{name} takes a non-empty list (or None for the default), got {value!r}")
    seeds = tuple(seeds) if seeds is not None else ((seed,) if smoke else (seed, seed + 1, seed + 2))
    models = profile_models(prof, models)
    attacks = tuple(attacks) if attacks is not None else default_attacks(prof.name)
    for a in attacks:
        ATTACKS.get(a)  # a misspelt name lists the valid ones
    settings = ObservationSettings(
        clean_fraction, epochs, mode, r, alpha, lr, ft_lr, grad_mode, backdoor_ratio, clean_ratio, dormant_fraction,
        None if loss_change_layers is None else tuple(loss_change_layers),
        (16 if smoke else 128) if loss_change_clips is None else loss_change_clips)
    for m in models:
        observed_layers(m, settings.loss_change_layers)
    victim = _victims(prof, dataset, dataset_root, target, device, data_root)
    cells = [ObservationCell(victim(s, m, a), settings) for s in seeds for m in models for a in attacks]
    for model, row_attacks in rows.items():
        if isinstance(row_attacks, str) or not row_attacks:
            raise ValueError(f"model_rows[{model!r}] takes a non-empty list of attacks, got {row_attacks!r}")
        profile_models(prof, [model])
        observed_layers(model)
        for a in row_attacks:
            ATTACKS.get(a)
    settings = dataclasses.replace(settings, loss_change_layers=None)
    return ObservationGrid(tuple(cells), tuple(ObservationCell(victim(seed, m, a), settings)
                                               for m, row_attacks in rows.items() for a in row_attacks))


def observation_cells(profile: str | Profile = "default", **parameters) -> list[ObservationCell]:
    """:func:`observation_grid`'s cells without the model rows (``parameters`` as it takes them)."""
    return list(observation_grid(profile, model_rows={}, **parameters).cells)


def _victims(prof: Profile, dataset, dataset_root, target, device, data_root):
    """A maker of victim cells on this data: each carries its attack's knobs from the profile,
    so it is the same cell (one Dask task) as that victim in every other notebook."""
    data = DatasetSpec.of(dataset, None if dataset_root is None else str(dataset_root))
    root = None if data_root is None else str(data_root)

    def victim(seed: int, model: str, attack: str) -> VictimCell:
        return VictimCell(prof, data, seed, model, attack, tuple(sorted(prof.attack_knobs.get(attack, {}).items())),
                          target, root, device)

    return victim


def observed_units(cells: list[ObservationCell]) -> dict[tuple[str, str], int]:
    """(model, layer) -> number of units, for every model the cells observe."""
    out = {}
    for model in dict.fromkeys(c.victim.model for c in cells):
        net = probe_model(model)
        out.update({(model, name): unit_module(net, name).weight.shape[0] for name in observed_layers(model)[0]})
    return out


def observation_results(cells: list[ObservationCell], progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every cell's table (computed here where the store lacks it), concatenated, and every
    stage's ACC and ASR."""
    from tqdm import tqdm

    tables, stages = [], []
    for cell in tqdm(cells, desc="observations", disable=not progress):
        rec = cell.record()
        tables.append(cell.table(rec))
        stages += cell.stage_metrics(rec)
    return pd.concat(tables, ignore_index=True), pd.DataFrame(stages)


__all__ = ["ObservationGrid", "default_attacks", "observation_cells", "observation_grid", "observation_results",
           "observed_units"]
