"""Figures drawn from their CSV (bdlib/figures.py): every drawer, publish, redraw, the CLI, and
the committed figures/ redrawn as on a fresh clone."""
import shutil

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from bdlib import figures  # noqa: E402
from bdlib.__main__ import main  # noqa: E402
from bdlib.figures import FIGURES, FigureDataError  # noqa: E402
from bdlib.paths import REPO_ROOT  # noqa: E402
from bdlib.registry import UnknownNameError  # noqa: E402

COMMITTED = REPO_ROOT / "figures"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _observation() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [{"attack": "badnets", "model": "smallcnn", "stage": s, "layer": "fc1", "class": c,
             "grad_norm": float(rng.uniform(1e-4, 1e-1))}
            for s in ("victim", "after FT", "after GN-FT") for c in ("backdoor", "hybrid", "clean", "dormant")
            for _ in range(3)]
    rows[0]["grad_norm"] = 0.0  # a dead unit: left off the log axis
    return pd.DataFrame(rows)


def _observation_ordering() -> pd.DataFrame:  # every verdict once, and a cell left out (seed 1 of conv3)
    cells = [("victim", "fc1", 0, True, True), ("victim", "fc1", 1, pd.NA, True), ("victim", "conv3", 0, False, False),
             ("after FT", "fc1", 0, pd.NA, pd.NA), ("after FT", "fc1", 1, False, True)]
    return pd.DataFrame([{"labelling": lab, "model": "smallcnn", "attack": "badnets", "stage": st, "layer": la,
                          "seed": sd, "holds": h, "backdoor_gt_clean": w}
                         for lab in ("class", "class_lc") for st, la, sd, h, w in cells])


def _budget() -> pd.DataFrame:
    rows = [{"attack": "badnets", "model": "smallcnn", "lr": lr, "n_clean": n, "method": m, "step": st, "seed": sd,
             "asr": 1.0 - 0.01 * st * (sd + 1), "acc": 0.5 + 0.01 * st, "asr_bar": 0.2}
            for lr in (1e-3, 1e-2) for n in (8, 16) for m in ("ft", "gnft") for st in (0, 2, 5) for sd in (0, 1)]
    return pd.DataFrame(rows)


def _defense_grid() -> pd.DataFrame:
    before = {"badnets": (1.0, 0.9), "blended": (0.98, 0.92)}
    return pd.DataFrame([{"defense": d, "attack": a, "model": "smallcnn", "asr_before": before[a][0],
                          "acc_before": before[a][1],
                          "asr_after": 0.5, "acc_after": 0.8, "der": 0.7}
                         for d in ("ft", "gnft-approx") for a in before])


def _model_rows() -> pd.DataFrame:  # two architectures on the same attacks: one column per model / attack
    return pd.concat([_defense_grid().assign(model=m) for m in ("lstmatt", "resnet")], ignore_index=True)


def _attacks() -> pd.DataFrame:
    return pd.DataFrame({"attack": ["badnets", "ultrasonic"], "model": "smallcnn", "sample_rate": [16000, 44100],
                         "acc": [0.9, 0.88], "asr": [1.0, 0.97]})


def _asr_bars() -> pd.DataFrame:
    return pd.DataFrame({"attack": ["badnets", "blended"], "model": "smallcnn", "defense": ["ft", "ft"],
                         "asr_before": [1.0, 0.99], "asr_after": [0.9, 0.3]})


def _flowmur_control() -> pd.DataFrame:
    return pd.DataFrame([{"model": "smallcnn", "model_kind": k, "snr_db": snr, "asr": asr, "n": 540}
                         for k, curve in (("clean", (0.0, 0.01, 0.05, 0.15)), ("victim", (0.24, 0.64, 0.86, 0.89)))
                         for snr, asr in zip((30, 20, 10, 0), curve)])


#: a small table with exactly the documented columns, per drawer
EXAMPLES = {figures.observation_gradients: _observation, figures.observation_ordering: _observation_ordering,
            figures.budget_curves: _budget,
            figures.defense_grid: _defense_grid, figures.model_rows_grid: _model_rows, figures.attack_bars: _attacks,
            figures.asr_before_after: _asr_bars,
            figures.snr_control: _flowmur_control}
DRAWERS = {FIGURES.get(n).draw: n for n in FIGURES.names()}  # one registered name per drawer


# notebook 42 (bdlib.ablation): per-seed rows of GN-FT's one-factor-at-a-time ablations
def _gnft_alpha_r() -> pd.DataFrame:
    rows = [{"ablation": ab, "attack": a, "model": "smallcnn", "alpha": al, "r": r, "seed": sd,
             "asr_after": 0.9 - 0.1 * al + 0.01 * sd, "acc_after": 0.8 + r, "asr_before": 1.0, "acc_before": 0.9}
            for a in ("badnets", "blended") for sd in (0, 1)
            for ab, al, r in (("alpha", 0.3, 0.05), ("alpha", 0.7, 0.05), ("r", 0.7, 0.01), ("r", 0.7, 0.05))]
    return pd.DataFrame(rows)


def _gnft_variants() -> pd.DataFrame:
    rows = [{"ablation": ab, "attack": a, "model": "smallcnn", "value": v, "centre": k == 0, "seed": sd,
             "asr_after": 0.9 - 0.1 * k, "acc_after": 0.8 + 0.01 * sd, "time_s": 1.0 + 3 * k}
            for a in ("badnets", "blended") for sd in (0, 1)
            for ab, vals in (("mode", ("approx", "exact")), ("norm", ("per_tensor", "global")),
                             ("defense", ("gnft", "gnft_prune"))) for k, v in enumerate(vals)]
    return pd.DataFrame(rows)


EXAMPLES.update({figures.gnft_alpha_r: _gnft_alpha_r, figures.gnft_variants: _gnft_variants,
                 figures.observation_counts: _observation_ordering})


def test_every_drawer_has_an_example_and_the_unit_classes_match_observation():
    from bdlib.observation import CLASSES

    assert set(DRAWERS) == set(EXAMPLES), "add a synthetic table to EXAMPLES for each new drawer"
    assert figures.UNIT_CLASSES == CLASSES
    assert set(figures.DEFENSE_ASR_FIGURES) <= set(FIGURES.names())


@pytest.mark.parametrize("name", sorted(DRAWERS.values()))
def test_every_drawer_draws_from_a_synthetic_csv_with_its_documented_columns(name, tmp_path):
    drawer = FIGURES.get(name)
    frame = EXAMPLES[drawer.draw]()
    assert set(frame.columns) == set(drawer.columns) | set(drawer.optional)
    frame.to_csv(tmp_path / f"{name}.csv", index=False)
    fig = figures.draw(name, figures.read_table(tmp_path / f"{name}.csv"))
    assert isinstance(fig, Figure) and fig.axes
    with pytest.raises(FigureDataError, match=drawer.columns[0]):
        figures.draw(name, frame.drop(columns=drawer.columns[0]))


def test_a_drawer_sees_only_its_columns_and_refuses_to_average_silently():
    seen = []
    drawer = figures.Drawer(lambda f: seen.append(list(f.columns)), ("a",), optional=("b",))
    drawer.draw(drawer.select(pd.DataFrame({"a": [1], "b": [2], "c": [3]}), "x"))
    assert seen == [["a", "b"]]
    two_models = pd.concat([_budget(), _budget()], ignore_index=True)  # same seed twice in every curve cell
    with pytest.raises(FigureDataError, match="share a cell"):
        figures.draw("41_budget_curves", two_models)
    with pytest.raises(FigureDataError, match="share a cell"):
        figures.draw("90_defense_grid", pd.concat([_defense_grid()] * 2))


#: drawers that take the model column (issue 13): a table of several models is drawn per model
PER_MODEL = {"31_observation_gradients": _observation, "41_budget_curves": _budget, "90_defense_grid": _defense_grid,
             "90_attacks": _attacks, "20_ft_asr": _asr_bars}


# notebook 43 (bdlib.poison_rate): per-seed rows of the victim and each method at every poisoning rate
def _poison_rate() -> pd.DataFrame:
    rows = [{"attack": a, "model": "smallcnn", "poison_rate": rate, "method": m, "seed": sd,
             "asr_after": max(0.0, 1.0 - k * 0.2 - 0.01 * sd) * (1 if rate > 0.005 else 0.5),
             "acc_after": 0.9 - 0.02 * k}
            for a in ("badnets", "pbsm") for rate in (0.005, 0.01, 0.1) for sd in (0, 1)
            for k, m in enumerate(("no defense", "FT (BackdoorBench)", "FT at GN-FT's optimiser", "GN-FT (approx)"))]
    return pd.DataFrame(rows)


EXAMPLES.update({figures.poison_rate_curves: _poison_rate})
PER_MODEL["43_poison_rate"] = _poison_rate


# notebooks 13, 15, 22, 28, 30: figures moved from notebook objects to CSVs
def _daba_certainty() -> pd.DataFrame:
    return pd.DataFrame({"pool_clip": range(5), "entropy": [0.9, 0.2, 0.5, 0.7, 1.1],
                         "chosen": [False, True, False, False, False]})


def _flowmur_loss() -> pd.DataFrame:
    return pd.DataFrame({"step": range(30), "loss": np.linspace(3.0, 0.2, 30)})


def _fp_curve() -> pd.DataFrame:
    return pd.DataFrame([{"attack": a, "model": "smallcnn", "k": k, "acc": 0.9 - 0.01 * k * (i + 1), "n_pruned": 3 + i,
                          "n_units": 10, "layer": "classifier"} for i, a in enumerate(("badnets", "blended"))
                         for k in range(0, 10, 2)])


def _ibau_norms() -> pd.DataFrame:
    return pd.DataFrame([{"attack": a, "model": "smallcnn", "round": r, "norm": 1.0 + 0.1 * r * (i + 1)}
                         for i, a in enumerate(("badnets", "jingleback")) for r in range(5)])


def _across_attacks() -> pd.DataFrame:
    return _defense_grid().drop(columns="der")


EXAMPLES.update({figures.daba_certainty: _daba_certainty, figures.flowmur_loss: _flowmur_loss,
                 figures.fp_pruning_curve: _fp_curve, figures.ibau_perturbation: _ibau_norms,
                 figures.defenses_across_attacks: _across_attacks})
PER_MODEL.update({"22_fp_pruning_curve": _fp_curve, "28_ibau_perturbation": _ibau_norms,
                  "30_defenses_across_attacks": _across_attacks})


def test_defenses_across_attacks_puts_the_undefended_victim_first_and_refuses_a_sweep():
    fig = figures.draw("30_defenses_across_attacks", _across_attacks())
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["none", "ft", "gnft-approx"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["badnets", "blended"]
    with pytest.raises(FigureDataError, match="share a cell"):
        figures.draw("30_defenses_across_attacks", pd.concat([_across_attacks()] * 2))


def test_poison_rate_curves_refuse_a_seed_twice_and_tick_the_rates():
    with pytest.raises(FigureDataError, match="share a cell"):
        figures.draw("43_poison_rate", pd.concat([_poison_rate()] * 2))
    fig = figures.draw("43_poison_rate", _poison_rate())
    assert [t.get_text() for t in fig.axes[-1].get_xticklabels()] == ["0.5", "1", "10"]
    assert {ax.get_title() for ax in fig.axes} >= {"badnets", "pbsm"}


def _two_models(example) -> pd.DataFrame:
    one = example()
    return pd.concat([one, one.assign(model="resnet")], ignore_index=True)


def _texts(fig) -> set[str]:
    legends = [t for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    return {t.get_text() for ax in fig.axes for t in [ax.title, *ax.get_xticklabels(), *ax.get_yticklabels(),
                                                       *ax.texts]} | {t.get_text() for t in fig.texts + legends}


@pytest.mark.parametrize("name", sorted(PER_MODEL))
def test_a_table_of_several_models_is_drawn_per_model_and_one_model_as_before(name, tmp_path):
    """Issue 13: the model is a column of the table, never assumed; two models' rows get their own
    panels or labels (named after the model) instead of being refused or averaged, and a table of one
    model draws exactly as the same table without the column (the committed figures)."""
    import io

    frame = _two_models(PER_MODEL[name])
    assert FIGURES.get(name).columns and "model" in FIGURES.get(name).optional
    fig = figures.draw(name, frame)
    shown = " ".join(_texts(fig))
    assert "resnet" in shown and "smallcnn" in shown, shown
    one = PER_MODEL[name]()
    pngs = []
    for table in (one, one.drop(columns="model")):
        buf = io.BytesIO()
        figures.draw(name, table).savefig(buf, format="png", dpi=50)
        pngs.append(buf.getvalue())
    assert pngs[0] == pngs[1]


def test_asr_bars_refuse_two_runs_in_one_cell():
    with pytest.raises(FigureDataError, match="share a cell"):
        figures.draw("20_ft_asr", pd.concat([_asr_bars()] * 2))


def test_publish_writes_the_csv_and_draws_from_it_read_back(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BDLIB_DATA", str(tmp_path))
    calls = []
    real_draw = figures.draw
    monkeypatch.setattr(figures, "draw", lambda name, frame: calls.append(frame) or real_draw(name, frame))
    frame = _attacks().assign(attack_knobs='{"k": 1}')  # extra columns are kept in the CSV
    fig = figures.publish("90_attacks", frame, "smoke")
    folder = tmp_path / "figures" / "smoke"
    assert isinstance(fig, Figure)
    assert sorted(p.name for p in folder.iterdir()) == ["90_attacks.csv", "90_attacks.pdf", "90_attacks.png"]
    written = pd.read_csv(folder / "90_attacks.csv")
    pd.testing.assert_frame_equal(written, frame)
    assert len(calls) == 1 and calls[0].equals(written)  # drawn from the file, not from `frame`
    assert "90_attacks.png" in capsys.readouterr().out
    figures.publish("90_attacks", frame, "default", dataset="folder")  # another data source: its own folder
    assert (tmp_path / "figures" / "default-folder" / "90_attacks.png").exists()
    with pytest.raises(UnknownNameError, match="90_attacks"):
        figures.publish("no_such_figure", frame, "smoke")
    with pytest.raises(FigureDataError, match="asr"):
        figures.publish("27_anp_asr", frame, "smoke")  # checked before anything is written
    assert not (folder / "27_anp_asr.csv").exists()


def test_plots_asr_before_after_publishes_its_csv(tmp_path, monkeypatch):
    from bdlib import plots

    monkeypatch.setenv("BDLIB_DATA", str(tmp_path))
    table = _asr_bars().assign(model="smallcnn", acc_before=0.9, acc_after=0.8, defense_knobs="{}", time_s=1.0)
    plots.asr_before_after(table, "20_ft_asr", "smoke")
    written = pd.read_csv(tmp_path / "figures" / "smoke" / "20_ft_asr.csv")
    assert list(written.columns) == ["attack", "model", "defense", "acc_before", "asr_before", "acc_after", "asr_after"]
    assert (tmp_path / "figures" / "smoke" / "20_ft_asr.png").exists()


def _figure_folder(tmp_path):
    _attacks().to_csv(tmp_path / "90_attacks.csv", index=False)
    (tmp_path / "90_attacks.png").write_bytes(b"stale")
    (tmp_path / "01_data_examples.png").write_bytes(b"audio, no table")
    pd.DataFrame({"x": [1]}).to_csv(tmp_path / "99_unregistered.csv", index=False)
    (tmp_path / "99_unregistered.png").write_bytes(b"no drawer")
    pd.DataFrame({"x": [1]}).to_csv(tmp_path / "90_results.csv", index=False)
    return tmp_path


def test_redraw_rewrites_png_and_pdf_from_csv_and_states_what_it_cannot(tmp_path, capsys):
    folder = _figure_folder(tmp_path)
    report = figures.redraw(folder)
    assert list(report.redrawn) == ["90_attacks"]
    assert report.no_csv == ["01_data_examples"]
    assert report.no_drawer == ["99_unregistered"]
    assert report.tables_only == ["90_results"]
    png, pdf = (folder / "90_attacks.png").read_bytes(), (folder / "90_attacks.pdf").read_bytes()
    assert png.startswith(b"\x89PNG") and pdf.startswith(b"%PDF")
    out = capsys.readouterr().out
    assert "01_data_examples" in out and "99_unregistered" in out and "no CSV" in out
    figures.redraw(folder, verbose=False)  # the same CSV gives the same bytes (no timestamp in the PDF)
    assert (folder / "90_attacks.png").read_bytes() == png and (folder / "90_attacks.pdf").read_bytes() == pdf
    _attacks().drop(columns="asr").to_csv(folder / "90_attacks.csv", index=False)
    with pytest.raises(FigureDataError, match=r"90_attacks\.csv.*asr"):
        figures.redraw(folder, verbose=False)


def test_cli_redraws_a_folder(tmp_path, capsys):
    folder = _figure_folder(tmp_path)
    assert main(["figures", "--folder", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "redrew 1 figure(s)" in out and "01_data_examples" in out and "figures redrawn in" in out
    assert (folder / "90_attacks.pdf").exists()
    assert main(["figures", "--folder", str(folder), "--strict"]) == 1  # PNGs left without a CSV
    assert main(["figures", "--folder", str(tmp_path / "missing")]) == 2
    assert "no figures folder" in capsys.readouterr().err


def test_committed_figures_redraw_from_their_csvs(tmp_path):
    """The fresh-clone case: every committed figure with a drawer is redrawn from its committed
    CSV alone and looks like the committed PNG. To stay fast, one of the nine defense notebooks'
    ASR bars (one drawer) is redrawn; the other eight CSVs are checked against its columns."""
    drawable = sorted(p.stem for p in COMMITTED.glob("*.csv") if p.stem in FIGURES)
    bars = [n for n in drawable if n in figures.DEFENSE_ASR_FIGURES]
    redrawn = [n for n in drawable if n not in bars[1:]]
    assert "31_observation_gradients" in redrawn and "90_defense_grid" in redrawn
    for name in redrawn:
        shutil.copy(COMMITTED / f"{name}.csv", tmp_path)
    report = figures.redraw(tmp_path, verbose=False, formats=("png",))
    assert sorted(report.redrawn) == redrawn
    for name in bars[1:]:
        frame = FIGURES.get(name).select(figures.read_table(COMMITTED / f"{name}.csv"), name)
        assert len(frame) and frame.notna().all().all(), name
    missing = [p.stem for p in COMMITTED.glob("*.png") if p.stem in FIGURES and p.stem not in drawable]
    assert not missing, f"committed PNGs of registered figures without their CSV: {missing}"
    for name in redrawn:
        if not (COMMITTED / f"{name}.png").exists():
            continue
        old, new = mpimg.imread(COMMITTED / f"{name}.png"), mpimg.imread(tmp_path / f"{name}.png")
        assert old.shape == new.shape, f"{name}: redrawn at another size; run `make figures`"
        assert np.mean(np.abs(old - new).max(axis=-1) > 0.05) < 0.005, f"{name} differs from its CSV; `make figures`"


def test_budget_curves_mark_a_setting_run_only_for_another_attack():
    """Notebook 41 runs n = 80 for BadNets only: the other attack's n = 80 panel says "not run"
    instead of drawing empty axes that read as a flat line."""
    both = _budget()
    other = both[both.n_clean == 16].assign(attack="blended")
    fig = figures.draw("41_budget_curves", pd.concat([both, other], ignore_index=True))
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert sum("not run" in t for t in texts) == 2  # blended at n = 8 for both learning rates
    assert all("blended" in t and "n=8" in t for t in texts if "not run" in t)


def test_ordering_verdicts_read_the_check_back_from_its_csv(tmp_path):
    """The check's True / False / missing flags survive the CSV (written as True, False and
    empty) and give each group one verdict, the full ordering first."""
    frame = _observation_ordering()
    frame.to_csv(tmp_path / "o.csv", index=False)
    back = figures.read_table(tmp_path / "o.csv")
    expected = ["backdoor > hybrid > clean", "backdoor > clean only", "backdoor ≤ clean", "untestable",
                "backdoor > clean only"] * 2
    assert list(figures.ordering_verdicts(frame)) == expected
    assert list(figures.ordering_verdicts(back)) == expected
    with pytest.raises(FigureDataError, match="share a cell"):
        figures.draw("31_observation_ordering", pd.concat([frame] * 2))


def test_observation_counts_count_layers_per_verdict_and_refuse_a_cell_twice():
    """Notebook 31's model rows: each (victim, labelling, stage) bar holds one layer per verdict;
    two models are two victims, not summed."""
    frame = _observation_ordering()
    fig = figures.draw("31_observation_models", frame)
    from matplotlib.colors import to_hex

    first = fig.axes[0]  # labelling "class", stage victim: fc1 seeds 0 and 1, conv3 seed 0
    colour = {to_hex(h.get_facecolor()): h.get_label() for h in fig.legends[0].get_patches()}
    bars = {colour[to_hex(p.get_facecolor())]: p.get_width() for p in first.patches if p.get_width() > 0}
    assert bars == {"backdoor > hybrid > clean": 1.0, "backdoor > clean only": 1.0, "backdoor ≤ clean": 1.0}
    after_ft = {colour[to_hex(p.get_facecolor())]: p.get_width() for p in fig.axes[1].patches if p.get_width() > 0}
    assert after_ft == {"untestable": 1.0, "backdoor > clean only": 1.0}
    two = pd.concat([frame, frame.assign(model="resnet")], ignore_index=True)
    assert {"smallcnn / badnets", "resnet / badnets"} <= set(_texts(figures.draw("31_observation_models", two)))
    with pytest.raises(FigureDataError, match="share a cell"):
        figures.draw("31_observation_models", pd.concat([frame] * 2))
