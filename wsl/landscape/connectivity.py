"""Connectivity of seed replicas: linear-interpolation barrier and Bézier mode connectivity.

Pairs are stacked like a population: endpoint A {name: [P, ...]} and endpoint B {name: [P, ...]}
hold P pairs, and every point of every path is evaluated for all pairs in one vmapped call.
Nets with BatchNorm take a per-pair path instead (their running statistics must be recomputed
on train data at every point, see batchnorm.py), which is slower but exact.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from wsl.errors import ConfigError
from wsl.landscape.batchnorm import has_batchnorm, reset_bn_stats
from wsl.population.functional import float_keys, member_loss, population_loss, unstack


def lerp(a: dict, b: dict, alpha: float) -> dict:
    """(1-α) a + α b on floating tensors (torch.lerp: exact at α=0, α=1 and when a == b)."""
    return {k: torch.lerp(a[k], b[k], float(alpha)) if a[k].is_floating_point() else a[k] for k in a}


def bezier(a: dict, c: dict, b: dict, t: torch.Tensor) -> dict:
    """Quadratic Bézier point per pair: (1-t)² a + 2t(1-t) c + t² b, t [P] (or [1]: the same point for every
    pair). The weights are computed once per dtype, not per tensor."""
    weights, out = {}, {}
    for k in a:
        if not a[k].is_floating_point():
            out[k] = a[k]
            continue
        if a[k].dtype not in weights:
            tt = t.to(a[k].dtype)
            weights[a[k].dtype] = ((1 - tt) ** 2, 2 * tt * (1 - tt), tt ** 2)
        w0, w1, w2 = (w.view(-1, *[1] * (a[k].dim() - 1)) for w in weights[a[k].dtype])
        out[k] = w0 * a[k] + w1 * c[k] + w2 * b[k]
    return out


def path_losses(net: nn.Module, points: dict, x: torch.Tensor, y: torch.Tensor,
                bn_x: torch.Tensor | None = None, batch_size: int | None = None) -> torch.Tensor:
    """Loss of each stacked point {name: [P, ...]} on (x, y) -> [P] float64.

    With BatchNorm, each point's running statistics are first recomputed on train inputs bn_x.
    """
    if not has_batchnorm(net):
        return population_loss(net, points, x, y, batch_size)
    if bn_x is None:
        raise ConfigError("this net has BatchNorm: path losses need train inputs to reset its statistics")
    model = copy.deepcopy(net)
    out = []
    for state in unstack(points):
        model.load_state_dict(state)
        reset_bn_stats(model, bn_x, batch_size)
        with torch.no_grad():
            out.append(F.cross_entropy(model(x), y).double())
    return torch.stack(out)


@dataclass
class BarrierResult:
    barrier: torch.Tensor  # [P] max_α L(α) - ((1-α) L(0) + α L(1))
    alphas: torch.Tensor  # [A]
    losses: torch.Tensor  # [A, P] loss along the straight line


def linear_barrier(net: nn.Module, a: dict, b: dict, x: torch.Tensor, y: torch.Tensor, points: int = 11,
                   bn_x: torch.Tensor | None = None, batch_size: int | None = None) -> BarrierResult:
    """Loss barrier on the straight line between A and B for every stacked pair."""
    alphas = torch.linspace(0, 1, int(points), dtype=torch.float64)
    losses = torch.stack([path_losses(net, lerp(a, b, al), x, y, bn_x, batch_size) for al in alphas.tolist()])
    chord = torch.lerp(losses[0].expand_as(losses), losses[-1].expand_as(losses), alphas.view(-1, 1))
    return BarrierResult((losses - chord).max(dim=0).values, alphas, losses)


def fit_bezier(net: nn.Module, a: dict, b: dict, x: torch.Tensor, y: torch.Tensor, steps: int = 200,
               lr: float = 1e-2, batch_size: int = 128, seed: int = 0) -> dict:
    """Train the control point C of a quadratic Bézier curve per pair (endpoints fixed).

    Objective (Garipov et al. 2018): E_{t~U[0,1]} L(φ(t)), minimized with Adam on minibatches of
    (x, y); C starts at the midpoint (A+B)/2, i.e. on the straight line. Returns C {name: [P, ...]}.
    """
    g = torch.Generator().manual_seed(int(seed))
    param_names = {k for k, _ in net.named_parameters()}
    keys = [k for k in float_keys(a) if k in param_names]  # BN buffers are recomputed, never trained
    c = {k: ((a[k] + b[k]) / 2).clone().requires_grad_(k in keys) if a[k].is_floating_point() else a[k]
         for k in a}
    opt = torch.optim.Adam([c[k] for k in keys], lr=lr, foreach=True)  # one call per step for all tensors
    n = x.shape[0]
    model = copy.deepcopy(net).train() if has_batchnorm(net) else None
    loss_all = vmap(lambda prm, xb, yb: member_loss(net, prm, xb, yb), in_dims=(0, None, None))
    for _ in range(int(steps)):
        idx = torch.randint(0, n, (min(int(batch_size), n),), generator=g)
        # one point of the curve per step, shared by all pairs: a pair's trajectory is then the
        # same whether it is trained alone or stacked with others
        t = torch.rand(1, generator=g)
        theta = bezier(a, c, b, t)
        if model is not None:  # batch statistics in train mode, pair by pair (BN buffers cannot be vmapped in place)
            loss = sum(F.cross_entropy(functional_call(model, {k: v for k, v in th.items() if k in param_names},
                                                       (x[idx],)), y[idx]) for th in unstack(theta))
        else:
            loss = loss_all({k: theta[k] for k in param_names}, x[idx], y[idx]).sum()  # pairs are independent
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {k: v.detach() for k, v in c.items()}


@dataclass
class ModeConnectivityResult:
    mc: torch.Tensor  # [P] ½(L(0)+L(1)) - L(t*): < 0 a barrier, > 0 endpoints underfit
    t_star: torch.Tensor  # [P] the point of the curve furthest from the endpoint average
    ts: torch.Tensor  # [T]
    losses: torch.Tensor  # [T, P] loss along the trained curve
    control: dict  # C {name: [P, ...]}


def mode_connectivity(net: nn.Module, a: dict, b: dict, x: torch.Tensor, y: torch.Tensor, steps: int = 200,
                      lr: float = 1e-2, batch_size: int = 128, points: int = 21, seed: int = 0,
                      bn_x: torch.Tensor | None = None, eval_batch_size: int | None = None) -> ModeConnectivityResult:
    """Mode connectivity along a trained quadratic Bézier curve (Yang et al. 2021 definition)."""
    c = fit_bezier(net, a, b, x, y, steps, lr, batch_size, seed)
    ts = torch.linspace(0, 1, int(points), dtype=torch.float64)
    losses = torch.stack([path_losses(net, bezier(a, c, b, torch.tensor([t])), x, y, bn_x, eval_batch_size)
                          for t in ts.tolist()])  # [T, P]
    mid = (losses[0] + losses[-1]) / 2
    j = (mid - losses).abs().argmax(dim=0)  # [P]
    at = losses.gather(0, j.view(1, -1)).squeeze(0)
    return ModeConnectivityResult(mid - at, ts[j], ts, losses, c)
