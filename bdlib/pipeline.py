"""The experiment pipeline the notebooks call: data -> features -> (backdoored) model ->
defense -> metrics, every step cached in the artifact store.

Why a single context object: a notebook should read as the paper's protocol
(``exp.backdoored_model("badnets")``, ``exp.defend(...)``), while the bookkeeping that
makes results trustworthy — which clips were poisoned, which clean subset the defender
held, which seed and commit produced a number — is done once, here.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .attacks import ATTACKS, Attack, FitContext, make_attack, poison_training_set, triggered_features
from .data.audioset import AudioSet
from .data.clips import ClipPolicy
from .data.sources import DataSource, make_source
from .defenses import DEFENSES, CleanData, clean_subset_indices, make_defense
from .device import resolve_device
from .features import PAPER_16K, FeatureConfig, MFCCExtractor, get_features
from .memory import PeakRSS
from .metrics import accuracy, der, evaluate, meets_bar
from .models import build_model
from .profiles import Profile, get_profile
from . import keys
from .store import Store, provenance
from .training import train_model

from .paths import REPO_ROOT, data_root  # noqa: F401 (re-exported: plots and notebooks use them)


@dataclass
class Experiment:
    """One (profile, data source, seed, front end): every artifact of the pipeline, cached.

    ``dataset`` names a registered data source (:data:`bdlib.data.sources.SOURCES`:
    ``embedded``, ``speech_commands``, ``spoken_digits``, ``folder``), ``dataset_root`` its
    folder and ``dataset_options`` its options; the embedded set takes its size from the
    profile (``Profile.embedded_size``). ``root`` is where the store and the embedded set
    live (``$BDLIB_DATA`` or ``data/``). ``target`` overrides the profile's target class and
    is given by class name (or index) and checked against the source's classes.

    ``device`` is where models train, defend and are evaluated: a spec for
    :func:`bdlib.device.resolve_device` (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``,
    ``"mps"``; ``None``: ``$BDLIB_DEVICE``, else ``"auto"``), resolved at construction.
    Features stay CPU tensors and are moved per batch; everything stored is saved from the
    CPU, and the device is recorded in each entry's metrics but is not part of any store
    key — a model trained on a GPU serves a CPU run of the same configuration, and back.
    """

    profile: Profile
    seed: int = 0
    data_seed: int = 0
    features_config: FeatureConfig = PAPER_16K
    root: Path = field(default_factory=data_root)
    progress: bool = True
    dataset: str = "embedded"
    dataset_root: str | Path | None = None
    dataset_options: dict = field(default_factory=dict)
    target: str | int | None = None
    device: str | torch.device | None = None

    def __post_init__(self):
        self.device = resolve_device(self.device)
        self.root = Path(self.root)
        if self.dataset_root is not None:
            self.dataset_root = Path(self.dataset_root)

    # --- data ------------------------------------------------------------------------
    @cached_property
    def source(self) -> DataSource:
        """The data source (validated at first use: unknown names and options list the valid ones)."""
        options = dict(self.dataset_options)
        if self.dataset == "embedded":
            options.setdefault("size", self.profile.embedded_size)
            options.setdefault("seed", self.data_seed)
            return make_source("embedded", self.dataset_root or self.root / "embedded", progress=self.progress,
                               **options)
        return make_source(self.dataset, self.dataset_root, progress=self.progress, **options)

    @property
    def dataset_id(self) -> str:
        return self.source.id

    @property
    def dataset_dir(self) -> Path:
        return Path(self.source.root)

    @cached_property
    def store(self) -> Store:
        return Store(self.root / "store")

    @cached_property
    def manifest(self) -> pd.DataFrame:
        return self.source.manifest()

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.source.class_names)

    @cached_property
    def target_index(self) -> int:
        """The attack's target class as an index, checked against the source's classes."""
        return resolve_target(self.profile.target_label if self.target is None else self.target, self.class_names,
                              self.dataset)

    def split(self, name: str) -> AudioSet:
        if name not in self._splits:
            audio = self.source.load(name, self.features_config.sample_rate, policy=self.clip_policy,
                                     progress=self.progress)
            if self.dataset != "embedded" and self.progress:  # the embedded clips need no conforming
                print(audio.report.summary())
                for warning in audio.report.warnings():
                    print(f"warning: {warning}")
            self._splits[name] = audio
        return self._splits[name]

    @cached_property
    def _splits(self) -> dict:
        return {}

    @property
    def clip_policy(self) -> ClipPolicy:
        """How clips of other lengths, rates and channel counts are conformed (bdlib.data.clips)."""
        return ClipPolicy()

    @cached_property
    def extractor(self) -> MFCCExtractor:
        return MFCCExtractor(self.features_config)

    def features(self, name: str) -> torch.Tensor:
        """Clean MFCC features of a split, cached in the store."""
        cfg = keys.features_key(self.dataset_id, name, self.features_config.to_dict(), asdict(self.clip_policy))

        def compute():
            x = self.extractor(self.split(name).waves)
            self.store.save("features", cfg, {"shape": list(x.shape), **self._provenance(on_cpu=True)}, {"x": x})
            return x

        return self._cached("features", cfg, compute, lambda: self.store.load_tensors("features", cfg)["x"])

    def _provenance(self, on_cpu: bool = False) -> dict:
        """:func:`bdlib.store.provenance` plus the device the artifact was computed on: the
        experiment's, or the CPU for the MFCC front end's outputs (``on_cpu``)."""
        return {**provenance(), "device": "cpu" if on_cpu else str(self.device)}

    def _model(self, model: str, seed: int) -> torch.nn.Module:
        """A freshly initialised model (initialised on the CPU: the same weights whatever the
        device) moved to the experiment's device."""
        return build_model(model, self.input_shape, len(self.class_names), seed=seed).to(self.device)

    def _cached(self, kind: str, cfg: dict, compute, load):
        """``load()`` the artifact if stored, else ``compute()`` it under the key's lock: two
        processes (Dask workers, two ``bdlib run``) asking for one artifact compute it once."""
        if self.store.has(kind, cfg):
            return load()
        with self.store.lock(kind, cfg):
            if self.store.has(kind, cfg):
                return load()
            return compute()

    @property
    def input_shape(self) -> tuple[int, int]:
        return tuple(self.features("test").shape[-2:])

    # --- configs (the store keys: bdlib.keys) ------------------------------------------
    def _base_config(self) -> dict:
        return {"dataset": self.dataset_id, "features": self.features_config.to_dict(), "seed": self.seed}

    def _train_config(self, model: str) -> dict:
        p = self.profile
        return {**self._base_config(), "model": model, "selection": "best-val-acc", "schedule": "cosine",
                "train_epochs": p.train_epochs, "train_batch_size": p.train_batch_size, "train_lr": p.train_lr}

    def _rate(self, rate: float | None) -> float:
        return self.profile.poison_rate if rate is None else rate

    def _target(self, target: str | int | None) -> int:
        return self.target_index if target is None else resolve_target(target, self.class_names, self.dataset)

    def attack_config(self, attack: str | None, model: str = "smallcnn", rate: float | None = None,
                      target: str | int | None = None, **knobs) -> dict:
        """The store key of a victim (``attack=None``: the clean model)."""
        if attack is None:
            return keys.victim_key(self._train_config(model), model, None)
        atk = make_attack(attack, seed=self.seed, **knobs)  # validates the knobs
        return keys.victim_key(self._train_config(model), model, attack, vars(atk.config), self._rate(rate),
                               self._target(target))

    # --- attacks ---------------------------------------------------------------------
    def surrogate_model(self, model: str = "smallcnn") -> torch.nn.Module:
        """The attacker's surrogate (DABA, FlowMur): trained on the *validation* split —
        speakers disjoint from the victim's training set — with the victim's front end."""
        p = self.profile
        cfg = keys.surrogate_key({**self._base_config(), "epochs": p.train_epochs, "batch_size": p.train_batch_size,
                                  "lr": p.train_lr}, model)
        net = self._model(model, seed=self.seed + 1)

        def compute():
            aux = self.split("val")
            history = train_model(net, self.features("val"), torch.as_tensor(aux.labels), epochs=p.train_epochs,
                                  batch_size=p.train_batch_size, lr=p.train_lr, seed=self.seed + 1,
                                  progress=self.progress, desc=f"training surrogate {model}")
            metrics = {"history": history, "test_acc": accuracy(net, self.features("test"), self.split("test").labels),
                       **self._provenance()}
            self.store.save_model("surrogates", cfg, net, metrics)
            return net.eval()

        return self._cached("surrogates", cfg, compute, lambda: self.store.load_model_into("surrogates", cfg, net))

    def _fit_config(self, name: str, atk: Attack, rate: float | None, target: str | int | None) -> dict:
        return keys.attack_fit_key(self._base_config(), name, vars(atk.config), self._rate(rate), self._target(target),
                                   self.profile.train_epochs)

    def attack(self, name: str, rate: float | None = None, target: str | int | None = None, **knobs) -> Attack:
        """The attack object, fitted (and cached in the store) if its trigger or hosts are
        chosen from data or a surrogate model (DABA, FlowMur, VSVC)."""
        atk = make_attack(name, seed=self.seed, **knobs)
        if not atk.needs_fit:
            return atk
        cfg = self._fit_config(name, atk, rate, target)

        def compute():
            ctx = FitContext(train=self.split("train"), aux=self.split("val"), extractor=self.extractor,
                             surrogate=self.surrogate_model(), rate=cfg["poison_rate"], target=cfg["target"],
                             progress=self.progress)
            t0 = time.perf_counter()
            state = atk.fit(ctx)
            self.store.save("attack_fits", cfg, {"fit_time_s": time.perf_counter() - t0, **self._provenance()},
                            state)
            return atk

        def load():
            atk.load_state(self.store.load_tensors("attack_fits", cfg))
            return atk

        return self._cached("attack_fits", cfg, compute, load)

    def fitted_state(self, name: str, rate: float | None = None, target: str | int | None = None, **knobs) -> dict:
        """What :meth:`attack` stored for a fitted attack (scores, chosen trigger, hosts) and where."""
        atk = self.attack(name, rate, target, **knobs)
        if not atk.needs_fit:
            return {}
        cfg = self._fit_config(name, atk, rate, target)
        return {**self.store.load_tensors("attack_fits", cfg), "path": str(self.store.path("attack_fits", cfg))}

    def triggered_test(self, attack: str, rate: float | None = None, target: str | int | None = None,
                       **knobs) -> tuple[torch.Tensor, np.ndarray]:
        """Triggered features of the test clips whose true class is not ``target`` (the
        victim's target: the profile's unless given), and their true labels (memoised and
        cached in the store: every defense of a victim is evaluated on the same clips, and
        voice conversion or pedal chains over the test set cost tens of seconds)."""
        target = self._target(target)
        key = json.dumps([attack, rate, target, knobs], sort_keys=True, default=str)
        if key not in self._triggered:
            atk = self.attack(attack, rate, target, **knobs)
            cfg = keys.triggered_key(self._fit_config(attack, atk, rate, target))

            def compute():
                test = self.split("test")
                keep = test.labels != target
                t0 = time.perf_counter()
                t = {"x": triggered_features(atk, test.waves[keep], test.sample_rate, self.extractor),
                     "y": torch.as_tensor(test.labels[keep])}
                self.store.save("triggered", cfg, {"n": len(t["y"]), "time_s": time.perf_counter() - t0,
                                                   **self._provenance(on_cpu=True)}, t)
                return t

            t = self._cached("triggered", cfg, compute, lambda: self.store.load_tensors("triggered", cfg))
            self._triggered[key] = (t["x"], t["y"].numpy())
        return self._triggered[key]

    @cached_property
    def _triggered(self) -> dict:
        return {}

    # --- models ----------------------------------------------------------------------

    def backdoored_model(self, attack: str | None, model: str = "smallcnn", rate: float | None = None,
                         target: str | int | None = None, **knobs) -> tuple[torch.nn.Module, dict]:
        """Train (or load from the store) a victim on the poisoned training set.

        ``attack=None`` trains the clean reference model. ``target`` (a class name or index)
        is the class the victim is poisoned towards *and* the one its ASR is measured
        against. Returns (model, record) where the record holds config, metrics, poisoned
        indices, seed and git commit.
        """
        cfg = self.attack_config(attack, model, rate, target, **knobs)
        net = self._model(model, seed=self.seed)

        def load():
            self.store.load_model_into("models", cfg, net)
            return net, {"config": cfg, "metrics": self.store.load_metrics("models", cfg),
                         "path": str(self.store.path("models", cfg))}

        return self._cached("models", cfg, lambda: self._train_victim(net, cfg, attack, model, rate, knobs), load)

    def _train_victim(self, net, cfg: dict, attack: str | None, model: str, rate, knobs: dict):
        train = self.split("train")
        feats = self.features("train")
        labels = torch.as_tensor(train.labels)
        poison_idx = np.zeros(0, dtype=int)
        if attack is not None:
            atk = self.attack(attack, cfg["poison_rate"], cfg["target"], **knobs)
            poisoned = poison_training_set(atk, train.waves, train.labels, feats, train.sample_rate, self.extractor,
                                           cfg["poison_rate"], cfg["target"], seed=self.seed)
            feats, labels, poison_idx = poisoned.features, poisoned.labels, poisoned.poison_idx
        t0 = time.perf_counter()
        history = train_model(net, feats, labels, epochs=self.profile.train_epochs,
                              batch_size=self.profile.train_batch_size, lr=self.profile.train_lr, seed=self.seed,
                              val=(self.features("val"), self.split("val").labels), progress=self.progress,
                              desc=f"training {model} ({attack or 'clean'})")
        evaluation = (self.evaluate(net, attack, rate=cfg["poison_rate"], target=cfg["target"], **knobs)
                      if attack else self.evaluate(net, None))
        metrics = {"train_time_s": time.perf_counter() - t0, "history": history,
                   "best_epoch": max(history, key=lambda h: h["val_acc"])["epoch"],
                   "poison_idx": poison_idx.tolist(), "n_poisoned": int(len(poison_idx)), "n_train": len(train),
                   **evaluation, **self._provenance()}
        path = self.store.save_model("models", cfg, net, metrics)
        return net.eval(), {"config": cfg, "metrics": metrics, "path": str(path)}

    def evaluate(self, net, attack: str | None, rate: float | None = None, target: str | int | None = None,
                 **knobs) -> dict:
        """ACC on the clean test split and, for an attack, ASR and RA on its triggered clips
        (against the victim's own target)."""
        test = self.split("test")
        if attack is None:
            return {"acc": accuracy(net, self.features("test"), test.labels), "asr": float("nan"), "ra": float("nan")}
        target = self._target(target)
        trig, trig_labels = self.triggered_test(attack, rate, target, **knobs)
        return evaluate(net, self.features("test"), test.labels, trig, trig_labels, target)

    def victims(self, attacks: dict[str, dict], models: tuple[str, ...] | None = None,
                rate: float | None = None) -> tuple[pd.DataFrame, dict]:
        """The clean model and one victim per (model, attack), as the attack notebooks show
        them: ACC, ASR, RA, the ACC drop against the clean model, and whether the victim
        meets the issue's bar (ASR >= 90 %, ACC within 3 points). ``attacks`` maps a
        registry name to its knobs. Returns (table, {(model, attack): record})."""
        rows, records = [], {}
        for model in models or self.profile.models:
            _, clean = self.backdoored_model(None, model)
            clean_acc = clean["metrics"]["acc"]
            rows.append({"dataset": self.dataset_id, "model": model, "attack": "none (clean)", "acc": clean_acc,
                         "torch_threads": clean["metrics"].get("torch_threads"),
                         "device": clean["metrics"].get("device")})
            for attack, knobs in attacks.items():
                _, rec = self.backdoored_model(attack, model, rate=rate, **knobs)
                records[(model, attack)] = rec
                m = rec["metrics"]
                rows.append({"dataset": self.dataset_id, "model": model, "attack": attack, "acc": m["acc"],
                             "asr": m["asr"], "ra": m["ra"], "acc_drop": clean_acc - m["acc"],
                             "n_poisoned": m["n_poisoned"], "train_time_s": m["train_time_s"],
                             "torch_threads": m.get("torch_threads"), "device": m.get("device"),
                             "meets_bar": meets_bar(m["asr"], clean_acc - m["acc"])})
        return pd.DataFrame(rows), records

    def attack_table(self) -> pd.DataFrame:
        """Every victim of this profile, seed and dataset in the store, at any front end (the
        ultrasonic victims are 44.1 kHz ones): ACC, ASR, RA and the ACC drop against the
        clean model of the same front end and architecture. Victims built by other code
        (an older fingerprint) are left out."""
        mine = [r for r in self.store.records("models")
                if r["config"]["dataset"] == self.dataset_id and r["config"]["seed"] == self.seed
                and r["config"]["train_epochs"] == self.profile.train_epochs
                and r["config"].get("code") == self._current_code(r["config"])]

        def front(c):
            return json.dumps(c["features"], sort_keys=True), c["model"]

        clean = {front(r["config"]): r["metrics"]["acc"] for r in mine if r["config"]["attack"] is None}
        rows = []
        for r in mine:
            c, m = r["config"], r["metrics"]
            if c["attack"] is None:
                continue
            base = clean.get(front(c), float("nan"))
            rows.append({"dataset": c["dataset"], "attack": c["attack"], "model": c["model"],
                         "sample_rate": c["features"]["sample_rate"], "poison_rate": c["poison_rate"],
                         "target": c["target"], "acc": m["acc"], "asr": m["asr"], "ra": m["ra"], "clean_acc": base,
                         "acc_drop": base - m["acc"], "n_poisoned": m["n_poisoned"],
                         "meets_bar": meets_bar(m["asr"], base - m["acc"]), "torch_threads": m.get("torch_threads"),
                         "device": m.get("device"),
                         "attack_knobs": json.dumps(c["attack_knobs"])})
        return pd.DataFrame(rows)

    @staticmethod
    def _current_code(config: dict) -> str | None:
        try:
            return keys.victim_key({}, config["model"], config["attack"])["code"]
        except ValueError:  # a model or attack no longer registered
            return None

    # --- defenses --------------------------------------------------------------------
    def clean_data(self, fraction: float | None = None) -> tuple[CleanData, np.ndarray]:
        fraction = self.profile.clean_fraction if fraction is None else fraction
        train = self.split("train")
        idx = clean_subset_indices(len(train), fraction, self.seed)
        return CleanData(self.features("train")[idx], train.labels[idx]), idx

    def defense_knobs(self, defense: str, **defense_knobs) -> dict:
        """A defense's full knob set: the profile's epoch/batch budget where the defense has
        those knobs (CLP has none; ``None`` = the profile's), then the given knobs, then the
        defense's defaults. Validates them (unknown knobs list the valid ones)."""
        accepted = {f.name for f in dataclasses.fields(DEFENSES.get(defense).Config)}
        budget = {"epochs": self.profile.defense_epochs, "batch_size": self.profile.defense_batch_size}
        given = {k: v for k, v in defense_knobs.items() if not (k in budget and v is None)}
        knobs = {**{k: v for k, v in budget.items() if k in accepted}, **given}
        return asdict(make_defense(defense, seed=self.seed, **knobs).config)

    def defend(self, defense: str, attack: str, model: str = "smallcnn", clean_fraction: float | None = None,
               attack_knobs: dict | None = None, **defense_knobs) -> dict:
        """Apply a defense to the stored backdoored model; returns the result record."""
        attack_knobs = attack_knobs or {}
        knobs = self.defense_knobs(defense, **defense_knobs)  # validates knobs early
        dfn = make_defense(defense, seed=self.seed, **knobs)
        fraction = self.profile.clean_fraction if clean_fraction is None else clean_fraction
        # a bad budget fails here, before a victim is trained or a clip is read
        clean_subset_indices(int((self.manifest["split"] == "train").sum()), fraction, self.seed)
        victim, rec = self.backdoored_model(attack, model, **attack_knobs)
        cfg = keys.defense_key(rec["config"], defense, knobs, fraction, self.seed)

        def load():
            return {"config": cfg, "metrics": self.store.load_metrics("defenses", cfg),
                    "path": str(self.store.path("defenses", cfg))}

        def compute():
            clean, clean_idx = self.clean_data(fraction)
            before = {k: rec["metrics"][k] for k in ("acc", "asr", "ra")}
            net = copy.deepcopy(victim)
            with PeakRSS() as mem:  # the defense's own peak, not the kernel's lifetime one
                t0 = time.perf_counter()
                net = dfn.defend(net, clean, progress=self.progress)
                elapsed = time.perf_counter() - t0
            after = self.evaluate(net, attack, **attack_knobs)
            metrics = {"before": before, "after": after, "der": der(before, after), "time_s": elapsed,
                       **mem.as_metrics(), "clean_idx": clean_idx.tolist(), "n_clean": len(clean_idx),
                       "report": getattr(dfn, "report", {}), **self._provenance()}
            path = self.store.save_model("defenses", cfg, net, metrics)
            return {"config": cfg, "metrics": metrics, "path": str(path)}

        return self._cached("defenses", cfg, compute, load)

    # --- tables ----------------------------------------------------------------------
    def results_table(self) -> pd.DataFrame:
        """One row per stored defense run of this profile/seed/dataset built by the current
        code (use :class:`bdlib.study.Study` for a grid: its table has one column per knob)."""
        mine = [r for r in self.store.records("defenses")
                if r["config"]["victim"]["dataset"] == self.dataset_id and r["config"]["seed"] == self.seed
                and r["config"]["victim"]["train_epochs"] == self.profile.train_epochs
                and r["config"]["victim"].get("code") == self._current_code(r["config"]["victim"])]
        return records_table(mine)


def resolve_target(target: str | int, class_names: tuple[str, ...], dataset: str = "") -> int:
    """A target class given by name (``"up"``) or index, checked against the classes."""
    where = f" of dataset {dataset!r}" if dataset else ""
    if isinstance(target, str) and not target.lstrip("-").isdigit():
        if target not in class_names:
            raise ValueError(f"target {target!r} is not a class{where}; classes: {', '.join(class_names)}")
        return class_names.index(target)
    index = int(target)
    if not 0 <= index < len(class_names):
        raise ValueError(f"target index {index} is out of range{where}: {len(class_names)} classes "
                         f"({', '.join(class_names)})")
    if isinstance(target, str) and target in class_names:  # a class literally named "2" (spoken digits)
        return class_names.index(target)
    return index


def defense_label(config: dict) -> str:
    """A short name for a defense run: ``gnft-approx`` / ``gnft-exact`` for GN-FT, the
    registry name otherwise, followed by every knob that differs from the defense's
    defaults (the profile's ``epochs``/``batch_size`` budget aside), so runs with other
    settings never share a label: ``ft(lr=0.001)``."""
    knobs = dict(config["defense_knobs"])
    mode = knobs.pop("mode", None)
    name = f"{config['defense']}-{mode}" if mode else config["defense"]
    try:
        defaults = asdict(DEFENSES.get(config["defense"]).Config())
    except ValueError:  # no longer registered
        return name
    changed = {k: v for k, v in knobs.items() if k not in ("epochs", "batch_size") and defaults.get(k, v) != v}
    return name + ("(" + ", ".join(f"{k}={v}" for k, v in sorted(changed.items())) + ")" if changed else "")


def records_table(records: list[dict]) -> pd.DataFrame:
    """Defense records (from :meth:`Experiment.defend` or the store) as a flat table."""
    rows = []
    for r in records:
        c, m = r["config"], r["metrics"]
        rows.append({"dataset": c["victim"]["dataset"], "attack": c["victim"]["attack"],
                     "model": c["victim"]["model"], "seed": c["seed"], "defense": defense_label(c),
                     "acc_before": m["before"]["acc"], "asr_before": m["before"]["asr"],
                     "acc_after": m["after"]["acc"], "asr_after": m["after"]["asr"], "ra_after": m["after"]["ra"],
                     "der": m["der"], "time_s": m["time_s"], "peak_rss_mb": m.get("peak_rss_mb"),
                     "torch_threads": m.get("torch_threads"), "device": m.get("device"),
                     "defense_knobs": json.dumps(c["defense_knobs"])})
    return pd.DataFrame(rows)


def victim_attacks(profile: str | Profile) -> list[str]:
    """The attacks whose victims the defense notebooks cover: the profile's ``defense_attacks``,
    or every registered attack in name order (so a new attack joins the grid by itself)."""
    prof = get_profile(profile)
    return list(ATTACKS if prof.defense_attacks is None else prof.defense_attacks)


def load_experiment(profile: str | Profile = "default", seed: int = 0, progress: bool = True,
                    features: str | FeatureConfig = "16k", dataset: str = "embedded",
                    dataset_root: str | os.PathLike | None = None, dataset_options: dict | None = None,
                    target: str | int | None = None, root: str | os.PathLike | None = None,
                    device: str | torch.device | None = None, **overrides) -> Experiment:
    """Entry point for notebooks: ``exp = load_experiment(profile, seed, dataset=..., dataset_root=...)``.

    ``dataset`` is a registered data source (``embedded``, ``speech_commands``,
    ``spoken_digits``, ``folder``); ``features="44k"`` reads every clip at 44.1 kHz with the
    ultrasonic attack's front end (the embedded clips are synthesised at 16 kHz and
    resampled, so nothing of the speech lies above 8 kHz; the trigger's band is free).
    ``device`` is where models run (:func:`bdlib.device.resolve_device`; ``None``:
    ``$BDLIB_DEVICE``, else CUDA when present). ``overrides`` change profile fields
    (``train_epochs=5``).
    """
    return Experiment(get_profile(profile, **overrides), seed=seed, progress=progress,
                      features_config=get_features(features), dataset=dataset, dataset_root=dataset_root,
                      dataset_options=dict(dataset_options or {}), target=target,
                      root=data_root() if root is None else root, device=device)
