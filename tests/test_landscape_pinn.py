"""Landscape metrics of physics-informed nets: the loss they differentiate and walk along is the PINN's training
loss (wsl.population.pinn.ConvectionLoss: residual + initial + boundary terms), checked against that loss written
out by hand with plain autograd (its dense Hessian by torch.autograd.functional.hessian), on a 2-4-1 tanh MLP."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import functional_call

from conftest import ROOT
from wsl.data import load_task_dataset
from wsl.landscape.connectivity import lerp, linear_barrier, mode_connectivity
from wsl.landscape.hessian import dense_hessian, hutchinson_trace, population_hvp, top_eigenvalue
from wsl.landscape.losses import PINNLoss, task_loss
from wsl.landscape.metrics import METRICS
from wsl.landscape.schema import SETTINGS
from wsl.nets import MLP
from wsl.population import PopulationModule, stack_state_dicts
from wsl.zoo import Zoo

BETA = 4.0


@pytest.fixture(scope="module")
def data():
    return load_task_dataset("convection", beta=BETA, collocation=12, initial=5, boundary=4, test_nx=4, test_nt=3)


def _net(seed, activation="tanh", dtype=torch.float64):
    torch.manual_seed(seed)
    return MLP((2,), 1, width=4, depth=1, activation=activation).to(dtype)


def _population(seeds=(0, 1, 2), activation="tanh", dtype=torch.float64):
    nets = [_net(s, activation, dtype) for s in seeds]
    return nets[0], stack_state_dicts([n.state_dict() for n in nets])


def _hand_loss(net, prm, d, split="train"):
    """One net's PINN loss with plain autograd: mean (u_t + beta u_x)² at the split's collocation points +
    mean (u(x, 0) - sin x)² + mean (u(0, t) - u(2 pi, t))²."""
    def f(z):
        return functional_call(net, prm, (z.to(torch.float64),))

    x = d.split(split)[0].double().requires_grad_(True)
    du = torch.autograd.grad(f(x).sum(), x, create_graph=True)[0]  # each point's output reads its own input only
    res = du[:, 1] + d.beta * du[:, 0]
    ic_x, ic_u = d.initial(split)
    left, right = d.boundary(split)
    return res.pow(2).mean() + (f(ic_x) - ic_u.double()).pow(2).mean() + (f(left) - f(right)).pow(2).mean()


def _flat_hessian(net, params, i, d):
    names = list(params)
    shapes = [params[k].shape[1:] for k in names]

    def fn(theta):
        return _hand_loss(net, {k: t.view(s) for k, t, s in zip(names, theta.split([s.numel() for s in shapes]),
                                                                shapes)}, d)

    flat = torch.cat([params[k][i].flatten() for k in names])
    return torch.autograd.functional.hessian(fn, flat)


def test_landscape_loss_is_the_training_loss(data):
    """task_loss of a PINN zoo's data is the function training evaluates: equal to PopulationModule's train loss
    and to the loss written out by hand."""
    net, params = _population(dtype=torch.float32)
    pop = PopulationModule(net, params, data, 0.01, 0.0, optimizer="adam")
    loss = task_loss(data, "train")
    x, y = data.split("train")
    got = loss.batch(net, params, x, y, loss.count(x, y), True)[0]
    torch.testing.assert_close(got, pop.evaluate("train")[0])
    for i in range(3):
        want = _hand_loss(net, {k: v[i].double() for k, v in params.items()}, data)
        assert math.isclose(float(got[i].detach()), float(want.detach()), rel_tol=1e-5)


def test_pinn_hvp_eigenvalue_and_trace_equal_the_dense_hessian(data):
    """Hessian-vector products through a loss with input derivatives (double backward through torch.func.grad
    under vmap over members) against the dense Hessian of the hand-written loss; Lanczos run to the full
    dimension gives its top eigenvalue, Hutchinson its trace within the estimator's error."""
    net, params = _population()
    loss = task_loss(data, "train")
    x, y = data.split("train")
    x, y = x.double(), y.double()
    n = sum(t[0].numel() for t in params.values())  # 17
    hs = [_flat_hessian(net, params, i, data) for i in range(3)]
    g = torch.Generator().manual_seed(1)
    v = {k: torch.randn(t.shape, generator=g, dtype=t.dtype) for k, t in params.items()}
    hv = population_hvp(net, params, v, x, y, batch_size=5, loss=loss)  # 3 uneven batches; terms on the first
    for i, h in enumerate(hs):
        flat_v = torch.cat([v[k][i].flatten() for k in params])
        torch.testing.assert_close(torch.cat([hv[k][i].flatten() for k in params]), h @ flat_v, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(dense_hessian(net, {k: t[i] for k, t in params.items()}, x, y, loss=loss), h)
    eig = top_eigenvalue(net, params, x, y, max_iters=n, tol=0.0, seed=0, loss=loss)
    tr = hutchinson_trace(net, params, x, y, samples=300, seed=0, loss=loss)
    for i, h in enumerate(hs):
        ev = torch.linalg.eigvalsh(h)
        top = ev[-1] if ev[-1].abs() >= ev[0].abs() else ev[0]
        assert math.isclose(float(eig.eigenvalue[i]), float(top), rel_tol=1e-6), (i, eig.eigenvalue[i], top)
        assert abs(float(tr.trace[i]) - float(h.trace())) <= 4 * float(tr.stderr[i]), (i, tr.trace[i], h.trace())


def _metric_settings(name, **kw):
    return {**asdict(SETTINGS[name]()), "num_samples": None, **kw}


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_trace_metric_chooses_hutchinson_for_the_pinn_loss(data, activation):
    """method=auto: the exact trace is the cross-entropy's Gauss-Newton split, so a PINN's loss takes Hutchinson
    (a ReLU net too, which the exact trace would accept for a cross-entropy); method=exact says why not."""
    net, params = _population(activation=activation)
    x, y = data.split("train")
    d = {"train": (x.double(), y.double(), task_loss(data, "train"))}
    s = _metric_settings("hessian_trace", samples=300, rel_stderr=0.0, deflation=0, splits=["train"])
    cols, notes = METRICS["hessian_trace"].compute(net, params, {}, d, s)
    assert notes == [""] * 3 and (cols["train_exact"] == 0).all() and (cols["train_samples"] == 300).all()
    for i in range(3):
        tr = float(_flat_hessian(net, params, i, data).trace())
        assert abs(cols["train"][i] - tr) <= 4 * cols["train_stderr"][i]
    _, notes = METRICS["hessian_trace"].compute(net, params, {}, d, {**s, "method": "exact"})
    assert notes[0].startswith("exact trace does not apply: ")
    assert ("pinn loss" in notes[0]) == (activation == "relu")  # tanh: refused for the activation already


def test_barrier_midpoint_is_the_pinn_loss_by_hand(data):
    net, a = _population((0, 1))
    _, b = _population((2, 3))
    x, y = data.split("train")
    r = linear_barrier(net, a, b, x.double(), y.double(), points=3, batch_size=5, loss=task_loss(data, "train"))
    mid = lerp(a, b, 0.5)
    for i in range(2):
        ends = [float(_hand_loss(net, {k: v[i] for k, v in s.items()}, data)) for s in (a, b)]
        at = float(_hand_loss(net, {k: v[i] for k, v in mid.items()}, data))
        for j, want in enumerate((ends[0], at, ends[1])):
            assert math.isclose(float(r.losses[j, i]), want, rel_tol=1e-9)
        assert math.isclose(float(r.barrier[i]), max(0.0, at - (ends[0] + ends[1]) / 2), rel_tol=1e-9, abs_tol=1e-12)
    assert torch.isnan(r.accuracies).all()  # a PINN has no accuracy (its score is the relative L2 error)


def test_mode_connectivity_trains_the_curve_on_the_pinn_loss(data):
    """The curve's ends are the replicas' PINN losses by hand; training the control point lowers the loss at
    the curve's middle below the straight line's (the endpoints are fixed, only C moves)."""
    net, a = _population((0, 1))
    _, b = _population((2, 3))
    x, y = data.split("train")
    loss = task_loss(data, "train")
    r = mode_connectivity(net, a, b, x.double(), y.double(), steps=60, lr=0.05, batch_size=12, points=5, seed=0,
                          loss=loss)
    line = linear_barrier(net, a, b, x.double(), y.double(), points=5, loss=loss)
    for i in range(2):
        for j, s in ((0, a), (-1, b)):
            assert math.isclose(float(r.losses[j, i]), float(_hand_loss(net, {k: v[i] for k, v in s.items()}, data)),
                                rel_tol=1e-9)
    assert torch.isfinite(r.mc).all() and (r.losses[2] < line.losses[2]).all()
    assert isinstance(loss, PINNLoss)


def _script(name, *args, cwd):
    """Run an installed console script (this checkout's code first on the path)."""
    script = Path(sys.executable).with_name(name)
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", f"wsl.apps.{name.removeprefix('wsl-')}"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    p = subprocess.run([*cmd, *args, f"hydra.run.dir={cwd / name}"], capture_output=True, text=True, timeout=300,
                       cwd=cwd, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def test_wsl_landscape_full_on_a_pinn_zoo_records_every_metric(tmp_path):
    """`wsl-zoo` (a tiny convection zoo: 2 lr cells x 2 seeds) then `wsl-landscape landscape=full`: every metric
    has values and no note, the trace is Hutchinson's, and every cell has a phase label from the PINN train loss."""
    zoo = tmp_path / "zoo"
    _script("wsl-zoo", "net=mlp", "net.activation=tanh", "net.width=4", "net.depth=1", "dataset=convection",
            "dataset.beta=2", "dataset.collocation=32", "dataset.initial=8", "dataset.boundary=8", "dataset.test_nx=8",
            "dataset.test_nt=4", "population.size=4", "train.lr=[0.01,0.003]", "train.epochs=2", "train.batch_size=16",
            "logger=none", "progress_refresh_rate=0", "trainer.accelerator=cpu", f"zoo.path={zoo}", cwd=tmp_path)
    _script("wsl-landscape", f"zoo.path={zoo}", "landscape=full", "logger=none", "landscape.num_samples=16",
            "landscape.hessian_eig.max_iters=10", "landscape.hessian_trace.samples=6",
            "landscape.hessian_trace.min_samples=3", "landscape.hessian_trace.deflation=2",
            "landscape.mode_connectivity.steps=5", "landscape.mode_connectivity.points=3", "landscape.barrier.points=3",
            cwd=tmp_path)
    t = Zoo(zoo).table()
    assert len(t) == 4
    for col in ("hessian_eig/train", "hessian_eig/test", "hessian_trace/train", "hessian_trace/test",
                "barrier/value", "mode_connectivity/value", "cka/value", "spectra/alpha_mean"):
        assert np.isfinite(t[col]).all() or col.startswith("spectra"), (col, t[col].tolist())
        group = col.split("/")[0]
        if group not in ("hessian_eig", "spectra"):  # Lanczos may stop at max_iters: a note, values kept
            assert (t[f"{group}/note"] == "").all(), (group, set(t[f"{group}/note"]))
    assert (t["hessian_trace/train_exact"] == 0).all()  # a PINN's loss: Hutchinson, never the exact CE trace
    assert not t["hessian_eig/note"].str.startswith("not computed").any()
    assert set(t["phase/label"]) <= {"I", "II", "III", "IV-A", "IV-B", "I/II", "III/IV", "IV"}
    np.testing.assert_allclose(t["phase/train_loss"].to_numpy(),
                               t.groupby("lr")["train_loss"].transform("mean").to_numpy(), rtol=1e-6)
