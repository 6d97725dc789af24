"""What ``python -m bdlib run`` computes before it executes the notebooks: every notebook's
cells, resolved from the notebooks' own parameters.

Why: most of a default ``make reproduce`` is notebooks 41–44 and 50 computing their own grids
(README, *Cost of the grid*: 15 000 of the 23 000 s of the stop-29 run). Inside a notebook's
kernel those cells run one after another whatever cluster is at hand. Listed here, the run's
first step computes them together with the collection's grid — on Dask when there is more than
one worker (a scheduler address, ``BDLIB_WORKERS``, or a machine of 8 cores and more), serially
otherwise — and the notebooks then read every cell back from the store.

A notebook's cells come from the function the notebook itself calls (:data:`NOTEBOOK_CELLS`:
which notebooks read them, the builder, and the parameters that change only what a notebook
shows), so what is computed beforehand is what the notebook asks for. A run given a notebook
parameter that a builder does not take leaves that notebook to compute its own cells, and says
so; nothing is computed that the notebooks will not read (the whole collection grid only for
notebooks 30 and 90, which show all of it).
"""
from __future__ import annotations

import inspect
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from .curve_grids import budget_grid, lr_grid
from .profiles import get_profile
from .study import (SERIAL_WHY, DependentCell, Study, VictimCell, collection_study, compute_cells, main_table_study,
                    model_rows_studies, profile_models, runs_serially)


@dataclass
class Cells:
    """One notebook's work: victims, and cells that each run on one victim (defense runs, curves,
    observations)."""

    label: str
    victims: list[VictimCell]
    dependents: list[DependentCell]

    @classmethod
    def of_study(cls, label: str, study: Study) -> "Cells":
        return cls(label, study.victim_cells(), study.defense_cells())

    @classmethod
    def of_dependents(cls, label: str, cells: list) -> "Cells":
        """Cells that each run on one victim (curves, observations), and their victims."""
        return cls(label, list(dict.fromkeys(c.victim for c in cells)), cells)

    def __len__(self) -> int:
        return len(self.victims) + len(self.dependents)


def _data(dataset, dataset_root, target, device) -> dict:
    return dict(dataset=dataset, dataset_root=dataset_root, target=target, device=device)


def collection_cells(profile: str, device: str | None = None, seed: int = 0, target=None, models=None,
                     dataset: str = "embedded", dataset_root=None) -> list[Cells]:
    """The grid of notebooks 30 and 90 (seed ``seed``): every defense at its notebook's settings
    against every victim. The attack and defense notebooks (10–28) each show a part of it and
    compute that part themselves when run alone."""
    grid = collection_study(profile, seeds=[seed], models=list(models) if models else None,
                            **_data(dataset, dataset_root, target, device))
    return [Cells.of_study(f"the collection grid ({', '.join(grid.models)})", grid)]


def model_rows_cells(profile: str, device: str | None = None, seed: int = 0, target=None, models=None,
                     model_rows=None, dataset: str = "embedded", dataset_root=None) -> list[Cells]:
    """Notebook 90's model rows (:func:`bdlib.study.model_rows_studies`): none when ``models``
    are given, as in the notebook; ``model_rows`` replaces the profile's."""
    if models:
        return []
    prof = get_profile(profile) if model_rows is None else get_profile(profile).replace(model_rows=dict(model_rows))
    return [Cells.of_study(f"model rows ({', '.join(s.models)})", s)
            for s in model_rows_studies(prof, seeds=[seed], **_data(dataset, dataset_root, target, device))]


def observation_cells(profile: str, device: str | None = None, seed: int = 0, seeds=None, attacks=None, models=None,
                      model_rows=None, clean_fraction: float = 0.05, epochs=None, mode: str = "approx", r: float = 0.05,
                      alpha: float = 0.7, lr: float = 1e-3, ft_lr: float = 0.01, grad_mode: str = "train",
                      backdoor_ratio: float = 2.0, clean_ratio: float = 1.25, dormant_fraction: float = 0.1,
                      loss_change_layers=None, loss_change_clips=None, target=None, dataset: str = "embedded",
                      dataset_root=None) -> list[Cells]:
    """Notebook 31's observations (:func:`bdlib.observation_grid.observation_grid`: its models and
    the model rows). With a model that has no units to observe (``rnn``) the notebook refuses
    to run, so none of its cells is computed here; a line says so, and the run's other notebooks
    still run."""
    from .observation_cell import observable
    from .observation_grid import observation_grid

    prof = get_profile(profile)
    rows = {} if models else (prof.model_rows if model_rows is None else model_rows)
    shown = (*profile_models(prof, models), *rows)
    refused = sorted({m for m in shown if not observable(m)})
    if refused:
        print(f"31_observation_gradients: no units to observe in {', '.join(refused)}; the notebook will refuse it",
              file=sys.stderr)
        return []
    grid = observation_grid(profile, seed=seed, seeds=seeds, attacks=attacks, models=models, model_rows=model_rows,
                            clean_fraction=clean_fraction, epochs=epochs, mode=mode, r=r, alpha=alpha, lr=lr,
                            ft_lr=ft_lr, grad_mode=grad_mode, backdoor_ratio=backdoor_ratio, clean_ratio=clean_ratio,
                            dormant_fraction=dormant_fraction, loss_change_layers=loss_change_layers,
                            loss_change_clips=loss_change_clips, **_data(dataset, dataset_root, target, device))
    return [Cells.of_dependents("observations", list(grid.all))]


def budget_cells(profile: str, device: str | None = None, grid=None, attacks=None, n_clean=None, lrs=None,
                 checkpoints=None, seed: int = 0, seeds=None, gnft_mode: str = "approx", target=None, models=None,
                 dataset: str = "embedded", dataset_root=None) -> list[Cells]:
    """Notebook 41's curves (:func:`bdlib.curve_grids.budget_grid`)."""
    g = budget_grid(profile, grid, attacks, n_clean, lrs, checkpoints, seed, seeds, gnft_mode, models)
    return [Cells.of_dependents(f"budget curves ({g.name})", g.cells(dataset, dataset_root, target, device))]


def lr_cells(profile: str, device: str | None = None, grid=None, attacks=None, n_clean=None, lrs=None,
             checkpoints=None, seed: int = 0, seeds=None, gnft_mode: str = "approx", target=None, models=None,
             dataset: str = "embedded", dataset_root=None) -> list[Cells]:
    """Notebook 44's curves (:func:`bdlib.curve_grids.lr_grid`)."""
    g = lr_grid(profile, grid, attacks, n_clean, lrs, checkpoints, seed, seeds, gnft_mode, models)
    return [Cells.of_dependents(f"learning-rate curves ({g.name})", g.cells(dataset, dataset_root, target, device))]


def ablation_cells(profile: str, device: str | None = None, grid=None, seed: int = 0, seeds=None, attacks=None,
                   alphas=None, rs=None, modes=None, norms=None, pruning=None, centre=None, target=None, models=None,
                   dataset: str = "embedded", dataset_root=None) -> list[Cells]:
    """Notebook 42's GN-FT sweep (:func:`bdlib.ablation.notebook_study`)."""
    from .ablation import notebook_study

    _, study = notebook_study(profile, grid, seed, seeds, attacks, alphas, rs, modes, norms, pruning, centre,
                              models=models, **_data(dataset, dataset_root, target, device))
    return [Cells.of_study("GN-FT ablations", study)]


def rate_cells(profile: str, device: str | None = None, seed: int = 0, seeds=None, rates=None, attacks=None,
               target=None, models=None, dataset: str = "embedded", dataset_root=None) -> list[Cells]:
    """Notebook 43's poisoning-rate grid (:func:`bdlib.poison_rate.notebook_study`)."""
    from .poison_rate import notebook_study

    study = notebook_study(profile, seed, seeds, rates, attacks, models=models,
                           **_data(dataset, dataset_root, target, device))
    return [Cells.of_study("poisoning rates", study)]


def main_table_cells(profile: str, device: str | None = None, seed: int = 0, seeds=None, attacks=None, defenses=None,
                     target=None, models=None, dataset: str = "embedded", dataset_root=None) -> list[Cells]:
    """Notebook 50's grid (:func:`bdlib.study.main_table_study`)."""
    study = main_table_study(profile, seeds=seeds, seed=seed, attacks=attacks, defenses=defenses,
                             models=None if models is None else list(models),
                             **_data(dataset, dataset_root, target, device))
    return [Cells.of_study("the main table", study)]


@dataclass(frozen=True)
class NotebookCells:
    """Which notebooks read a builder's cells (a regular expression over notebook file stems),
    the builder — ``build(profile, device, **parameters)``, taking the notebook's parameters by
    name — and the notebook parameters that change nothing of these cells (a bar, how the
    notebook runs, what another builder computes)."""

    notebooks: str
    build: Callable[..., list[Cells]]
    ignores: frozenset = field(default_factory=frozenset)

    @property
    def takes(self) -> frozenset:
        """The notebook parameters the builder takes: its signature declares them."""
        return frozenset(inspect.signature(self.build).parameters) - {"profile", "device"}

    def accepts(self, parameters: dict) -> list[str]:
        """The given parameters this builder can neither take nor ignore (empty: it accepts them)."""
        return sorted(set(parameters) - self.takes - self.ignores)


_BARS = frozenset({"asr_bar", "acc_drop_bar"})

#: every notebook whose cells the run computes beforehand, in notebook order but 31 (after 50, whose
#: FT and GN-FT runs it observes). What is left to the kernels: notebook 12's victims at 44.1 kHz
#: (≈ 3 min), 45's ``long`` grid (a day of CPU, asked for on purpose; a plain run reads its committed
#: curves) and, when they run without 30 or 90, the attack and defense notebooks' parts of the
#: collection grid.
NOTEBOOK_CELLS: tuple[NotebookCells, ...] = (
    NotebookCells(r"^(30|90)_", collection_cells, frozenset({"model_rows"})),
    NotebookCells(r"^90_", model_rows_cells),
    NotebookCells(r"^41_", budget_cells, _BARS),
    NotebookCells(r"^42_", ablation_cells, frozenset({"serial"})),
    NotebookCells(r"^43_", rate_cells, _BARS),
    NotebookCells(r"^44_", lr_cells, _BARS),
    NotebookCells(r"^50_", main_table_cells),
    # after the main table: its FT and GN-FT runs (seeds 0-2) are the ones 31 observes, computed by their own part
    NotebookCells(r"^31_", observation_cells),
)


def plan(profile: str, notebook_stems: list[str], parameters: dict | None = None, device: str | None = None,
         log=None) -> list[Cells]:
    """The cells of every :data:`NOTEBOOK_CELLS` entry that serves one of ``notebook_stems``,
    built from the run's notebook ``parameters`` (each already checked against the notebooks).
    An entry given a parameter it cannot take is left out (and named on ``log``)."""
    parameters = dict(parameters or {})
    out = []
    for entry in NOTEBOOK_CELLS:
        served = [s for s in notebook_stems if re.search(entry.notebooks, s)]
        if not served:
            continue
        foreign = entry.accepts(parameters)
        if foreign:
            if log is not None:
                print(f"{', '.join(served)}: parameter(s) {', '.join(foreign)} change what the notebook computes; "
                      f"it computes its own cells", file=log)
            continue
        given = {k: v for k, v in parameters.items() if k in entry.takes}
        out += entry.build(profile, device, **given)
    return out


def compute_plan(parts: list[Cells], scheduler: str | None = None, serial: bool | None = None,
                 progress: bool = True, on_part=None) -> float:
    """Compute every part's missing cells; return the wall seconds. Serially, part after part
    (``on_part(cells, seconds)`` after each: the run's timings record); on Dask, all parts as one
    graph (a cell two parts share is one task), ``on_part`` called once for the whole."""
    t0 = time.perf_counter()
    if runs_serially(scheduler, serial):
        if serial is None and progress and parts:
            print(f"computing {', '.join(p.label for p in parts)} part by part {SERIAL_WHY}", file=sys.stderr)
        for part in parts:
            if progress:
                print(f"{part.label}: {len(part.victims)} victims, {len(part.dependents)} runs", file=sys.stderr)
            t = time.perf_counter()
            compute_cells(part.victims, part.dependents, serial=True, progress=progress)
            if on_part is not None:
                on_part(part, time.perf_counter() - t)
        return time.perf_counter() - t0
    victims = list(dict.fromkeys(v for p in parts for v in p.victims))
    dependents = list(dict.fromkeys(d for p in parts for d in p.dependents))
    if progress:
        print(f"{', '.join(p.label for p in parts)}: {len(victims)} victims, {len(dependents)} runs on Dask",
              file=sys.stderr)
    compute_cells(victims, dependents, scheduler=scheduler, serial=False, progress=progress)
    if on_part is not None:
        on_part(Cells("every notebook's cells (Dask)", victims, dependents), time.perf_counter() - t0)
    return time.perf_counter() - t0


__all__ = ["Cells", "NOTEBOOK_CELLS", "NotebookCells", "ablation_cells", "budget_cells", "collection_cells",
           "compute_plan", "lr_cells", "main_table_cells", "model_rows_cells", "observation_cells", "plan",
           "rate_cells"]
