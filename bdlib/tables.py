"""The paper-shaped results table: defenses as rows, attacks × {ACC, ASR} as columns, each
cell the mean ± sd over seeds, the best defense per column marked.

Why: GN-FT's main results (arXiv 2502.01152, Sec. IV, Table I) compare every defense with the
undefended model per attack on clean accuracy (ACC, higher is better) and attack success rate
(ASR, lower is better), best in bold. A study table (:meth:`bdlib.study.Study.run`) holds one
row per defense run and seed; this module aggregates it over seeds only — rows that share a
(defense label, attack, model, dataset) cell and differ in a knob raise, naming the knob — and
writes the result as CSV (the numbers), GitHub markdown and a booktabs LaTeX tabular.

The rule for "best" (:func:`main_table`): per column, among the defenses (the "no defense"
row is the reference, not a candidate), the highest mean ACC / RA / DER and the lowest mean
ASR, compared at the precision shown (``decimals`` of a percent), so cells that read the same
are all marked. It is a ranking of means, not a significance test: the sd sits next to it.

A defense that cannot act on a model (``status == "not applicable"`` in the study table: ANP on
a network without BatchNorm, say) is a cell of its own: shown as "n/a", never a candidate for
best, never averaged with runs that did happen (a cell whose seeds disagree on it is refused).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .bars import keeps_acc
from .study import NOT_APPLICABLE, OK, DuplicateCellsError, mean_sd

#: the row that holds the undefended victims (``acc_before`` / ``asr_before`` per seed)
NO_DEFENSE = "no defense"

#: metric column -> (header, which way is better)
METRICS: dict[str, tuple[str, str]] = {
    "acc_after": ("ACC", "max"),
    "asr_after": ("ASR", "min"),
    "ra_after": ("RA", "max"),
    "der": ("DER", "max"),
}

#: columns a run measures (they may differ between the rows a cell averages); every other
#: column but ``seed`` describes the run and must be constant within a cell
MEASURED = frozenset({"acc_before", "asr_before", "ra_before", "acc_after", "asr_after", "ra_after", "der", "time_s",
                      "peak_rss_mb", "torch_threads", "device"})

_DEFENSE_COLUMNS = ("defense", "label", "clean_fraction", "status", "reason")


def _keys(value: str | list[str] | tuple[str, ...]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _check_metrics(metrics) -> list[str]:
    metrics = list(metrics)
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise ValueError(f"unknown metric(s) {bad or metrics!r}; valid: {sorted(METRICS)}")
    return metrics


def _victim_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns
            if c not in MEASURED and c not in _DEFENSE_COLUMNS and not c.startswith("defense.")]


def per_seed(study_table: pd.DataFrame) -> pd.DataFrame:
    """The study table with its ``defense == "none"`` rows replaced by one ``NO_DEFENSE`` row
    per victim and seed, built from ``acc_before`` / ``asr_before`` / ``ra_before`` (which
    every defense run of that victim carries too, so a table without "none" rows still has
    its reference row). A victim whose "before" numbers disagree between rows raises."""
    need = {"attack", "seed", "acc_before", "asr_before"}
    if not need <= set(study_table.columns):
        raise ValueError(f"not a study table: columns {sorted(need - set(study_table.columns))} missing "
                         f"(Study.run / Study.table return one)")
    if "label" not in study_table.columns:
        raise ValueError("the study table has no 'label' column (Study.table adds one per defense setting)")
    table = study_table.reset_index(drop=True)
    undefended = table.label.eq("none") | (table.defense.eq("none") if "defense" in table else False)
    before = [c for c in ("acc_before", "asr_before", "ra_before") if c in table.columns]
    victim = _victim_columns(table)
    # the victim's own record (a "none" row) where there is one, else the before-numbers its defense runs carry
    rec = table[victim + before]
    own, carried = rec[undefended].drop_duplicates(), rec[~undefended].drop_duplicates()
    own_keys = set(map(tuple, own[victim].astype(str).to_numpy()))
    carried = carried[[tuple(k) not in own_keys for k in carried[victim].astype(str).to_numpy()]]
    victims = pd.concat([own, carried], ignore_index=True)
    clash = victims.duplicated(victim, keep=False)
    if clash.any():
        raise ValueError(f"one victim has different before-defense numbers in different rows: "
                         f"{victims[clash].head(4).to_dict('records')}")
    victims = victims.assign(label=NO_DEFENSE, defense="none",
                             **{b.replace("_before", "_after"): victims[b] for b in before}, der=math.nan,
                             **({"status": OK} if "status" in table.columns else {}))
    return pd.concat([victims, table[~undefended]], ignore_index=True)


def check_one_setting(rows: pd.DataFrame, keys: list[str]) -> None:
    """Raise :class:`~bdlib.study.DuplicateCellsError` unless the rows of every ``keys`` cell
    differ in the seed (and measurements) only: a knob, a clean fraction or an attack setting
    that varies inside a cell names itself, and the same seed twice is refused."""
    described = [c for c in rows.columns if c not in MEASURED and c != "seed" and c not in keys]
    groups = rows.groupby(keys, dropna=False, sort=False)
    varying = [c for c in described if groups[c].nunique(dropna=False).gt(1).any()]
    if varying:
        bad = groups[varying].nunique(dropna=False).gt(1).any(axis=1)
        first = bad[bad].index[0]
        example = dict(zip(keys, first if isinstance(first, tuple) else (first,)))
        raise DuplicateCellsError(f"rows of one cell {example} differ in {varying}, not only in the seed; filter "
                                  f"the table, or add those columns to the row/col keys")
    twice = rows.duplicated(keys + ["seed"], keep=False)
    if twice.any():
        raise DuplicateCellsError(f"{int(twice.sum())} rows repeat a seed in one cell of {keys} (e.g. "
                                  f"{rows[twice].iloc[0][keys + ['seed']].to_dict()}): the same run twice")


def _cell_keys(rows: pd.DataFrame, row: list[str], col: list[str]) -> list[str]:
    """row + col, plus model and dataset, which must then be single-valued: one table per
    model and data set, as in the paper."""
    keys = row + col
    for c in ("model", "dataset"):
        if c in rows.columns and c not in keys:
            values = rows[c].dropna().unique()
            if len(values) > 1:
                raise ValueError(f"the table holds several {c}s {sorted(map(str, values))}: filter it to one, or "
                                 f"pass row=[{c!r}, 'label'] (or put {c!r} in col)")
            keys = keys + [c]
    return keys


def cell_stats(study_table: pd.DataFrame, metrics=("acc_after", "asr_after"), row="label", col="attack",
               decimals: int = 2) -> pd.DataFrame:
    """One tidy row per (row, col, metric): ``mean``, ``sd`` and ``n`` over seeds (fractions,
    as stored) and ``best`` (see the module docstring; ``decimals`` is the percent precision
    the comparison is made at)."""
    metrics = _check_metrics(metrics)
    row, col = _keys(row), _keys(col)
    rows = per_seed(study_table)
    keys = _cell_keys(rows, row, col)
    check_one_setting(rows, keys)
    agg = mean_sd(rows, keys, metrics)
    status = agg["status"] if "status" in agg else OK  # "not applicable": the defense refused the model
    long = pd.concat([agg[keys].assign(metric=m, mean=agg[f"{m}_mean"], sd=agg[f"{m}_sd"], n=agg[f"{m}_n"],
                                       status=status)
                      for m in metrics], ignore_index=True)
    # best among the defenses of one (attack, metric): whichever side the labels are on
    rival = "label" if "label" in keys else row[-1]
    versus = [k for k in keys if k != rival] + ["metric"]
    candidate = long["mean"].notna() & (long["label"].ne(NO_DEFENSE) if "label" in long else True)
    shown = (long["mean"] * 100).round(decimals)
    best = pd.Series(False, index=long.index)
    for _, idx in long[candidate].groupby(versus, dropna=False).groups.items():
        better = METRICS[long.at[idx[0], "metric"]][1]
        target = shown[idx].max() if better == "max" else shown[idx].min()
        best[idx] = shown[idx].eq(target)
    return long.assign(n=long["n"].astype(int), best=best)


@dataclass(frozen=True, eq=False)
class MainTable:
    """The paper-shaped table: ``cells`` holds the numbers (one tidy row per row × col ×
    metric with mean, sd, n, best); :meth:`frame`, :meth:`markdown` and :meth:`latex` render it
    with rows in first-seen order ("no defense" first) and columns grouped per ``col``."""

    cells: pd.DataFrame
    row: tuple[str, ...]
    col: tuple[str, ...]
    metrics: tuple[str, ...]
    decimals: int = 2

    def _order(self, keys: tuple[str, ...]) -> list[tuple]:
        """First-seen order, "no defense" first within each block of the other keys (each model's
        rows stay together when ``row=["model", "label"]``)."""
        seen = list(dict.fromkeys(map(tuple, self.cells[list(keys)].itertuples(index=False, name=None))))
        if "label" not in keys:
            return seen
        at = keys.index("label")
        block: dict[tuple, int] = {}
        for k in seen:
            block.setdefault(k[:at] + k[at + 1:], len(block))
        return sorted(seen, key=lambda k: (block[k[:at] + k[at + 1:]], k[at] != NO_DEFENSE))

    def _text(self, cell, mark) -> str:
        if cell is not None and cell.get("status") == NOT_APPLICABLE:
            return "n/a"
        if cell is None or pd.isna(cell["mean"]):
            return "–"
        text = f"{cell['mean'] * 100:.{self.decimals}f}"
        if cell["n"] > 1:
            text += f" ± {cell['sd'] * 100:.{self.decimals}f}"
        if cell["n"] != self.n:
            text += f" (n={cell['n']})"
        return mark(text) if cell["best"] else text

    @property
    def n(self) -> int:
        """The usual number of seeds per cell (cells with another n say theirs)."""
        counts = self.cells.loc[self.cells["n"] > 0, "n"]
        return int(counts.mode().max()) if len(counts) else 0

    def _grid(self, mark) -> tuple[list[str], list[tuple], list[list[str]]]:
        lookup = {(tuple(r[k] for k in self.row), tuple(r[k] for k in self.col), r["metric"]): r
                  for r in self.cells.to_dict("records")}
        rows, cols = self._order(self.row), self._order(self.col)
        body = [[self._text(lookup.get((r, c, m)), mark) for c in cols for m in self.metrics] for r in rows]
        return [" / ".join(map(str, r)) for r in rows], cols, body

    def frame(self) -> pd.DataFrame:
        """Strings "mean ± sd" (percent), columns (col, metric header); best cells end in " *"."""
        names, cols, body = self._grid(lambda t: t + " *")
        columns = pd.MultiIndex.from_tuples([(" / ".join(map(str, c)), METRICS[m][0]) for c in cols
                                             for m in self.metrics])
        return pd.DataFrame(body, index=pd.Index(names, name=" / ".join(self.row)), columns=columns)

    def caption(self) -> str:
        better = ", ".join(f"{'highest' if METRICS[m][1] == 'max' else 'lowest'} {METRICS[m][0]}" for m in self.metrics)
        per = " and ".join(k for k in self.row + self.col if k not in ("label", "model", "dataset")) or "column"
        text = (f"Mean ± sd over n = {self.n} seeds, in %. Best defense per {per} ({better}; by mean at the "
                f"precision shown, ties all marked; the undefended victim is the reference, not a candidate) in bold.")
        if "status" in self.cells and self.cells["status"].eq(NOT_APPLICABLE).any():
            text += (" n/a: the defense cannot act on this model (it lacks the part the defense works on; the "
                     "study table's `reason` column names it).")
        return text

    def markdown(self) -> str:
        """A GitHub markdown table, best cells in **bold**, the caption below."""
        names, cols, body = self._grid(lambda t: f"**{t}**")
        header = [" / ".join(self.row)] + [f"{' / '.join(map(str, c))} {METRICS[m][0]}" for c in cols
                                            for m in self.metrics]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
        lines += ["| " + " | ".join(x.replace("|", "\\|") for x in [n, *b]) + " |" for n, b in zip(names, body)]
        return "\n".join(lines) + "\n\n" + self.caption() + "\n"

    def latex(self) -> str:
        """A booktabs ``tabular``: one column group per attack with ACC / ASR under it, best
        cells in ``\\textbf{}``; the caption as a comment (the paper's ``table`` float is the
        reader's)."""
        names, cols, body = self._grid(lambda t: rf"\textbf{{{t}}}")
        k = len(self.metrics)
        out = [f"% {self.caption()}", r"\begin{tabular}{l" + "c" * (k * len(cols)) + "}", r"\toprule"]
        out.append(" & ".join([""] + [rf"\multicolumn{{{k}}}{{c}}{{{_tex(' / '.join(map(str, c)))}}}" for c in cols])
                   + r" \\")
        out.append(" ".join(rf"\cmidrule(lr){{{2 + i * k}-{1 + (i + 1) * k}}}" for i in range(len(cols))))
        out.append(" & ".join([_tex(" / ".join(self.row))] + [METRICS[m][0] for _ in cols for m in self.metrics])
                   + r" \\")
        out.append(r"\midrule")
        out += [" & ".join([_tex(n), *(_tex(x) for x in b)]) + r" \\" for n, b in zip(names, body)]
        out += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(out) + "\n"

    def _repr_markdown_(self) -> str:
        return self.markdown()


def _tex(text: str) -> str:
    """Escape the characters LaTeX treats specially; keep ``\\textbf{}`` and write ± / – as math."""
    out = text
    for a, b in (("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        out = out.replace(a, b)
    return out.replace("±", r"$\pm$").replace("–", "--")


def main_table(study_table: pd.DataFrame, metrics=("acc_after", "asr_after"), row="label", col="attack",
               decimals: int = 2) -> MainTable:
    """The paper's main table from a study table (:meth:`bdlib.study.Study.run`): rows
    ``row`` (defense labels, the undefended victim first as ``"no defense"``), column groups
    ``col`` (attacks) × ``metrics``; each cell the mean ± sd over seeds with n, computed with
    :func:`bdlib.study.mean_sd` after :func:`check_one_setting` has refused cells whose rows
    differ in anything but the seed. Pass ``row="attack", col="label"`` for the transposed
    orientation. Best per column: see the module docstring."""
    metrics = tuple(_check_metrics(metrics))
    cells = cell_stats(study_table, metrics, row, col, decimals)
    return MainTable(cells, tuple(_keys(row)), tuple(_keys(col)), metrics, decimals)


def write_main_table(table: MainTable, stem: str | Path) -> list[Path]:
    """Write ``<stem>.csv`` (the tidy numbers: mean, sd, n, best per cell, as fractions),
    ``<stem>.md`` and ``<stem>.tex``; return the three paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(s) for s in (".csv", ".md", ".tex")]
    table.cells.to_csv(paths[0], index=False)
    paths[1].write_text(table.markdown())
    paths[2].write_text(table.latex())
    return paths


def passes_bar(study_table: pd.DataFrame, asr_bar: float = 0.2, acc_drop: float = 0.03) -> pd.DataFrame:
    """Per (attack, defense label[, model, dataset]): whether the mean over seeds removes the
    backdoor (mean ASR after <= ``asr_bar``) while keeping ACC within ``acc_drop`` of the
    victim's (mean ACC before − mean ACC after <= ``acc_drop``, to 1e-9 so that a drop of
    exactly 3 points on a finite test set passes). A coarse, deterministic summary. A table
    of several models gets one row per model (each victim is judged against its own model).
    A defense that cannot act on the model keeps its row, with ``status`` "not applicable"
    (when the study table has that column) and ``passes`` False."""
    rows = per_seed(study_table)
    rows = rows[rows.label.ne(NO_DEFENSE)]
    keys = _cell_keys(rows, ["attack", "label"] + (["model"] if "model" in rows.columns else []), [])
    check_one_setting(rows, keys)
    g = rows.groupby(keys, dropna=False, sort=False)
    out = g[["asr_after", "acc_before", "acc_after"]].mean().reset_index()
    out.insert(len(keys), "n", g.size().to_numpy())
    out["acc_drop"] = out.acc_before - out.acc_after
    out["removes_backdoor"] = out.asr_after <= asr_bar
    out["keeps_acc"] = keeps_acc(out.acc_drop, acc_drop)
    out["passes"] = out.removes_backdoor & out.keeps_acc
    if "status" in rows.columns:  # one value per cell: check_one_setting refused cells whose seeds disagree
        out["status"] = g["status"].first().to_numpy()
    return out


def victim_report(table: pd.DataFrame, clean_acc: dict[str, float], asr_bar: float = 0.9,
                  acc_points: float = 0.03) -> list[str]:
    """Notebook 90's claims about one seed's grid, a line each: per model its clean ACC; per
    victim its ASR against the attack bar (ASR >= 90 %, ACC within 3 points of the clean
    model's); per defense run ASR and ACC before -> after, DER and time, or "not applicable"
    with the defense's reason. ``table``: defense rows of :meth:`bdlib.study.Study.run` with
    ``label`` as ``defense``; ``clean_acc``: model -> its clean model's ACC."""
    lines = []
    for model, acc in clean_acc.items():
        lines.append(f"clean {model} ACC {acc:.1%} (>= 90 %: {acc >= 0.9})")
        for attack, sub in table[table.model == model].groupby("attack"):
            row = sub.iloc[0]
            lines.append(f"{model} / {attack}: ASR {row.asr_before:.1%} (>= {asr_bar * 100:.0f} %: {row.asr_before >= asr_bar}), "
                         f"ACC {row.acc_before:.1%} (within {acc_points * 100:.0f} points of clean: "
                         f"{keeps_acc(acc - row.acc_before, acc_points)})")
            for r in sub.itertuples():
                if r.status == NOT_APPLICABLE:
                    lines.append(f"   {r.defense:12s} not applicable: {r.reason}")
                    continue
                lines.append(f"   {r.defense:12s} ASR {r.asr_before:.1%} -> {r.asr_after:.1%}, ACC {r.acc_before:.1%} -> "
                             f"{r.acc_after:.1%}, DER {r.der:.3f}, {r.time_s:.1f} s")
    return lines


__all__ = ["METRICS", "MainTable", "NO_DEFENSE", "cell_stats", "check_one_setting", "main_table", "passes_bar",
           "per_seed", "victim_report", "write_main_table"]
