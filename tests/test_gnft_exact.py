"""GN-FT's exact gradient, ∇θ[L + λ·penalty] (paper Eq. 3), in every implementation of
``EXACT_GRADIENTS``: against the double-backward reference and against central finite
differences of the objective, in float64, on a tiny model with BatchNorm (train mode, batch
statistics) and dropout (a fixed mask: the seed is reset before every pass)."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bdlib.defenses import gnft
from bdlib.defenses.gnft import EXACT_DEFAULT, EXACT_GRADIENTS, GNFT, GNFTConfig, exact_gradient_double_backward

LAM = 0.3  # large enough that λ vs λ² or a wrong u shows far above float64 noise
SEED = 5
NORMS = ("per_tensor", "global")


def tiny_net() -> nn.Module:
    """Smooth (tanh, no max-pool) so finite differences see no kinks; BN after the nonlinearity
    and dropout as in SmallCNN (a bias straight before BN would have a zero gradient, and its
    per-tensor direction u would be rounding noise)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 2), nn.Tanh(), nn.BatchNorm2d(3), nn.Flatten(), nn.Dropout(0.3),
                         nn.Linear(3 * 3 * 4, 8), nn.Tanh(), nn.BatchNorm1d(8), nn.Linear(8, 4)).double().train()


def batch(n=12):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 4, 5, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g)


def run(impl, net, x, y, lam=LAM, norm="per_tensor"):
    torch.manual_seed(SEED)  # the same dropout mask in every call
    return impl(net, x, y, lam, norm)[1]


def plain_grad(net, x, y, create_graph=False):
    torch.manual_seed(SEED)
    return torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()), create_graph=create_graph)


def penalty(grads, norm):
    if norm == "per_tensor":
        return sum(g.norm() for g in grads)
    return torch.sqrt(sum((g * g).sum() for g in grads))


def objective(net, x, y, norm, lam=LAM):
    """(L, penalty) at the current θ, with the fixed dropout mask."""
    torch.manual_seed(SEED)
    loss = F.cross_entropy(net(x), y)
    return loss.item(), penalty(torch.autograd.grad(loss, list(net.parameters())), norm).item()


def fd_errors(impl, norm, eps=1e-6, n_dirs=3):
    """Worst relative error, over random directions v, of ⟨∇J, v⟩ against the central difference
    of J = L + λ·penalty, and of the penalty part ⟨∇J − g, v⟩ against λ·(central difference of
    the penalty) — the second isolates the penalty, which ⟨g, v⟩ would otherwise dominate."""
    net, (x, y) = tiny_net(), batch()
    grads = run(impl, copy.deepcopy(net), x, y, norm=norm)
    g = plain_grad(net, x, y)
    gen = torch.Generator().manual_seed(7)
    err_total = err_penalty = 0.0
    for _ in range(n_dirs):
        v = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in net.parameters()]
        vals = {}
        for sign in (1, -1):
            moved = copy.deepcopy(net)
            with torch.no_grad():
                for p, d in zip(moved.parameters(), v):
                    p.add_(sign * eps * d)
            vals[sign] = objective(moved, x, y, norm)
        fd_loss = (vals[1][0] - vals[-1][0]) / (2 * eps)
        fd_pen = (vals[1][1] - vals[-1][1]) / (2 * eps)
        dot = sum((a * d).sum() for a, d in zip(grads, v)).item()
        dot_pen = sum(((a - b) * d).sum() for a, b, d in zip(grads, g, v)).item()
        err_total = max(err_total, abs(dot - (fd_loss + LAM * fd_pen)) / abs(fd_loss + LAM * fd_pen))
        err_penalty = max(err_penalty, abs(dot_pen - LAM * fd_pen) / abs(LAM * fd_pen))
    return err_total, err_penalty


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", list(EXACT_GRADIENTS))
def test_matches_finite_differences(name, norm):
    err_total, err_penalty = fd_errors(EXACT_GRADIENTS[name], norm)
    assert err_total < 1e-6 and err_penalty < 1e-6, (err_total, err_penalty)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", list(EXACT_GRADIENTS))
def test_matches_double_backward_reference(name, norm):
    """In train mode (BN batch statistics, dropout on): the whole gradient and its penalty part."""
    net, (x, y) = tiny_net(), batch()
    ref = run(exact_gradient_double_backward, copy.deepcopy(net), x, y, norm=norm)
    got = run(EXACT_GRADIENTS[name], copy.deepcopy(net), x, y, norm=norm)
    g = plain_grad(net, x, y)
    for a, b, c in zip(got, ref, g):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(a - c, b - c, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("name", list(EXACT_GRADIENTS))
def test_batchnorm_statistics_updated_once_and_parameters_kept(name):
    net, (x, y) = tiny_net(), batch()
    ref = copy.deepcopy(net)
    torch.manual_seed(SEED)
    ref(x)  # one plain train-mode forward
    rng_after_ref = torch.get_rng_state()
    run(EXACT_GRADIENTS[name], net, x, y)
    assert torch.equal(torch.get_rng_state(), rng_after_ref)  # the next step's dropout draws are unchanged
    for (k, a), b in zip(net.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k
    assert net[2].num_batches_tracked.item() == 1


def _global_direction_everywhere(grads, norm):
    return gnft._directions([g.detach() for g in grads], "global")


@pytest.mark.parametrize("name", [n for n in EXACT_GRADIENTS if n != "double_backward"])
def test_checks_catch_a_wrong_direction_or_a_doubled_lambda(name, monkeypatch):
    """The checks above must fail on the bugs they guard: λ applied twice, u not per tensor."""
    impl = EXACT_GRADIENTS[name]
    lam_twice = lambda net, x, y, lam, norm: impl(net, x, y, lam * lam, norm)  # noqa: E731
    assert fd_errors(lam_twice, "per_tensor")[1] > 0.1
    monkeypatch.setattr(gnft, "_penalty_direction", _global_direction_everywhere)
    assert fd_errors(impl, "per_tensor")[1] > 0.1
    net, (x, y) = tiny_net(), batch()
    ref = run(exact_gradient_double_backward, copy.deepcopy(net), x, y)
    got = run(impl, copy.deepcopy(net), x, y)
    assert max((a - b).abs().max().item() for a, b in zip(got, ref)) > 1e-3


@pytest.mark.parametrize("name", list(EXACT_GRADIENTS))
def test_unknown_norm_is_rejected_by_name(name):
    net, (x, y) = tiny_net(), batch()
    with pytest.raises(ValueError, match="'adaptive'.*per_tensor, global"):
        EXACT_GRADIENTS[name](net, x, y, LAM, "adaptive")


def test_exact_mode_uses_the_default_implementation():
    net, (x, y) = tiny_net(), batch()
    grad_fn = GNFT(GNFTConfig(mode="exact", r=0.5, alpha=0.6)).grad_fn()
    torch.manual_seed(SEED)
    got = grad_fn(copy.deepcopy(net), x, y)[1]
    ref = run(EXACT_GRADIENTS[EXACT_DEFAULT], copy.deepcopy(net), x, y, lam=0.3)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("model", ["smalllstm", "lstmatt", "rnn"])
def test_exact_form_runs_on_recurrent_models_and_matches_reverse_over_reverse(model):
    """PyTorch's fused CPU LSTM kernel (oneDNN, float32) has no forward-mode derivative; the
    models' LSTM (bdlib/models/recurrent.py) falls back to unfused kernels under forward AD, so
    the default forward-over-reverse H·u equals reverse-over-reverse on every recurrent model."""
    from bdlib.models import build_model

    net = build_model(model, (26, 13), 3, seed=0).eval()  # eval: no dropout draw between the two calls
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(4, 1, 26, 13, generator=g), torch.randint(0, 3, (4,), generator=g)
    _, fwd = EXACT_GRADIENTS["forward_hvp"](net, x, y, LAM, "per_tensor")
    _, rev = EXACT_GRADIENTS["reverse_hvp"](net, x, y, LAM, "per_tensor")
    for a, b in zip(fwd, rev):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert torch.backends.mkldnn.enabled  # the fused kernels are back on afterwards
