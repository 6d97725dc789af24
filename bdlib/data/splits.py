"""Speaker-disjoint train/val/test assignment shared by the on-disk sources.

Why by speaker: a model that heard a test speaker in training scores what it memorised
of that voice, not how it generalises; every split here puts each speaker in exactly one
split. Three ways to choose, as :class:`SpeakerSplit` options:

* explicit ``test_speakers`` / ``val_speakers`` lists;
* a seeded draw of ``test_fraction`` / ``val_fraction`` of the speakers (at least one
  each; None means exactly one speaker);
* k-fold by speaker: ``folds`` = k, ``fold`` = which one (0..k-1); k = the number of
  speakers (the default when only ``fold`` is given) is leave-one-speaker-out. The
  validation speakers of a fold are drawn from the remaining speakers with a generator
  seeded by (seed, fold), so every fold is reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..registry import Checked, knob
from .source import as_name_tuple


@dataclass
class SpeakerSplit(Checked):
    """Options choosing which speakers go to test and validation (the rest train)."""

    test_speakers: tuple[str, ...] | None = None
    val_speakers: tuple[str, ...] | None = None
    test_fraction: float | None = knob(None, "(0, 1)")
    val_fraction: float | None = knob(None, "(0, 1)")
    fold: int | None = knob(None, "[0, inf)")
    folds: int | None = knob(None, "[2, inf)")
    seed: int = 0

    def __post_init__(self):
        self.test_speakers = as_name_tuple(self.test_speakers, "test_speakers")
        self.val_speakers = as_name_tuple(self.val_speakers, "val_speakers")
        super().__post_init__()  # types and ranges (bdlib.registry.check_fields)
        overlap = sorted(set(self.test_speakers or ()) & set(self.val_speakers or ()))
        if overlap:
            raise ValueError(f"speaker(s) {overlap} are in both test_speakers and val_speakers; "
                             "a speaker belongs to exactly one split")
        if (self.fold is not None or self.folds is not None) and (self.test_speakers or self.val_speakers):
            raise ValueError("fold/folds choose the test and validation speakers themselves; "
                             "do not also pass test_speakers/val_speakers")
        if self.folds is not None and self.fold is None:
            raise ValueError(f"folds={self.folds} needs fold=0..{self.folds - 1} (loop over source.n_folds)")

    @property
    def explicit(self) -> bool:
        """True when the user chose speakers or folds (not just fractions/seed)."""
        return bool(self.test_speakers or self.val_speakers or self.fold is not None)


def _count(fraction: float | None, n: int) -> int:
    return 1 if fraction is None else max(1, int(round(fraction * n)))


def _check_known(names: tuple[str, ...] | None, known: list[str], what: str) -> None:
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; known speakers: {', '.join(known)}")


def speaker_folds(speakers, k: int, seed: int = 0) -> list[tuple[str, ...]]:
    """Partition the speakers into ``k`` seeded folds of near-equal size (the test speakers
    of each fold); k = number of speakers is leave-one-speaker-out."""
    spk = sorted(set(map(str, speakers)))
    if not 2 <= k <= len(spk):
        raise ValueError(f"folds must be between 2 and {len(spk)} (the number of speakers; "
                         f"{len(spk)} is leave-one-speaker-out), got {k}")
    perm = [str(s) for s in np.random.default_rng(seed).permutation(spk)]
    return [tuple(sorted(part)) for part in np.array_split(np.array(perm, dtype=object), k)]


def n_folds(speakers, opts: SpeakerSplit) -> int:
    """How many folds the options describe (``folds``, or one per speaker)."""
    return opts.folds or len(set(speakers))


def assign_splits(speakers, opts: SpeakerSplit) -> dict[str, str]:
    """Map each speaker to "train", "val" or "test" as ``opts`` says."""
    spk = sorted(set(map(str, speakers)))
    _check_known(opts.test_speakers, spk, "test speaker(s)")
    _check_known(opts.val_speakers, spk, "validation speaker(s)")
    n_val = _count(opts.val_fraction, len(spk))
    if opts.fold is not None:
        k = n_folds(spk, opts)
        if not 0 <= opts.fold < k:
            raise ValueError(f"fold must be in 0..{k - 1} for {k} folds, got {opts.fold}")
        test = speaker_folds(spk, k, opts.seed)[opts.fold]
        rest = [s for s in spk if s not in test]
        val = tuple(str(s) for s in np.random.default_rng([opts.seed, opts.fold]).permutation(rest)[:n_val])
    else:
        if not (opts.test_speakers and opts.val_speakers) and len(spk) < 3:
            raise ValueError(f"need at least 3 speakers for a speaker-disjoint split, found {spk}")
        perm = [str(s) for s in np.random.default_rng(opts.seed).permutation(spk)]
        test = opts.test_speakers or tuple(s for s in perm if s not in (opts.val_speakers or ()))[
            : _count(opts.test_fraction, len(spk))]
        val = opts.val_speakers or tuple(s for s in perm if s not in test)[:n_val]
    out = {s: "test" if s in test else "val" if s in val else "train" for s in spk}
    if "train" not in out.values():
        raise ValueError(f"no speaker left for training: test={sorted(test)}, val={sorted(val)} "
                         f"of {len(spk)} speakers; choose fewer test/validation speakers")
    return out


class SpeakerFolds:
    """Mixin for sources split by :class:`SpeakerSplit` options (``self.config``)."""

    @property
    def speakers(self) -> list[str]:
        return sorted(self.manifest()["speaker"].unique())

    @property
    def n_folds(self) -> int:
        """Folds of k-fold-by-speaker (``folds``, or one per speaker): a caller loops
        ``make_source(name, root, fold=f, folds=src.n_folds)`` for f in range(src.n_folds)."""
        return n_folds(self.speakers, self.config)
