import os
import subprocess
import sys
import tempfile

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from bdlib.audio import AudioFileError, read_wav, write_wav
from bdlib.data.audioset import load_split
from bdlib.data.espeak import VoiceSpec, synthesize
from bdlib.data.folders import fsdd_manifest, speech_commands_manifest
from bdlib.data.synth import CLIP_SAMPLES, KEYWORDS, SAMPLE_RATE, plan_dataset, verify_dataset


def test_plan_is_a_function_of_the_seed():
    a, b = plan_dataset(5, 2, 2, seed=3), plan_dataset(5, 2, 2, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert not plan_dataset(5, 2, 2, seed=4).equals(a)
    assert len(a) == 9 * len(KEYWORDS)


def test_splits_are_speaker_disjoint():
    plan = plan_dataset(40, 10, 10, seed=0)
    per_speaker = plan.groupby("speaker")["split"].nunique()
    assert (per_speaker == 1).all()
    voices = plan.drop_duplicates("speaker").assign(voice=lambda d: d.accent + "+" + d.variant)
    assert voices["voice"].is_unique  # no voice heard in two splits either
    assert set(plan["split"]) == {"train", "val", "test"}


def test_synthesised_manifest_matches_plan_and_verifies(smoke_dataset):
    root, manifest = smoke_dataset
    plan = plan_dataset(3, 2, 2, seed=11)
    pd.testing.assert_frame_equal(manifest.drop(columns="sha256"), plan)
    assert verify_dataset(root) == []
    wav, sr = sf.read(root / manifest.path[0])
    assert sr == SAMPLE_RATE and len(wav) == CLIP_SAMPLES
    assert np.abs(wav).max() <= 1.0 and np.abs(wav).max() > 0.05  # speech present, no clipping


def test_verify_names_an_altered_file(smoke_dataset, tmp_path):
    root, manifest = smoke_dataset
    copy = tmp_path / "copy"
    rows = manifest.iloc[:3]
    for p in rows.path:
        (copy / p).parent.mkdir(parents=True, exist_ok=True)
        (copy / p).write_bytes((root / p).read_bytes())
    write_wav(copy / rows.path.iloc[1], np.zeros(CLIP_SAMPLES, np.float32), SAMPLE_RATE)
    problems = verify_dataset(copy, rows)
    assert len(problems) == 1 and rows.path.iloc[1] in problems[0]


def _aligned_corr(a, b):
    n = min(len(a), len(b))
    best = max(np.corrcoef(a[s : s + n - 20], b[: n - 20])[0, 1] for s in range(0, 20))
    best_rev = max(np.corrcoef(a[: n - 20], b[s : s + n - 20])[0, 1] for s in range(0, 20))
    return max(best, best_rev)


def test_resynthesis_of_voiced_clip_is_near_identical():
    """eSpeak is not bit-reproducible, but voiced speech re-synthesises almost exactly."""
    script = ("import numpy as np,sys; from bdlib.data.espeak import VoiceSpec, synthesize;"
              "w,_=synthesize('stop', VoiceSpec('en-us','m3',150,40)); np.save(sys.argv[1], w)")
    with tempfile.TemporaryDirectory() as d:
        f = os.path.join(d, "w.npy")
        subprocess.run([sys.executable, "-c", script, f], check=True)
        other = np.load(f)
    here, _ = synthesize("stop", VoiceSpec("en-us", "m3", 150, 40))
    assert abs(len(here) - len(other)) < 0.02 * len(here)
    assert _aligned_corr(here, other) > 0.99


def test_corrupt_empty_and_wrong_rate_files_are_named(tmp_path):
    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(b"RIFF\x00\x00not really a wav")
    with pytest.raises(AudioFileError, match="corrupt.wav"):
        read_wav(bad)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioFileError, match="empty.wav.*empty"):
        read_wav(empty)
    slow = tmp_path / "eight_k.wav"
    sf.write(slow, np.zeros(8000, np.float32), 8000)
    with pytest.raises(AudioFileError, match="eight_k.wav.*8000 Hz, expected 16000"):
        read_wav(slow, 16000)
    assert read_wav(slow, 16000, resample=True).shape == (16000,)


def test_load_split_reports_the_corrupt_file(tmp_path):
    sf.write(tmp_path / "a.wav", np.zeros(16000, np.float32), 16000)
    (tmp_path / "b.wav").write_bytes(b"")
    manifest = pd.DataFrame({"path": ["a.wav", "b.wav"], "label": ["yes", "no"], "speaker": ["s1", "s2"],
                             "split": ["train", "train"]})
    with pytest.raises(AudioFileError, match="b.wav"):
        load_split(manifest, tmp_path, "train", KEYWORDS, 16000)


def test_speech_commands_layout(tmp_path):
    for word in ("yes", "no"):
        (tmp_path / word).mkdir()
        for spk in ("aaa", "bbb", "ccc"):
            sf.write(tmp_path / word / f"{spk}_nohash_0.wav", np.zeros(16000, np.float32), 16000)
    (tmp_path / "validation_list.txt").write_text("yes/bbb_nohash_0.wav\nno/bbb_nohash_0.wav\n")
    (tmp_path / "testing_list.txt").write_text("yes/ccc_nohash_0.wav\nno/ccc_nohash_0.wav\n")
    m = speech_commands_manifest(tmp_path, words=("yes", "no"))
    assert dict(m.groupby("split")["speaker"].unique().map(tuple)) == {"test": ("ccc",), "train": ("aaa",), "val": ("bbb",)}
    s = load_split(m, tmp_path, "train", ("yes", "no"), 16000)
    assert s.waves.shape == (2, 16000) and list(s.labels) == [0, 1]
    with pytest.raises(FileNotFoundError, match="no sub-folder 'up'"):
        speech_commands_manifest(tmp_path, words=("yes", "up"))


def test_fsdd_layout_is_speaker_disjoint_and_resampled(tmp_path):
    for spk in ("jackson", "nicolas", "theo", "yweweler"):
        for d in range(3):
            sf.write(tmp_path / f"{d}_{spk}_0.wav", np.zeros(4000, np.float32), 8000)
    m = fsdd_manifest(tmp_path, seed=1)
    assert (m.groupby("speaker")["split"].nunique() == 1).all()
    test = load_split(m, tmp_path, "test", tuple(str(i) for i in range(10)), 16000)
    assert test.waves.shape == (3, 16000)
    (tmp_path / "oops.wav").write_bytes(b"")
    with pytest.raises(ValueError, match="oops.wav"):
        fsdd_manifest(tmp_path)
