"""The seven waveform attacks of the GN-FT paper beyond BadNets: shared contract
(seeded, shape/dtype kept, within [-1, 1]) and each one's defining property."""
import numpy as np
import pytest
import torch

from bdlib.attacks import FitContext, make_attack, poison_training_set
from bdlib.audio import dbfs, rms
from bdlib.data.audioset import AudioSet
from bdlib.features import PAPER_44K, MFCCExtractor
from bdlib.models import build_model
from bdlib.registry import UnknownNameError

SR = 16000
TARGET = 2
FAST = {"flowmur": {"steps": 4, "batch_size": 8}, "vsvc": {"n_probe": 3, "f0_ratios": (0.7, 1.5), "warps": (1.15,)}}
WAVEFORM_ATTACKS = ["blended", "daba", "flowmur", "jingleback", "pbsm", "vsvc"]


def _speechlike(n=6, seed=0, sr=SR):
    """Voiced, speech-like clips: a buzzy harmonic source with a syllable envelope and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(sr) / sr
    f0 = rng.uniform(100, 250, (n, 1))
    src = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 12))
    env = np.clip(np.sin(np.pi * (t - rng.uniform(0.05, 0.3, (n, 1))) / 0.6), 0, None)
    return (0.15 * src * env + 0.002 * rng.standard_normal((n, sr))).astype(np.float32)


def _audioset(n, seed, speakers=4):
    waves = _speechlike(n, seed)
    return AudioSet(waves, np.arange(n) % 10, np.array([f"s{i % speakers}" for i in range(n)]),
                    tuple(map(str, range(10))), SR)


@pytest.fixture(scope="module")
def ctx():
    ext = MFCCExtractor()
    torch.manual_seed(0)
    surrogate = build_model("smallcnn", (101, 40), 10).eval()
    return FitContext(train=_audioset(60, 1), aux=_audioset(30, 2), extractor=ext, surrogate=surrogate,
                      rate=0.1, target=TARGET)


def _attack(name, ctx, seed=0, **knobs):
    atk = make_attack(name, seed=seed, **{**FAST.get(name, {}), **knobs})
    if atk.needs_fit:
        atk.fit(ctx)
    return atk


@pytest.mark.parametrize("name", WAVEFORM_ATTACKS)
def test_waveform_attack_contract(name, ctx):
    waves = _speechlike(4, seed=5)
    waves[0] = np.clip(waves[0] * 6, -1, 1)  # one clip near full scale
    atk = _attack(name, ctx, seed=3)
    out = atk.apply(waves, SR)
    assert out.shape == waves.shape and out.dtype == waves.dtype
    assert np.all(np.isfinite(out)) and np.abs(out).max() <= 1.0
    assert not np.allclose(out, waves)  # it does something to every clip
    assert np.all(np.abs(out - waves).max(axis=1) > 1e-4)
    again = _attack(name, ctx, seed=3).apply(waves, SR)  # same seed, same data: same trigger
    np.testing.assert_array_equal(out, again)
    trained = atk.poison(waves, SR)
    assert trained.shape == waves.shape and np.abs(trained).max() <= 1.0


@pytest.mark.parametrize("name", ["blended", "pbsm", "daba", "flowmur"])
def test_seed_changes_the_trigger(name, ctx):
    waves = _speechlike(3, seed=9)
    a, b = _attack(name, ctx, seed=1).apply(waves, SR), _attack(name, ctx, seed=2).apply(waves, SR)
    assert not np.array_equal(a, b)


def test_blended_mixes_the_whole_clip_with_ratio_alpha():
    waves = _speechlike(2)
    atk = make_attack("blended", alpha=0.2, kind="tones")
    assert make_attack("blended").config.alpha == 0.05
    trig = atk.trigger(SR, SR)
    np.testing.assert_allclose(atk.apply(waves, SR), np.clip(0.8 * waves + 0.2 * trig, -1, 1), atol=1e-6)
    assert np.count_nonzero(trig) > 0.99 * SR  # full length, not a burst
    with pytest.raises(ValueError, match="alpha"):
        make_attack("blended", alpha=1.5)
    with pytest.raises(ValueError, match="valid: noise, tones"):
        make_attack("blended", kind="chirp")


@pytest.mark.parametrize("continuous,position", [(False, "start"), (True, "start"), (True, "mid"), (True, "end")])
def test_ultrasonic_energy_is_above_20khz_and_sized_in_percent(continuous, position):
    sr = PAPER_44K.sample_rate
    atk = make_attack("ultrasonic", size=40, continuous=continuous, position=position)
    trig = atk.trigger(sr, sr)
    spec = np.abs(np.fft.rfft(trig)) ** 2
    freqs = np.fft.rfftfreq(sr, 1 / sr)
    assert spec[freqs > 20_000].sum() / spec.sum() > 0.95  # the spectrum check the issue asks for
    on = np.flatnonzero(trig != 0)
    assert abs(np.count_nonzero(atk.mask(sr, sr)) - 0.4 * sr) <= 5
    assert np.abs(trig).max() == pytest.approx(10 ** (-10 / 20), rel=0.01)  # -10 dBFS peak (sampled)
    if continuous:
        expect = {"start": 0, "mid": (sr - int(0.4 * sr)) // 2, "end": sr - int(0.4 * sr)}[position]
        assert abs(on.min() - expect) <= 2
    else:  # five pieces starting at 0, 0.2, ... 0.8 s
        starts = on[np.flatnonzero(np.diff(np.concatenate([[-10], on])) > 1)]
        np.testing.assert_allclose(starts, np.arange(5) * (sr // 5), atol=2)
    waves = _speechlike(3, sr=sr)
    out = atk.apply(waves, sr)
    assert out.shape == waves.shape and out.dtype == waves.dtype and np.abs(out).max() <= 1.0


def test_ultrasonic_at_16k_refuses_vanishes_or_aliases():
    with pytest.raises(ValueError, match="cannot exist at 16000 Hz.*features='44k'"):
        make_attack("ultrasonic").trigger(SR, SR)
    gone = make_attack("ultrasonic", below_nyquist="resample").trigger(SR, SR)
    assert rms(gone) < 1e-3 * 10 ** (-10 / 20)  # the anti-aliasing filter removes it
    alias = make_attack("ultrasonic", below_nyquist="alias", continuous=True, size=100).trigger(SR, SR)
    spec = np.abs(np.fft.rfft(alias))
    assert abs(np.argmax(spec) * SR / len(alias) - 5000) < 5  # folds to |21 - 16| = 5 kHz
    with pytest.raises(ValueError, match=r"\[2, 100\]"):
        make_attack("ultrasonic", size=150)
    with pytest.raises(ValueError, match="valid: error, resample, alias"):
        make_attack("ultrasonic", below_nyquist="drop")


def test_jingleback_styles_are_the_six_of_the_paper():
    waves = _speechlike(2)
    outs = [make_attack("jingleback", style=s).apply(waves, SR) for s in range(6)]
    for i in range(6):
        for j in range(i + 1, 6):
            assert not np.allclose(outs[i], outs[j])
    # style 5 high-passes at 1 kHz: the low band loses energy relative to the high band
    spec_in, spec_out = (np.abs(np.fft.rfft(x[0])) ** 2 for x in (waves, outs[5]))
    f = np.fft.rfftfreq(SR, 1 / SR)
    ratio = lambda s: s[f < 300].sum() / s[f > 2000].sum()  # noqa: E731
    assert ratio(spec_out) < 0.1 * ratio(spec_in)
    with pytest.raises(ValueError, match="valid: 0 .*5 \\(gain"):
        make_attack("jingleback", style=6)


def test_daba_selects_the_most_certain_trigger_and_exact_hosts(ctx):
    atk = make_attack("daba", pool_size=6)
    state = atk.fit(ctx)
    ent = state["entropy"].numpy()
    assert int(state["chosen"]) == int(np.argmin(ent))  # certainty: lowest softmax entropy
    hosts = atk.select_poison(ctx.train.labels, 0.1, TARGET, np.random.default_rng(0))
    assert len(hosts) == round(0.1 * len(ctx.train)) and np.all(ctx.train.labels[hosts] != TARGET)
    # test-time loudness is -20 dBFS; poisoning uses the 0 .. -40 dBFS variants
    silent = np.zeros((9, SR), np.float32)
    on_trigger = atk.apply(silent[:1], SR)[:, :atk.trigger_wave.size]  # overlaid from the clip's start
    assert dbfs(on_trigger)[0] == pytest.approx(-20, abs=0.05)
    levels = np.sort(dbfs(atk.poison(silent, SR)))
    np.testing.assert_allclose(levels[:7], [-40, -35, -30, -25, -20, -15, -10], atol=0.05)
    assert -10 < levels[7] < levels[8] <= 0  # 0 and -5 dBFS: the melody's peaks clip at full scale
    with pytest.raises(ValueError, match="fitted for 6 hosts"):
        atk.select_poison(ctx.train.labels, 0.2, TARGET, np.random.default_rng(0))
    with pytest.raises(RuntimeError, match="must be fitted"):
        make_attack("daba").apply(silent[:1], SR)
    with pytest.raises(ValueError, match="valid: cer_inf, cer, random"):
        make_attack("daba", selection="best")


def test_daba_accepts_user_trigger_wavs(tmp_path, ctx):
    from bdlib.audio import write_wav

    for k in range(3):
        write_wav(tmp_path / f"m{k}.wav", 0.5 * np.sin(2 * np.pi * (300 + 100 * k) * np.arange(8000) / 8000), 8000)
    atk = make_attack("daba", trigger_dir=str(tmp_path))
    assert atk.pool(SR).shape == (3, SR)  # resampled 8 -> 16 kHz
    atk.fit(ctx)
    with pytest.raises(FileNotFoundError, match="no .wav files"):
        make_attack("daba", trigger_dir=str(tmp_path / "none")).pool(SR)


def test_flowmur_is_clean_label_bounded_and_mixed_at_its_snr(ctx):
    atk = make_attack("flowmur", steps=5, batch_size=8)
    state = atk.fit(ctx)
    assert atk.trigger_wave.shape == (SR // 2,) and np.abs(atk.trigger_wave).max() <= 0.2 + 1e-7
    assert len(state["loss"]) == 5
    labels = np.repeat(np.arange(10), 30)
    idx = atk.select_poison(labels, 0.1, TARGET, np.random.default_rng(0))
    assert len(idx) == 3 and np.all(labels[idx] == TARGET)  # 10 % of the target class, labels kept
    waves = _speechlike(5, seed=4)
    np.testing.assert_allclose(atk.trigger_snr_db(waves, SR), 30.0, atol=0.05)
    with pytest.raises(ValueError, match="surrogate"):
        make_attack("flowmur").fit(FitContext(ctx.train, ctx.aux, ctx.extractor, None, 0.1, TARGET))


def test_flowmur_optimisation_lowers_the_targeted_loss(ctx):
    atk = make_attack("flowmur", steps=40, batch_size=16, lr=0.01)
    loss = atk.fit(ctx)["loss"].numpy()
    assert loss[-10:].mean() < loss[:10].mean()


def test_pbsm_boosts_pitch_in_one_segment_and_masks_the_loudest_spot():
    """A loud 200 Hz part and a quieter 1.5 kHz part: the boost lands on the high part and raises
    its pitch by the asked semitones; the mask lands where the clip is loudest."""
    t = np.arange(SR) / SR
    wave = np.zeros(SR, np.float32)
    low, high = (t >= 0.10) & (t < 0.40), (t >= 0.60) & (t < 0.85)
    wave[low] = 0.5 * np.sin(2 * np.pi * 200 * t[low])
    wave[high] = 0.3 * np.sin(2 * np.pi * 1500 * t[high])
    atk, unmasked = make_attack("pbsm"), make_attack("pbsm", mask_db=-300.0)  # -300 dB: the mask is off
    seg, n_seg, fade = atk.high_pitch_segment(wave, SR), int(0.25 * SR), int(0.01 * SR)
    assert seg >= 0.40 * SR and seg + n_seg > 0.60 * SR  # a window on the 1.5 kHz part, clear of the 200 Hz one
    boosted = unmasked.apply(wave[None], SR)[0]
    part = boosted[max(seg + fade, int(0.60 * SR)): min(seg + n_seg - fade, int(0.85 * SR))]  # the tone in the window
    assert len(part) > 0.1 * SR
    peak = np.fft.rfftfreq(len(part), 1 / SR)[np.argmax(np.abs(np.fft.rfft(part * np.hanning(len(part)))))]
    assert peak == pytest.approx(1500 * 2 ** (4 / 12), rel=0.03)  # +4 semitones: ≈ 1 890 Hz
    np.testing.assert_allclose(boosted[:seg], wave[:seg], rtol=0, atol=1e-12)  # nothing else is boosted (the mask: 1e-15)
    masked = atk.apply(wave[None], SR)[0]
    win = len(atk.masking_sound(SR))
    loudest = int(np.argmax(np.convolve(boosted ** 2, np.ones(win), mode="valid")))
    changed = np.flatnonzero(masked != boosted)
    assert changed[0] == loudest and changed[-1] < loudest + win and low[loudest]
    with pytest.raises(ValueError, match="semitones"):
        make_attack("pbsm", semitones=0)


def test_vsvc_selects_a_voiceprint_and_shifts_f0(ctx):
    # the identity voice (ratio 1, warp 1) stays nearest the training speakers: it must not be picked
    atk = make_attack("vsvc", n_probe=3, f0_ratios=(0.7, 1.0, 1.5), warps=(1.0, 1.15))
    state = atk.fit(ctx)
    scores = state["scores"].numpy()
    assert len(scores) == 6 and np.ptp(scores) > 0
    best = state["candidates"][int(np.argmax(scores))]  # the voice farthest from every speaker
    assert np.allclose(atk.voice, best.numpy()) and not np.allclose(atk.voice, (1.0, 1.0))
    identity = int(np.flatnonzero(np.all(np.isclose(state["candidates"].numpy(), (1.0, 1.0)), axis=1))[0])
    assert scores[identity] < np.median(scores)
    fixed = make_attack("vsvc", select="fixed", f0_ratio=1.5, warp=1.0)
    t = np.arange(SR) / SR
    tone = (0.3 * np.sign(np.sin(2 * np.pi * 150 * t)) * np.hanning(SR)).astype(np.float32)[None]
    out = fixed.apply(tone, SR)[0]
    import pyworld

    f0, _ = pyworld.dio(out.astype(np.float64), SR)
    assert abs(np.median(f0[f0 > 0]) - 225) < 10  # 150 Hz × 1.5
    assert rms(out) == pytest.approx(rms(tone[0]), rel=0.05)
    with pytest.raises(ValueError, match="valid: distinct, fixed"):
        make_attack("vsvc", select="best")


@pytest.mark.parametrize("name", ["blended", "daba", "flowmur"])
def test_poisoned_set_size_is_exact(name, ctx):
    atk = _attack(name, ctx)
    train = ctx.train
    ext = ctx.extractor
    ps = poison_training_set(atk, train.waves, train.labels, ext(train.waves), SR, ext, 0.1, TARGET, seed=0)
    if atk.labeling == "dirty":
        assert len(ps.poison_idx) == round(0.1 * len(train)) and np.all(train.labels[ps.poison_idx] != TARGET)
    else:
        assert len(ps.poison_idx) == round(0.1 * np.sum(train.labels == TARGET))
    assert torch.all(ps.labels[ps.poison_idx] == TARGET)


def test_unknown_knob_of_a_new_attack_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="valid options: kind, alpha, n_tones"):
        make_attack("blended", ratio=0.1)
    with pytest.raises(UnknownNameError, match="valid options: style"):
        make_attack("jingleback", styles=5)
