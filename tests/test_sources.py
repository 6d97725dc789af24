"""Data sources (bdlib.data.sources) and the clip policy of the loader (bdlib.data.clips)."""
import hashlib
import io
import tarfile

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from bdlib.audio import AudioFileError
from bdlib.data.audioset import load_split
from bdlib.data.clips import ClipPolicy, fit_clip
from bdlib.data.sources import EMBEDDED_SIZES, SOURCES, make_source, speaker_folds
from bdlib.data.speech_commands import ChecksumError, download_speech_commands, fetch_resumable
from bdlib.data.synth import KEYWORDS
from bdlib.registry import UnknownNameError

SR = 16000


def tone(seconds, sr=SR, amp=0.5, freq=440.0):
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write(path, data, sr=SR, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr, subtype=kw.pop("subtype", "FLOAT") if path.suffix.lower() == ".wav" else None, **kw)
    return path


def write_messy(name):
    """One file of every messy kind; ``name(label_index, k, ext)`` gives its path."""
    long = np.full(int(2.5 * SR), 0.01, np.float32)
    long[int(1.6 * SR) : int(1.9 * SR)] = tone(0.3, amp=0.8)
    files = {
        "short": write(name(0, 0, "wav"), tone(0.3)),
        "long": write(name(1, 1, "wav"), long),
        "stereo": write(name(0, 2, "wav"), np.stack([tone(1.0), 0.5 * tone(1.0)], 1)),
        "inverted": write(name(1, 3, "wav"), np.stack([tone(1.0), -0.8 * tone(1.0)], 1)),
        "8k": write(name(0, 4, "wav"), tone(1.0, sr=8000), sr=8000),
        "upper": write(name(1, 5, "WAV"), tone(1.0)),
        "flac": write(name(0, 6, "flac"), tone(1.0)),
    }
    files["corrupt"] = name(1, 7, "wav")
    files["corrupt"].write_bytes(b"RIFF\x00\x00 definitely not audio")
    return files


def folder_layout(root):
    """<root>/<label>/<speaker>_<n>.<ext>: three clean speakers plus speaker 'mess'."""
    labels = ("no", "yes")
    for spk in ("ann", "bob", "cy"):
        for lab in labels:
            write(root / lab / f"{spk}_0.wav", tone(1.0))
    (root / "yes" / "notes.txt").write_text("not audio")
    return write_messy(lambda li, k, ext: root / labels[li] / f"mess_{k}.{ext}")


def digits_layout(root):
    """FSDD: <digit>_<speaker>_<index>.<ext>, three clean speakers plus speaker 'mess'."""
    for spk in ("ann", "bob", "cy"):
        for d in range(2):
            write(root / f"{d}_{spk}_0.wav", tone(1.0, sr=8000), sr=8000)
    (root / "README.md").write_text("not audio")
    write(root / "oops.wav", tone(0.5))
    return write_messy(lambda li, k, ext: root / f"{li}_mess_{k}.{ext}")


@pytest.mark.parametrize("layout", ["folder", "spoken_digits"])
def test_messy_clips_follow_the_policy_and_are_reported(tmp_path, layout):
    files = (folder_layout if layout == "folder" else digits_layout)(tmp_path)
    rel = {k: f.relative_to(tmp_path).as_posix() for k, f in files.items()}
    src = make_source(layout, tmp_path, test_speakers=["mess"], val_speakers=["ann"])
    m = src.manifest()
    assert set(m.loc[m.split == "test", "path"]) == set(rel.values())  # .WAV and .flac included
    skipped = dict(src.skipped)
    assert ("yes/notes.txt" if layout == "folder" else "README.md") in skipped
    if layout == "spoken_digits":
        assert "does not follow" in skipped["oops.wav"]

    with pytest.raises(AudioFileError, match=rel["corrupt"]):
        src.load("test", strict=True)
    test = src.load("test")
    rep = test.report
    assert rep.skipped[0][0] == rel["corrupt"] and "cannot read" in rep.skipped[0][1]
    assert rep.loaded == len(test) == len(rel) - 1 and rel["corrupt"] not in set(test.paths)
    lab = dict(zip(m.path, m.label))
    assert [test.class_names[i] for i in test.labels] == [lab[p] for p in test.paths]  # rows stay aligned
    clip = dict(zip(test.paths, test.waves))

    # too short: centred, padded with -60 dBFS noise (not digital silence), flagged as mostly padding
    short, n = clip[rel["short"]], len(tone(0.3))
    onset = (SR - n) // 2
    np.testing.assert_array_equal(short[onset : onset + n], tone(0.3))
    pad = np.concatenate([short[:onset], short[onset + n :]])
    assert 0.8e-3 < np.sqrt(np.mean(pad**2)) < 1.2e-3
    assert rep.padded == [rel["short"]] and rep.mostly_padding == [rel["short"]]
    # too long: the loudest second is kept (a head crop would miss the burst)
    assert rep.cropped == [rel["long"]] and np.abs(clip[rel["long"]]).max() > 0.75
    assert np.sum(np.abs(clip[rel["long"]]) > 0.1) > 0.25 * SR
    # stereo averaged; phase-inverted stereo would cancel, so its loudest channel is used
    np.testing.assert_allclose(clip[rel["stereo"]], 0.75 * tone(1.0), atol=1e-6)
    np.testing.assert_allclose(clip[rel["inverted"]], tone(1.0), atol=1e-6)
    assert set(rep.downmixed) == {rel["stereo"], rel["inverted"]} and rep.cancelled_stereo == [(rel["inverted"], 0)]
    # 8 kHz resampled; the folder mixes rates, which is warned about
    assert rep.resampled == {8000: [rel["8k"]]} and clip[rel["8k"]].shape == (SR,)
    assert np.corrcoef(clip[rel["8k"]][100:-100], tone(1.0)[100:-100])[0, 1] > 0.99
    warnings = "\n".join(rep.warnings())
    assert "mixed sample rates" in warnings and "8000 Hz" in warnings
    assert "more than 50% padding" in warnings and rel["corrupt"] in warnings
    assert "loaded 7/8" in rep.summary() and "1 from 8000 Hz" in rep.summary()


def test_padding_is_seeded_per_file_and_legacy_policy_is_the_old_loader():
    w = tone(0.2)
    a, pa, _ = fit_clip(w, SR, ClipPolicy(pad="random", seed=3), "x/a.wav")
    b, _, _ = fit_clip(w, SR, ClipPolicy(pad="random", seed=3), "x/a.wav")
    c, _, _ = fit_clip(w, SR, ClipPolicy(pad="random", seed=3), "x/b.wav")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and pa == SR - len(w)
    legacy, _, _ = fit_clip(w, SR, ClipPolicy.legacy(), "x/a.wav")
    np.testing.assert_array_equal(legacy[: len(w)], w)
    assert not legacy[len(w) :].any()
    with pytest.raises(ValueError, match="unknown pad mode 'middle'; valid: center, random, start"):
        ClipPolicy(pad="middle")


def test_embedded_source_keeps_its_id_and_loads_identically(smoke_dataset, tmp_path):
    root, manifest = smoke_dataset
    link = tmp_path / "embedded-3-2-2-t1-seed11"
    link.symlink_to(root)
    src = make_source("embedded", link, speakers_train=3, speakers_val=2, speakers_test=2, seed=11)
    assert src.folder_name == "embedded-3-2-2-t1-seed11" and src.id.startswith("embedded-3-2-2-t1-seed11-")
    assert src.root == link
    assert src.class_names == KEYWORDS
    pd.testing.assert_frame_equal(src.manifest(), manifest)
    for rate in (16000, 44100):
        old = load_split(manifest, root, "test", KEYWORDS, rate)
        new = src.load("test", sample_rate=rate)
        np.testing.assert_array_equal(new.waves, old.waves)
        np.testing.assert_array_equal(new.labels, old.labels)
        rep = new.report
        assert not (rep.padded or rep.cropped or rep.downmixed or rep.skipped) and rep.loaded == len(old)


def test_embedded_options_sizes_and_default_root(tmp_path):
    assert make_source("embedded", tmp_path, size="smoke").folder_name == "embedded-32-10-16-t1-seed0"
    assert make_source("embedded", tmp_path).folder_name == "embedded-160-30-60-t1-seed0"
    src = make_source("embedded", tmp_path, size="paper", speakers_test=9, seed=4)
    assert src.folder_name == "embedded-1200-150-9-t2-seed4" and src.root == tmp_path / src.folder_name
    assert EMBEDDED_SIZES["paper"] == (1200, 150, 250, 2)
    with pytest.raises(ValueError, match="unknown embedded size 'huge'; valid: smoke, default, budget, paper"):
        make_source("embedded", tmp_path, size="huge")
    with pytest.raises(UnknownNameError, match="'speakers'.*valid options: size, speakers_train"):
        make_source("embedded", tmp_path, speakers=3)
    with pytest.raises(UnknownNameError, match="unknown dataset 'scd'; valid datasets: embedded, folder, "
                                               "speech_commands, spoken_digits"):
        make_source("scd", tmp_path)
    assert SOURCES.names() == sorted(cls.name for cls in map(SOURCES.get, SOURCES))


def test_missing_roots_say_how_to_get_the_data(tmp_path):
    with pytest.raises(ValueError, match="needs the folder holding the data"):
        make_source("folder")
    with pytest.raises(FileNotFoundError, match="nowhere does not exist.*download=True.*speech_commands_v0.02.tar.gz"):
        make_source("speech_commands", tmp_path / "nowhere", version=2)
    with pytest.raises(FileNotFoundError, match="nowhere does not exist.*git clone"):
        make_source("spoken_digits", tmp_path / "nowhere")


def speech_commands_tree(root, words=("yes", "no", "up")):
    for word in words:
        for spk in ("aaa", "bbb", "ccc", "ddd"):
            write(root / word / f"{spk}_nohash_0.wav", tone(1.0))
    write(root / "_background_noise_" / "white_noise.wav", tone(3.0))
    (root / "validation_list.txt").write_text("".join(f"{w}/bbb_nohash_0.wav\n" for w in words))
    (root / "testing_list.txt").write_text("".join(f"{w}/ccc_nohash_0.wav\n{w}/ddd_nohash_0.wav\n" for w in words))
    (root / "LICENSE").write_text("cc-by")


def test_speech_commands_official_splits(tmp_path):
    speech_commands_tree(tmp_path)
    src = make_source("speech_commands", tmp_path, words=["yes", "up"])
    m = src.manifest()
    assert src.class_names == ("yes", "up") and set(m.label) == {"yes", "up"}
    assert not m.path.str.contains("_background_noise_").any()
    assert {s: sorted(g.speaker.unique()) for s, g in m.groupby("split")} == {
        "test": ["ccc", "ddd"], "train": ["aaa"], "val": ["bbb"]}
    assert src.id.startswith("speech_commands-v1-") and src.describe()["clips"] == {"train": 2, "val": 2, "test": 4}
    with pytest.raises(FileNotFoundError, match="no sub-folder 'left'; available word folders: no, up, yes"):
        make_source("speech_commands", tmp_path, words=["yes", "left"]).manifest()
    with pytest.raises(ValueError, match="not the string 'yes'"):
        make_source("speech_commands", tmp_path, words="yes")
    (tmp_path / "backward").mkdir()
    with pytest.raises(ValueError, match="v2-only.*backward.*version=2"):
        make_source("speech_commands", tmp_path).manifest()


def _tar_gz(src_dir, members=None):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        if members is None:
            for p in sorted(src_dir.iterdir()):
                tar.add(p, arcname=p.name)
        else:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_download_resumes_verifies_and_extracts(tmp_path):
    tree = tmp_path / "tree"
    speech_commands_tree(tree)
    blob = _tar_gz(tree)
    served = tmp_path / "serve" / "speech_commands_v0.02.tar.gz"
    served.parent.mkdir()
    served.write_bytes(blob)
    url, digest = served.as_uri(), hashlib.sha256(blob).hexdigest()

    dest = tmp_path / "scd"
    dest.mkdir()
    part = dest / "speech_commands_v0.02.tar.gz.part"
    part.write_bytes(blob[:1000])  # an interrupted download
    assert fetch_resumable(url, part) == len(blob) - 1000  # continued, not restarted
    assert part.read_bytes() == blob
    part.write_bytes(blob[:500])

    src = make_source("speech_commands", dest, version=2, download=True, url=url, checksum=digest, words=["yes", "no"])
    m = src.manifest()
    assert len(m) == 8 and (dest / "testing_list.txt").exists() and not part.exists()
    assert not (dest / "speech_commands_v0.02.tar.gz").exists()  # archive removed after extraction
    assert src.id.startswith("speech_commands-v2-")

    with pytest.raises(ChecksumError, match="speech_commands_v0.02.tar.gz.part.*expected 0+"):
        download_speech_commands(tmp_path / "bad", 2, url=url, checksum="0" * 64, progress=False)
    assert not (tmp_path / "bad" / "speech_commands_v0.02.tar.gz.part").exists()

    evil = tmp_path / "serve" / "evil.tar.gz"
    evil.write_bytes(_tar_gz(None, [("yes/ok.txt", b"ok"), ("../escaped.txt", b"pwned")]))
    with pytest.raises(ValueError, match="evil.tar.gz: member '../escaped.txt' would be written outside"):
        download_speech_commands(tmp_path / "ev", 2, url=evil.as_uri(),
                                 checksum=hashlib.sha256(evil.read_bytes()).hexdigest(), progress=False)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "ev" / "yes").exists()


def digits_speakers(root, speakers=("ann", "bob", "cy", "dee", "eve")):
    for spk in speakers:
        for d in range(2):
            write(root / f"{d}_{spk}_0.wav", tone(0.1, sr=8000), sr=8000)


def test_speaker_arguments_are_validated(tmp_path):
    digits_speakers(tmp_path)
    with pytest.raises(ValueError, match=r"unknown test speaker\(s\) \['zed'\]; known speakers: ann, bob, cy, dee"):
        make_source("spoken_digits", tmp_path, test_speakers=["zed"]).manifest()
    with pytest.raises(ValueError, match="test_speakers must be a list of names, not the string 'ann'"):
        make_source("spoken_digits", tmp_path, test_speakers="ann")
    with pytest.raises(ValueError, match=r"\['bob'\] are in both test_speakers and val_speakers"):
        make_source("folder", tmp_path, test_speakers=["ann", "bob"], val_speakers=["bob"])
    with pytest.raises(ValueError, match="do not also pass test_speakers"):
        make_source("spoken_digits", tmp_path, fold=0, test_speakers=["ann"])
    with pytest.raises(ValueError, match="no speaker left for training"):
        make_source("spoken_digits", tmp_path, test_speakers=["ann", "bob", "cy"],
                    val_speakers=["dee", "eve"]).manifest()
    m = make_source("spoken_digits", tmp_path, test_speakers=["ann"], val_speakers=["eve"]).manifest()
    assert dict(m.groupby("speaker").split.first()) == {"ann": "test", "bob": "train", "cy": "train", "dee": "train",
                                                        "eve": "val"}


@pytest.mark.parametrize("k", [2, 3, 5])
def test_speaker_folds_are_disjoint_and_cover_everyone(tmp_path, k):
    speakers = ["ann", "bob", "cy", "dee", "eve"]
    digits_speakers(tmp_path, speakers)
    folds = speaker_folds(speakers, k, seed=1)
    assert len(folds) == k and sorted(s for f in folds for s in f) == speakers
    n = make_source("spoken_digits", tmp_path, fold=0, folds=k, seed=1).n_folds
    assert n == k
    seen_test = []
    for f in range(n):
        m = make_source("spoken_digits", tmp_path, fold=f, folds=k, seed=1).manifest()
        per = m.groupby("speaker").split.nunique()
        assert (per == 1).all()  # speaker-disjoint
        test = sorted(m.loc[m.split == "test", "speaker"].unique())
        val = m.loc[m.split == "val", "speaker"].unique()
        assert test == list(folds[f]) and len(val) == 1 and val[0] not in test and (m.split == "train").any()
        again = make_source("spoken_digits", tmp_path, fold=f, folds=k, seed=1).manifest()
        pd.testing.assert_frame_equal(m, again)  # deterministic
        seen_test += test
    assert sorted(seen_test) == speakers
    assert make_source("spoken_digits", tmp_path).n_folds == len(speakers)  # default: leave-one-speaker-out
    with pytest.raises(ValueError, match="folds must be between 2 and 5"):
        speaker_folds(speakers, 6)
    with pytest.raises(ValueError, match="fold must be in 0..1 for 2 folds, got 2"):
        make_source("spoken_digits", tmp_path, fold=2, folds=2).manifest()


def test_ids_change_with_the_data_and_nothing_else(tmp_path):
    digits_speakers(tmp_path)
    first = make_source("spoken_digits", tmp_path).id
    assert make_source("spoken_digits", tmp_path).id == first  # stable
    assert first.startswith("spoken_digits-")
    assert make_source("spoken_digits", tmp_path, seed=5).id != first  # another split
    write(tmp_path / "1_ann_0.wav", tone(0.2, sr=8000), sr=8000)  # same name, new size
    resized = make_source("spoken_digits", tmp_path).id
    assert resized != first
    write(tmp_path / "2_ann_0.wav", tone(0.1, sr=8000), sr=8000)
    assert make_source("spoken_digits", tmp_path).id not in (first, resized)

    folder = tmp_path / "f"
    for spk in ("a", "b", "c"):
        write(folder / "yes" / f"{spk}_0.wav", tone(0.1))
    (folder / "yes" / "c_1.wav").write_bytes(b"corrupt")  # the id reads no audio: a corrupt file is fine
    before = make_source("folder", folder).id
    write(folder / "no" / "a_0.wav", tone(0.1))
    assert make_source("folder", folder).id != before


def test_folder_speaker_pattern_and_user_manifest(tmp_path):
    for spk in ("s1", "s2", "s3", "s4"):
        write(tmp_path / "cat" / f"rec-{spk}-take1.wav", tone(0.1))
        write(tmp_path / "dog" / f"rec-{spk}-take2.Flac", tone(0.1))
    src = make_source("folder", tmp_path, speaker_pattern=r"rec-(?P<speaker>s\d)-", seed=2)
    m = src.manifest()
    assert src.class_names == ("cat", "dog") and sorted(m.speaker.unique()) == ["s1", "s2", "s3", "s4"]
    assert (m.groupby("speaker").split.nunique() == 1).all() and set(m.split) == {"train", "val", "test"}
    default = make_source("folder", tmp_path).manifest()  # no '_' in names: the stem is the speaker
    assert default.speaker.nunique() == 8

    rows = [("cat/rec-s1-take1.wav", "cat", "s1", "train"), ("dog/rec-s2-take2.Flac", "dog", "s2", "test"),
            ("cat/rec-s3-take1.wav", "cat", "s3", "val")]
    pd.DataFrame(rows, columns=["path", "label", "speaker", "split"]).to_csv(tmp_path / "manifest.csv", index=False)
    mm = make_source("folder", tmp_path).manifest()
    assert list(mm.path) == [r[0] for r in rows] and list(mm.split) == ["train", "test", "val"]
    with pytest.raises(ValueError, match="already assigns splits"):
        make_source("folder", tmp_path, test_speakers=["s1"]).manifest()

    bad = tmp_path / "bad.csv"
    pd.DataFrame([rows[0], ("../outside.wav", "cat", "s9", "train")],
                 columns=["path", "label", "speaker", "split"]).to_csv(bad, index=False)
    write(tmp_path.parent / "outside.wav", tone(0.1))
    with pytest.raises(ValueError, match=r"bad.csv row 2 \(line 3\): path '../outside.wav' escapes the dataset root"):
        make_source("folder", tmp_path, manifest="bad.csv").manifest()
