"""The budget notebooks' grids (41: clip budget × steps, 44: learning rate × budget) as cells.

Why: a budget curve is one fine-tuning run (:func:`bdlib.budget.budget_curve`), and a grid of
them is tens of independent runs — 45 minutes to hours of CPU on the default profile. Resolved
here rather than in the notebooks, the same grid is what a notebook shows *and* what
``python -m bdlib run`` computes beforehand (:mod:`bdlib.plan`), serially or spread over Dask
workers next to the other notebooks' cells; the notebook then reads every curve back from the
store. A :class:`CurveCell` is one curve on one victim seed, picklable, and rebuilds its
Experiment in whichever process runs it (:class:`bdlib.study.VictimCell`).

The grids (the GN-FT paper, Sec. 4.1; the authors' ``ft_reg.py`` fine-tunes ≈ 1 200 steps on
760–950 clips; the README's *The budget* says which slice ran where):

* notebook 41 (:func:`budget_grid`): :data:`bdlib.budget.GRIDS` plus ``default`` — the run
  profile's own BadNets victims at its 5 % (80 clips on the default profile), lr 1e-3 and 1e-2,
  to 300 steps — and ``full``, the slice behind the committed ``41_budget_curves_full.csv``;
* notebook 44 (:func:`lr_grid`): Blended and JingleBack, in slices (one run per attack,
  method, budget, lr and seed in each); ``default`` at 80 clips to 300 steps, ``full`` the three
  slices behind ``44_budget_lr_full.csv``.

Every argument that is not ``None`` replaces the grid's; without ``seeds`` the grid's seeds are
shifted by ``seed`` (``bdlib run --seed N``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pandas as pd

from .budget import GRIDS, CurveSpec, budget_curve, curve_rows, grid_specs
from .profiles import Profile, get_profile
from .study import DatasetSpec, VictimCell, profile_models

#: notebook 41's ``full`` slice (figures/41_budget_curves_full.csv): BadNets at all three rates of
#: the ``budget`` grid, Blended at lr 1e-3 and 1e-2 and JingleBack at 1e-2, to 300 steps
FULL_SLICE_41 = {"attacks": ("badnets", "blended", "jingleback"),
                 "n_clean": {"badnets": (80, 960), "blended": (960,), "jingleback": (960,)},
                 "lrs": {"badnets": (1e-3, 5e-3, 1e-2), "blended": (1e-3, 1e-2), "jingleback": (1e-2,)},
                 "checkpoints": {"badnets": (25, 100, 300, 600, 1200), "blended": (25, 100, 300),
                                 "jingleback": (25, 100, 300)}}

#: notebook 44's grids: the profile its victims come from (None: the run's) and its slices
LR_GRIDS = {"smoke": ("smoke", ({"n_clean": (16,), "lrs": (1e-3, 1e-2), "checkpoints": (2, 5)},
                                {"n_clean": (8,), "lrs": (1e-2,), "checkpoints": (2, 5, 10)})),
            # a plain run: the run profile's own victims (the main table's), 80 clips, 300 steps (≈ 52 min of CPU)
            "default": (None, ({"n_clean": (80,), "lrs": (1e-3, 1e-2), "checkpoints": (25, 100, 300)},)),
            # the committed results, on the grown `budget` set: the learning rate at the authors' clip budget,
            # the middle budget at 10x, the step count at 80 clips
            "full": ("budget", ({"n_clean": (960,), "lrs": (1e-3, 5e-3, 1e-2), "checkpoints": (25, 100, 300)},
                                {"n_clean": (320,), "lrs": (1e-2,), "checkpoints": (25, 100, 300)},
                                {"n_clean": (80,), "lrs": (1e-3, 5e-3, 1e-2),
                                 "checkpoints": (25, 100, 300, 600, 1200)}))}
LR_ATTACKS = ("blended", "jingleback")


@dataclass(frozen=True)
class CurveCell:
    """One budget curve (``spec``, its ``seed`` the defender's) on one victim."""

    victim: VictimCell
    spec: CurveSpec

    @property
    def task_name(self) -> str:
        return f"curve-{self.spec.method}-{self.spec.attack}"

    def record(self, _victim_record: dict | None = None) -> dict:
        """The curve's record, computed or read back from the store (the victim's record only
        orders the cell after its victim on Dask)."""
        return budget_curve(self.victim.experiment(), self.spec, progress=False)

    def rows(self) -> list[dict]:
        """The curve's tidy rows (:func:`bdlib.budget.curve_rows`)."""
        return curve_rows(self.spec, self.record(), self.victim.seed)


@dataclass(frozen=True)
class CurveGrid:
    """A resolved budget grid: the ``profile`` its victims come from, its victim ``seeds``, the
    curves of one seed (``specs``, seed 0, one set per model of ``models``; each runs once per
    seed with the seed replaced) and the ``slices`` they came from (``attacks``, ``n_clean``,
    ``lrs``, ``checkpoints`` each). The profile is the registry's, without ``models`` applied:
    a victim cell is then equal to the same victim of every other notebook's grid (one Dask
    task), as the store keys never depend on the profile's model list."""

    name: str
    profile: Profile
    seeds: tuple[int, ...]
    specs: tuple[CurveSpec, ...]
    slices: tuple[dict, ...]
    models: tuple[str, ...]

    @property
    def attacks(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a for sl in self.slices for a in sl["attacks"]))

    def largest_checkpoint(self, attack: str) -> int:
        return max(max(sl["checkpoints"]) for sl in self.slices if attack in sl["attacks"])

    def cells(self, dataset: str = "embedded", dataset_root=None, target=None, device: str | None = None,
              data_root=None) -> list[CurveCell]:
        """Every curve of every seed, seed by seed in the grid's order."""
        data = DatasetSpec.of(dataset, None if dataset_root is None else str(dataset_root))
        root = None if data_root is None else str(data_root)
        return [CurveCell(VictimCell(self.profile, data, s, sp.model, sp.attack, (), target, root, device),
                          dataclasses.replace(sp, seed=s))
                for s in self.seeds for sp in self.specs]

    def describe(self, cells: list[CurveCell]) -> str:
        exp = cells[0].victim.experiment()
        return (f"grid {self.name!r} on profile {self.profile.name!r}: {len(exp.split('train'))} training clips, "
                f"defender pool {len(exp.clean_data()[1])} clips; {len(self.specs)} curves x {len(self.seeds)} "
                f"seeds; models {', '.join(self.models)}")


def curve_table(cells: list[CurveCell], progress: bool = True) -> pd.DataFrame:
    """Every cell's curve (computed here if the store lacks it), one row per evaluated step."""
    from tqdm import tqdm

    return pd.DataFrame([r for c in tqdm(cells, desc="budget curves", disable=not progress) for r in c.rows()])


def _shifted(seeds, grid_seeds, seed: int) -> tuple[int, ...]:
    return tuple(seeds) if seeds is not None else tuple(s + seed for s in grid_seeds)


def budget_grid(profile: str = "default", grid: str | None = None, attacks=None, n_clean=None, lrs=None,
                checkpoints=None, seed: int = 0, seeds=None, gnft_mode: str = "approx", models=None) -> CurveGrid:
    """Notebook 41's grid. ``grid``: a name of :data:`bdlib.budget.GRIDS`, ``"default"`` or
    ``"full"`` (``None``: ``"smoke"`` under the smoke profile, else ``"default"``); ``n_clean``,
    ``lrs`` and ``checkpoints`` are one list for every attack or ``{attack: list}``."""
    grids = {**GRIDS, "default": {"profile": profile, "attacks": ("badnets",), "n_clean": (80,), "lrs": (1e-3, 1e-2),
                                  "checkpoints": (25, 100, 300), "seeds": (0, 1, 2)},
             "full": {**GRIDS["budget-cpu"], **FULL_SLICE_41}}
    name = grid or ("smoke" if profile == "smoke" else "default")
    if name not in grids:
        raise ValueError(f"grid {name!r} is not one of {sorted(grids)}")
    g = {**grids[name], **{k: v for k, v in dict(attacks=attacks, n_clean=n_clean, lrs=lrs,
                                                  checkpoints=checkpoints).items() if v is not None}}
    run = get_profile(g["profile"])
    run_models = profile_models(run, models)

    def of(axis, attack):  # one list for every attack, or {attack: list}
        v = g[axis]
        if isinstance(v, dict) and attack not in v:
            raise ValueError(f"{axis} names attacks {sorted(v)} but not {attack!r}")
        return tuple(v[attack] if isinstance(v, dict) else v)

    slices = tuple({"attacks": (a,), **{axis: of(axis, a) for axis in ("n_clean", "lrs", "checkpoints")}}
                   for a in g["attacks"])
    specs = tuple(sp for m in run_models for sl in slices  # one set of curves per model and attack
                  for sp in grid_specs(sl["attacks"], sl["n_clean"], sl["lrs"], sl["checkpoints"], seeds=[0], model=m,
                                       gnft={"mode": gnft_mode}))
    return CurveGrid(name, run, _shifted(seeds, g["seeds"], seed), specs, slices, run_models)


def lr_grid(profile: str = "default", grid: str | None = None, attacks=None, n_clean=None, lrs=None,
            checkpoints=None, seed: int = 0, seeds=None, gnft_mode: str = "approx", models=None) -> CurveGrid:
    """Notebook 44's grid (:data:`LR_GRIDS`; ``None``: ``"smoke"`` under the smoke profile, else
    ``"default"``). A value for ``n_clean``, ``lrs`` or ``checkpoints`` runs one slice: the first,
    with it replaced. Seeds 0, 1, 2 (smoke: 0), shifted by ``seed``."""
    smoke = profile == "smoke"
    name = grid or ("smoke" if smoke else "default")
    if name not in LR_GRIDS:
        raise ValueError(f"grid {name!r} is not one of {sorted(LR_GRIDS)}")
    run_name, grid_slices = LR_GRIDS[name]
    asked = {k: tuple(v) for k, v in dict(n_clean=n_clean, lrs=lrs, checkpoints=checkpoints).items() if v is not None}
    chosen = tuple(attacks or LR_ATTACKS)
    slices = tuple({"attacks": chosen, **sl} for sl in ([{**grid_slices[0], **asked}] if asked else grid_slices))
    run = get_profile(run_name or profile)
    run_models = profile_models(run, models)
    specs = tuple(dataclasses.replace(sp, model=m) for m in run_models for sl in slices
                  for sp in grid_specs(sl["attacks"], sl["n_clean"], sl["lrs"], sl["checkpoints"], seeds=[0],
                                       gnft={"mode": gnft_mode}))
    return CurveGrid(name, run, _shifted(seeds, (0,) if smoke else (0, 1, 2), seed), specs, slices, run_models)


__all__ = ["CurveCell", "CurveGrid", "FULL_SLICE_41", "LR_ATTACKS", "LR_GRIDS", "budget_grid", "curve_table",
           "lr_grid"]
