"""Figures drawn from tables, saved with the table they are drawn from.

Why: a figure should be redrawable -- restyled, fixed, regenerated on a fresh clone -- without
the hours of training behind it, and every number in it should be checkable. So a figure
whose data is a table is never drawn from a notebook's objects in memory: :func:`publish`
writes the table as ``<name>.csv``, reads that file back and draws from what it read, then
saves ``<name>.png`` (dpi 120, as :func:`bdlib.plots.save_figure`) and ``<name>.pdf`` next to
it. A drawer sees only the columns it declares (:class:`Drawer`), so the picture depends on
the CSV and on nothing else. ``python -m bdlib figures`` (``make figures``) redraws every
registered figure in ``figures/`` from its CSV (:func:`redraw`), and lists the PNGs it
cannot redraw: figures of audio (waveforms, spectrograms, MFCC maps), and tables not moved
here yet.

One registry line per figure name (``FIGURES``); several names may share a drawer (every
defense notebook's ASR bars). Files land where :func:`bdlib.paths.figure_path` puts them:
``figures/`` only for the default profile on the embedded data.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from .paths import REPO_ROOT, figure_path
from .registry import Registry


class FigureDataError(ValueError):
    """A figure's CSV does not fit its drawer (a missing column, several rows in one cell)."""


@dataclass(frozen=True)
class Drawer:
    """How one figure is drawn from its table: ``draw(frame) -> matplotlib Figure``, where
    ``frame`` holds exactly ``columns`` plus whichever of ``optional`` the CSV has."""

    draw: Callable[[pd.DataFrame], object]
    columns: tuple[str, ...]
    optional: tuple[str, ...] = ()
    about: str = ""

    def select(self, frame: pd.DataFrame, name: str) -> pd.DataFrame:
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise FigureDataError(f"figure {name!r} needs column(s) {', '.join(missing)}; the table has "
                                  f"{', '.join(map(str, frame.columns)) or 'none'}")
        return frame.loc[:, list(self.columns) + [c for c in self.optional if c in frame.columns]]


FIGURES: Registry[Drawer] = Registry("figure")


def draw(name: str, frame: pd.DataFrame):
    """The figure ``name`` drawn from ``frame`` (only its declared columns reach the drawer)."""
    drawer = FIGURES.get(name)
    return drawer.draw(drawer.select(frame, name))


def read_table(path: Path) -> pd.DataFrame:
    """A figure's CSV as the drawers read it (plain ``pandas.read_csv``)."""
    return pd.read_csv(path)


FORMATS = ("png", "pdf")


def _save(fig, folder: Path, name: str, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    paths = []
    for fmt in formats:
        path = folder / f"{name}.{fmt}"
        if fmt == "png":
            fig.savefig(path, dpi=120, bbox_inches="tight")
        elif fmt == "pdf":  # no timestamp: a redraw of the same CSV gives the same bytes
            fig.savefig(path, bbox_inches="tight", metadata={"CreationDate": None})
        else:
            raise ValueError(f"unknown figure format {fmt!r}; valid: {', '.join(FORMATS)}")
        paths.append(path)
    return paths


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path)


def publish(name: str, frame: pd.DataFrame, profile: str, dataset: str = "embedded"):
    """Write ``frame`` as ``<name>.csv``, draw figure ``name`` from the CSV read back, save it
    as ``<name>.png`` and ``<name>.pdf`` in the folder :func:`bdlib.paths.figure_path` picks,
    say where, and return the figure (left open, so a notebook shows it)."""
    FIGURES.get(name).select(frame, name)  # a wrong name or a missing column fails before anything is written
    folder = figure_path(name, profile, dataset).parent
    csv = folder / f"{name}.csv"
    frame.to_csv(csv, index=False)
    fig = draw(name, read_table(csv))
    png, pdf = _save(fig, folder, name)
    print(f"figure saved: {_shown(png)} (+ {pdf.name}), drawn from {csv.name} ({len(frame)} rows)")
    return fig


@dataclass
class RedrawReport:
    """What :func:`redraw` did in one folder: figures redrawn (name -> seconds), PNGs with no
    CSV, PNGs whose CSV has no registered drawer, and CSVs that are tables, not figures."""

    folder: Path
    redrawn: dict[str, float] = field(default_factory=dict)
    no_csv: list[str] = field(default_factory=list)
    no_drawer: list[str] = field(default_factory=list)
    tables_only: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"redrew {len(self.redrawn)} figure(s) in {_shown(self.folder)} from their CSV: "
               + (", ".join(f"{n} ({s:.1f} s)" for n, s in self.redrawn.items()) or "none")]
        if self.no_csv:
            out.append(f"{len(self.no_csv)} PNG(s) with no CSV (not redrawn): {', '.join(self.no_csv)}")
        if self.no_drawer:
            out.append(f"{len(self.no_drawer)} PNG(s) whose CSV has no registered drawer (not redrawn): "
                       f"{', '.join(self.no_drawer)}")
        if self.tables_only:
            out.append(f"CSV tables with no figure: {', '.join(self.tables_only)}")
        return out


def redraw(folder: Path | str, verbose: bool = True, formats: tuple[str, ...] = FORMATS) -> RedrawReport:
    """Redraw every ``<name>.csv`` in ``folder`` that has a registered drawer as ``<name>.png``
    and ``<name>.pdf`` (``formats``); report (and, if ``verbose``, print) the PNGs it could not
    redraw."""
    import matplotlib.pyplot as plt

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no figures folder {folder}")
    report = RedrawReport(folder)
    csvs = {p.stem: p for p in sorted(folder.glob("*.csv"))}
    for name, csv in csvs.items():
        if name not in FIGURES:
            (report.no_drawer if (folder / f"{name}.png").exists() else report.tables_only).append(name)
            continue
        t0 = time.perf_counter()
        try:
            fig = draw(name, read_table(csv))
        except (ValueError, KeyError, TypeError) as exc:  # a CSV that does not fit its drawer: name the file
            raise FigureDataError(f"{_shown(csv)}: {exc}") from exc
        _save(fig, folder, name, formats)
        plt.close(fig)
        report.redrawn[name] = time.perf_counter() - t0
    report.no_csv = [p.stem for p in sorted(folder.glob("*.png")) if p.stem not in csvs]
    if verbose:
        print("\n".join(report.lines()))
    return report


# --- the drawers ---------------------------------------------------------------------------

#: unit classes in plot order: bdlib.observation.CLASSES (a test checks they agree; importing
#: bdlib.observation here would pull torch into every redraw)
UNIT_CLASSES = ("backdoor", "hybrid", "clean", "dormant")
STAGES = ("victim", "after FT", "after GN-FT")


def _in_order(values: pd.Series, preferred: tuple = ()) -> list:
    """The distinct values of a column: those of ``preferred`` first, in its order, then the
    rest in order of first appearance (the order the notebook wrote its rows in)."""
    seen = list(pd.unique(values.dropna()))
    return [v for v in preferred if v in seen] + [v for v in seen if v not in preferred]


def _one_row_per_cell(frame: pd.DataFrame, cell: list[str], name: str) -> None:
    """Refuse a table where several rows share a cell of the figure (a knob sweep, several
    models or seeds): never average or pick one silently."""
    dup = frame.duplicated(cell, keep=False)
    if dup.any():
        first = frame[dup].iloc[0][cell].to_dict()
        raise FigureDataError(f"figure {name!r}: {int(dup.sum())} rows share a cell of {cell} (e.g. {first}); "
                              "filter or aggregate the table before publishing it")


def _several_models(frame: pd.DataFrame) -> bool:
    """Whether the table holds several models (column ``model``): the drawers then give each
    model its own panels or labels; with one model (or none named) they draw as before."""
    return "model" in frame and frame["model"].nunique() > 1


def _by_victim(frame: pd.DataFrame) -> pd.DataFrame:
    """``attack`` relabelled ``<model> / <attack>`` when the table holds several models, so a
    per-attack figure shows one entry per victim instead of refusing (or averaging) them."""
    if not _several_models(frame):
        return frame
    return frame.assign(attack=frame["model"].astype(str) + " / " + frame["attack"].astype(str))


def _same_per(frame: pd.DataFrame, by: str, columns: list[str], name: str) -> pd.DataFrame:
    """One value of each of ``columns`` per ``by`` (the victim's before-metrics per attack)."""
    varying = [c for c in columns if frame.groupby(by)[c].nunique(dropna=False).gt(1).any()]
    if varying:
        raise FigureDataError(f"figure {name!r}: {', '.join(varying)} differ within one {by} "
                              "(two victims in one table?)")
    return frame.groupby(by, sort=False)[columns].first()


def observation_gradients(frame: pd.DataFrame):
    """Per-unit clean-loss gradient norm by unit class (box plots, log scale): rows attacks
    (``<model> / <attack>`` when the table holds several models), columns layers, hue the
    stage; the units of every victim seed in the table are pooled in one box (notebook 31
    observes seeds 0-2; :func:`observation_ordering` shows the check per seed). Units with a
    zero gradient are left off the log axis."""
    import seaborn as sns

    frame = _by_victim(frame)
    shown = frame[frame.grad_norm > 0].astype({"class": str})
    g = sns.catplot(data=shown, x="class", y="grad_norm", hue="stage", row="attack", col="layer", kind="box",
                    order=list(UNIT_CLASSES), hue_order=_in_order(frame.stage, STAGES),
                    row_order=_in_order(frame.attack), col_order=_in_order(frame.layer), log_scale=True,
                    sharey=False, height=2.3, aspect=1.15, fliersize=1.5, linewidth=0.6, margin_titles=True)
    g.set_axis_labels("", "‖∂L_clean/∂θ_unit‖")
    g.set_titles(row_template="{row_name}", col_template="{col_name}")
    g.tick_params(axis="x", rotation=30)
    return g.figure


#: how one (attack, stage, layer, seed) group of the ordering check reads, strongest first
ORDERING_VERDICTS = ("backdoor > hybrid > clean", "backdoor > clean only", "backdoor ≤ clean", "untestable")


def _as_boolean(values: pd.Series) -> pd.Series:
    """A True/False/missing column as read back from a CSV (bools, "True"/"False" strings or NaN)."""
    return values.map({True: True, False: False, "True": True, "False": False}).astype("boolean")


def ordering_verdicts(frame: pd.DataFrame) -> pd.Series:
    """Each row's verdict (:data:`ORDERING_VERDICTS`) from its ``holds`` and ``backdoor_gt_clean``
    (bdlib.observation.ordering_check): the full ordering where it holds; else the weak one where it
    holds (also when the full one cannot be tested: no hybrid unit); else "backdoor ≤ clean"; and
    "untestable" where the layer has no backdoor or no clean unit."""
    full, weak = _as_boolean(frame["holds"]), _as_boolean(frame["backdoor_gt_clean"])
    verdict = pd.Series(ORDERING_VERDICTS[3], index=frame.index)
    verdict[weak.eq(False).fillna(False)] = ORDERING_VERDICTS[2]
    verdict[weak.eq(True).fillna(False)] = ORDERING_VERDICTS[1]
    verdict[full.eq(True).fillna(False)] = ORDERING_VERDICTS[0]
    return verdict


def observation_ordering(frame: pd.DataFrame):
    """Sec. 3.1's ordering checked per victim: one panel per labelling (columns) and stage (rows),
    a cell per attack × layer (y) and seed (x), coloured by :func:`ordering_verdicts`. Rows that
    share a (labelling[, model], attack, stage, layer, seed) are refused."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    name = "observation ordering"  # notebook 31
    frame = _by_victim(frame)
    _one_row_per_cell(frame, ["labelling", "attack", "stage", "layer", "seed"], name)
    frame = frame.assign(verdict=ordering_verdicts(frame).map({v: i for i, v in enumerate(ORDERING_VERDICTS)}))
    labellings, stages = _in_order(frame.labelling), _in_order(frame.stage, STAGES)
    rows = list(frame[["attack", "layer"]].drop_duplicates().itertuples(index=False, name=None))
    seeds = sorted(frame.seed.unique())
    colours = ListedColormap(["#1a9850", "#a6d96a", "#d73027", "#d9d9d9"])
    fig, axes = plt.subplots(len(stages), len(labellings), squeeze=False, sharex=True, sharey=True,
                             figsize=(1.2 + 0.45 * len(seeds) * len(labellings) + 1.6 * len(labellings),
                                      0.9 + 0.22 * len(rows) * len(stages)))
    for i, stage in enumerate(stages):
        for j, lab in enumerate(labellings):
            part = frame[(frame.stage == stage) & (frame.labelling == lab)].set_index(["attack", "layer", "seed"])
            grid = np.full((len(rows), len(seeds)), 3.0)
            for r, (attack, layer) in enumerate(rows):
                for c, seed in enumerate(seeds):
                    if (attack, layer, seed) in part.index:
                        grid[r, c] = part.loc[(attack, layer, seed), "verdict"]
            ax = axes[i][j]
            ax.imshow(grid, cmap=colours, vmin=-0.5, vmax=3.5, aspect="auto")
            ax.set_xticks(range(len(seeds)), [str(s) for s in seeds])
            ax.set_yticks(range(len(rows)), [f"{a} / {l}" for a, l in rows], fontsize=7)
            ax.set_title(f"{stage}, {lab}", fontsize=8)
            if i == len(stages) - 1:
                ax.set_xlabel("seed")
    fig.legend(handles=[Patch(color=colours(k), label=v) for k, v in enumerate(ORDERING_VERDICTS)],
               loc="lower center", ncol=len(ORDERING_VERDICTS), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def observation_counts(frame: pd.DataFrame):
    """Sec. 3.1's ordering over many layers at a glance (notebook 31's model rows: one seed,
    up to 16 layers a model): per victim (``<model> / <attack>``), labelling (rows) and stage
    (columns), how many of its layers get each verdict of :func:`ordering_verdicts`. Rows that
    share a (labelling[, model], attack, stage, layer, seed) are refused."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Patch

    frame = _by_victim(frame)
    _one_row_per_cell(frame, ["labelling", "attack", "stage", "layer", "seed"], "observation counts")
    frame = frame.assign(verdict=ordering_verdicts(frame))
    labellings, stages, victims = _in_order(frame.labelling), _in_order(frame.stage, STAGES), _in_order(frame.attack)
    colours = dict(zip(ORDERING_VERDICTS, ("#1a9850", "#a6d96a", "#d73027", "#d9d9d9")))
    fig, axes = plt.subplots(len(labellings), len(stages), squeeze=False, sharex=True, sharey=True,
                             figsize=(2.2 + 2.4 * len(stages), 1.0 + 0.3 * len(victims) * len(labellings)))
    for i, lab in enumerate(labellings):
        for j, stage in enumerate(stages):
            part = frame[(frame.labelling == lab) & (frame.stage == stage)]
            counts = (part.groupby(["attack", "verdict"]).size().unstack("verdict")
                      .reindex(index=victims, columns=list(ORDERING_VERDICTS)).fillna(0))
            ax, left = axes[i][j], np.zeros(len(victims))
            for verdict, colour in colours.items():
                ax.barh(range(len(victims)), counts[verdict], left=left, color=colour)
                left += counts[verdict].to_numpy()
            ax.set_yticks(range(len(victims)), victims, fontsize=7)
            ax.set_title(f"{stage}, {lab}", fontsize=8)
            if i == len(labellings) - 1:
                ax.set_xlabel("layers")
    axes[0][0].invert_yaxis()
    fig.legend(handles=[Patch(color=c, label=v) for v, c in colours.items()], loc="lower center",
               ncol=len(colours), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def budget_curves(frame: pd.DataFrame):
    """ASR (solid) and ACC (dashed) against fine-tuning steps, mean ± sd over seeds, each seed's
    ASR as a faint line (three seeds can split: the band alone hides it); columns clean-clip budgets, rows attack × learning rate (``<model> / <attack>`` when the table
    holds several models); FT blue, GN-FT red; the ASR bar dotted (column ``asr_bar``, when the
    table has it); a panel whose setting was not run says so. Rows that differ in anything but the seed within one (attack[, model], lr,
    n_clean, method, step) are refused."""
    import matplotlib.pyplot as plt

    name = "budget curves"  # notebooks 41 and 44
    frame = _by_victim(frame)
    curve = ["attack", "lr", "n_clean", "method", "step"]
    _one_row_per_cell(frame, curve + ["seed"], name)
    s = frame.groupby(curve)[["asr", "acc"]].agg(["mean", "std"])
    s.columns = [f"{m}_{'sd' if stat == 'std' else stat}" for m, stat in s.columns]
    s = s.reset_index()
    panels = list(s[["attack", "lr"]].drop_duplicates().sort_values(["attack", "lr"]).itertuples(index=False))
    ns = sorted(s.n_clean.unique())
    colours = {"ft": "tab:blue", "gnft": "tab:red"}
    colours.update({m: f"C{2 + i}" for i, m in enumerate(x for x in _in_order(s.method) if x not in colours)})
    bars = frame["asr_bar"].dropna().unique() if "asr_bar" in frame else []
    if len(bars) > 1:
        raise FigureDataError(f"figure {name!r}: several ASR bars in one table: {sorted(bars)}")
    fig, axes = plt.subplots(len(panels), len(ns), figsize=(3.6 * len(ns), 2.6 * len(panels)), squeeze=False,
                             sharey=True)
    for i, (attack, lr) in enumerate(panels):
        for j, n in enumerate(ns):
            ax = axes[i][j]
            if s[(s.attack == attack) & (s.lr == lr) & (s.n_clean == n)].empty:  # a grid run only for some attacks
                ax.text(0.5, 0.5, f"{attack}, lr {lr:g}, n={n}:\nnot run", ha="center", va="center",
                        transform=ax.transAxes, color="0.4")
                ax.set_axis_off()
                continue
            for method, c in colours.items():
                d = s[(s.attack == attack) & (s.lr == lr) & (s.n_clean == n) & (s.method == method)].sort_values("step")
                for m, ls in (("asr", "-"), ("acc", "--")):
                    ax.plot(d.step, d[f"{m}_mean"], ls, c=c, label=f"{method} {m.upper()}" if i == j == 0 else None)
                    sd = d[f"{m}_sd"].fillna(0)
                    ax.fill_between(d.step, d[f"{m}_mean"] - sd, d[f"{m}_mean"] + sd, color=c, alpha=0.15)
                one = frame[(frame.attack == attack) & (frame.lr == lr) & (frame.n_clean == n) & (frame.method == method)]
                for _, per_seed in one.groupby([k for k in ("model", "seed") if k in one], sort=True):
                    ax.plot(per_seed.step, per_seed.asr, "-", c=c, lw=0.6, alpha=0.45)  # each seed's ASR, faint
            if len(bars):
                ax.axhline(float(bars[0]), ls=":", c="k", lw=1)
            ax.set_xscale("symlog", linthresh=10)  # step 0 (the victim) stays on the axis
            ax.set(ylim=(0, 1.02), xlim=(0, max(1, s.step.max())), title=f"{attack}, lr {lr:g}, n={n}",
                   xlabel="steps" if i == len(panels) - 1 else None)
    fig.legend(loc="lower center", ncol=4, bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def defense_grid(frame: pd.DataFrame, name: str = "90_defense_grid"):
    """Heatmaps of ASR after, ACC after and DER, defense × attack (``<model> / <attack>`` when
    the table holds several models), with the undefended victim (``none``) as the first row of
    ASR and ACC; one run per (defense, attack[, model]) cell. ``name``: the figure's, in errors."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    frame = _by_victim(frame)
    _one_row_per_cell(frame, ["defense", "attack"], name)
    grid = {m: frame.pivot(index="defense", columns="attack", values=v)
            for m, v in (("asr", "asr_after"), ("acc", "acc_after"), ("der", "der"))}
    before = _same_per(frame, "attack", ["asr_before", "acc_before"], name)
    grid["asr"].loc["none"], grid["acc"].loc["none"] = before.asr_before, before.acc_before
    order = ["none"] + sorted(d for d in grid["asr"].index if d != "none")
    fig, axes = plt.subplots(1, 3, figsize=(20, 5.5))
    for ax, (m, title, cmap) in zip(axes, [("asr", "ASR after", "rocket_r"), ("acc", "ACC after", "mako"),
                                           ("der", "DER", "viridis")]):
        data = grid[m].reindex([d for d in order if d in grid[m].index])
        sns.heatmap(data, annot=True, fmt=".2f", vmin=0, vmax=1, cmap=cmap, ax=ax, cbar=False).set(title=title)
    fig.tight_layout()
    return fig


def model_rows_grid(frame: pd.DataFrame):
    """:func:`defense_grid` of the profile's model rows (notebook 90): the other architectures'
    victims, one column per ``<model> / <attack>``."""
    return defense_grid(frame, name="90_model_rows")


def attack_bars(frame: pd.DataFrame):
    """ACC and ASR of every undefended victim (bars; a 44.1 kHz victim is labelled so, and each
    bar ``<model> / <attack>`` when the table holds several models), with the 90 % ASR bar dashed."""
    import matplotlib.pyplot as plt

    frame = _by_victim(frame)
    fig, ax = plt.subplots(figsize=(11, 3.2))
    lab = frame.attack + frame.sample_rate.map(lambda sr: "" if sr == 16000 else f" ({sr / 1000:.1f} kHz)")
    x = range(len(frame))
    ax.bar([i - 0.2 for i in x], frame.acc, 0.4, label="ACC")
    ax.bar([i + 0.2 for i in x], frame.asr, 0.4, label="ASR")
    ax.set_xticks(list(x), lab, rotation=30, ha="right")
    ax.axhline(0.9, ls="--", c="k", lw=1)
    ax.set(ylim=(0, 1.05), title="undefended victims")
    ax.legend(loc="lower left")
    return fig


def asr_before_after(frame: pd.DataFrame):
    """ASR before → after per attack (bars), one panel per defense and, when the table holds
    several models, one row of panels per model: every defense notebook's figure
    (:func:`bdlib.plots.asr_before_after` publishes it). One run per (attack, defense[, model])."""
    import seaborn as sns

    several = _several_models(frame)
    victim = ["attack", "defense"] + (["model"] if several else [])
    _one_row_per_cell(frame, victim, "ASR before/after")
    long = frame.melt(id_vars=victim, value_vars=["asr_before", "asr_after"], var_name="when", value_name="ASR")
    rows = {"row": "model", "row_order": _in_order(frame.model)} if several else {}
    g = sns.catplot(data=long, x="attack", y="ASR", hue="when", col="defense", kind="bar", height=3.5,
                    aspect=max(1.2, 0.3 * long.attack.nunique()), **rows)
    g.set(ylim=(0, 1))
    g.tick_params(axis="x", rotation=30)
    return g.figure


def snr_control(frame: pd.DataFrame):
    """ASR of the clean model and of the victim on the same triggered test clips against the
    test-time SNR of the trigger (louder to the right), one panel per model (column ``model``,
    when the table has it); the gap between the two lines, shaded, is the part of the victim's
    ASR the backdoor accounts for (:func:`bdlib.controls.snr_control`)."""
    import matplotlib.pyplot as plt

    name = "15_flowmur_control"
    frame = frame.assign(model=frame["model"] if "model" in frame else "")
    _one_row_per_cell(frame, ["model", "model_kind", "snr_db"], name)
    models = _in_order(frame.model)
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 3.2), squeeze=False, sharey=True)
    for ax, model in zip(axes[0], models):
        wide = frame[frame.model == model].pivot(index="snr_db", columns="model_kind", values="asr")
        wide = wide.sort_index(ascending=False)
        for kind, colour in (("clean", "tab:blue"), ("victim", "tab:red")):
            if kind in wide:
                ax.plot(wide.index, wide[kind], "o-", c=colour, label=f"{kind} model")
        if {"clean", "victim"} <= set(wide.columns):
            ax.fill_between(wide.index, wide["clean"], wide["victim"], color="tab:red", alpha=0.15,
                            label="victim − clean (backdoor)")
        ax.invert_xaxis()  # the trigger grows louder to the right
        ax.set(ylim=(0, 1.02), xlabel="test-time trigger SNR (dB)", ylabel="ASR",
               title=f"clean-model control{f' ({model})' if model else ''}")
        ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    return fig


FIGURES.add("15_flowmur_control", Drawer(
    snr_control, ("model_kind", "snr_db", "asr"), optional=("model", "n"),
    about="notebook 15: FlowMur ASR of the clean model and the victim at each test-time SNR"))
FIGURES.add("31_observation_gradients", Drawer(
    observation_gradients, ("attack", "stage", "layer", "class", "grad_norm"), optional=("model",),
    about="notebook 31: clean-loss gradient norm per unit by class, layer, attack and stage"))
FIGURES.add("31_observation_ordering", Drawer(
    observation_ordering, ("labelling", "attack", "stage", "layer", "seed", "holds", "backdoor_gt_clean"),
    optional=("model",),
    about="notebook 31: whether backdoor > hybrid > clean (and backdoor > clean) holds, per victim seed and layer"))
FIGURES.add("31_observation_models", Drawer(
    observation_counts, ("labelling", "attack", "stage", "layer", "seed", "holds", "backdoor_gt_clean"),
    optional=("model",),
    about="notebook 31: the ordering on the profile's model rows (other architectures, one seed): layers per verdict"))
BUDGET_CURVE_COLUMNS = ("attack", "lr", "n_clean", "method", "step", "seed", "asr", "acc")
PLAIN_GRIDS = ("default", "smoke")


def published_name(base: str, grid: str) -> str:
    """The figure name notebooks 41 and 44 publish a grid's curves under: the plain grids (what
    ``bdlib run`` computes) under ``base``, every larger grid under ``<base>_<grid>``, so the
    committed full slices (``_full``) sit beside the default run's figure instead of replacing it."""
    return base if grid in PLAIN_GRIDS else f"{base}_{grid}"


def _budget_drawer(about: str) -> Drawer:
    return Drawer(budget_curves, BUDGET_CURVE_COLUMNS, optional=("asr_bar", "model"), about=about)


for _grid, _what in {"default": "the default grid: the run profile's BadNets victims, 80 clips, lr 1e-3 and 1e-2, to "
                                "300 steps", "full": "the slice behind the committed results",
                     "budget-cpu": "the budget-cpu grid", "budget": "the issue's budget grid"}.items():
    FIGURES.add(published_name("41_budget_curves", _grid), _budget_drawer(
        f"notebook 41: ASR/ACC along FT and GN-FT runs, mean ± sd over seeds ({_what})"))
FIGURES.add(published_name("44_budget_lr", "default"), _budget_drawer(
    "notebook 44: the same curves for Blended and JingleBack on the run profile's victims (80 clips, lr 1e-3 and "
    "1e-2, to 300 steps)"))
FIGURES.add(published_name("44_budget_lr", "full"), _budget_drawer(
    "notebook 44, grid='full': Blended and JingleBack over the learning rate (960 clips, to 300 steps), at 320 "
    "clips (lr 1e-2, to 300 steps) and to 1 200 steps (80 clips)"))
FIGURES.add("45_budget_long", _budget_drawer(
    "notebook 45, grid='long': FT at GN-FT's optimiser and GN-FT at the authors' 960 clips and 1 200 steps, lr 1e-2"))
FIGURES.add("45_budget_long_smoke", _budget_drawer("notebook 45 on the smoke profile: the machinery on a tiny grid"))
FIGURES.add("90_defense_grid", Drawer(
    defense_grid, ("defense", "attack", "asr_before", "acc_before", "asr_after", "acc_after", "der"), optional=("model",),
    about="notebook 90: ASR, ACC and DER after every defense against every attack"))
FIGURES.add("90_model_rows", Drawer(
    model_rows_grid,
    ("defense", "attack", "model", "asr_before", "acc_before", "asr_after", "acc_after", "der"),
    about="notebook 90: the same grid for the profile's model rows (other architectures, fewer attacks)"))
FIGURES.add("90_attacks", Drawer(
    attack_bars, ("attack", "sample_rate", "acc", "asr"), optional=("model",),
    about="notebook 90: ACC and ASR of every undefended victim"))
#: the defense notebooks' ASR bars (bdlib.plots.asr_before_after), one name each
DEFENSE_ASR_FIGURES = ("20_ft_asr", "21_gnft_asr", "22_fp_asr", "23_ftsam_asr", "24_clp_asr", "25_nad_asr",
                       "26_tsbd_asr", "27_anp_asr", "28_ibau_asr")
for _name in DEFENSE_ASR_FIGURES:
    FIGURES.add(_name, Drawer(asr_before_after, ("attack", "defense", "asr_before", "asr_after"),
                              optional=("model",), about=f"notebook {_name[:2]}: ASR before and after the defense, per attack"))
del _name

__all__ = ["DEFENSE_ASR_FIGURES", "Drawer", "FIGURES", "FORMATS", "FigureDataError", "RedrawReport", "draw", "publish",
           "read_table", "redraw"]


# --- notebook 42: GN-FT's ablations (bdlib.ablation) ---------------------------------------------
#: the ablations' titles (bdlib.ablation.TITLES; not imported: that would pull torch into every redraw)
GNFT_ABLATIONS = {"alpha": "α (r fixed)", "r": "r (α fixed)", "mode": "exact vs approx",
                  "norm": "per-tensor vs global norm", "defense": "pruning stage"}


def gnft_alpha_r(frame: pd.DataFrame):
    """ASR (red, solid) and ACC (blue, dashed) after GN-FT against α (r fixed) and against r
    (α fixed), mean ± sd over seeds (error bars), one row of panels per attack (``<model> /
    <attack>`` when the table holds several models); tick labels give λ = α·r; the victims' mean
    ASR and ACC dotted (columns ``asr_before``/``acc_before``, when present). One row per
    (ablation, attack, α, r, seed): anything else is refused, never averaged."""
    import matplotlib.pyplot as plt

    name = "42_gnft_alpha_r"
    frame = _by_victim(frame)
    frame = frame[frame["ablation"].isin(["alpha", "r"])]
    _one_row_per_cell(frame, ["ablation", "attack", "alpha", "r", "seed"], name)
    factors = [f for f in ("alpha", "r") if f in set(frame["ablation"])]
    attacks = _in_order(frame["attack"])
    fig, axes = plt.subplots(len(attacks), len(factors), figsize=(4.4 * len(factors), 2.9 * len(attacks)),
                             squeeze=False, sharey=True)
    for i, attack in enumerate(attacks):
        for j, f in enumerate(factors):
            ax = axes[i][j]
            d = frame[(frame["attack"] == attack) & (frame["ablation"] == f)]
            fixed = "r" if f == "alpha" else "alpha"
            if d[fixed].nunique() > 1:
                raise FigureDataError(f"figure {name!r}: {fixed} varies within the {f} sweep of {attack}")
            s = d.groupby(f)[["asr_after", "acc_after"]].agg(["mean", "std"]).sort_index()
            x = list(range(len(s)))  # evenly spaced: the values are few and not on one scale
            for m, style, c, label in (("asr_after", "o-", "tab:red", "ASR after"),
                                       ("acc_after", "s--", "tab:blue", "ACC after")):
                ax.errorbar(x, s[(m, "mean")], yerr=s[(m, "std")].fillna(0), fmt=style, c=c, capsize=3,
                            label=label if i == j == 0 else None)
            for m, c in (("asr_before", "tab:red"), ("acc_before", "tab:blue")):
                if m in d:
                    ax.axhline(d[m].mean(), ls=":", c=c, lw=1,
                               label=f"victim {m[:3].upper()}" if i == j == 0 else None)
            other = float(d[fixed].iloc[0]) if len(d) else float("nan")
            ax.set_xticks(x, [f"{v:g}\nλ={v * other:.3g}" for v in s.index])
            ax.set_xlim(-0.5, len(x) - 0.5)
            symbol = {"alpha": "α", "r": "r"}
            ax.set(ylim=(0, 1.05), xlabel=symbol[f] if i == len(attacks) - 1 else None,
                   title=f"{attack}: {symbol[f]} ({symbol[fixed]} = {other:g})")
    fig.legend(loc="lower center", ncol=4, bbox_to_anchor=(0.5, -0.03))
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def gnft_variants(frame: pd.DataFrame):
    """Exact vs approx, per-tensor vs global norm, and GN-FT with vs without the pruning stage
    (one row of panels each, those present): ASR after, ACC after and the defense's wall time,
    bars the mean over seeds with sd error bars and each seed a dot, per attack (``<model> /
    <attack>`` when the table holds several models). Within a row, the first value (the centre,
    when column ``centre`` says which) is the left bar. One row per (ablation, attack, value,
    seed): anything else is refused."""
    import matplotlib.pyplot as plt

    name = "42_gnft_variants"
    frame = _by_victim(frame)
    frame = frame[frame["ablation"].isin(["mode", "norm", "defense"])].astype({"value": str})
    _one_row_per_cell(frame, ["ablation", "attack", "value", "seed"], name)
    ablations = _in_order(frame["ablation"], ("mode", "norm", "defense"))
    metrics = (("asr_after", "ASR after"), ("acc_after", "ACC after"), ("time_s", "defense time (s)"))
    fig, axes = plt.subplots(len(ablations), len(metrics), figsize=(13, 2.9 * len(ablations)), squeeze=False)
    for i, ab in enumerate(ablations):
        d = frame[frame["ablation"] == ab]
        centre = list(pd.unique(d.loc[d["centre"].astype(str) == "True", "value"])) if "centre" in d else []
        values = _in_order(d["value"], tuple(centre))
        attacks = _in_order(d["attack"])
        width = 0.8 / len(values)
        for j, (m, label) in enumerate(metrics):
            ax = axes[i][j]
            for k, v in enumerate(values):
                offset = (k - (len(values) - 1) / 2) * width
                dv = d[d["value"] == v]
                s = dv.groupby("attack")[m].agg(["mean", "std"]).reindex(attacks)
                xs = [a + offset for a in range(len(attacks))]
                ax.bar(xs, s["mean"], width, yerr=s["std"].fillna(0), capsize=2, color=f"C{k}",
                       alpha=0.8, label=v if j == len(metrics) - 1 else None)
                pos = dv["attack"].map({a: n for n, a in enumerate(attacks)}) + offset
                ax.scatter(pos, dv[m], s=8, c="k", zorder=3)
            ax.set_xticks(range(len(attacks)), attacks, rotation=20, ha="right")
            if m != "time_s":
                ax.set_ylim(0, 1.05)
            ax.set_title(f"{GNFT_ABLATIONS.get(ab, ab)}: {label}", fontsize="medium")
        axes[i][-1].legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


FIGURES.add("42_gnft_alpha_r", Drawer(
    gnft_alpha_r, ("ablation", "attack", "alpha", "r", "seed", "asr_after", "acc_after"),
    optional=("model", "asr_before", "acc_before"),
    about="notebook 42: ASR/ACC after GN-FT against α and against r (one factor at a time), mean ± sd over seeds"))
FIGURES.add("42_gnft_variants", Drawer(
    gnft_variants, ("ablation", "attack", "value", "seed", "asr_after", "acc_after", "time_s"),
    optional=("model", "centre"),
    about="notebook 42: exact vs approx, per-tensor vs global norm, GN-FT vs GN-FT+pruning: ASR, ACC, time"))


# --- notebook 43: the poisoning-rate ablation (bdlib.poison_rate) ----------------------------
#: method order and colours of notebook 43 (bdlib.poison_rate's names; others get the next colours)
POISON_RATE_METHODS = {"no defense": "k", "FT (BackdoorBench)": "tab:blue", "FT at GN-FT's optimiser": "tab:purple",
                       "GN-FT (approx)": "tab:red"}


def poison_rate_curves(frame: pd.DataFrame):
    """ASR (top row) and ACC (bottom row) against the poisoning rate (log axis, ticks at the
    rates, in %), one column per attack (``<model> / <attack>`` when the table holds several
    models), one line per method (the undefended victim dashed), mean ± sd over seeds as error
    bars. Rows that share (attack[, model], poison_rate, method, seed) are refused."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    name = "43_poison_rate"
    frame = _by_victim(frame)
    _one_row_per_cell(frame, ["attack", "poison_rate", "method", "seed"], name)
    s = frame.groupby(["attack", "poison_rate", "method"])[["asr_after", "acc_after"]].agg(["mean", "std"])
    s.columns = [f"{m}_{'sd' if stat == 'std' else stat}" for m, stat in s.columns]
    s = s.reset_index()
    attacks = _in_order(frame.attack)
    rates = sorted(s.poison_rate.unique())
    colours = dict(POISON_RATE_METHODS)
    extra = [m for m in _in_order(s.method) if m not in colours]
    colours.update({m: f"C{3 + i}" for i, m in enumerate(extra)})
    shown = [m for m in colours if m in set(s.method)]
    fig, axes = plt.subplots(2, len(attacks), figsize=(3.8 * len(attacks), 5.2), squeeze=False, sharex=True,
                             sharey="row")
    for j, attack in enumerate(attacks):
        for i, (metric, label) in enumerate((("asr_after", "ASR"), ("acc_after", "ACC"))):
            ax = axes[i][j]
            for method in shown:
                d = s[(s.attack == attack) & (s.method == method)].sort_values("poison_rate")
                ax.errorbar(d.poison_rate, d[f"{metric}_mean"], yerr=d[f"{metric}_sd"].fillna(0), capsize=2,
                            marker="o", ms=3.5, lw=1.2, c=colours[method], ls="--" if method == "no defense" else "-",
                            label=method if i == j == 0 else None)
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(FixedLocator(rates))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([f"{r * 100:g}" for r in rates])
            ax.set(ylim=(0, 1.02), ylabel=f"{label} after" if j == 0 else None,
                   xlabel="poisoning rate (%)" if i == 1 else None, title=attack if i == 0 else None)
    fig.legend(loc="lower center", ncol=len(shown), bbox_to_anchor=(0.5, -0.02), fontsize="small")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


FIGURES.add("43_poison_rate", Drawer(
    poison_rate_curves, ("attack", "poison_rate", "method", "seed", "asr_after", "acc_after"), optional=("model",),
    about="notebook 43: ASR/ACC of the victim and after FT, FT at GN-FT's optimiser and GN-FT against the "
          "poisoning rate, mean ± sd over seeds"))


# --- notebooks 13, 15, 22, 28, 30: figures that were drawn from notebook objects ----------------
def daba_certainty(frame: pd.DataFrame):
    """DABA's certainty score (softmax entropy of the surrogate, nats) of every clip of the
    trigger pool (bars), the clip the attack chose in red (:mod:`bdlib.attacks.daba`)."""
    import matplotlib.pyplot as plt

    _one_row_per_cell(frame, ["pool_clip"], "13_daba_certainty")
    frame = frame.sort_values("pool_clip")
    fig, ax = plt.subplots(figsize=(10, 2.8))
    ax.bar(frame.pool_clip, frame.entropy, color=["tab:red" if c else "tab:gray" for c in frame.chosen.astype(bool)])
    ax.set(xlabel="pool clip", ylabel="softmax entropy (nats)", title="DABA certainty scores")
    return fig


def flowmur_loss(frame: pd.DataFrame):
    """FlowMur's trigger optimisation on the surrogate: the cross-entropy to the target per
    Adam step (faint) and its 20-step running mean (:mod:`bdlib.attacks.flowmur`)."""
    import matplotlib.pyplot as plt

    _one_row_per_cell(frame, ["step"], "15_flowmur_loss")
    frame = frame.sort_values("step")
    fig, ax = plt.subplots(figsize=(8, 2.8))
    ax.plot(frame.step, frame.loss, lw=0.7, alpha=0.5)
    ax.plot(frame.step, frame.loss.rolling(20, min_periods=1).mean(), lw=1.5)
    ax.set(xlabel="Adam step", ylabel="CE to the target", title="FlowMur trigger optimisation (surrogate)")
    return fig


def fp_pruning_curve(frame: pd.DataFrame):
    """Fine-Pruning's clean accuracy on the defender's subset against the number of units
    pruned, one line per victim (``<model> / <attack>`` when several models), labelled with
    how many units the accuracy bound let it prune (:mod:`bdlib.defenses.fp`)."""
    import matplotlib.pyplot as plt

    frame = _by_victim(frame)
    _one_row_per_cell(frame, ["attack", "k"], "22_fp_pruning_curve")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for attack in _in_order(frame.attack):
        sub = frame[frame.attack == attack].sort_values("k")
        ax.plot(sub.k, sub.acc, marker=".",
                label=f"{attack}: pruned {int(sub.n_pruned.iloc[0])}/{int(sub.n_units.iloc[0])}")
    ax.set(xlabel=f"units pruned ({frame.layer.iloc[0]})", ylabel="clean accuracy (defender's subset)")
    ax.legend()
    return fig


def ibau_perturbation(frame: pd.DataFrame):
    """The norm of I-BAU's universal perturbation after each round, one line per victim
    (``<model> / <attack>`` when several models), the axis from 0 so a perturbation pinned at
    its radius reads as such (:mod:`bdlib.defenses.ibau`)."""
    import matplotlib.pyplot as plt

    frame = _by_victim(frame)
    _one_row_per_cell(frame, ["attack", "round"], "28_ibau_perturbation")
    fig, ax = plt.subplots(figsize=(7, 3))
    for attack in _in_order(frame.attack):
        sub = frame[frame.attack == attack].sort_values("round")
        ax.plot(sub["round"], sub.norm, marker="o", label=attack)
    ax.set(xlabel="round", ylabel="‖δ‖₂ (standardised units)", title="I-BAU universal perturbation per round")
    ax.set_ylim(0, 1.15 * frame.norm.max())
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8, ncol=3, loc="lower right")
    return fig


def defenses_across_attacks(frame: pd.DataFrame):
    """Heatmaps of ASR after and ACC after, one row per victim (``<model> / <attack>`` when
    several models) in the table's order, one column per defense, the undefended victim
    (``none``) first; one run per (attack[, model], defense)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    name = "30_defenses_across_attacks"
    frame = _by_victim(frame)
    _one_row_per_cell(frame, ["attack", "defense"], name)
    order, defenses = _in_order(frame.attack), _in_order(frame.defense)
    before = _same_per(frame, "attack", ["asr_before", "acc_before"], name)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, (after, first, title, cmap) in zip(axes, [("asr_after", "asr_before", "ASR after", "rocket_r"),
                                                      ("acc_after", "acc_before", "ACC after", "mako")]):
        data = frame.pivot(index="attack", columns="defense", values=after).reindex(index=order, columns=defenses)
        data.insert(0, "none", before[first].reindex(order))
        sns.heatmap(data, annot=True, fmt=".2f", vmin=0, vmax=1, cmap=cmap, ax=ax).set(title=title)
    fig.tight_layout()
    return fig


FIGURES.add("13_daba_certainty", Drawer(
    daba_certainty, ("pool_clip", "entropy", "chosen"), about="notebook 13: DABA's certainty score per pool clip"))
FIGURES.add("15_flowmur_loss", Drawer(
    flowmur_loss, ("step", "loss"), about="notebook 15: FlowMur's trigger loss per optimisation step"))
FIGURES.add("22_fp_pruning_curve", Drawer(
    fp_pruning_curve, ("attack", "k", "acc", "n_pruned", "n_units", "layer"), optional=("model",),
    about="notebook 22: Fine-Pruning's clean accuracy against units pruned, per victim"))
FIGURES.add("28_ibau_perturbation", Drawer(
    ibau_perturbation, ("attack", "round", "norm"), optional=("model",),
    about="notebook 28: I-BAU's perturbation norm per round, per victim"))
FIGURES.add("30_defenses_across_attacks", Drawer(
    defenses_across_attacks, ("attack", "defense", "asr_before", "acc_before", "asr_after", "acc_after"),
    optional=("model",), about="notebook 30: ASR and ACC after FT and GN-FT against every attack"))
