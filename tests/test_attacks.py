import numpy as np
import pytest
import torch

from bdlib.attacks import ATTACKS, make_attack, poison_indices, poison_training_set, triggered_features
from bdlib.audio import snr_db
from bdlib.features import MFCCExtractor
from bdlib.registry import UnknownNameError

SR = 16000


def _speechlike(n=6, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(SR) / SR
    return (0.3 * np.sin(2 * np.pi * rng.uniform(100, 300, (n, 1)) * t) * np.hanning(SR)).astype(np.float32)


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.1, 0.333])
def test_dirty_label_poison_count_is_exact_and_non_target(rate):
    labels = np.repeat(np.arange(10), 37)
    idx = poison_indices(labels, rate, target=2, rng=np.random.default_rng(0))
    assert len(idx) == round(rate * len(labels)) and len(set(idx)) == len(idx)
    assert not np.any(labels[idx] == 2)


def test_clean_label_poisons_a_fraction_of_the_target_class():
    labels = np.repeat(np.arange(10), 40)
    idx = poison_indices(labels, 0.1, target=2, rng=np.random.default_rng(0), labeling="clean")
    assert len(idx) == 4 and np.all(labels[idx] == 2)


def test_poisoning_rejects_impossible_rates():
    labels = np.array([2, 2, 2, 1])
    with pytest.raises(ValueError, match="only 1 eligible"):
        poison_indices(labels, 0.75, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        poison_indices(labels, 1.5, 2, np.random.default_rng(0))


def test_badnets_patch_is_the_papers_5x5_constant():
    atk = make_attack("badnets")
    feats = torch.randn(3, 1, 101, 40)
    out = atk.apply_features(feats)
    assert torch.all(out[..., -5:, -5:] == -200)
    torch.testing.assert_close(out[..., :-5, :], feats[..., :-5, :])
    torch.testing.assert_close(out[..., :, :-5], feats[..., :, :-5])
    assert np.isnan(atk.trigger_snr_db(_speechlike(2), SR)).all()


def test_poisoned_training_set_relabels_exactly_the_poisoned_rows():
    waves = _speechlike(20)
    labels = np.arange(20) % 10
    ext = MFCCExtractor()
    feats = ext(waves)
    ps = poison_training_set(make_attack("badnets"), waves, labels, feats, SR, ext, 0.2, 2, seed=1)
    assert len(ps.poison_idx) == 4
    assert torch.all(ps.labels[ps.poison_idx] == 2)
    keep = np.setdiff1d(np.arange(20), ps.poison_idx)
    assert torch.equal(ps.labels[keep], torch.as_tensor(labels[keep]))
    torch.testing.assert_close(ps.features[keep], feats[keep])
    assert torch.all(ps.features[ps.poison_idx][..., -5:, -5:] == -200)


@pytest.mark.parametrize("kind", ["noise", "tone"])
def test_burst_preserves_shape_dtype_range_and_is_seeded(kind):
    waves = _speechlike()
    waves[0] = np.clip(waves[0] * 4, -1, 1)  # a loud clip near full scale
    a = make_attack("badnets_burst", seed=3, kind=kind, amplitude=0.2)
    out = a.apply(waves, SR)
    assert out.shape == waves.shape and out.dtype == waves.dtype
    assert np.abs(out).max() <= 1.0
    np.testing.assert_array_equal(out, make_attack("badnets_burst", seed=3, kind=kind, amplitude=0.2).apply(waves, SR))
    trig = a.trigger(SR, SR)
    support = np.flatnonzero(trig)  # a 0.1 s burst at the end of the clip
    assert support.min() >= SR - int(0.1 * SR) and support.max() == SR - 1 and len(support) >= int(0.1 * SR) - 1
    if kind == "noise":
        assert not np.array_equal(trig, make_attack("badnets_burst", seed=4, kind=kind).trigger(SR, SR))


def test_burst_snr_matches_its_energy():
    waves = _speechlike(4)
    a = make_attack("badnets_burst", kind="tone", amplitude=0.05, duration_s=0.1)
    expected = 10 * np.log10(np.sum(waves.astype(np.float64) ** 2, 1) / np.sum(a.trigger(SR, SR).astype(np.float64) ** 2))
    np.testing.assert_allclose(a.trigger_snr_db(waves, SR), expected, rtol=1e-3)
    np.testing.assert_allclose(a.trigger_snr_db(waves, SR), snr_db(waves, a.apply(waves, SR)))


def test_triggered_features_route_by_domain():
    waves = _speechlike(2)
    ext = MFCCExtractor()
    burst = make_attack("badnets_burst")
    torch.testing.assert_close(triggered_features(burst, waves, SR, ext), ext(burst.apply(waves, SR)))
    patch = make_attack("badnets")
    torch.testing.assert_close(triggered_features(patch, waves, SR, ext), patch.apply_features(ext(waves)))


def test_bad_attack_names_and_knobs_are_explained():
    with pytest.raises(UnknownNameError, match="valid attacks: badnets, badnets_burst, blended"):
        make_attack("badnet")
    with pytest.raises(UnknownNameError, match="'size'.*valid options: frames, coeffs, value"):
        make_attack("badnets", size=5)
    with pytest.raises(ValueError, match="valid: start, mid, end"):
        make_attack("badnets_burst", position="middle")
    assert ATTACKS.names() == ["badnets", "badnets_burst", "blended", "daba", "flowmur", "jingleback", "pbsm",
                               "ultrasonic", "vsvc"]
