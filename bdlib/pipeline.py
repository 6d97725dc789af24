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
from .data.audioset import AudioSet, load_split
from .data.synth import KEYWORDS, ensure_embedded_dataset
from .defenses import DEFENSES, CleanData, clean_subset_indices, make_defense
from .features import PAPER_16K, FeatureConfig, MFCCExtractor, get_features
from .memory import PeakRSS
from .metrics import accuracy, der, evaluate, meets_bar
from .models import build_model
from .profiles import Profile, get_profile
from .store import Store, provenance
from .training import train_model

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    """``$BDLIB_DATA`` or the repository's ``data/`` folder."""
    return Path(os.environ.get("BDLIB_DATA", REPO_ROOT / "data"))


@dataclass
class Experiment:
    profile: Profile
    seed: int = 0
    data_seed: int = 0
    features_config: FeatureConfig = PAPER_16K
    root: Path = field(default_factory=data_root)
    progress: bool = True

    # --- data ------------------------------------------------------------------------
    @property
    def dataset_id(self) -> str:
        p = self.profile
        return f"embedded-{p.speakers_train}-{p.speakers_val}-{p.speakers_test}-t{p.takes_per_word}-seed{self.data_seed}"

    @property
    def dataset_dir(self) -> Path:
        return self.root / "embedded" / self.dataset_id

    @cached_property
    def store(self) -> Store:
        return Store(self.root / "store")

    @cached_property
    def manifest(self) -> pd.DataFrame:
        p = self.profile
        return ensure_embedded_dataset(self.dataset_dir, p.speakers_train, p.speakers_val, p.speakers_test,
                                       seed=self.data_seed, takes_per_word=p.takes_per_word, progress=self.progress)

    @property
    def class_names(self) -> tuple[str, ...]:
        return KEYWORDS

    def split(self, name: str) -> AudioSet:
        if name not in self._splits:
            self._splits[name] = load_split(self.manifest, self.dataset_dir, name, self.class_names,
                                            self.features_config.sample_rate, progress=self.progress)
        return self._splits[name]

    @cached_property
    def _splits(self) -> dict:
        return {}

    @cached_property
    def extractor(self) -> MFCCExtractor:
        return MFCCExtractor(self.features_config)

    def features(self, name: str) -> torch.Tensor:
        """Clean MFCC features of a split, cached in the store."""
        cfg = {"dataset": self.dataset_id, "split": name, "features": self.features_config.to_dict()}
        if self.store.has("features", cfg):
            return self.store.load_tensors("features", cfg)["x"]
        x = self.extractor(self.split(name).waves)
        self.store.save("features", cfg, {"shape": list(x.shape)}, {"x": x})
        return x

    @property
    def input_shape(self) -> tuple[int, int]:
        return tuple(self.features("test").shape[-2:])

    # --- configs (the store keys) ------------------------------------------------------
    def _base_config(self, model: str) -> dict:
        p = self.profile
        return {"dataset": self.dataset_id, "features": self.features_config.to_dict(), "model": model,
                "seed": self.seed, "selection": "best-val-acc", "schedule": "cosine", "train_epochs": p.train_epochs,
                "train_batch_size": p.train_batch_size, "train_lr": p.train_lr}

    def attack_config(self, attack: str | None, model: str = "smallcnn", rate: float | None = None,
                      target: int | None = None, **knobs) -> dict:
        cfg = self._base_config(model)
        if attack is None:
            return {**cfg, "attack": None}
        atk = make_attack(attack, seed=self.seed, **knobs)  # validates the knobs
        return {**cfg, "attack": attack, "attack_knobs": vars(atk.config),
                "poison_rate": self.profile.poison_rate if rate is None else rate,
                "target": self.profile.target_label if target is None else target}

    # --- attacks ---------------------------------------------------------------------
    def surrogate_model(self, model: str = "smallcnn") -> torch.nn.Module:
        """The attacker's surrogate (DABA, FlowMur): trained on the *validation* split —
        speakers disjoint from the victim's training set — with the victim's front end."""
        p = self.profile
        cfg = {"dataset": self.dataset_id, "features": self.features_config.to_dict(), "model": model,
               "seed": self.seed, "data": "val", "epochs": p.train_epochs, "batch_size": p.train_batch_size,
               "lr": p.train_lr}
        net = build_model(model, self.input_shape, len(self.class_names), seed=self.seed + 1)
        if self.store.has("surrogates", cfg):
            return self.store.load_model_into("surrogates", cfg, net)
        aux = self.split("val")
        history = train_model(net, self.features("val"), torch.as_tensor(aux.labels), epochs=p.train_epochs,
                              batch_size=p.train_batch_size, lr=p.train_lr, seed=self.seed + 1,
                              progress=self.progress, desc=f"training surrogate {model}")
        test = self.split("test")
        metrics = {"history": history, "test_acc": accuracy(net, self.features("test"), test.labels), **provenance()}
        self.store.save_model("surrogates", cfg, net, metrics)
        return net.eval()

    def _fit_config(self, name: str, atk: Attack, rate: float | None, target: int | None) -> dict:
        return {"dataset": self.dataset_id, "features": self.features_config.to_dict(), "attack": name,
                "attack_knobs": vars(atk.config), "seed": self.seed,
                "poison_rate": self.profile.poison_rate if rate is None else rate,
                "target": self.profile.target_label if target is None else target,
                "surrogate_epochs": self.profile.train_epochs}

    def attack(self, name: str, rate: float | None = None, target: int | None = None, **knobs) -> Attack:
        """The attack object, fitted (and cached in the store) if its trigger or hosts are
        chosen from data or a surrogate model (DABA, FlowMur, VSVC)."""
        atk = make_attack(name, seed=self.seed, **knobs)
        if not atk.needs_fit:
            return atk
        cfg = self._fit_config(name, atk, rate, target)
        if self.store.has("attack_fits", cfg):
            atk.load_state(self.store.load_tensors("attack_fits", cfg))
            return atk
        ctx = FitContext(train=self.split("train"), aux=self.split("val"), extractor=self.extractor,
                         surrogate=self.surrogate_model(), rate=cfg["poison_rate"], target=cfg["target"],
                         progress=self.progress)
        t0 = time.perf_counter()
        state = atk.fit(ctx)
        self.store.save("attack_fits", cfg, {"fit_time_s": time.perf_counter() - t0, **provenance()}, state)
        return atk

    def fitted_state(self, name: str, rate: float | None = None, target: int | None = None, **knobs) -> dict:
        """What :meth:`attack` stored for a fitted attack (scores, chosen trigger, hosts) and where."""
        atk = self.attack(name, rate, target, **knobs)
        if not atk.needs_fit:
            return {}
        cfg = self._fit_config(name, atk, rate, target)
        return {**self.store.load_tensors("attack_fits", cfg), "path": str(self.store.path("attack_fits", cfg))}

    def triggered_test(self, attack: str, rate: float | None = None, **knobs) -> tuple[torch.Tensor, np.ndarray]:
        """Triggered features of the *non-target* test clips, and their true labels (memoised and
        cached in the store: every defense of a victim is evaluated on the same clips, and voice
        conversion or pedal chains over the test set cost tens of seconds)."""
        key = json.dumps([attack, rate, knobs], sort_keys=True, default=str)
        if key not in self._triggered:
            target = self.profile.target_label
            atk = self.attack(attack, rate, target, **knobs)
            cfg = {**self._fit_config(attack, atk, rate, target), "split": "test", "which": "non-target"}
            if self.store.has("triggered", cfg):
                t = self.store.load_tensors("triggered", cfg)
            else:
                test = self.split("test")
                keep = test.labels != target
                t = {"x": triggered_features(atk, test.waves[keep], test.sample_rate, self.extractor),
                     "y": torch.as_tensor(test.labels[keep])}
                self.store.save("triggered", cfg, {"n": len(t["y"]), **provenance()}, t)
            self._triggered[key] = (t["x"], t["y"].numpy())
        return self._triggered[key]

    @cached_property
    def _triggered(self) -> dict:
        return {}

    # --- models ----------------------------------------------------------------------

    def backdoored_model(self, attack: str | None, model: str = "smallcnn", rate: float | None = None,
                         target: int | None = None, **knobs) -> tuple[torch.nn.Module, dict]:
        """Train (or load from the store) a victim on the poisoned training set.

        ``attack=None`` trains the clean reference model. Returns (model, record) where
        the record holds config, metrics, poisoned indices, seed and git commit.
        """
        cfg = self.attack_config(attack, model, rate, target, **knobs)
        net = build_model(model, self.input_shape, len(self.class_names), seed=self.seed)
        if self.store.has("models", cfg):
            self.store.load_model_into("models", cfg, net)
            return net, {"config": cfg, "metrics": self.store.load_metrics("models", cfg),
                         "path": str(self.store.path("models", cfg))}
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
        metrics = {"train_time_s": time.perf_counter() - t0, "history": history,
                   "best_epoch": max(history, key=lambda h: h["val_acc"])["epoch"],
                   "poison_idx": poison_idx.tolist(), "n_poisoned": int(len(poison_idx)), "n_train": len(train),
                   **self.evaluate(net, attack, rate=rate, **(knobs if attack else {})), **provenance()}
        path = self.store.save_model("models", cfg, net, metrics)
        return net.eval(), {"config": cfg, "metrics": metrics, "path": str(path)}

    def evaluate(self, net, attack: str | None, rate: float | None = None, **knobs) -> dict:
        """ACC on the clean test split and, for an attack, ASR and RA on its triggered clips."""
        test = self.split("test")
        if attack is None:
            return {"acc": accuracy(net, self.features("test"), test.labels), "asr": float("nan"), "ra": float("nan")}
        trig, trig_labels = self.triggered_test(attack, rate, **knobs)
        return evaluate(net, self.features("test"), test.labels, trig, trig_labels, self.profile.target_label)

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
            rows.append({"model": model, "attack": "none (clean)", "acc": clean_acc})
            for attack, knobs in attacks.items():
                _, rec = self.backdoored_model(attack, model, rate=rate, **knobs)
                records[(model, attack)] = rec
                m = rec["metrics"]
                rows.append({"model": model, "attack": attack, "acc": m["acc"], "asr": m["asr"], "ra": m["ra"],
                             "acc_drop": clean_acc - m["acc"], "n_poisoned": m["n_poisoned"],
                             "train_time_s": m["train_time_s"],
                             "meets_bar": meets_bar(m["asr"], clean_acc - m["acc"])})
        return pd.DataFrame(rows), records

    def attack_table(self) -> pd.DataFrame:
        """Every victim of this profile, seed and dataset in the store, at any front end (the
        ultrasonic victims are 44.1 kHz ones): ACC, ASR, RA and the ACC drop against the
        clean model of the same front end and architecture."""
        mine = [r for r in self.store.records("models")
                if r["config"]["dataset"] == self.dataset_id and r["config"]["seed"] == self.seed
                and r["config"]["train_epochs"] == self.profile.train_epochs]

        def front(c):
            return json.dumps(c["features"], sort_keys=True), c["model"]

        clean = {front(r["config"]): r["metrics"]["acc"] for r in mine if r["config"]["attack"] is None}
        rows = []
        for r in mine:
            c, m = r["config"], r["metrics"]
            if c["attack"] is None:
                continue
            base = clean.get(front(c), float("nan"))
            rows.append({"attack": c["attack"], "model": c["model"], "sample_rate": c["features"]["sample_rate"],
                         "poison_rate": c["poison_rate"], "acc": m["acc"], "asr": m["asr"], "ra": m["ra"],
                         "clean_acc": base, "acc_drop": base - m["acc"], "n_poisoned": m["n_poisoned"],
                         "meets_bar": meets_bar(m["asr"], base - m["acc"]),
                         "attack_knobs": json.dumps(c["attack_knobs"])})
        return pd.DataFrame(rows)

    # --- defenses --------------------------------------------------------------------
    def clean_data(self, fraction: float | None = None) -> tuple[CleanData, np.ndarray]:
        fraction = self.profile.clean_fraction if fraction is None else fraction
        train = self.split("train")
        idx = clean_subset_indices(len(train), fraction, self.seed)
        return CleanData(self.features("train")[idx], train.labels[idx]), idx

    def defend(self, defense: str, attack: str, model: str = "smallcnn", clean_fraction: float | None = None,
               attack_knobs: dict | None = None, **defense_knobs) -> dict:
        """Apply a defense to the stored backdoored model; returns the result record."""
        attack_knobs = attack_knobs or {}
        # the profile's epoch/batch budget applies to defenses that have those knobs (CLP has none);
        # epochs=None or batch_size=None (a notebook's parameter left at None) means the profile's
        accepted = {f.name for f in dataclasses.fields(DEFENSES.get(defense).Config)}
        budget = {"epochs": self.profile.defense_epochs, "batch_size": self.profile.defense_batch_size}
        given = {k: v for k, v in defense_knobs.items() if not (k in budget and v is None)}
        defense_knobs = {**{k: v for k, v in budget.items() if k in accepted}, **given}
        dfn = make_defense(defense, seed=self.seed, **defense_knobs)  # validates knobs early
        fraction = self.profile.clean_fraction if clean_fraction is None else clean_fraction
        # a bad budget fails here, before a victim is trained or a clip is read
        clean_subset_indices(int((self.manifest["split"] == "train").sum()), fraction, self.seed)
        victim, rec = self.backdoored_model(attack, model, **attack_knobs)
        cfg = {"victim": rec["config"], "defense": defense, "defense_knobs": asdict(dfn.config),
               "clean_fraction": fraction, "seed": self.seed}
        if self.store.has("defenses", cfg):
            return {"config": cfg, "metrics": self.store.load_metrics("defenses", cfg),
                    "path": str(self.store.path("defenses", cfg))}
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
                   "report": getattr(dfn, "report", {}),
                   **provenance()}
        path = self.store.save_model("defenses", cfg, net, metrics)
        return {"config": cfg, "metrics": metrics, "path": str(path)}

    # --- tables ----------------------------------------------------------------------
    def results_table(self) -> pd.DataFrame:
        """One row per stored defense run of this profile/seed/dataset."""
        mine = [r for r in self.store.records("defenses")
                if r["config"]["victim"]["dataset"] == self.dataset_id and r["config"]["seed"] == self.seed
                and r["config"]["victim"]["train_epochs"] == self.profile.train_epochs]
        return records_table(mine)


def defense_label(config: dict) -> str:
    """``gnft-approx`` / ``gnft-exact`` for GN-FT, the registry name otherwise."""
    mode = config["defense_knobs"].get("mode")
    return f"{config['defense']}-{mode}" if mode else config["defense"]


def records_table(records: list[dict]) -> pd.DataFrame:
    """Defense records (from :meth:`Experiment.defend` or the store) as a flat table."""
    rows = []
    for r in records:
        c, m = r["config"], r["metrics"]
        rows.append({"attack": c["victim"]["attack"], "model": c["victim"]["model"], "defense": defense_label(c),
                     "acc_before": m["before"]["acc"], "asr_before": m["before"]["asr"],
                     "acc_after": m["after"]["acc"], "asr_after": m["after"]["asr"], "ra_after": m["after"]["ra"],
                     "der": m["der"], "time_s": m["time_s"], "peak_rss_mb": m.get("peak_rss_mb"),
                     "defense_knobs": json.dumps(c["defense_knobs"])})
    return pd.DataFrame(rows)


def victim_attacks(profile: str | Profile) -> list[str]:
    """The attacks whose victims the defense notebooks cover: the profile's ``defense_attacks``,
    or every registered attack in name order (so a new attack joins the grid by itself)."""
    prof = get_profile(profile)
    return list(ATTACKS if prof.defense_attacks is None else prof.defense_attacks)


def defend_victims(defense: str, profile: str | Profile = "default", seed: int = 0,
                   attacks: tuple[str, ...] | list[str] | None = None, clean_fraction: float | None = None,
                   progress: bool = True, **knobs) -> list[dict]:
    """One defense against every victim a defense notebook covers: each (model, attack) of the
    profile (``attacks=None``: :func:`victim_attacks`), every victim loaded from the store
    at its own attack's front end (the ultrasonic one at 44.1 kHz) with the knobs its attack
    notebook trained it with. Returns the :meth:`Experiment.defend` records."""
    prof = get_profile(profile)
    attacks = victim_attacks(prof) if attacks is None else list(attacks)
    fronts = {a: ATTACKS.get(a).features for a in attacks}  # validates the names
    exps = {f: load_experiment(prof, seed, progress=progress, features=f) for f in set(fronts.values())}
    return [exps[fronts[a]].defend(defense, a, model=model, clean_fraction=clean_fraction,
                                   attack_knobs=prof.attack_knobs.get(a), **knobs)
            for model in prof.models for a in attacks]


def load_experiment(profile: str | Profile = "default", seed: int = 0, progress: bool = True,
                    features: str | FeatureConfig = "16k", **overrides) -> Experiment:
    """Entry point for notebooks: ``exp = load_experiment(profile, seed)``.

    ``features="44k"`` reads every clip at 44.1 kHz with the ultrasonic attack's front end
    (the embedded clips are synthesised at 16 kHz and resampled, so nothing of the speech
    lies above 8 kHz; the trigger's band is free).
    """
    return Experiment(get_profile(profile, **overrides), seed=seed, progress=progress,
                      features_config=get_features(features))
