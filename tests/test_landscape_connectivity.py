"""Linear barrier, Bézier mode connectivity and BatchNorm resets, on real nets and real data."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsl.data import load_dataset
from wsl.landscape.batchnorm import reset_bn_stats, reset_record
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
    # unequal batches (128, 128, 44) are weighted by their sizes: still the exact mean
    reset_bn_stats(net, x, batch_size=128)
    torch.testing.assert_close(net[2].running_mean, h.mean(0), rtol=1e-5, atol=1e-5)
    # one input left over (100, 100, 1) joins the batch before it (no variance of one value in train mode)
    reset_bn_stats(net, x[:201], batch_size=100)
    torch.testing.assert_close(net[2].running_mean, h[:201].mean(0), rtol=1e-5, atol=1e-5)
    assert reset_record(201, 100) == {"reset": True, "samples": 201, "batch_size": 100, "batches": 2}
    assert reset_record(300, None)["batches"] == 1 and int(net[2].num_batches_tracked) == 2


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


# ---- BatchNorm ResNets: every point reset on train data (vmapped over pairs), or not ---------
def _resnet(meta=False):
    from wsl.nets import ResNet

    if meta:
        with torch.device("meta"):
            return ResNet([1, 8, 8], 10, width=4, depth=1)
    return ResNet([1, 8, 8], 10, width=4, depth=1)


@pytest.fixture(scope="module")
def resnet_pair():
    """Two tiny BatchNorm ResNets (width 4, ResNet-8) trained on digits from different seeds."""
    data = load_dataset("digits")
    x, y = data.x_train, data.y_train
    states = []
    for s in (0, 1):
        torch.manual_seed(s)
        net = _fit(_resnet().train(), x, y, steps=200, lr=0.02, seed=s)
        states.append({k: v.detach().clone() for k, v in net.state_dict().items()})
    return states, data


def _by_hand(state, x_train, xt, yt, bn_batch_size=None, reset=True):
    """Loss and accuracy of one net: a real module, statistics reset with reset_bn_stats (or stored), eval mode."""
    m = _resnet()
    m.load_state_dict(state)
    if reset:
        reset_bn_stats(m, x_train, bn_batch_size)
    m.eval()
    with torch.no_grad():
        out = m(xt)
    return F.cross_entropy(out, yt).double().item(), (out.argmax(1) == yt).double().mean().item()


def test_population_reset_equals_reset_bn_stats_member_by_member(resnet_pair):
    from wsl.landscape.batchnorm import population_reset_bn_stats

    states, data = resnet_pair
    x = data.x_train[:300]
    stacked = stack_state_dicts(states)
    weights = {k: v for k, v in stacked.items() if "running" not in k and "num_batches" not in k}
    for bs in (None, 128):  # 128: batches of 128, 128, 44
        reset = population_reset_bn_stats(_resnet(meta=True), stacked, x, bs)
        alone = population_reset_bn_stats(_resnet(meta=True), weights, x, bs)  # weights only: buffers created
        for i, sd in enumerate(states):
            m = _resnet()
            m.load_state_dict(sd)
            reset_bn_stats(m, x, bs)
            for k, v in m.state_dict().items():
                torch.testing.assert_close(reset[k][i], v, rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(alone[k][i], v, rtol=1e-5, atol=1e-6)
        assert all(reset[k] is stacked[k] for k in weights)  # parameters untouched
    # size-weighted batches: the running mean is the exact mean of all inputs, whatever the last batch
    whole = population_reset_bn_stats(_resnet(meta=True), stacked, x, None)
    torch.testing.assert_close(reset["stem.bn.running_mean"], whole["stem.bn.running_mean"], rtol=1e-5, atol=1e-6)
    m = _resnet()
    m.load_state_dict(states[0])
    reset_bn_stats(m, x)
    h = m.stem.conv(x).detach()
    torch.testing.assert_close(m.stem.bn.running_mean, h.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m.stem.bn.running_var, h.var((0, 2, 3), unbiased=True), rtol=1e-5, atol=1e-6)


def test_resnet_barrier_resets_batchnorm_at_every_point(resnet_pair):
    states, data = resnet_pair
    x, xt, yt = data.x_train, data.x_test, data.y_test
    a, b = stack_state_dicts(states[:1]), stack_state_dicts(states[1:])
    net = _resnet(meta=True)  # what wsl-align hands over: a skeleton without memory
    r = linear_barrier(net, a, b, xt, yt, points=5, bn_x=x, bn_batch_size=500)
    n = x.shape[0]
    assert r.bn == {"reset": True, "samples": n, "batch_size": 500, "batches": -(-n // 500)}
    # by hand: interpolate the weights, recompute the statistics on the train inputs, evaluate
    hand = []
    for al in r.alphas.tolist():
        sd = {k: torch.lerp(states[0][k], states[1][k], al) if v.is_floating_point() else v
              for k, v in states[0].items()}
        hand.append(_by_hand(sd, x, xt, yt, 500))
    loss, acc = torch.tensor(hand, dtype=torch.float64).T
    torch.testing.assert_close(r.losses[:, 0], loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r.accuracies[:, 0], acc)
    al = r.alphas
    hand_barrier = (loss - ((1 - al) * loss[0] + al * loss[-1])).max()
    hand_acc = ((1 - al) * acc[0] + al * acc[-1] - acc).max()
    torch.testing.assert_close(r.barrier[0], hand_barrier, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r.acc_barrier[0], hand_acc, rtol=1e-6, atol=1e-9)
    assert r.barrier[0] > 0.05  # two independent replicas, unaligned: a barrier

    # without the reset: the interpolated stored statistics, whose variance collapse (REPAIR) is another,
    # larger barrier: every interior point of the line is worse than with statistics reset
    stale = linear_barrier(net, a, b, xt, yt, points=5, bn_reset=False)
    assert stale.bn == {"reset": False}
    mid = {k: torch.lerp(states[0][k], states[1][k], 0.5) if v.is_floating_point() else v
           for k, v in states[0].items()}
    assert stale.losses[2, 0].item() == pytest.approx(_by_hand(mid, x, xt, yt, reset=False)[0], rel=1e-5)
    assert stale.barrier[0] > r.barrier[0] + 0.05, (stale.barrier, r.barrier)
    assert (stale.losses[1:-1, 0] > r.losses[1:-1, 0] + 0.05).all(), (stale.losses, r.losses)
    # the endpoints keep their trained statistics without a reset
    assert stale.losses[0, 0].item() == pytest.approx(_by_hand(states[0], x, xt, yt, reset=False)[0], rel=1e-5)
    with pytest.raises(ValueError, match="BatchNorm"):
        linear_barrier(net, a, b, xt, yt, points=3)  # a reset needs train inputs


def test_resnet_bezier_on_a_skeleton_records_the_reset(resnet_pair):
    states, data = resnet_pair
    x, y = data.x_train, data.y_train
    a, b = stack_state_dicts(states[:1]), stack_state_dicts(states[1:])
    r = mode_connectivity(_resnet(meta=True), a, b, x, y, steps=10, batch_size=64, points=3, bn_x=x[:256],
                          bn_batch_size=128)
    assert r.bn == {"reset": True, "samples": 256, "batch_size": 128, "batches": 2}
    torch.testing.assert_close(r.losses[0, 0], torch.tensor(_by_hand(states[0], x[:256], x, y, 128)[0],
                                                            dtype=torch.float64), rtol=1e-5, atol=1e-6)
    assert torch.isfinite(r.mc).all()
