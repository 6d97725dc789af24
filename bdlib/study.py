"""Studies: one object describes a grid — data source, profile (budget), models, attacks
with their knobs, defenses with lists of knob settings, seeds — and expands it to cells.

Why: the paper's questions are grids (model × attack × defense × knobs × seeds), and a
grid hidden in notebook loops can neither run in parallel nor be tabulated honestly. A
:class:`Study` expands to *victim cells* (train or load one backdoored model) and
*defense cells* (one defense run on one victim), runs the missing ones — serially or on
Dask (:mod:`bdlib.cluster`) — and returns a tidy table with one column per knob and the
seed. :func:`pivot` reshapes it and refuses to average rows silently.

A defense that cannot act on a model (ANP on a network without BatchNorm, CLP without
conv→BatchNorm pairs, NAD without feature maps: :class:`~bdlib.models.contract.DefenseNotApplicable`)
does not stop the study: its cell becomes a row with ``status = "not applicable"``, the
defense's own reason in ``reason`` and no metrics (NaN), and every other cell runs. Whether a
defense refuses is decided before anything is trained (:func:`refusal`: the defense's declared
:meth:`~bdlib.defenses.base.Defense.check` looks at a fresh, untrained model of the
architecture, without data), so a study read back from the store (:meth:`Study.table`) shows
the same rows. Any other error still fails the study.

Cells are plain picklable dataclasses; each one rebuilds its :class:`~bdlib.pipeline.Experiment`
in whichever process runs it, and every artifact goes through the store's per-key lock, so
two workers that need the same clean model or attack fit compute it once.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Protocol

import pandas as pd

from .attacks import ATTACKS
from .defenses import DEFENSES
from .models import MODELS
from .models.contract import DefenseNotApplicable
from .profiles import Profile, get_profile

KnobSettings = dict | list  # one knob dict, or a list of them (a sweep)

#: a cell's ``status`` in :meth:`Study.table`: it ran (``OK``), or the defense refused the model
OK, NOT_APPLICABLE = "ok", "not applicable"


@dataclass(frozen=True)
class DatasetSpec:
    """Which data a study runs on: a registered source name, its root and options."""

    name: str = "embedded"
    root: str | None = None
    options: tuple = ()  # sorted (key, value) pairs: hashable and picklable

    @classmethod
    def of(cls, name: str = "embedded", root: str | os.PathLike | None = None, **options) -> "DatasetSpec":
        return cls(name, None if root is None else str(root), tuple(sorted(options.items())))


@dataclass(frozen=True)
class VictimCell:
    """One backdoored model (or the clean one, ``attack=None``) of one seed."""

    profile: Profile
    dataset: DatasetSpec
    seed: int
    model: str
    attack: str | None
    attack_knobs: tuple = ()  # sorted (key, value) pairs
    target: str | int | None = None
    data_root: str | None = None
    device: str | None = None  # a spec, resolved by the process that runs the cell (bdlib.device)
    rate: float | None = None  # the poisoning rate; None: the profile's (the clean model has none)

    @property
    def features(self) -> str:
        return "16k" if self.attack is None else ATTACKS.get(self.attack).features

    def experiment(self):
        return _experiment(self.profile, self.dataset, self.seed, self.features, self.target, self.data_root,
                           self.device)

    def victim_kwargs(self) -> dict:
        """The attack knobs plus, when it is not the profile's, the poisoning rate: what
        ``Experiment.backdoored_model``, ``attack_config`` and ``evaluate`` take after the attack
        (each has a ``rate`` parameter), and what ``Experiment.defend`` forwards to the first and
        the last as ``attack_knobs``."""
        return {**dict(self.attack_knobs), **({} if self.rate is None else {"rate": self.rate})}

    @property
    def task_name(self) -> str:
        """What the cell is, for a Dask key and the dashboard."""
        return f"victim-{self.attack}"

    def run(self, *_deps) -> dict:
        _, rec = self.experiment().backdoored_model(self.attack, self.model, **self.victim_kwargs())
        return rec

    def record(self) -> dict:
        """The victim's record (:meth:`run`): what :func:`compute_cells` returns for it."""
        return self.run()


@dataclass(frozen=True)
class DefenseCell:
    """One defense run, with one knob setting, on one victim."""

    victim: VictimCell
    defense: str
    knobs: tuple = ()  # sorted (key, value) pairs
    clean_fraction: float | None = None

    @property
    def task_name(self) -> str:
        return f"defense-{self.defense}-{self.victim.attack}"

    def refusal(self) -> str | None:
        """The defense's reason for refusing this cell's model (:func:`refusal`), or None if it
        does not refuse it up front. Trains and reads nothing but the test features' shape."""
        v = self.victim
        exp = v.experiment()
        return refusal(self.defense, exp.defense_knobs(self.defense, **dict(self.knobs)), v.model, exp.input_shape,
                       len(exp.class_names), seed=v.seed)

    def run(self, _victim_record: dict | None = None) -> dict:
        """The defense run's record (computed, or read back from the store). A defense that
        cannot act on the model raises :class:`DefenseNotApplicable` before the victim is
        trained or loaded. ``_victim_record`` only orders the cell after its victim on Dask;
        the victim is read back from the store."""
        reason = self.refusal()
        if reason is not None:
            raise DefenseNotApplicable(reason)
        v = self.victim
        return v.experiment().defend(self.defense, v.attack, model=v.model, clean_fraction=self.clean_fraction,
                                     attack_knobs=v.victim_kwargs(), **dict(self.knobs))

    def run_or_refuse(self, _victim_record: dict | None = None) -> dict:
        """:meth:`run`, or — when the defense refuses the model (:class:`DefenseNotApplicable`,
        up front or from inside the run) — a "not applicable" record: ``status``, ``reason``, the
        ``config`` the run would have had, empty ``metrics``. Any other error propagates."""
        try:
            return self.run()
        except DefenseNotApplicable as err:
            return self.not_applicable(str(err))

    def record(self, _victim_record: dict | None = None) -> dict:
        """:meth:`run_or_refuse`: a refused defense is a row of the study, not an error."""
        return self.run_or_refuse()

    def not_applicable(self, reason: str) -> dict:
        """The record of a refused cell: no metrics, nothing stored."""
        from . import keys

        v = self.victim
        exp = v.experiment()
        knobs = exp.defense_knobs(self.defense, **dict(self.knobs))
        fraction = exp.profile.clean_fraction if self.clean_fraction is None else self.clean_fraction
        victim_cfg = exp.attack_config(v.attack, v.model, **v.victim_kwargs())
        return {"status": NOT_APPLICABLE, "reason": reason,
                "config": keys.defense_key(victim_cfg, self.defense, knobs, fraction, v.seed), "metrics": {},
                "path": None}


def refusal(defense: str, knobs: dict, model: str, input_shape, num_classes: int, seed: int = 0) -> str | None:
    """Whether ``defense`` (with these full knobs) refuses architecture ``model``: the
    :class:`DefenseNotApplicable` message, or None. The defense's declared
    :meth:`~bdlib.defenses.base.Defense.check` decides it on a freshly initialised model of the
    architecture: no data, no training, and ``defend`` is not run. Every ``defend`` calls the same
    ``check`` first, so the message is the one the run would raise. Knob errors raise here,
    loudly; so does a model that declares a part wrongly (``InvalidModelContract``). None means
    "not refused up front"; a refusal that only came later would still be caught by
    :meth:`DefenseCell.run_or_refuse`. The global torch RNG is left as it was."""
    import torch

    from .defenses import make_defense
    from .models import build_model

    dfn = make_defense(defense, seed=seed, **knobs)
    with torch.random.fork_rng(devices=[]):
        net = build_model(model, tuple(input_shape), num_classes, seed=0)
        try:
            dfn.check(net)
        except DefenseNotApplicable as err:
            return str(err)
    return None


def profile_models(profile: Profile, models=None) -> tuple[str, ...]:
    """``models`` (checked against the registry: a misspelt name lists the valid ones), or the profile's."""
    out = tuple(models) if models else tuple(profile.models)
    for m in out:
        MODELS.get(m)
    return out


@lru_cache(maxsize=16)
def _experiment(profile: Profile, dataset: DatasetSpec, seed: int, features: str, target, data_root: str | None,
                device: str | None = None):
    """One Experiment per (profile, data, seed, front end, device) and process: its splits and
    features stay in memory across the cells a worker runs."""
    from .pipeline import load_experiment

    kwargs = {} if data_root is None else {"root": data_root}
    return load_experiment(profile, seed, progress=False, features=features, dataset=dataset.name,
                           dataset_root=dataset.root, dataset_options=dict(dataset.options), target=target,
                           device=device, **kwargs)


def forget_experiments() -> None:
    """Drop the Experiments this process keeps for its cells (:func:`_experiment`): their splits
    and features, once a study's cells are computed and the memory is wanted elsewhere."""
    _experiment.cache_clear()


def _frozen(knobs: dict | None) -> tuple:
    return tuple(sorted((knobs or {}).items(), key=lambda kv: kv[0]))


def _settings(value: KnobSettings | None) -> list[dict]:
    if value is None:
        return [{}]
    if isinstance(value, dict):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, dict) for v in value) and value:
        return list(value)
    raise TypeError(f"knob settings must be a dict or a non-empty list of dicts, got {value!r}")


@dataclass
class Study:
    """A grid of victims and defense runs.

    ``attacks``: registry name -> knobs (``None``: the profile's victims, each with the
    knobs its attack notebook uses). ``defenses``: registry name -> a knob dict or a list
    of them (a sweep). ``models=None``: the profile's. ``seeds``: every cell once per seed.
    ``dataset``: a registered data source, with ``dataset_root`` and ``dataset_options``.
    ``device``: where every cell's models run — a spec (``"auto"``, ``"cpu"``, ``"cuda"``,
    ``"cuda:N"``, ``"mps"``) that each cell resolves in the process that runs it (a Dask
    worker on a GPU host); ``None``: that process's ``$BDLIB_DEVICE``, else ``"auto"``. The
    device changes no store key: cells computed on a GPU and on a CPU share the store.
    ``rates``: poisoning rates, every victim (and its defense runs) once per rate (``None``:
    the profile's, ``poison_rate``); the table's ``poison_rate`` column tells them apart, and a
    rate equal to the profile's is the profile's victim (one cell, one store entry).
    """

    profile: str | Profile = "default"
    dataset: str = "embedded"
    dataset_root: str | os.PathLike | None = None
    dataset_options: dict = field(default_factory=dict)
    models: tuple[str, ...] | list[str] | None = None
    attacks: dict[str, dict] | list[str] | None = None
    defenses: dict[str, KnobSettings] = field(default_factory=dict)
    seeds: tuple[int, ...] | list[int] = (0,)
    clean_fraction: float | None = None
    target: str | int | None = None
    data_root: str | os.PathLike | None = None
    include_clean: bool = True
    device: str | None = None
    rates: tuple[float, ...] | list[float] | None = None

    def __post_init__(self):
        self.profile = get_profile(self.profile)
        if self.device is not None:
            from .device import check_spec

            self.device = check_spec(self.device)  # a typo fails here; presence is checked where cells run
        if isinstance(self.seeds, int) or not all(isinstance(s, int) for s in self.seeds) or not self.seeds:
            raise TypeError(f"seeds must be a non-empty list of ints, got {self.seeds!r}")
        if isinstance(self.models, str) or isinstance(self.attacks, str):
            raise TypeError("models and attacks take a list of names (or a dict name -> knobs), not a string")
        if self.rates is not None:
            if isinstance(self.rates, (int, float, str)) or not self.rates:
                raise TypeError(f"rates must be a non-empty list of poisoning rates, got {self.rates!r}")
            bad = [r for r in self.rates if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1]
            if bad:
                raise ValueError(f"poisoning rates must lie in (0, 1) (0.01 is 1 %), got {bad}")
            if len(set(self.rates)) != len(self.rates):
                raise ValueError(f"rates {list(self.rates)} repeat a rate (the same victims twice)")
            self.rates = tuple(float(r) for r in self.rates)
        if self.attacks is None:
            names = list(ATTACKS) if self.profile.defense_attacks is None else list(self.profile.defense_attacks)
            self.attacks = {a: dict(self.profile.attack_knobs.get(a, {})) for a in names}
        elif not isinstance(self.attacks, dict):
            self.attacks = {a: dict(self.profile.attack_knobs.get(a, {})) for a in self.attacks}
        for a in self.attacks:
            ATTACKS.get(a)  # unknown names fail here, listing the valid ones
        for d, s in self.defenses.items():
            DEFENSES.get(d)
            _settings(s)
        self.models = tuple(self.models or self.profile.models)
        for m in self.models:
            MODELS.get(m)

    @property
    def dataset_spec(self) -> DatasetSpec:
        return DatasetSpec.of(self.dataset, self.dataset_root, **self.dataset_options)

    # --- expansion ---------------------------------------------------------------------
    def victim_cells(self) -> list[VictimCell]:
        """The clean model (per model and seed, when ``include_clean``) and every victim, once
        per poisoning rate."""
        root = None if self.data_root is None else str(self.data_root)
        # the profile's own rate is the default victim (rate None): the same cell as a study without rates
        rates = [None if r is None or r == self.profile.poison_rate else r for r in (self.rates or (None,))]
        cells = []
        for seed in self.seeds:
            for model in self.models:
                if self.include_clean:
                    cells.append(VictimCell(self.profile, self.dataset_spec, seed, model, None, (), self.target, root,
                                            self.device))
                for attack, knobs in self.attacks.items():
                    for rate in rates:
                        cells.append(VictimCell(self.profile, self.dataset_spec, seed, model, attack, _frozen(knobs),
                                                self.target, root, self.device, rate))
        return cells

    def defense_cells(self) -> list[DefenseCell]:
        return [DefenseCell(v, name, _frozen(knobs), self.clean_fraction)
                for v in self.victim_cells() if v.attack is not None
                for name, settings in self.defenses.items() for knobs in _settings(settings)]

    # --- running -----------------------------------------------------------------------
    def run(self, scheduler: str | None = None, serial: bool | None = None, progress: bool = True) -> pd.DataFrame:
        """Compute every missing cell (victims first, then defense runs) and return
        :meth:`table`. ``serial=True`` runs in this process; ``False`` on Dask — the cluster at
        ``scheduler`` (or ``$BDLIB_SCHEDULER``), else a local one sized to the machine
        (:func:`bdlib.cluster.get_client`). ``None`` (default): Dask when a scheduler is given
        or the local cluster would have two workers or more, else this process — one local
        worker only adds start-up and transfers (measured: benchmarks/study_grid.py)."""
        victims, defenses = self.victim_cells(), self.defense_cells()
        t0 = time.perf_counter()
        v_recs, d_recs = compute_cells(victims, defenses, scheduler=scheduler, serial=serial, progress=progress)
        self.last_run = {"victims": v_recs, "defenses": d_recs, "wall_s": time.perf_counter() - t0}
        return self.table(v_recs, d_recs)

    # --- results -----------------------------------------------------------------------
    def table(self, victim_records: list[dict] | None = None, defense_records: list[dict] | None = None) -> pd.DataFrame:
        """Tidy table, one row per defense cell plus one ``defense="none"`` row per victim:
        dataset, model, attack, seed, ``poison_rate``, one ``attack.<knob>`` column per attack
        knob given, one ``defense.<knob>`` column per defense knob (the full resolved set),
        ACC/ASR/RA before and after, DER, time, and ``status`` (``"ok"``, or ``"not applicable"``
        for a defense that cannot act on the model: its metrics after are NaN and ``reason``
        holds the defense's own message). Without records it reads them from the store
        (computing nothing: cells not yet run raise; refused cells are decided again, cheaply)."""
        if victim_records is None or defense_records is None:
            victim_records = [c.run() if _stored(c) else _missing(c) for c in self.victim_cells()]
            defense_records = [_stored_or_refused(c) for c in self.defense_cells()]
        from .pipeline import defense_label

        rows = []
        victims = self.victim_cells()
        victim_metrics = {cell: rec["metrics"] for cell, rec in zip(victims, victim_records)}
        nan = float("nan")
        for cell, rec in zip(victims, victim_records):
            if cell.attack is None:
                continue
            m = rec["metrics"]
            rows.append({**_cell_columns(cell, rec["config"]), "defense": "none", "label": "none",
                         "acc_before": m["acc"], "asr_before": m["asr"], "ra_before": m["ra"],
                         "acc_after": m["acc"], "asr_after": m["asr"], "ra_after": m["ra"], "der": nan,
                         "time_s": m["train_time_s"], "status": OK, "reason": None})
        for cell, rec in zip(self.defense_cells(), defense_records):
            c, m = rec["config"], rec["metrics"]
            row = {**_cell_columns(cell.victim, c["victim"]), "defense": cell.defense,
                   "label": defense_label(c), "clean_fraction": c["clean_fraction"],
                   **{f"defense.{k}": _scalar(v) for k, v in c["defense_knobs"].items()}}
            if rec.get("status", OK) == NOT_APPLICABLE:  # the victim's own numbers before; nothing after
                v = victim_metrics[cell.victim]
                rows.append({**row, "acc_before": v["acc"], "asr_before": v["asr"], "ra_before": v["ra"],
                             "acc_after": nan, "asr_after": nan, "ra_after": nan, "der": nan, "time_s": nan,
                             "status": NOT_APPLICABLE, "reason": rec["reason"]})
                continue
            rows.append({**row, "acc_before": m["before"]["acc"], "asr_before": m["before"]["asr"],
                         "ra_before": m["before"]["ra"], "acc_after": m["after"]["acc"],
                         "asr_after": m["after"]["asr"], "ra_after": m["after"]["ra"], "der": m["der"],
                         "time_s": m["time_s"], "peak_rss_mb": m.get("peak_rss_mb"),
                         "torch_threads": m.get("torch_threads"), "device": m.get("device"), "status": OK,
                         "reason": None})
        return pd.DataFrame(rows)


def _cell_columns(cell: VictimCell, config: dict) -> dict:
    return {"dataset": config["dataset"], "profile": cell.profile.name, "model": cell.model, "attack": cell.attack,
            "seed": cell.seed, "target": config.get("target"), "poison_rate": config.get("poison_rate"),
            **{f"attack.{k}": _scalar(v) for k, v in cell.attack_knobs}}


def _scalar(value):
    return value if value is None or isinstance(value, (int, float, str, bool)) else json.dumps(value)


def _cell_key(cell) -> str:
    """The cell's Dask key: its ``task_name`` and a hash of its content."""
    return f"{cell.task_name}-{hashlib.sha256(repr(cell).encode()).hexdigest()[:16]}"


def _run_cell(cell, *deps):
    """What a Dask worker runs: one cell (``deps`` only order it after its victim); a defense
    cell whose defense refuses the model returns its "not applicable" record."""
    threads = os.environ.get("BDLIB_TORCH_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    return cell.record(*deps)


#: what a run that chose to compute in its own process says about it
SERIAL_WHY = ("in this process (a local Dask cluster here would have one worker; BDLIB_WORKERS=n or a scheduler "
              "address runs them on Dask)")


def runs_serially(scheduler: str | None = None, serial: bool | None = None) -> bool:
    """``serial`` if given; else whether no scheduler is given (argument or ``$BDLIB_SCHEDULER``)
    and a local Dask cluster here would have one worker only, which adds start-up and transfers
    and nothing else (measured: benchmarks/study_grid.py)."""
    from .cluster import local_layout

    if serial is not None:
        return serial
    return not (scheduler or os.environ.get("BDLIB_SCHEDULER")) and local_layout()[0] < 2


class DependentCell(Protocol):
    """A cell that runs on one victim — :class:`DefenseCell`, :class:`bdlib.curve_grids.CurveCell`,
    :class:`bdlib.observation_cell.ObservationCell` — as :func:`compute_cells` takes it: picklable,
    equal by value (so a shared cell is one task)."""

    victim: VictimCell

    @property
    def task_name(self) -> str:
        """What the cell is, for its Dask key and the dashboard."""

    def record(self, _victim_record: dict | None = None) -> dict:
        """The cell's record, computed or read back from the store (the victim's record only
        orders the cell after its victim on Dask)."""


def compute_cells(victims: list[VictimCell], dependents: list[DependentCell], scheduler: str | None = None,
                  serial: bool | None = None, progress: bool = True) -> tuple[list[dict], list[dict]]:
    """Compute (or read back) ``victims`` first, then ``dependents`` (:class:`DependentCell`: each
    runs on one victim) and return their records in order.

    Serially in this process (:func:`runs_serially` decides when ``serial`` is None), or on Dask:
    the cluster at ``scheduler`` (or ``$BDLIB_SCHEDULER``), else a local one sized to the
    machine (:func:`bdlib.cluster.get_client`), each dependent ordered after its victim's task.
    A victim listed twice is one task (cells are equal by value)."""
    if runs_serially(scheduler, serial):
        from tqdm import tqdm

        if serial is None and progress:
            print(f"running {len(victims) + len(dependents)} cells {SERIAL_WHY}", file=sys.stderr)
        v_recs = [_run_cell(c) for c in tqdm(victims, desc="victims", disable=not progress)]
        d_recs = [_run_cell(c) for c in tqdm(dependents, desc="runs on victims", disable=not progress)]
        return v_recs, d_recs
    from .cluster import get_client, show_progress

    with get_client(scheduler) as client:
        # keys name the cell's content: on a shared scheduler, two studies that need the same cell
        # share its result, and different cells never collide
        by_victim = {}
        for c in victims:
            if c not in by_victim:
                by_victim[c] = client.submit(_run_cell, c, pure=False, key=_cell_key(c))
        v_futs = [by_victim[c] for c in victims]
        for c in dependents:  # a curve's victim need not be in `victims`: it becomes a task of its own
            if c.victim not in by_victim:
                by_victim[c.victim] = client.submit(_run_cell, c.victim, pure=False, key=_cell_key(c.victim))
        d_futs = [client.submit(_run_cell, c, by_victim[c.victim], pure=False, key=_cell_key(c)) for c in dependents]
        show_progress(list(by_victim.values()) + d_futs, progress)
        return client.gather(v_futs), client.gather(d_futs)


def _stored(cell) -> bool:
    if isinstance(cell, VictimCell):
        exp = cell.experiment()
        return exp.store.has("models", exp.attack_config(cell.attack, cell.model, **cell.victim_kwargs()))
    return _stored(cell.victim) and _defense_stored(cell)


def _stored_or_refused(cell: DefenseCell) -> dict:
    """A defense cell's stored record, or its "not applicable" record (decided without
    computing); a cell that would run but has not raises."""
    if _stored(cell):
        return cell.run_or_refuse()
    reason = cell.refusal()
    return _missing(cell) if reason is None else cell.not_applicable(reason)


def _defense_stored(cell: DefenseCell) -> bool:
    from . import keys

    v = cell.victim
    exp = v.experiment()
    knobs = exp.defense_knobs(cell.defense, **dict(cell.knobs))
    fraction = exp.profile.clean_fraction if cell.clean_fraction is None else cell.clean_fraction
    victim_cfg = exp.attack_config(v.attack, v.model, **v.victim_kwargs())
    return exp.store.has("defenses", keys.defense_key(victim_cfg, cell.defense, knobs, fraction, v.seed))


def _missing(cell):
    raise LookupError(f"{cell} is not in the store yet; run the study first (Study.run)")


class DuplicateCellsError(ValueError):
    """A pivot would average rows that differ in something else (a knob, a seed)."""


def pivot(table: pd.DataFrame, index, columns, values: str, not_applicable="n/a") -> pd.DataFrame:
    """``table.pivot`` that refuses duplicates: when several rows share an (index, columns)
    cell, the error names the columns in which they differ (a knob, the seed), so a sweep is
    never averaged into one number by accident. Aggregate explicitly (e.g. over seeds)
    before pivoting if that is what you mean. A cell whose row is ``status == "not
    applicable"`` (the defense cannot act on that model) shows ``not_applicable`` ("n/a"; the
    frame is then of object dtype), not a blank; ``not_applicable=None`` keeps it NaN."""
    index = [index] if isinstance(index, str) else list(index)
    columns = [columns] if isinstance(columns, str) else list(columns)
    dup = table.duplicated(index + columns, keep=False)
    if dup.any():
        clash = table[dup]
        varying = [c for c in clash.columns if c not in index + columns + [values]
                   and clash.groupby(index + columns, dropna=False)[c].nunique(dropna=False).gt(1).any()]
        first = clash.iloc[0][index + columns].to_dict()
        raise DuplicateCellsError(f"{int(dup.sum())} rows share a cell of {index + columns} (e.g. {first}); they "
                                  f"differ in {varying or 'nothing: the same run twice'}. Filter, add those columns "
                                  f"to the index/columns, or aggregate explicitly before pivoting.")
    shape = dict(index=index if len(index) > 1 else index[0], columns=columns if len(columns) > 1 else columns[0])
    out = table.pivot(**shape, values=values)
    if not_applicable is not None and "status" in table.columns and table["status"].eq(NOT_APPLICABLE).any():
        refused = table.pivot(**shape, values="status").eq(NOT_APPLICABLE)
        out = out.astype(object).mask(refused, not_applicable)
    return out


def mean_sd(table: pd.DataFrame, by: list[str], values: list[str]) -> pd.DataFrame:
    """Mean, sd and n over seeds, per group ``by`` (which must not include ``seed``): the
    explicit aggregation :func:`pivot` asks for. A table with a ``status`` column gets one per
    group: ``"ok"``, ``"not applicable"`` (every row refused: the means are NaN, n = 0) or
    ``"not applicable in k of n"`` (the means are over the others; n counts them)."""
    if "seed" in by:
        raise ValueError("mean_sd aggregates over seeds: leave 'seed' out of 'by'")
    g = table.groupby(by, dropna=False)[values]
    out = g.agg(["mean", "std", "count"])
    out.columns = [f"{v}_{s.replace('std', 'sd').replace('count', 'n')}" for v, s in out.columns]
    if "status" in table.columns and "status" not in by:
        refused = table.assign(_refused=table["status"].eq(NOT_APPLICABLE)).groupby(by, dropna=False)["_refused"]
        counts = refused.agg(["sum", "size"])  # the same groups, in the same order, as `out`
        out["status"] = [OK if k == 0 else NOT_APPLICABLE if k == n else f"{NOT_APPLICABLE} in {k} of {n}"
                         for k, n in zip(counts["sum"], counts["size"])]
    return out.reset_index()


# --- the collection's own grids ----------------------------------------------------------

#: each defense notebook's settings (their parameters cells' defaults)
NOTEBOOK_DEFENSES: dict[str, KnobSettings] = {
    "ft": {"lr": 0.01},
    "gnft": [{"mode": "approx", "r": 0.05, "alpha": 0.7, "lr": 1e-3}, {"mode": "exact", "r": 0.05, "alpha": 0.7,
                                                                         "lr": 1e-3}],
    "fp": {"lr": 0.01, "layer": "classifier", "max_acc_drop": 0.10},
    "ftsam": {"lr": 0.01, "rho": 2.0, "adaptive": True},
    "clp": {"u": 3.0},
    "nad": {"lr": 0.01, "teacher_epochs": 10},
    "tsbd": {"neuron_ratio": 0.10, "weight_ratio": 0.7, "lr": 0.01},
    "anp": {"mask_lr": 0.2, "eps": 0.4, "alpha": 0.2, "threshold": 0.2},
    "ibau": {"lr": 1e-4, "K": 5, "pert_steps": 10},
}


def matched_ft_knobs(gnft_knobs: dict | None = None) -> dict:
    """FT at GN-FT's exact optimiser: the same SGD learning rate, momentum and weight decay, no
    schedule, and whatever epochs/batch size the GN-FT setting fixes — the penalty off, nothing
    else changed. This is the authors' FT (``ft_reg.py`` without the regulariser), and the fair
    row next to GN-FT; BackdoorBench's FT (lr 0.01, weight decay 5e-4, cosine) is another row.
    ``FT(matched_ft_knobs(k))`` equals ``GNFT(k, alpha=0)`` step for step (tests/test_budget.py)."""
    from .defenses.gnft import GNFTConfig

    given = dict(gnft_knobs or {})
    g = GNFTConfig(**given)
    out = {"lr": g.lr, "momentum": g.momentum, "weight_decay": g.weight_decay, "cosine": False}
    out.update({k: given[k] for k in ("epochs", "batch_size") if k in given})
    return out


def ibau_rounds(profile: Profile) -> int | None:
    """I-BAU's unlearning rounds on a CPU profile (notebook 28): BackdoorBench's 5, smoke 2."""
    return {"smoke": 2, "default": 5}.get(profile.name)


def collection_study(profile: str | Profile = "default", seeds=(0,), **kwargs) -> Study:
    """The grid the defense notebooks and notebook 90 show: every defense at its notebook's
    settings against every victim of the profile (I-BAU at its CPU rounds)."""
    prof = get_profile(profile)
    defenses = {k: (list(v) if isinstance(v, list) else dict(v)) for k, v in NOTEBOOK_DEFENSES.items()}
    rounds = ibau_rounds(prof)
    if rounds is not None:
        defenses["ibau"] = {**defenses["ibau"], "epochs": rounds}
    return Study(prof, defenses=defenses, seeds=tuple(seeds), **kwargs)


def model_rows_studies(profile: str | Profile = "default", seeds=(0,), **kwargs) -> list[Study]:
    """The profile's ``model_rows``: each architecture's clean model and victims on its few
    attacks, defended as in :func:`collection_study` (none when the profile has no model rows).
    Notebook 90 shows them beside the main model's grid.

    One deviation per model, so that NAD runs instead of refusing: NAD takes one β per distilled
    layer, and the grid's three (BackdoorBench's 500, 1000, 1000 for three stages, deepest last)
    are cut to the deepest ``k`` for a model that declares ``k < 3`` attention layers (LSTM-att:
    1000, 1000). Models that differ in attacks or in that cut are separate studies."""
    prof = get_profile(profile)
    default_betas = tuple(DEFENSES.get("nad").Config().betas)
    groups: dict[tuple, list[str]] = {}
    for model, attacks in prof.model_rows.items():
        if isinstance(attacks, str):
            raise TypeError(f"profile {prof.name!r}: model_rows[{model!r}] takes a list of attacks, not {attacks!r}")
        k = len(MODELS.get(model).attention_layers)
        betas = default_betas[-k:] if 0 < k < len(default_betas) else None
        groups.setdefault((tuple(attacks), betas), []).append(model)
    studies = []
    for (attacks, betas), models in groups.items():
        study = collection_study(prof, seeds=seeds, models=models, attacks=list(attacks), **kwargs)
        if betas is not None:
            study.defenses["nad"] = {**study.defenses["nad"], "betas": betas}
        studies.append(study)
    return studies


def main_table_study(profile: str | Profile = "default", seeds=None, attacks=None, defenses=None, seed: int = 0,
                     **kwargs) -> Study:
    """The main table's grid (notebook 50): :func:`collection_study` plus the fair FT row —
    FT at GN-FT's (approximate) optimiser with the penalty off (:func:`matched_ft_knobs`) next
    to BackdoorBench's FT. ``attacks`` / ``defenses``: a subset by registry name (``None``:
    all); ``defenses`` may name a GN-FT mode as ``"gnft:approx"`` / ``"gnft:exact"`` to keep
    one. A subset is how a run is fitted to a machine; the notebook states which was run.
    Under the smoke profile: one attack, both FT rows and GN-FT approx, no clean model (CI).
    ``seeds``: ``None`` is ``seed``, ``seed + 1``, ``seed + 2`` (``bdlib run --seed N``)."""
    seeds = (seed, seed + 1, seed + 2) if seeds is None else tuple(seeds)
    grid = collection_study(profile, seeds=seeds, **kwargs)
    gnft_approx = next(k for k in grid.defenses["gnft"] if k["mode"] == "approx")
    table = {**grid.defenses, "ft": [grid.defenses["ft"], matched_ft_knobs(gnft_approx)]}
    chosen, include_clean = grid.attacks, grid.include_clean
    if grid.profile.name == "smoke":
        chosen = dict(list(chosen.items())[:1])
        table = {"ft": table["ft"], "gnft": gnft_approx}
        include_clean = False
    if attacks is not None:
        if isinstance(attacks, str):
            raise TypeError(f"attacks takes a list of names, not the string {attacks!r}")
        unknown = [a for a in attacks if a not in grid.attacks]
        if unknown:
            raise ValueError(f"attacks {unknown} are not in the {grid.profile.name} grid; valid: {list(grid.attacks)}")
        chosen = {a: grid.attacks[a] for a in attacks}
        include_clean = False  # the table's reference is each attack's victim; the clean model is notebook 90's
    if defenses is not None:
        if isinstance(defenses, str):
            raise TypeError(f"defenses takes a list of names, not the string {defenses!r}")
        picked = {}
        for name in defenses:
            base, _, mode = name.partition(":")
            if base not in table or (mode and base != "gnft") or mode not in ("", "approx", "exact"):
                raise ValueError(f"defense {name!r} is not in the main table; valid: {sorted(table)} "
                                 "(and gnft:approx, gnft:exact)")
            settings = table[base] if isinstance(table[base], list) else [table[base]]
            kept = [k for k in settings if not mode or k.get("mode") == mode]
            picked[base] = picked.get(base, []) + [k for k in kept if k not in picked.get(base, [])]
        table = picked
    return replace(grid, attacks=chosen, defenses=table, include_clean=include_clean)


def defend_victims(defense: str, profile: str | Profile = "default", seed: int = 0,
                   attacks: tuple[str, ...] | list[str] | None = None, clean_fraction: float | None = None,
                   progress: bool = True, dataset: str = "embedded", dataset_root=None, dataset_options=None,
                   target: str | int | None = None, device: str | None = None, **knobs) -> list[dict]:
    """One defense against every victim a defense notebook covers — a one-defense
    :class:`Study` run in this process: each (model, attack) of the profile
    (``attacks=None``: :func:`bdlib.pipeline.victim_attacks`), every victim at its own attack's front end
    (the ultrasonic one at 44.1 kHz) with the knobs its attack notebook trained it with.
    Returns the :meth:`Experiment.defend` records of the victims the defense applies to; a
    model it refuses (:class:`bdlib.defenses.DefenseNotApplicable`: ANP on a model without
    normalisation layers, say) is skipped with a printed line naming the model and the reason,
    and every other cell still runs (issue 13). It lives here, not in :mod:`bdlib.pipeline`,
    because it is built on :class:`Study`, which sits above the pipeline."""
    study = Study(profile, dataset=dataset, dataset_root=dataset_root, dataset_options=dataset_options or {},
                  attacks=None if attacks is None else list(attacks), defenses={defense: knobs}, seeds=(seed,),
                  clean_fraction=clean_fraction, target=target, include_clean=False, device=device)
    cells = study.defense_cells()
    from tqdm import tqdm

    records = []
    for cell in tqdm(cells, desc=f"{defense} on {len(cells)} victims", disable=not progress):
        record = cell.run_or_refuse()
        if record.get("status") == NOT_APPLICABLE:
            print(f"{defense} does not apply to {cell.victim.model} ({cell.victim.attack}): {record['reason']}")
        else:
            records.append(record)
    return records


__all__ = ["DatasetSpec", "DefenseCell", "DependentCell", "DuplicateCellsError", "NOTEBOOK_DEFENSES", "NOT_APPLICABLE",
           "OK", "Study", "VictimCell", "collection_study", "compute_cells", "defend_victims", "forget_experiments",
           "main_table_study", "matched_ft_knobs", "mean_sd", "pivot", "profile_models", "refusal", "runs_serially"]
