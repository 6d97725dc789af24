"""Fine-tuning budget curves: ASR and ACC of FT and GN-FT along one run, at identical optimisers.

Why (GN-FT paper Sec. 4.1; the authors' ``ft_reg.py``): the authors fine-tune 300 epochs on
5 % of Speech Commands v1-10 — about 760–950 clean clips, 3–4 steps of batch 256 per epoch,
≈ 1 200 steps — while the default profile gives 80 clips and 100 steps. Whether "no defense
removes the backdoor" is a property of a method or of the budget is a curve, not a point.

* **One curve is one run.** GN-FT's optimiser is SGD at a constant learning rate, and FT is
  compared at that same optimiser (:func:`bdlib.study.matched_ft_knobs`: the penalty off,
  nothing else changed). With a constant rate the model after ``s`` steps of a long run *is*
  the model of an ``s``-step run, so the steps axis costs one run: the run is evaluated at the
  checkpoints it passes (rounded up to whole epochs; the table records the step actually
  reached). Cosine-scheduled FT (BackdoorBench) has no such property and is not a curve here.
* **Nested clean subsets.** A budget of ``n`` clips is the first ``n`` of a seeded permutation
  of the defender's pool (``clean_fraction`` of the training set, 5 % as in the paper), so a
  larger budget contains the smaller ones and only the amount of data changes along that axis.
  A budget above the pool is refused: grow the data (profile ``budget``: the embedded set with
  12× the speakers, so 5 % is 960 clips), never the fraction.
* **Seeds.** ``Experiment.seed`` trains the victim; :attr:`CurveSpec.seed` draws the clean
  subset, the batch order and the dropout masks.

:func:`budget_answer` states the issue's question numerically: is there a budget where a method
removes the backdoor (mean ASR < 20 %) while keeping mean ACC within 3 points of the victim's,
and does GN-FT beat FT at equal settings (paired over seeds) anywhere?
"""
from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from . import keys
from .bars import keeps_acc
from .defenses import CleanData, make_defense
from .fingerprint import code_fingerprint
from .registry import Checked, check_choice, knob
from .store import provenance
from .study import matched_ft_knobs, mean_sd

METHODS = ("ft", "gnft")


@dataclass(frozen=True)
class CurveSpec(Checked):
    """One fine-tuning run from one victim, evaluated at step checkpoints.

    ``method``: ``"gnft"`` (GN-FT at ``lr`` with ``gnft`` knobs) or ``"ft"`` (the same
    optimiser, batch size and steps without the penalty). ``checkpoints`` are step counts;
    the run lasts until the largest (rounded up to a whole epoch)."""

    attack: str = knob("badnets", nonempty=True)
    method: str = knob("gnft", choices=METHODS)
    n_clean: int = knob(80, "[2, inf)")
    lr: float = knob(1e-3, "(0, inf)")
    checkpoints: tuple = knob((25, 50, 100), "[1, inf)", nonempty=True)
    seed: int = knob(0, "[0, inf)")
    model: str = knob("smallcnn", nonempty=True)
    gnft: tuple = ()  # sorted (knob, value) pairs passed to GN-FT (mode, r, alpha, norm)

    def __post_init__(self):
        super().__post_init__()
        check_choice(self.method, METHODS, "budget method")
        if any(int(c) != c for c in self.checkpoints):
            raise ValueError(f"checkpoints must be whole step counts, got {self.checkpoints!r}")

    def epochs(self, batch_size: int) -> list[int]:
        """The epochs at whose end the run is evaluated: each checkpoint rounded up."""
        spe = steps_per_epoch(self.n_clean, batch_size)
        return sorted({math.ceil(c / spe) for c in self.checkpoints})

    def defense(self, batch_size: int) -> tuple[str, dict]:
        """(registry name, knobs) of the run: GN-FT, or FT at GN-FT's optimiser."""
        gnft = {**dict(self.gnft), "lr": self.lr, "batch_size": batch_size}
        epochs = self.epochs(batch_size)[-1]
        if self.method == "gnft":
            return "gnft", {**gnft, "epochs": epochs}
        return "ft", {**matched_ft_knobs(gnft), "epochs": epochs}


#: the grid notebook 41 runs per profile. ``budget`` is the issue's grid on the grown embedded
#: set (≈ 25 CPU-hours on 2 cores: meant for a GPU or a cluster); ``budget-cpu`` the slice that
#: fits a few hours on the 2-core machine (BadNets, the smallest and the paper's budget, the
#: extreme learning rates); ``smoke`` checks the machinery in CI.
GRIDS: dict[str, dict] = {
    "budget": {"profile": "budget", "attacks": ("badnets", "blended", "jingleback"), "n_clean": (80, 320, 960),
               "lrs": (1e-3, 5e-3, 1e-2), "checkpoints": (25, 100, 300, 600, 1200), "seeds": (0, 1, 2)},
    "budget-cpu": {"profile": "budget", "attacks": ("badnets",), "n_clean": (80, 960), "lrs": (1e-3, 1e-2),
                   "checkpoints": (25, 100, 300, 600, 1200), "seeds": (0, 1, 2)},
    "smoke": {"profile": "smoke", "attacks": ("badnets",), "n_clean": (8, 16), "lrs": (1e-2,),
              "checkpoints": (2, 5, 10), "seeds": (0, 1)},
}


def grid_specs(attacks, n_clean, lrs, checkpoints, seeds, methods=METHODS, model: str = "smallcnn",
               gnft: dict | None = None) -> list[CurveSpec]:
    """Every (attack, method, n_clean, lr, seed) curve, methods side by side at equal settings."""
    frozen = tuple(sorted((gnft or {}).items()))
    return [CurveSpec(attack=a, method=m, n_clean=n, lr=lr, checkpoints=tuple(checkpoints), seed=s, model=model,
                      gnft=frozen)
            for a in attacks for n in n_clean for lr in lrs for s in seeds for m in methods]


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimiser steps in one pass over ``n`` clips (the loop skips a final batch of one clip:
    BatchNorm cannot train on it; :func:`bdlib.defenses.finetune.finetune`)."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= 2 else 0)


def nested_subset(pool: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Positions (into ``pool``) of the first ``n`` clips of a seeded permutation: the
    ``n``-clip budget of seed ``seed`` contains every smaller one of the same seed."""
    if n > len(pool):
        raise ValueError(f"a budget of {n} clean clips exceeds the defender's pool of {len(pool)} (the profile's "
                         f"clean_fraction of the training set); grow the data (profile 'budget') rather than the "
                         f"fraction")
    return np.sort(np.random.default_rng([seed, 13]).permutation(len(pool))[:n])


def budget_curve(exp, spec: CurveSpec, progress: bool = True) -> dict:
    """Run (or load from the store) one curve; returns its record (``metrics["points"]``:
    one dict per evaluated step, step 0 being the victim)."""
    victim, rec = exp.backdoored_model(spec.attack, spec.model)
    batch_size = exp.profile.defense_batch_size
    name, knobs = spec.defense(batch_size)
    knobs = exp.defense_knobs(name, **knobs)  # validated, defaults filled in
    spe = steps_per_epoch(spec.n_clean, batch_size)
    at_epoch = spec.epochs(batch_size)
    cfg = keys.budget_curve_key(rec["config"], name, knobs, spec.n_clean, exp.profile.clean_fraction, spec.seed,
                                at_epoch, code_fingerprint(sys.modules[__name__]))

    def load():
        return {"config": cfg, "metrics": exp.store.load_metrics("budget_curves", cfg)}

    def compute():
        pool, pool_idx = exp.clean_data()
        pick = nested_subset(pool_idx, spec.n_clean, spec.seed)
        clean = CleanData(pool.features[pick], pool.labels[pick])
        before = {k: rec["metrics"][k] for k in ("acc", "asr", "ra")}
        points = [{"step": 0, "epoch": 0, **before}]
        wanted = set(at_epoch)

        def on_epoch_end(epoch, model):
            if epoch in wanted:
                points.append({"step": epoch * spe, "epoch": epoch, **exp.evaluate(model, spec.attack)})

        net = copy.deepcopy(victim)
        t0 = time.perf_counter()
        make_defense(name, seed=spec.seed, **knobs).defend(
            net, clean, progress=progress, on_epoch_end=on_epoch_end)
        metrics = {"points": points, "time_s": time.perf_counter() - t0, "steps_per_epoch": spe,
                   "clean_idx": pool_idx[pick].tolist(), "n_clean": len(pick), **provenance()}
        exp.store.save("budget_curves", cfg, metrics)
        return {"config": cfg, "metrics": metrics}

    return exp._cached("budget_curves", cfg, compute, load)


def curve_rows(spec: CurveSpec, record: dict, victim_seed: int) -> list[dict]:
    """The tidy rows of one curve: one per evaluated step, every setting a column."""
    m = record["metrics"]
    base = {k: v for k, v in asdict(spec).items() if k not in ("checkpoints", "gnft", "seed")}
    base.update({f"gnft.{k}": v for k, v in spec.gnft})
    before = m["points"][0]
    return [{**base, "seed": spec.seed, "victim_seed": victim_seed, "step": p["step"], "acc": p["acc"],
             "asr": p["asr"], "ra": p["ra"], "acc_before": before["acc"], "asr_before": before["asr"],
             "time_s": m["time_s"], "torch_threads": m.get("torch_threads")} for p in m["points"]]


def budget_table(experiments: dict[int, object], specs: list[CurveSpec], progress: bool = True) -> pd.DataFrame:
    """Every curve of ``specs`` on the victims of ``experiments`` (victim seed -> Experiment;
    each spec runs once per victim seed), as one tidy table."""
    from tqdm import tqdm

    rows = []
    todo = [(s_v, exp, spec) for s_v, exp in experiments.items() for spec in specs]
    for s_v, exp, spec in tqdm(todo, desc="budget curves", disable=not progress):
        rows += curve_rows(spec, budget_curve(exp, spec, progress=False), s_v)
    return pd.DataFrame(rows)


def budget_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd of ACC and ASR over seeds per (attack, model, method, n_clean, lr, step)."""
    by = [c for c in ("attack", "model", "method", "n_clean", "lr", "step") if c in table]
    by += [c for c in table.columns if c.startswith("gnft.")]
    t = table.assign(acc_drop=table.acc_before - table.acc)
    return mean_sd(t.drop(columns=["victim_seed"]) if "victim_seed" in t else t, by, ["asr", "acc", "acc_drop"])


def budget_answer(table: pd.DataFrame, asr_bar: float = 0.20, acc_drop_bar: float = 0.03) -> dict:
    """The issue's two questions, from the seeds' spread:

    * ``removes``: settings (and steps) where a method's mean ASR < ``asr_bar`` and mean ACC
      drop (victim ACC − ACC) ≤ ``acc_drop_bar``;
    * ``gnft_better``: settings where GN-FT's ASR is lower than FT's at the same
      (attack, n_clean, lr, step, seed), paired over seeds, by more than twice the paired
      difference's standard error (a rough two-sided 95 % bar; with 3 seeds, weak evidence), and only
      with at least 3 seeds (fewer cannot support a claim).
    """
    s = budget_summary(table)
    ok = s[(s.asr_mean < asr_bar) & keeps_acc(s.acc_drop_mean, acc_drop_bar) & (s.step > 0)]
    keys_ = [c for c in ("attack", "model", "n_clean", "lr", "step", "seed", "victim_seed") if c in table]
    keys_ += [c for c in table.columns if c.startswith("gnft.")]
    wide = table.pivot_table(index=keys_, columns="method", values="asr", aggfunc="first")
    better = pd.DataFrame()
    if {"ft", "gnft"} <= set(wide.columns):
        diff = (wide["gnft"] - wide["ft"]).rename("d").reset_index()
        grp = [k for k in keys_ if k not in ("seed", "victim_seed")]
        g = diff.groupby(grp, dropna=False)["d"].agg(["mean", "std", "count"]).reset_index()
        g["se"] = g["std"] / np.sqrt(g["count"])
        better = g[(g["count"] >= 3) & (g["mean"] < 0) & (g["mean"].abs() > 2 * g["se"])]
    return {"removes": ok.reset_index(drop=True), "gnft_better": better.reset_index(drop=True)}


__all__ = ["CurveSpec", "GRIDS", "METHODS", "budget_answer", "grid_specs", "budget_curve", "budget_summary", "budget_table", "curve_rows",
           "nested_subset", "steps_per_epoch"]
