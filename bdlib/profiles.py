"""Run profiles: one name fixes every size and epoch count of the pipeline.

Why: the same notebooks must run in three regimes — CI (``smoke``: minutes, tiny data),
a laptop CPU (``default``: the committed outputs, large enough to show the effects) and
full scale (``paper``: the settings of GN-FT, arXiv 2502.01152, Sec. 4.1, meant for a GPU).
Notebooks take only a profile name and a seed; everything else is read from here.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from .registry import Registry, build_config, check_fields, knob

PROFILES: Registry["Profile"] = Registry("profile")


@dataclass(frozen=True)
class Profile:
    """Every field is type- and range-checked at construction (:func:`bdlib.registry.check_fields`;
    the valid range of each is the ``knob`` next to it), so ``get_profile("smoke",
    defense_epochs=0)`` or ``poison_rate=1.5`` fails at once, naming the field."""

    name: str = knob(nonempty=True)
    # size of the embedded dataset (bdlib.data: EMBEDDED_SIZES) when it is the data source;
    # other sources bring their own data
    embedded_size: str = knob("default", nonempty=True)
    # victim training (paper: Adam, batch 256, up to 300 epochs with early stopping)
    train_epochs: int = knob(30, "[1, inf)")
    train_batch_size: int = knob(64, "[1, inf)")
    train_lr: float = knob(1e-3, "(0, inf)")
    # defenses (paper: 5 % clean data, batch 256, GN-FT lr 1e-3)
    clean_fraction: float = knob(0.05, "(0, 1]")
    defense_epochs: int = knob(100, "[1, inf)")
    defense_batch_size: int = knob(256, "[1, inf)")
    # attacks (paper: target index 2 = "up", 10 % dirty-label poisoning)
    poison_rate: float = knob(0.10, "(0, 1)")
    # a class index (>= 0) or name; checked against the data source's classes by
    # bdlib.pipeline.resolve_target
    target_label: int | str = knob(2, "[0, inf)")
    models: tuple[str, ...] = knob(("smallcnn",), nonempty=True)
    # the victims every defense notebook is run against; None: every registered attack
    # (smoke: two, to keep CI short)
    defense_attacks: tuple[str, ...] | None = None
    # knobs the attack notebooks train those victims with (FlowMur's optimisation steps)
    attack_knobs: dict = field(default_factory=lambda: {"flowmur": {"steps": 300}})
    # architectures shown beside ``models`` on a few attacks only: model name -> its attacks. The
    # collection grid (bdlib.study.model_rows_studies) defends these victims with every defense
    # too; a CPU affords the authors' cheaper models on three attacks, not on nine (issue 13)
    model_rows: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self, "profile")

    def replace(self, **changes) -> "Profile":
        return dataclasses.replace(self, **changes)

    def __hash__(self) -> int:  # dict fields: hash their canonical JSON (cells and caches key on profiles)
        return hash(json.dumps(dataclasses.asdict(self), sort_keys=True, default=str))


PROFILES.add(
    "smoke",
    Profile(
        name="smoke",
        embedded_size="smoke",
        train_epochs=10,
        train_batch_size=32,
        defense_epochs=10,
        defense_attacks=("badnets", "badnets_burst"),
        attack_knobs={"flowmur": {"steps": 60}},
    ),
)
PROFILES.add(
    "default",
    Profile(
        name="default",
        embedded_size="default",
        train_epochs=25,
        train_batch_size=64,
        defense_epochs=100,
        model_rows={m: ("badnets", "blended", "jingleback") for m in ("lstmatt", "resnet")},
    ),
)
PROFILES.add(
    "budget",
    # The budget ablation (notebook 41, bdlib.budget): the default's validation and test
    # split sizes and victim recipe, 12x the training speakers (19 200 clips), so the paper's 5 %
    # clean fraction is 960 clips; victims see as many samples as the default's (2 epochs of
    # 19 200 vs 25 of 1 600, ~600 Adam steps each).
    Profile(
        name="budget",
        embedded_size="budget",
        train_epochs=2,
        train_batch_size=64,
        defense_epochs=300,
        defense_attacks=("badnets", "blended", "jingleback"),
    ),
)
PROFILES.add(
    "paper",
    # Full-scale runs (GPU): the GN-FT paper fine-tunes for 300 epochs on 5 % of SCD's
    # training set; the embedded set is grown to a comparable size. Victims as the authors'
    # attack scripts train them (quantum-bitss/Audio-Backdoor-Attack, badnets.py
    # parse_arguments and config/*.yaml: Adam lr 1e-4, batch 256, up to 300 epochs with
    # early stopping at patience 20; here the best-validation epoch of 100 is kept instead).
    Profile(
        name="paper",
        embedded_size="paper",
        train_epochs=100,
        train_batch_size=256,
        train_lr=1e-4,
        defense_epochs=300,
    ),
)


def get_profile(name: str | Profile, **overrides) -> Profile:
    """Look a profile up by name (clear error listing the valid ones) and apply overrides."""
    prof = name if isinstance(name, Profile) else PROFILES.get(name)
    if overrides:
        valid = {f.name: getattr(prof, f.name) for f in dataclasses.fields(prof)}
        valid.update(overrides)
        prof = build_config(Profile, valid, "profile")
    return prof
