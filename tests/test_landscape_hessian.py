"""Curvature estimators against the exact Hessian of a tiny MLP, and population == per-member."""

from __future__ import annotations

import pytest
import torch

from conftest import fit_nets
from wsl.landscape.hessian import dense_hessian, hutchinson_trace, population_hvp, top_eigenvalue
from wsl.nets import MLP
from wsl.population.functional import split_state, stack_state_dicts


def _trained_tiny_mlps(n=3, steps=100):
    """A few 6-5-3 MLPs (53 parameters) fitted to random labels, so their Hessians are far from zero."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 1, 6, generator=g)
    y = torch.randint(0, 3, (96,), generator=g)
    nets = fit_nets(lambda: MLP([1, 6], 3, width=5, activation="tanh"), x, y, n, steps, lr=0.05, seed=100)
    params = stack_state_dicts([{k: v.detach().clone() for k, v in n.state_dict().items()} for n in nets])
    return nets[0], params, x, y


@pytest.fixture(scope="module")
def tiny():
    return _trained_tiny_mlps()


def test_hvp_equals_exact_hessian_times_vector(tiny):
    net, params, x, y = tiny
    g = torch.Generator().manual_seed(1)
    v = {k: torch.randn(t.shape, generator=g) for k, t in params.items()}
    hv = population_hvp(net, params, v, x, y, batch_size=40)  # 3 uneven batches: weighted mean must be exact
    for i in range(params["head.bias"].shape[0]):
        h = dense_hessian(net, {k: t[i] for k, t in params.items()}, x, y)
        vi = torch.cat([v[k][i].flatten() for k in params]).double()
        got = torch.cat([hv[k][i].flatten() for k in params]).double()
        torch.testing.assert_close(got, h @ vi, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method,deflation", [("lanczos", 0), ("power", 0), ("lanczos", 8)])
def test_top_eigenvalue_and_trace_matchdense_hessian(tiny, method, deflation):
    net, params, x, y = tiny
    eig = top_eigenvalue(net, params, x, y, max_iters=500, tol=1e-6, seed=0, method=method)
    tr = hutchinson_trace(net, params, x, y, samples=500, seed=0, deflation=deflation)
    for i in range(params["head.bias"].shape[0]):
        h = dense_hessian(net, {k: t[i] for k, t in params.items()}, x, y)
        ev = torch.linalg.eigvalsh(h)
        dominant = ev[ev.abs().argmax()].item()
        assert eig.converged[i]
        assert abs(eig.eigenvalue[i].item() - dominant) <= 0.02 * abs(dominant), (eig.eigenvalue[i], dominant)
        exact_trace = h.trace().item()
        assert abs(tr.trace[i].item() - exact_trace) <= 0.10 * abs(exact_trace), (tr.trace[i], exact_trace)
        # the reported standard error is an honest noise scale: the error is within a few of them
        assert abs(tr.trace[i].item() - exact_trace) <= 5 * tr.stderr[i].item()


@pytest.mark.parametrize("method,deflation", [("lanczos", 0), ("power", 0), ("lanczos", 6)])
def test_population_results_equal_per_member_results(tiny, method, deflation):
    net, params, x, y = tiny
    eig = top_eigenvalue(net, params, x, y, max_iters=60, tol=1e-3, seed=3, method=method)
    tr = hutchinson_trace(net, params, x, y, samples=40, seed=3, deflation=deflation, rel_stderr=0.02)
    for i in range(params["head.bias"].shape[0]):
        one = {k: t[i:i + 1] for k, t in params.items()}
        e1 = top_eigenvalue(net, one, x, y, max_iters=60, tol=1e-3, seed=3, method=method)
        # other data batches (graph rebuilt per batch and product): the same probes, the same mean
        t1 = hutchinson_trace(net, one, x, y, samples=40, seed=3, batch_size=40, deflation=deflation, rel_stderr=0.02)
        assert t1.samples[0] == tr.samples[i]
        assert e1.iterations[0] == eig.iterations[i]
        torch.testing.assert_close(e1.eigenvalue[0], eig.eigenvalue[i], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(t1.trace[0], tr.trace[i], rtol=1e-5, atol=1e-5)


def test_results_do_not_depend_on_the_order_of_the_state_dict(tiny):
    """Checkpoints read from files come in no fixed key order; the seeded vectors must not care."""
    net, params, x, y = tiny
    shuffled = {k: params[k] for k in reversed(list(params))}
    for p in (params, shuffled):
        e = top_eigenvalue(net, p, x, y, max_iters=40, tol=1e-3, seed=7)
        t = hutchinson_trace(net, p, x, y, samples=10, seed=7)
        if p is params:
            ref = (e.eigenvalue, e.iterations, t.trace)
    torch.testing.assert_close((e.eigenvalue, e.iterations, t.trace), ref)


def test_hutchinson_stops_each_member_at_its_standard_error(tiny):
    net, params, x, y = tiny
    full = hutchinson_trace(net, params, x, y, samples=200, seed=1)
    early = hutchinson_trace(net, params, x, y, samples=200, seed=1, rel_stderr=0.05, min_samples=10)
    assert (full.samples == 200).all() and (early.samples >= 10).all() and (early.samples < 200).all()
    assert (early.stderr <= 0.05 * early.trace.abs() + 1e-12).all()
    for i in range(len(early.trace)):  # each member's estimate is the mean of its first n probes
        n = int(early.samples[i])
        alone = hutchinson_trace(net, {k: v[i:i + 1] for k, v in params.items()}, x, y, samples=n, seed=1)
        torch.testing.assert_close(early.trace[i], alone.trace[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_eigenvalue_iteration_stops_each_member_at_tolerance(tiny, method):
    net, params, x, y = tiny
    r = top_eigenvalue(net, params, x, y, max_iters=3, tol=1e-12, method=method)
    assert not r.converged.any() and (r.iterations == 3).all()
    with pytest.raises(ValueError, match="method"):
        top_eigenvalue(net, params, x, y, method="arnoldi")


def test_lanczos_needs_fewer_products_than_power_iteration_for_the_same_tolerance(tiny):
    net, params, x, y = tiny
    lz = top_eigenvalue(net, params, x, y, max_iters=500, tol=1e-5, seed=0, method="lanczos")
    pw = top_eigenvalue(net, params, x, y, max_iters=500, tol=1e-5, seed=0, method="power")
    assert lz.converged.all() and pw.converged.all()
    assert (lz.iterations < pw.iterations).all(), (lz.iterations, pw.iterations)
    # a 53-parameter Hessian: Lanczos exhausts its Krylov space at 53 steps at the latest, then its Ritz values are exact
    full = top_eigenvalue(net, params, x, y, max_iters=500, tol=0.0, seed=0, method="lanczos")
    assert full.converged.all() and (full.iterations <= 53).all()
    for i in range(3):
        ev = torch.linalg.eigvalsh(dense_hessian(net, {k: t[i] for k, t in params.items()}, x, y))
        assert full.eigenvalue[i].item() == pytest.approx(ev[ev.abs().argmax()].item(), rel=1e-4)


def test_deflated_hutchinson_splits_the_trace_exactly_and_lowers_the_noise(tiny):
    """tr(H) = tr(QᵀHQ) + tr(PHP): the Lanczos part is exact; the probes estimate the rest with less spread."""
    net, params, x, y = tiny
    plain = hutchinson_trace(net, params, x, y, samples=300, seed=2)
    defl = hutchinson_trace(net, params, x, y, samples=300, seed=2, deflation=10)
    for i in range(3):
        h = dense_hessian(net, {k: t[i] for k, t in params.items()}, x, y)
        ev = torch.linalg.eigvalsh(h)
        assert ev[-10:].sum().item() * 0.5 < defl.deflated[i].item() <= ev[-10:].sum().item() * (1 + 1e-4)
        exact = h.trace().item()
        assert abs(defl.trace[i].item() - exact) <= 4 * defl.stderr[i].item()
        assert defl.stderr[i] < 0.7 * plain.stderr[i], (defl.stderr[i], plain.stderr[i])
    # stopping on the standard error: fewer probes for the same target
    a = hutchinson_trace(net, params, x, y, samples=300, seed=2, rel_stderr=0.02)
    b = hutchinson_trace(net, params, x, y, samples=300, seed=2, rel_stderr=0.02, deflation=10)
    assert (b.samples + 10 < a.samples).all(), (a.samples, b.samples)
    assert (b.stderr <= 0.02 * b.trace.abs() + 1e-12).all()


def test_curvature_of_batchnorm_net_differentiates_parameters_only():
    """In eval mode BN running statistics are constants: the Hessian is over parameters alone."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    x, y = torch.randn(50, 4), torch.randint(0, 3, (50,))
    net.train()
    net(x)  # non-trivial running statistics
    net.eval()
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    params, buffers = split_state(net, stack_state_dicts([state]))
    assert set(buffers) == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    eig = top_eigenvalue(net, params, x, y, max_iters=500, tol=1e-7, buffers=buffers)
    p_state = {k: v[0] for k, v in params.items()}
    b_state = {k: v[0] for k, v in buffers.items()}
    ev = torch.linalg.eigvalsh(dense_hessian(net, p_state, x, y, b_state))
    dominant = ev[ev.abs().argmax()].item()
    assert abs(eig.eigenvalue[0].item() - dominant) <= 0.02 * abs(dominant)
