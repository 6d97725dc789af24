"""bdlib.victims.victim_table (issue 13): notebook 10's and benchmarks/model_victims.py's rows,
on a tiny smoke experiment: one clean row and one row per attack per model, each read from the
victim the pipeline stored, with the recipe's learning rate as a column."""
import pytest

from bdlib.pipeline import load_experiment
from bdlib.victims import victim_table

DATA = {"speakers_train": 3, "speakers_val": 2, "speakers_test": 2, "seed": 11}
BUDGET = {"train_epochs": 1, "train_batch_size": 16}


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    root = tmp_path_factory.mktemp("victims")
    return load_experiment("smoke", progress=False, dataset_options=DATA, dataset_root=root / "embedded",
                           root=root, device="cpu", train_lr=3e-4, **BUDGET)


def test_rows_are_the_stored_victims(exp):
    table, records = victim_table(exp, ["smallcnn", "smalllstm"], ["badnets"])
    assert list(zip(table.model, table.attack)) == [("smallcnn", "none (clean)"), ("smallcnn", "badnets"),
                                                    ("smalllstm", "none (clean)"), ("smalllstm", "badnets")]
    assert set(records) == {("smallcnn", "badnets"), ("smalllstm", "badnets")}
    assert (table.train_lr == 3e-4).all()
    for model in ("smallcnn", "smalllstm"):
        rows = table[table.model == model].set_index("attack")
        _, clean = exp.backdoored_model(None, model)
        _, victim = exp.backdoored_model("badnets", model)
        assert rows.loc["none (clean)", "acc"] == clean["metrics"]["acc"]
        assert rows.loc["badnets", "asr"] == victim["metrics"]["asr"]
        assert rows.loc["badnets", "acc_drop"] == pytest.approx(clean["metrics"]["acc"] - victim["metrics"]["acc"])
        assert records[(model, "badnets")]["path"] == victim["path"]
    # parameter counts differ by architecture and are the models' own
    assert table.groupby("model").parameters.nunique().eq(1).all()
    assert table[table.model == "smallcnn"].parameters.iloc[0] != table[table.model == "smalllstm"].parameters.iloc[0]
