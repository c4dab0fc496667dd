"""Linear barrier, Bézier mode connectivity and BatchNorm resets, on real nets and real data."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsl.data import load_dataset
from wsl.landscape.batchnorm import reset_bn_stats
from wsl.landscape.connectivity import bezier, lerp, linear_barrier, mode_connectivity, path_losses
from wsl.nets import MLP
from wsl.population.functional import population_loss, stack_state_dicts


def _fit(net, x, y, steps, lr=0.05, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (128,))
        opt.zero_grad()
        F.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def digits_pairs():
    """Four width-16 MLPs trained on sklearn digits from different seeds: two replica pairs."""
    data = load_dataset("digits")
    x, y = data.x_train, data.y_train
    nets = []
    for s in range(4):
        torch.manual_seed(s)
        nets.append(_fit(MLP(data.input_shape, 10, width=16), x, y, steps=150, seed=s))
    states = [{k: v.detach().clone() for k, v in n.state_dict().items()} for n in nets]
    a, b = stack_state_dicts([states[0], states[2]]), stack_state_dicts([states[1], states[3]])
    return nets[0], a, b, x, y


def test_barrier_of_a_model_with_itself_is_zero(digits_pairs):
    net, a, _, x, y = digits_pairs
    r = linear_barrier(net, a, a, x, y, points=7)
    assert torch.equal(r.barrier, torch.zeros(2, dtype=torch.float64))
    assert torch.equal(r.losses, r.losses[:1].expand_as(r.losses))


def test_barrier_matches_definition_and_is_positive_between_replicas(digits_pairs):
    net, a, b, x, y = digits_pairs
    r = linear_barrier(net, a, b, x, y, points=11)
    for k, al in enumerate(r.alphas.tolist()):  # every point is the loss of the interpolated net
        theta = {n: (1 - al) * a[n] + al * b[n] for n in a}
        torch.testing.assert_close(r.losses[k], population_loss(net, theta, x, y), rtol=1e-5, atol=1e-6)
    chord = (1 - r.alphas.view(-1, 1)) * r.losses[0] + r.alphas.view(-1, 1) * r.losses[-1]
    torch.testing.assert_close(r.barrier, (r.losses - chord).max(0).values)
    assert (r.barrier > 0.05).all()  # independently trained replicas are separated by a barrier


def test_pairs_stacked_equal_pairs_alone(digits_pairs):
    net, a, b, x, y = digits_pairs
    both = mode_connectivity(net, a, b, x, y, steps=30, batch_size=64, points=9, seed=1)
    bar = linear_barrier(net, a, b, x, y)
    for i in range(2):
        ai, bi = {k: v[i:i + 1] for k, v in a.items()}, {k: v[i:i + 1] for k, v in b.items()}
        one = mode_connectivity(net, ai, bi, x, y, steps=30, batch_size=64, points=9, seed=1)
        torch.testing.assert_close(one.mc[0], both.mc[i], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(linear_barrier(net, ai, bi, x, y).barrier[0], bar.barrier[i])


def test_bezier_curve_keeps_endpoints_and_lowers_the_path(digits_pairs):
    net, a, b, x, y = digits_pairs
    r = mode_connectivity(net, a, b, x, y, steps=150, lr=0.01, batch_size=128, points=11, seed=0)
    torch.testing.assert_close(r.losses[0], population_loss(net, a, x, y))
    torch.testing.assert_close(r.losses[-1], population_loss(net, b, x, y))
    p = torch.full((2,), 0.3)
    torch.testing.assert_close(bezier(a, r.control, b, p)["head.bias"],
                               0.49 * a["head.bias"] + 0.42 * r.control["head.bias"] + 0.09 * b["head.bias"])
    line = linear_barrier(net, a, b, x, y, points=11)
    assert (r.losses.mean(0) < line.losses.mean(0)).all()  # the trained curve avoids the straight line's barrier
    mid = (r.losses[0] + r.losses[-1]) / 2
    j = (mid - r.losses).abs().argmax(0)
    torch.testing.assert_close(r.mc, mid - r.losses[j, torch.arange(2)])
    assert (r.mc > line.barrier.neg()).all()  # mc > -barrier: the curve is never worse than the line


# ---- BatchNorm ------------------------------------------------------------------------------
def _bn_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Linear(24, 10))


@pytest.fixture(scope="module")
def bn_pair():
    data = load_dataset("digits")
    x, y = data.x_train, data.y_train
    nets = [_fit(_bn_net(s).train(), x, y, steps=80, seed=s) for s in (0, 1)]  # BN tracks running stats
    states = [{k: v.detach().clone() for k, v in n.state_dict().items()} for n in nets]
    return _bn_net(0).eval(), stack_state_dicts([states[0]]), stack_state_dicts([states[1]]), x, y, data


def test_reset_bn_stats_are_exact_train_statistics():
    torch.manual_seed(0)
    net = _bn_net(0)
    x = torch.randn(300, 1, 8, 8) * 3 + 1
    net[2].running_mean.fill_(123.0)  # stale statistics
    reset_bn_stats(net, x)
    h = net[1](net[0](x)).detach()
    torch.testing.assert_close(net[2].running_mean, h.mean(0))
    torch.testing.assert_close(net[2].running_var, h.var(0, unbiased=True))
    assert not net.training and net[2].momentum == 0.1  # restored
    reset_bn_stats(net, x, batch_size=100)  # equal batches: average of batch means = mean
    torch.testing.assert_close(net[2].running_mean, h.mean(0), rtol=1e-5, atol=1e-5)


def test_barrier_with_batchnorm_uses_reset_statistics(bn_pair):
    net, a, b, x, y, data = bn_pair
    xt, yt = data.x_test, data.y_test
    # with itself: zero, even though the stored running statistics are garbage
    garbage = {k: (v + 50.0 if "running_mean" in k else v) for k, v in a.items()}
    r = linear_barrier(net, garbage, garbage, xt, yt, points=5, bn_x=x)
    assert torch.equal(r.barrier, torch.zeros(1, dtype=torch.float64))
    # every point is evaluated with statistics recomputed on the train inputs
    r = linear_barrier(net, a, b, xt, yt, points=5, bn_x=x)
    for k, al in enumerate(r.alphas.tolist()):
        m = copy.deepcopy(net)
        m.load_state_dict({n: v[0] for n, v in lerp(a, b, al).items()})
        m.train()
        with torch.no_grad():
            h = m[1](m[0](x))
            m[2].running_mean.copy_(h.mean(0))
            m[2].running_var.copy_(h.var(0, unbiased=True))
            m.eval()
            want = F.cross_entropy(m(xt), yt).double()
        torch.testing.assert_close(r.losses[k, 0], want, rtol=1e-5, atol=1e-6)
    # and those differ from interpolating the stored statistics (which is what a reset avoids)
    naive = population_loss(net, lerp(a, b, 0.5), xt, yt)
    assert abs(naive.item() - r.losses[2, 0].item()) > 1e-3


def test_path_losses_without_train_inputs_refuse_batchnorm(bn_pair):
    net, a, _, x, y, _ = bn_pair
    with pytest.raises(ValueError, match="BatchNorm"):
        path_losses(net, a, x, y)


def test_mode_connectivity_with_batchnorm_runs_and_keeps_endpoints(bn_pair):
    net, a, b, x, y, _ = bn_pair
    r = mode_connectivity(net, a, b, x, y, steps=20, batch_size=64, points=5, bn_x=x)
    torch.testing.assert_close(r.losses[0], path_losses(net, a, x, y, bn_x=x))
    assert torch.isfinite(r.mc).all()
