import numpy as np
import pytest
import torch
import torch.nn as nn

from bdlib.metrics import attack_success_rate, der, evaluate, robust_accuracy


class Oracle(nn.Module):
    """Predicts class feats[..., 0, 0] (so tests control every prediction)."""

    def forward(self, x):
        return nn.functional.one_hot(x[:, 0, 0, 0].long(), 10).float()


def feats_predicting(preds):
    f = torch.zeros(len(preds), 1, 2, 2)
    f[:, 0, 0, 0] = torch.as_tensor(preds, dtype=torch.float)
    return f


def test_asr_excludes_target_class_clips():
    true = np.array([2, 2, 2, 0, 1, 3])
    preds = np.array([2, 2, 2, 2, 1, 3])  # target clips "hit" trivially; 1 of 3 others flips
    f = feats_predicting(preds)
    assert attack_success_rate(Oracle(), f, true, target=2) == pytest.approx(1 / 3)
    assert robust_accuracy(Oracle(), f, true, target=2) == pytest.approx(2 / 3)


def test_evaluate_reports_all_three():
    m = evaluate(Oracle(), feats_predicting([0, 1]), [0, 0], feats_predicting([2, 2]), [0, 1], target=2)
    assert m == {"acc": 0.5, "asr": 1.0, "ra": 0.0}


def test_der_matches_backdoorbench_definition():
    before = {"acc": 0.95, "asr": 1.0}
    assert der(before, {"acc": 0.95, "asr": 0.0}) == 1.0
    assert der(before, before) == 0.5
    assert der(before, {"acc": 0.85, "asr": 0.2}) == pytest.approx((0.8 - 0.1 + 1) / 2)
    assert der(before, {"acc": 0.99, "asr": 1.0}) == 0.5  # gains are not rewarded


def test_meets_bar_is_the_issue_threshold():
    from bdlib.metrics import meets_bar

    assert meets_bar(0.9, 0.03) and meets_bar(1.0, -0.02)
    assert not meets_bar(0.89, 0.0) and not meets_bar(1.0, 0.031)


def test_a_drop_of_exactly_three_points_meets_the_bar_despite_float_error():
    """The committed Blended victim (stop 29): 569 and 551 of 600 correct, a 3.0-point drop that
    float subtraction puts at 0.030000000000000027, was marked as missing the bar."""
    from bdlib.metrics import meets_bar

    drop = 569 / 600 - 551 / 600
    assert drop > 0.03  # the float error this guards against
    assert meets_bar(0.998, drop)
    assert not meets_bar(0.998, 570 / 600 - 551 / 600)  # 3.17 points


def test_predict_proba_agrees_with_predict_and_restores_mode():
    from bdlib.models import build_model
    from bdlib.training import predict, predict_proba

    net = build_model("smallcnn", (101, 40), 10, seed=0).train()
    x = torch.randn(6, 1, 101, 40) * 20
    p = predict_proba(net, x, batch_size=4)
    assert p.shape == (6, 10) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert np.array_equal(p.argmax(1), predict(net, x, batch_size=4))
    assert net.training  # eval for inference, handed back in training mode
