"""Data -> attack -> defense -> table on corpora in the real layouts (a `<label>/*.wav` folder,
spoken digits, a fake Speech Commands tree), through the public API, on Dask, and through a
notebook executed by papermill with ``-p dataset ...``."""
import numpy as np
import pytest
import soundfile as sf

from bdlib.pipeline import load_experiment
from bdlib.profiles import get_profile
from bdlib.study import Study, pivot

SR = 16_000
LABELS = ("alpha", "beta", "gamma")
FREQS = {"alpha": 300.0, "beta": 800.0, "gamma": 1900.0}


def _word(label: str, speaker: int, take: int, seconds: float, sr: int = SR) -> np.ndarray:
    """A class-specific two-tone "word" with a speaker-specific pitch, inside silence."""
    rng = np.random.default_rng([speaker, take, len(label)])
    t = np.arange(int(seconds * sr)) / sr
    f0 = FREQS[label] * (1 + 0.04 * speaker)
    env = np.sin(np.pi * t / t[-1]) ** 2
    return (0.4 * env * (np.sin(2 * np.pi * f0 * t) + 0.5 * np.sin(2 * np.pi * 2.1 * f0 * t))
            + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def make_folder_corpus(root, speakers=6, takes=3):
    """`<label>/<speaker>_<take>.wav`, 0.5-0.9 s clips, plus the messy ones a real folder has:
    a too-short, a too-long, a stereo and an 8 kHz clip."""
    for label in LABELS:
        (root / label).mkdir(parents=True)
        for s in range(speakers):
            for k in range(takes):
                sf.write(root / label / f"spk{s}_{k}.wav", _word(label, s, k, 0.5 + 0.1 * ((s + k) % 5)), SR)
    sf.write(root / "alpha" / "spk0_90.wav", _word("alpha", 0, 90, 0.12), SR)  # too short
    sf.write(root / "beta" / "spk1_91.wav", _word("beta", 1, 91, 2.5), SR)  # too long
    w = _word("gamma", 2, 92, 0.8)
    sf.write(root / "gamma" / "spk2_92.wav", np.stack([w, 0.5 * w], 1), SR)  # stereo
    sf.write(root / "alpha" / "spk3_93.wav", _word("alpha", 3, 93, 0.8, 8000), 8000)  # 8 kHz
    return root


def make_spoken_digits_corpus(root, speakers=6, takes=3):
    """Free Spoken Digit layout: `<digit>_<speaker>_<index>.wav` at 8 kHz, short clips."""
    root.mkdir(parents=True)
    for d, label in enumerate(LABELS):
        for s in range(speakers):
            for k in range(takes):
                sf.write(root / f"{d}_spk{s}_{k}.wav", _word(label, s, k, 0.3 + 0.05 * k, 8000), 8000)
    return root


def make_speech_commands_tree(root, speakers=6, takes=2):
    """The official layout: `<word>/<hash>_nohash_<n>.wav`, the two split lists, background noise."""
    words = {"yes": "alpha", "no": "beta", "up": "gamma"}
    val, test = [], []
    for word, like in words.items():
        (root / word).mkdir(parents=True)
        for s in range(speakers):
            for k in range(takes):
                name = f"{word}/{s:08x}_nohash_{k}.wav"
                sf.write(root / name, _word(like, s, k, 1.0), SR)
                (test if s == 0 else val if s == 1 else []).append(name)
    (root / "validation_list.txt").write_text("\n".join(val) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    (root / "_background_noise_").mkdir()
    sf.write(root / "_background_noise_" / "white_noise.wav", 0.1 * np.ones(SR * 2, np.float32), SR)
    return root


LAYOUTS = {  # dataset, options, target, classes
    "folder": ("folder", {}, "beta", LABELS),
    "spoken_digits": ("spoken_digits", {}, "1", tuple(str(d) for d in range(10))),
    "speech_commands": ("speech_commands", {"words": ("yes", "no", "up")}, "no", ("yes", "no", "up")),
}


TINY = dict(train_epochs=3, train_batch_size=16, defense_epochs=2, defense_batch_size=32, clean_fraction=0.3,
            target_label="beta")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_folder_corpus(tmp_path_factory.mktemp("corpus") / "words")


def test_folder_corpus_runs_attack_defense_and_table(corpus, tmp_path):
    prof = get_profile("smoke", **TINY)
    exp = load_experiment(prof, dataset="folder", dataset_root=corpus, root=tmp_path / "data", progress=False)
    assert exp.class_names == LABELS and exp.target_index == 1
    train = exp.split("train")
    report = train.report
    assert train.waves.shape[1] == SR  # every clip conformed to 1 s at 16 kHz
    assert not (tmp_path / "data" / "embedded").exists()  # nothing synthesised for a user's corpus
    study = Study(prof, dataset="folder", dataset_root=str(corpus), attacks={"badnets": {}},
                  defenses={"ft": [{"lr": 1e-3}, {"lr": 1e-2}]}, data_root=tmp_path / "data")
    table = study.run(serial=True, progress=False)
    assert len(table) == 3 and set(table.defense) == {"none", "ft"}
    assert table.dataset.str.startswith("folder-").all() and (table.target == 1).all()
    ft = table[table.defense == "ft"]
    assert sorted(ft["defense.lr"]) == [1e-3, 1e-2] and ft.label.nunique() == 2
    assert ft.acc_after.notna().all() and ft.asr_before.notna().all()
    grid = pivot(ft, "label", "attack", "asr_after")  # the two settings stay two rows
    assert grid.shape == (2, 1)
    # a second run computes nothing: the table is read back from the store
    again = Study(prof, dataset="folder", dataset_root=str(corpus), attacks={"badnets": {}},
                  defenses={"ft": [{"lr": 1e-3}, {"lr": 1e-2}]}, data_root=tmp_path / "data").table()
    assert again[["acc_after", "asr_after"]].equals(table[["acc_after", "asr_after"]])
    # every clip is loaded once, and each messy one is reported for what was done to it, whichever split it fell in
    reports = [report] + [exp.split(s).report for s in ("val", "test")]
    assert sum(r.loaded for r in reports) == sum(r.total for r in reports) == len(LABELS) * 6 * 3 + 4
    assert [p for r in reports for p in r.cropped] == ["beta/spk1_91.wav"]
    assert [p for r in reports for p in r.downmixed] == ["gamma/spk2_92.wav"]
    assert [p for r in reports for p in r.resampled.get(8000, [])] == ["alpha/spk3_93.wav"]
    assert "alpha/spk0_90.wav" in [p for r in reports for p in r.mostly_padding]
    assert sum(len(r.padded) for r in reports) == sum(r.loaded for r in reports) - 1  # all shorter than 1 s but one


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_runs_data_attack_defense_table(layout, tmp_path):
    dataset, options, target, classes = LAYOUTS[layout]
    make = {"folder": make_folder_corpus, "spoken_digits": make_spoken_digits_corpus,
            "speech_commands": make_speech_commands_tree}[layout]
    root = make(tmp_path / "corpus")
    prof = get_profile("smoke", **{**TINY, "target_label": target})
    exp = load_experiment(prof, dataset=dataset, dataset_root=root, dataset_options=options,
                          root=tmp_path / "data", progress=False)
    assert exp.class_names == classes and exp.class_names[exp.target_index] == target
    if layout == "speech_commands":  # the official lists decide the split; background noise is no class
        m = exp.manifest
        assert set(m[m.split == "test"].speaker) == {"00000000"} and set(m[m.split == "val"].speaker) == {"00000001"}
    study = Study(prof, dataset=dataset, dataset_root=str(root), dataset_options=options, attacks={"badnets": {}},
                  defenses={"ft": {"lr": 1e-2}}, data_root=tmp_path / "data")
    table = study.run(serial=True, progress=False)
    assert list(table.defense) == ["none", "ft"] and table.dataset.str.startswith(dataset).all()
    assert table[["acc_after", "asr_after"]].notna().all().all()


def test_victim_asr_is_measured_against_its_own_target(corpus, tmp_path):
    """`backdoored_model(target=...)` poisons towards that class *and* measures ASR on it
    (it used to be measured against the profile's target)."""
    prof = get_profile("smoke", **TINY)
    exp = load_experiment(prof, dataset="folder", dataset_root=corpus, root=tmp_path / "data", progress=False)
    _, rec = exp.backdoored_model("badnets", target="gamma")
    assert rec["config"]["target"] == 2
    trig, labels = exp.triggered_test("badnets", target="gamma")
    assert (labels != 2).all() and (labels == 1).any()  # beta clips are now triggered test clips
    from bdlib.metrics import attack_success_rate

    net, _ = exp.backdoored_model("badnets", target="gamma")
    assert rec["metrics"]["asr"] == pytest.approx(attack_success_rate(net, trig, labels, 2))
    with pytest.raises(ValueError, match="'delta' is not a class of dataset 'folder'; classes: alpha, beta, gamma"):
        exp.backdoored_model("badnets", target="delta")


def test_study_runs_on_a_dask_local_cluster(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("BDLIB_WORKERS", "2")
    prof = get_profile("smoke", **TINY)
    study = Study(prof, dataset="folder", dataset_root=str(corpus), attacks={"badnets": {}},
                  defenses={"clp": {}, "ft": {"lr": 1e-2}}, seeds=[0, 1], data_root=tmp_path / "data")
    table = study.run(progress=False)
    assert len(table) == 2 * 3 and sorted(table.seed.unique()) == [0, 1]
    assert table.torch_threads.dropna().eq(1).all()  # 2 workers x 1 torch thread on 2 cores
    store = tmp_path / "data" / "store"
    assert not list(store.glob("*/.tmp-*"))
    assert len(list((store / "models").glob("[!.]*"))) == 2 * 2  # clean + badnets per seed, each once


def test_notebook_runs_on_a_folder_corpus_via_papermill(corpus, tmp_path, monkeypatch):
    import nbformat

    from bdlib import runner

    monkeypatch.setenv("BDLIB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("BDLIB_PROFILE", "smoke")
    rc = runner.run_all("smoke", only="20_defense_ft", dataset="folder", dataset_root=str(corpus),
                        parameters={"attacks": ["badnets"], "epochs": 2})
    assert rc == 0
    out = tmp_path / "data" / "executed" / "smoke-folder" / "20_defense_ft.ipynb"
    text = "".join(o.get("text", "") for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"
                   for o in c.outputs)
    assert "one run per victim: True" in text and "clean subset size == round(fraction × N): True" in text
    assert (tmp_path / "data" / "figures" / "smoke-folder" / "20_ft_asr.png").exists()
