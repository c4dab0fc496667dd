"""Exact Hessian trace of piecewise-linear nets against the trace of the exact Hessian."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import fit_nets
from wsl.landscape.exact_trace import exact_trace, exact_trace_support
from wsl.landscape.hessian import dense_hessian
from wsl.nets import CNN, MLP, ResNet
from wsl.population.functional import split_state, stack_state_dicts


def _fitted(make, x, y, n=2, steps=60):
    """n nets fitted a little to random labels (Hessians far from zero, varied activation patterns)."""
    nets = fit_nets(make, x, y, n, steps, lr=0.02, seed=10)
    return nets[0], [{k: v.detach().clone() for k, v in n.state_dict().items()} for n in nets]


def _hessian_trace(net, state, x, y) -> float:
    params, buffers = split_state(net, state)  # BatchNorm statistics: constants of the eval-mode loss
    return dense_hessian(net, params, x, y, buffers).trace().item()


CASES = {
    "mlp relu depth 2": (lambda: MLP([1, 6], 4, width=5, depth=2), [1, 6]),
    "mlp leaky_relu": (lambda: MLP([1, 6], 4, width=5, activation="leaky_relu"), [1, 6]),
    "cnn1d stride": (lambda: CNN([2, 9], 4, width=3, depth=2), [2, 9]),
    "cnn1d max": (lambda: CNN([2, 9], 4, width=3, depth=2, pooling="max"), [2, 9]),
    "cnn2d avg": (lambda: CNN([1, 5, 5], 4, width=3, depth=2, pooling="avg"), [1, 5, 5]),
    "cnn2d stride": (lambda: CNN([2, 6, 6], 4, width=2, depth=2), [2, 6, 6]),
    # BatchNorm in eval mode: its γ and β enter affinely too (their own term in exact_trace)
    "cnn2d batchnorm": (lambda: CNN([2, 6, 6], 4, width=2, depth=2, norm="batch"), [2, 6, 6]),
    "resnet1d batchnorm": (lambda: ResNet([2, 8], 4, width=2, stages=2), [2, 8]),
    "resnet2d batchnorm": (lambda: ResNet([1, 6, 6], 4, width=2, stages=2), [1, 6, 6]),
    "resnet2d no norm": (lambda: ResNet([1, 6, 6], 4, width=2, stages=2, norm="none"), [1, 6, 6]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_exact_trace_equals_the_trace_of_the_dense_hessian(case):
    make, shape = CASES[case]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, *shape, generator=g)
    y = torch.randint(0, 4, (40,), generator=g)
    net, states = _fitted(make, x, y)
    params, buffers = split_state(net, stack_state_dicts(states))
    got = exact_trace(net, params, x, y, batch_size=15, buffers=buffers)  # 3 uneven batches
    for i, st in enumerate(states):
        want = _hessian_trace(net, st, x, y)
        assert abs(got[i].item() - want) <= 1e-4 * abs(want) + 1e-7, (case, i, got[i].item(), want)
        alone = exact_trace(net, {k: v[i:i + 1] for k, v in params.items()}, x, y, batch_size=40,
                            buffers={k: v[i:i + 1] for k, v in buffers.items()})
        assert abs(alone.item() - got[i].item()) <= 5e-5 * abs(want)  # population == per member (float32 sums)


def test_the_conv_layer_term_agrees_in_both_of_its_forms():
    """A conv layer's term is a Gram contraction or formed gradients, whichever is cheaper: same value."""
    from wsl.landscape.exact_trace import _layer_term

    g = torch.Generator().manual_seed(3)
    delta = torch.randn(4, 5, 3, 7, generator=g)  # [C, n, out, L]
    patches = torch.randn(5, 6, 7, generator=g)  # [n, K, L]
    p = torch.randn(5, 4, generator=g).softmax(-1)
    for bias in (True, False):
        pt = p.T
        grads = torch.einsum("cnol,nkl->cnok", delta, patches).flatten(2)
        if bias:
            grads = torch.cat([grads, delta.sum(3)], 2)  # [C, n, params]
        want = (pt * grads.pow(2).sum(2)).sum(0) - torch.einsum("cn,cnk->nk", pt, grads).pow(2).sum(1)
        torch.testing.assert_close(_layer_term(delta, patches, p, bias), want, rtol=1e-4, atol=1e-5)
        # the Gram branch, forced by a one-position layer of the same numbers summed
        one = _layer_term(delta.sum(3, keepdim=True), patches.sum(2, keepdim=True), p, bias)
        g1 = torch.einsum("cno,nk->cnok", delta.sum(3), patches.sum(2)).flatten(2)
        if bias:
            g1 = torch.cat([g1, delta.sum(3)], 2)
        want1 = (pt * g1.pow(2).sum(2)).sum(0) - torch.einsum("cn,cnk->nk", pt, g1).pow(2).sum(1)
        torch.testing.assert_close(one, want1, rtol=1e-4, atol=1e-5)


def test_nets_that_are_not_piecewise_linear_are_refused_with_the_reason():
    net = MLP([1, 6], 3, width=5, activation="tanh")
    params = stack_state_dicts([{k: v.detach() for k, v in net.state_dict().items()}])
    why = exact_trace_support(net, params)
    assert "tanh" in why and "piecewise linear" in why
    with pytest.raises(ValueError, match="tanh"):
        exact_trace(net, params, torch.randn(4, 1, 6), torch.zeros(4, dtype=torch.long))
    bn = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    assert "train mode" in exact_trace_support(bn, {})  # batch statistics: checked first, whatever the net says
    assert "does not declare" in exact_trace_support(bn.eval(), {})
    res = ResNet([1, 6, 6], 3, width=2, stages=2)  # BatchNorm: piecewise linear in eval mode only
    assert not res.train().piecewise_linear and "BatchNorm stem.bn" in exact_trace_support(res, {})
    assert res.eval().piecewise_linear and exact_trace_support(res, {"stem.bn.weight": None}) == ""
    assert exact_trace_support(MLP([1, 6], 3, width=5), {"head.weight": None}) == ""


def test_the_trace_metric_is_exact_where_it_applies_and_says_which_rows_are():
    from dataclasses import asdict

    from wsl.landscape.metrics import METRICS
    from wsl.landscape.schema import HessianTraceSettings

    metric = METRICS["hessian_trace"]
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 1, 6, generator=g), torch.randint(0, 4, (40,), generator=g)
    data = {"train": (x, y)}
    for act, method, exact in (("relu", "auto", 1), ("tanh", "auto", 0), ("relu", "hutchinson", 0)):
        net, states = _fitted(lambda: MLP([1, 6], 4, width=5, activation=act), x, y)
        params, buffers = split_state(net, stack_state_dicts(states))
        s = asdict(HessianTraceSettings(["train"], method=method, samples=400, rel_stderr=0.0, deflation=5))
        cols, notes = metric.compute(net, params, buffers, data, s)
        assert (cols["train_exact"] == exact).all() and notes == ["", ""]
        for i, st in enumerate(states):
            want = _hessian_trace(net, st, x, y)
            if exact:
                assert cols["train_stderr"][i] == 0 and cols["train_samples"][i] == 0
                assert abs(cols["train"][i] - want) <= 1e-4 * abs(want)
            else:  # Hutchinson: within 4 of its own standard errors
                assert cols["train_samples"][i] > 0 and abs(cols["train"][i] - want) <= 4 * cols["train_stderr"][i]
    s = asdict(HessianTraceSettings(["train"], method="exact"))  # tanh: does not apply, and the rows say why
    net, states = _fitted(lambda: MLP([1, 6], 4, width=5, activation="tanh"), x, y, n=1, steps=1)
    params, buffers = split_state(net, stack_state_dicts(states))
    cols, notes = metric.compute(net, params, buffers, data, s)
    assert np.isnan(cols["train"]).all() and "tanh" in notes[0] and "method=auto or hutchinson" in notes[0]


def test_a_layer_that_runs_twice_is_refused():
    """Weight sharing makes a logit quadratic in the shared parameters: the identity no longer holds."""

    class Twice(MLP):
        def forward(self, x):
            h = self.act(self.hidden[0](x.flatten(1)))
            return self.head(self.act(self.hidden[0](h)))

    net = Twice([1, 5], 3, width=5)
    params = stack_state_dicts([{k: v.detach() for k, v in net.state_dict().items()}])
    with pytest.raises(ValueError, match="hidden.0 runs 2 times"):
        exact_trace(net, params, torch.randn(4, 1, 5), torch.zeros(4, dtype=torch.long))
