"""Landscape metrics of ResNets with BatchNorm: the Hessian metrics in eval mode against the exact Hessian,
the Gauss-Newton diagonal claim behind the exact trace, CKA on features(), spectra of conv layers, and the
refusal of a metric that does not apply (recorded, never a crash)."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from conftest import fit_nets
from wsl.data.embedded import digits
from wsl.landscape.exact_trace import exact_trace, exact_trace_support
from wsl.landscape.hessian import dense_hessian
from wsl.landscape.metrics import METRICS, missing_running_stats, refusal
from wsl.landscape.schema import CKASettings, HessianEigSettings, HessianTraceSettings, SpectraSettings
from wsl.nets import MLP, ResNet
from wsl.population.functional import population_outputs, split_state, stack_state_dicts


def _digits(n=64):
    x, y = digits().split("train")
    return x[:n], y[:n]


def _states(nets):
    return [{k: v.detach().clone() for k, v in n.state_dict().items()} for n in nets]


@pytest.fixture(scope="module")
def bn_resnets():
    """Two ResNets (width 2, 2 stages: a projection shortcut; 370 parameters) with BatchNorm, fitted a little
    on 64 digits in train mode (running statistics far from a fresh layer's), returned in eval mode."""
    x, y = _digits()
    nets = fit_nets(lambda: ResNet([1, 8, 8], 10, width=2, depth=1, stages=2), x, y, 2, steps=30, lr=0.02, seed=3)
    return nets[0], _states(nets), x, y


def _flat_logits(net, params, buffers, x):
    """Logits as a function of the flattened parameters (float64), for jacobians and Hessians."""
    bd = {k: v.double() if v.is_floating_point() else v.clone() for k, v in buffers.items()}
    sizes = [t.numel() for t in params.values()]

    def f(theta):
        parts = theta.split(sizes)
        prm = {k: t.view(params[k].shape) for k, t in zip(params, parts)}
        return functional_call(net, {**prm, **bd}, (x.double(),))

    return f, torch.cat([t.detach().flatten() for t in params.values()]).double()


def test_hessian_metrics_of_a_batchnorm_resnet_equal_the_exact_hessian(bn_resnets):
    """Eval mode, stored running statistics as constants: the dominant eigenvalue (Lanczos) and the trace
    (exact, from the Gauss-Newton identity) of each member equal those of its dense Hessian."""
    net, states, x, y = bn_resnets
    params, buffers = split_state(net, stack_state_dicts(states))
    assert {k.rsplit(".", 1)[1] for k in buffers} == {"running_mean", "running_var", "num_batches_tracked"}
    data = {"train": (x, y)}
    eig_s = asdict(HessianEigSettings(["train"], num_samples=None, max_iters=300, tol=1e-6, batch_size=25))
    eig, eig_notes = METRICS["hessian_eig"].compute(net, params, buffers, data, eig_s)
    tr_s = asdict(HessianTraceSettings(["train"], num_samples=None, batch_size=25))
    tr, tr_notes = METRICS["hessian_trace"].compute(net, params, buffers, data, tr_s)
    assert eig_notes == ["", ""] and tr_notes == ["", ""] and (tr["train_exact"] == 1).all()
    for i, st in enumerate(states):
        p, b = split_state(net, st)
        h = dense_hessian(net, p, x, y, b)
        ev = torch.linalg.eigvalsh(h)
        dominant = ev[ev.abs().argmax()].item()
        assert eig["train"][i] == pytest.approx(dominant, rel=1e-3), (i, eig["train"][i], dominant)
        assert tr["train"][i] == pytest.approx(h.trace().item(), rel=1e-4), (i, tr["train"][i], h.trace().item())
        # the stored statistics are what the Hessian is of: a fresh layer's (mean 0, variance 1) give another
        fresh = {k: torch.zeros_like(v) if k.endswith("running_mean") else torch.ones_like(v) if
                 k.endswith("running_var") else v for k, v in buffers.items()}
        other = exact_trace(net, {k: v[i:i + 1] for k, v in params.items()}, x, y, None,
                            {k: v[i:i + 1] for k, v in fresh.items()})
        assert abs(other.item() - h.trace().item()) > 0.05 * h.trace().item()


def test_the_hessian_diagonal_is_the_gauss_newton_one_with_eval_mode_batchnorm_only(bn_resnets):
    """What exact_trace (and ResNet.piecewise_linear) rely on: with BatchNorm in eval mode each logit is affine
    in each single parameter, so diag(H) = diag(JᵀΛJ) while the off-diagonal differs; in train mode (batch
    statistics) the diagonal differs too, and the exact trace is refused."""
    net, states, x, y = bn_resnets
    x = x[:24]
    p, b = split_state(net, states[0])

    def parts(module):
        f, theta = _flat_logits(module, p, b, x)
        jac = torch.autograd.functional.jacobian(f, theta, vectorize=True)  # [N, C, n]
        prob = f(theta).softmax(-1)
        lam = torch.diag_embed(prob) - prob[:, :, None] * prob[:, None, :]
        ggn = torch.einsum("nci,ncd,ndj->ij", jac, lam, jac) / x.shape[0]
        hess = torch.autograd.functional.hessian(lambda t: F.cross_entropy(f(t), y[:24]), theta, vectorize=True)
        return ggn, hess

    ggn, hess = parts(net.eval())
    scale = hess.diagonal().abs().max().item()
    assert (hess.diagonal() - ggn.diagonal()).abs().max().item() <= 1e-9 * scale
    assert (hess - ggn).abs().max().item() > 1e-3 * scale  # the identity is about the diagonal only
    assert net.piecewise_linear and exact_trace_support(net, p) == ""
    try:
        ggn_t, hess_t = parts(net.train())
        assert (hess_t.diagonal() - ggn_t.diagonal()).abs().max().item() > 1e-3 * scale
        assert not net.piecewise_linear and "train mode" in exact_trace_support(net, p)
    finally:
        net.eval()


def test_cka_on_resnet_features_uses_the_pooled_last_stage(bn_resnets):
    net, states, x, _ = bn_resnets
    stacked = stack_state_dicts(states)
    feats = population_outputs(net, stacked, x, "features", batch_size=30)  # [2, N, width * 2]
    assert feats.shape == (2, x.shape[0], 4)
    for i, st in enumerate(states):
        one = ResNet([1, 8, 8], 10, width=2, depth=1, stages=2)
        one.load_state_dict(st)
        with torch.no_grad():
            torch.testing.assert_close(feats[i], one.eval().features(x), rtol=1e-5, atol=1e-6)
    s = asdict(CKASettings(representation="features"))
    a = {k: v[:1] for k, v in stacked.items()}
    b = {k: v[1:] for k, v in stacked.items()}
    same = METRICS["cka"].compute_pairs(net, a, a, {"test": (x, None)}, s)["value"]
    other = METRICS["cka"].compute_pairs(net, a, b, {"test": (x, None)}, s)["value"]
    assert same[0] == pytest.approx(1.0) and 0.0 < other[0] < 1.0


def test_spectra_of_a_resnet_read_conv_kernels_per_position_and_skip_batchnorm():
    net = ResNet([1, 8, 8], 10, width=4, depth=1, stages=2)
    params = stack_state_dicts(_states([net]))
    params, buffers = split_state(net, params)
    cols, notes = METRICS["spectra"].compute(net, params, buffers, {}, asdict(SpectraSettings()))
    layers = {c[len("num_evals["):-1] for c in cols if c.startswith("num_evals[")}
    assert layers == {"stem.conv", "stages.0.0.conv1.conv", "stages.0.0.conv2.conv", "stages.1.0.conv1.conv",
                      "stages.1.0.conv2.conv", "stages.1.0.shortcut.conv", "head"}  # no BatchNorm γ, β
    assert cols["num_evals[stem.conv]"][0] == 9 * 1  # 9 positions of [4, 1]
    assert cols["num_evals[stages.1.0.conv1.conv]"][0] == 9 * 4  # 9 positions of [8, 4]
    assert cols["num_evals[stages.1.0.shortcut.conv]"][0] == 4  # the 1x1 shortcut: one [8, 4] matrix
    assert np.isfinite(cols["alpha[stages.1.0.conv2.conv]"][0])  # 9 x 8 eigenvalues: fitted
    assert "stem.conv: too small" in notes[0]
    unfold, _ = METRICS["spectra"].compute(net, params, buffers, {}, asdict(SpectraSettings(conv="unfold")))
    assert unfold["num_evals[stages.1.0.conv2.conv]"][0] == 8 and np.isnan(unfold["alpha[stages.1.0.conv2.conv]"][0])


def test_metrics_refuse_nets_they_do_not_apply_to_with_one_line():
    net = ResNet([1, 8, 8], 10, width=2, stages=2).eval()
    state = net.state_dict()
    weights_only = {k: v for k, v in state.items() if "running" not in k}
    for name in ("hessian_eig", "hessian_trace", "cka"):  # evaluate the net with its stored statistics
        s = _settings(name)
        assert refusal(METRICS[name], net, s, state) == ""
        why = refusal(METRICS[name], net, s, weights_only)
        assert "no BatchNorm running statistics (stem.bn.running_mean" in why and "\n" not in why
    for name in ("barrier", "mode_connectivity", "spectra"):  # reset the statistics on train data, or need none
        assert refusal(METRICS[name], net, _settings(name), weights_only) == ""
    assert missing_running_stats(MLP([1, 6], 3, width=4), {}) == ""

    class NoFeatures(torch.nn.Module):
        def forward(self, x):
            return x

    s = asdict(CKASettings(representation="features"))
    assert "has no features()" in refusal(METRICS["cka"], NoFeatures(), s, {})
    assert refusal(METRICS["cka"], NoFeatures(), asdict(CKASettings()), {}) == ""


def _settings(name):
    from wsl.landscape.schema import SETTINGS

    return asdict(SETTINGS[name]())
