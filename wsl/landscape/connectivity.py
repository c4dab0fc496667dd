"""Connectivity of seed replicas: linear-interpolation barrier and Bézier mode connectivity.

Pairs are stacked like a population: endpoint A {name: [P, ...]} and endpoint B {name: [P, ...]}
hold P pairs, and every point of every path is evaluated for all pairs in one vmapped call, in
eval mode. Nets with BatchNorm first get their running statistics recomputed on train inputs at
every point (`bn_reset=True`, the default: batchnorm.population_reset_bn_stats, vmapped over the
pairs too); with `bn_reset=False` a point keeps the interpolated stored statistics, which is what
a reset avoids: the variance collapse REPAIR (Jordan et al. 2023) describes then shows up as a
barrier. Results carry `bn`, the record of the reset (None for nets without BatchNorm).

The loss along a path is the zoo's training loss (`loss`, wsl.landscape.losses: the mean cross-entropy by
default; a PINN's residual + initial + boundary terms, which has no accuracy: NaN).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from wsl.errors import ConfigError
from wsl.landscape.batchnorm import fresh_buffers, has_batchnorm, population_reset_bn_stats, reset_record
from wsl.landscape.losses import CROSS_ENTROPY
from wsl.population.functional import batches, float_keys


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


@dataclass
class PathPoints:
    """Loss and accuracy of P stacked points, and how their BatchNorm statistics were set."""

    loss: torch.Tensor  # [P] float64 loss (the mean cross-entropy unless another loss is given)
    accuracy: torch.Tensor  # [P] float64 (NaN for a loss without one: a PINN's)
    bn: dict | None  # None: no BatchNorm; {"reset": False}; or reset_record(...) of the train inputs used


@torch.no_grad()
def path_points(net: nn.Module, points: dict, x: torch.Tensor, y: torch.Tensor, bn_x: torch.Tensor | None = None,
                batch_size: int | None = None, *, bn_reset: bool = True,
                bn_batch_size: int | None = None, loss=None) -> PathPoints:
    """Loss and accuracy of each stacked point {name: [P, ...]} on (x, y), in eval mode; `loss` a
    wsl.landscape.losses loss (None: the mean cross-entropy).

    With BatchNorm and bn_reset, each point's running statistics are first recomputed on train inputs
    bn_x, in batches of bn_batch_size (None: batch_size; both None: all at once); without bn_reset the
    point's own (interpolated) statistics are used. `net` may be a meta skeleton.
    """
    bn = None
    if has_batchnorm(net):
        if bn_reset:
            if bn_x is None:
                raise ConfigError("this net has BatchNorm: path losses need train inputs to reset its statistics")
            size = batch_size if bn_batch_size is None else bn_batch_size
            points = population_reset_bn_stats(net, points, bn_x, size)
            bn = reset_record(bn_x.shape[0], size)
        else:
            missing = [k for k, _ in net.named_buffers() if k not in points]
            if missing:
                raise ConfigError(f"bn_reset=false evaluates the stored BatchNorm statistics, but the state lacks "
                                  f"{missing[0]!r}: reset them on train data instead")
            bn = {"reset": False}
    loss = loss or CROSS_ENTROPY
    model = copy.deepcopy(net).eval()
    members = next(iter(points.values())).shape[0]
    total = torch.zeros(members, dtype=torch.float64, device=x.device)
    correct = torch.zeros(members, dtype=torch.float64, device=x.device)
    count = loss.count(x, y)  # predictions: samples (x positions, for a label per position)
    for sl in batches(x.shape[0], batch_size):
        share, right = loss.batch(model, points, x[sl], y[sl], count, sl.start == 0)
        total += share.double()
        correct = correct + right if right is not None else torch.full_like(correct, float("nan"))
    return PathPoints(total, correct / max(1, y.numel()), bn)


def path_losses(net: nn.Module, points: dict, x: torch.Tensor, y: torch.Tensor,
                bn_x: torch.Tensor | None = None, batch_size: int | None = None, *, bn_reset: bool = True,
                bn_batch_size: int | None = None, loss=None) -> torch.Tensor:
    """Loss of each stacked point {name: [P, ...]} on (x, y) -> [P] float64 (see path_points)."""
    return path_points(net, points, x, y, bn_x, batch_size, bn_reset=bn_reset, bn_batch_size=bn_batch_size,
                       loss=loss).loss


@dataclass
class BarrierResult:
    barrier: torch.Tensor  # [P] max_α L(α) - ((1-α) L(0) + α L(1))
    alphas: torch.Tensor  # [A]
    losses: torch.Tensor  # [A, P] loss along the straight line
    accuracies: torch.Tensor | None = None  # [A, P] accuracy along the straight line
    acc_barrier: torch.Tensor | None = None  # [P] max_α ((1-α) acc(0) + α acc(1)) - acc(α): the accuracy lost
    bn: dict | None = None  # the BatchNorm record of every point (path_points), None without BatchNorm


def _above_chord(values: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """max over the path of values [A, P] minus the chord between its ends -> [P]."""
    chord = torch.lerp(values[0].expand_as(values), values[-1].expand_as(values), alphas.view(-1, 1))
    return (values - chord).max(dim=0).values


def linear_barrier(net: nn.Module, a: dict, b: dict, x: torch.Tensor, y: torch.Tensor, points: int = 11,
                   bn_x: torch.Tensor | None = None, batch_size: int | None = None, *, bn_reset: bool = True,
                   bn_batch_size: int | None = None, loss=None) -> BarrierResult:
    """Loss (and accuracy) barrier on the straight line between A and B for every stacked pair; with
    BatchNorm, statistics reset on bn_x at every point unless bn_reset=False (see path_points). `loss`: a
    wsl.landscape.losses loss (None: the mean cross-entropy)."""
    alphas = torch.linspace(0, 1, int(points), dtype=torch.float64, device=x.device)
    evals = [path_points(net, lerp(a, b, al), x, y, bn_x, batch_size, bn_reset=bn_reset, bn_batch_size=bn_batch_size,
                         loss=loss) for al in alphas.tolist()]
    losses = torch.stack([e.loss for e in evals])
    accs = torch.stack([e.accuracy for e in evals])
    return BarrierResult(_above_chord(losses, alphas), alphas, losses, accs, _above_chord(-accs, alphas), evals[0].bn)


def fit_bezier(net: nn.Module, a: dict, b: dict, x: torch.Tensor, y: torch.Tensor, steps: int = 200,
               lr: float = 1e-2, batch_size: int = 128, seed: int = 0, loss=None) -> dict:
    """Train the control point C of a quadratic Bézier curve per pair (endpoints fixed).

    Objective (Garipov et al. 2018): E_{t~U[0,1]} L(φ(t)), minimized with Adam on minibatches of
    (x, y); C starts at the midpoint (A+B)/2, i.e. on the straight line. Returns C {name: [P, ...]}.
    L is `loss` (wsl.landscape.losses; None: the mean cross-entropy) on the minibatch, with every term not
    summed over samples (a PINN's initial and boundary terms) at every step, as in training.
    """
    loss = loss or CROSS_ENTROPY
    g = torch.Generator().manual_seed(int(seed))
    model = copy.deepcopy(net).train()  # BatchNorm: batch statistics of each pair's own point
    param_names = {k for k, _ in model.named_parameters()}
    keys = [k for k in float_keys(a) if k in param_names]  # BN buffers are recomputed, never trained
    c = {k: ((a[k] + b[k]) / 2).clone().requires_grad_(k in keys) if a[k].is_floating_point() else a[k]
         for k in a}
    opt = torch.optim.Adam([c[k] for k in keys], lr=lr, foreach=True)  # one call per step for all tensors
    n = x.shape[0]
    members = next(iter(a.values())).shape[0]
    # running statistics are updated in train mode but never read there: scratch buffers, per pair
    scratch = fresh_buffers({k: torch.empty((members, *v.shape), dtype=v.dtype, device=x.device)
                             for k, v in model.named_buffers()})
    for _ in range(int(steps)):
        idx = torch.randint(0, n, (min(int(batch_size), n),), generator=g).to(x.device)  # drawn on the CPU: any device, same draws
        # one point of the curve per step, shared by all pairs: a pair's trajectory is then the
        # same whether it is trained alone or stacked with others
        t = torch.rand(1, generator=g).to(x.device)
        theta = bezier(a, c, b, t)
        state = {**{k: theta[k] for k in param_names}, **scratch}
        xb, yb = x[idx], y[idx]
        total = loss.batch(model, state, xb, yb, loss.count(xb, yb), True)[0].sum()  # pairs are independent
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
    return {k: v.detach() for k, v in c.items()}


@dataclass
class ModeConnectivityResult:
    mc: torch.Tensor  # [P] ½(L(0)+L(1)) - L(t*): < 0 a barrier, > 0 endpoints underfit
    t_star: torch.Tensor  # [P] the point of the curve furthest from the endpoint average
    ts: torch.Tensor  # [T]
    losses: torch.Tensor  # [T, P] loss along the trained curve
    control: dict  # C {name: [P, ...]}
    bn: dict | None = None  # the BatchNorm record of every evaluated point (path_points), None without BatchNorm


def mode_connectivity(net: nn.Module, a: dict, b: dict, x: torch.Tensor, y: torch.Tensor, steps: int = 200,
                      lr: float = 1e-2, batch_size: int = 128, points: int = 21, seed: int = 0,
                      bn_x: torch.Tensor | None = None, eval_batch_size: int | None = None, *, bn_reset: bool = True,
                      bn_batch_size: int | None = None, loss=None) -> ModeConnectivityResult:
    """Mode connectivity along a trained quadratic Bézier curve (Yang et al. 2021 definition). The curve is
    trained with BatchNorm in train mode (batch statistics); each evaluated point gets its statistics
    reset on bn_x unless bn_reset=False (see path_points). `loss`: a wsl.landscape.losses loss (None: the mean
    cross-entropy), trained on and evaluated along the curve."""
    c = fit_bezier(net, a, b, x, y, steps, lr, batch_size, seed, loss)
    ts = torch.linspace(0, 1, int(points), dtype=torch.float64, device=x.device)
    evals = [path_points(net, bezier(a, c, b, torch.tensor([t], device=x.device)), x, y, bn_x, eval_batch_size, bn_reset=bn_reset,
                         bn_batch_size=bn_batch_size, loss=loss) for t in ts.tolist()]
    losses = torch.stack([e.loss for e in evals])  # [T, P]
    mid = (losses[0] + losses[-1]) / 2
    j = (mid - losses).abs().argmax(dim=0)  # [P]
    at = losses.gather(0, j.view(1, -1)).squeeze(0)
    return ModeConnectivityResult(mid - at, ts[j], ts, losses, c, evals[0].bn)
