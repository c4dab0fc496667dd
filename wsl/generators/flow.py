"""Conditional flow matching with straight (rectified-flow) paths and an ODE sampler.

Training (Lipman et al. 2023; Liu et al. 2023): draw noise x0 ~ N(0, I) and data x1, a time
t ~ U(0, 1), the point x_t = (1 - (1 - σ_min) t) x0 + t x1 on the straight path between them,
and regress the network on the path's velocity u = x1 - (1 - σ_min) x0. With minibatch OT
pairing (Tong et al. 2024; Pooladian et al. 2023) the noise of a batch is first re-assigned to
the data by an exact assignment minimizing the summed squared distances, which straightens the
learned flow so that fewer ODE steps suffice. With a condition, noise is only exchanged between
rows of equal condition (so a continuous condition turns the pairing off): a coupling across
conditions would not keep N(0, I) as each condition's noise distribution.

Sampling integrates dx/dt = v(x, t) from t=0 (noise) to t=1 (data) with Euler or Heun steps.

Two parameterizations of the same flow: the network predicts the velocity v (`prediction=
"velocity"`), or the clean data x̂1 (`prediction="data"`), from which v = (x̂1 - (1 - σ_min) x_t) /
(1 - (1 - σ_min) t). Data prediction suits weights: a network whose hidden layer is narrower than
the weight vector cannot pass the noise part of x_t through to a velocity, but it can output a
point near the (low-dimensional) set of training nets. Its loss is the unweighted MSE on x̂1.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from wsl.errors import ConfigError
from wsl.generators.denoisers import guided
from wsl.generators.schema import FLOW_SOLVERS as SOLVERS


def ot_pairing(x0: torch.Tensor, x1: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Reorder the noise x0 [B, D] so that sum_i |x0'_i - x1_i|^2 is minimal over all permutations.

    groups [B] (optional, integer labels): noise is only exchanged between rows of the same
    group. A conditional flow needs this: pairing across conditions would give each condition a
    noise distribution other than N(0, I), the one it is sampled from.
    """
    order = torch.arange(x0.shape[0])
    labels = torch.zeros(x0.shape[0], dtype=torch.long) if groups is None else groups.detach().cpu()
    for g in labels.unique():
        idx = (labels == g).nonzero().flatten()  # [b]
        if idx.numel() < 2:
            continue
        cost = torch.cdist(x0[idx].detach().double(), x1[idx].detach().double()).pow(2).cpu().numpy()  # [b, b]
        rows, cols = linear_sum_assignment(cost)
        sub = np.empty_like(cols)
        sub[cols] = rows  # data row j of the group is paired with noise row sub[j]
        order[idx] = idx[torch.as_tensor(sub)]
    return x0[order.to(x0.device)]


def condition_groups(cond: torch.Tensor | None, drop: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """Integer labels [B] of rows that share one condition (dropped rows form one group), or None."""
    if cond is None:
        return None
    key = cond.detach().cpu().double()
    if drop is not None:  # a dropped row's key: (1, 0, ..., 0); a kept row's: (0, its condition)
        d = drop.detach().cpu()[:, None]
        key = torch.cat([d.double(), torch.where(d, 0.0, key)], dim=1)
    return torch.unique(key, dim=0, return_inverse=True)[1]


class FlowMatching:
    """Rectified flow / conditional flow matching; `steps` and `solver` are the sampler's defaults.
    Its options are checked by wsl.generators.schema.FlowMatchingConfig (a config, a loaded run)."""

    name = "flow"

    def __init__(self, ot_pairing: bool = True, sigma_min: float = 0.0, steps: int = 10, solver: str = "heun",
                 prediction: str = "data"):
        self.prediction, self.ot_pairing, self.sigma_min = prediction, bool(ot_pairing), float(sigma_min)
        self.steps, self.solver = steps, solver

    def loss(self, net, x1: torch.Tensor, cond=None, drop=None) -> torch.Tensor:
        """Mean squared error of the predicted velocity (or data) on random points of the paths. x1: [B, D]."""
        x0 = torch.randn_like(x1)
        if self.ot_pairing and x1.shape[0] > 1:
            x0 = ot_pairing(x0, x1, condition_groups(cond, drop, x1.shape[0]))
        t = torch.rand(x1.shape[0], device=x1.device, dtype=x1.dtype)  # [B]
        tt = t[:, None]
        xt = (1 - (1 - self.sigma_min) * tt) * x0 + tt * x1
        target = x1 - (1 - self.sigma_min) * x0 if self.prediction == "velocity" else x1
        return torch.nn.functional.mse_loss(net(xt, t, cond, drop), target)

    def velocity(self, net, x, t, cond=None, guidance: float = 1.0, final: bool = False):
        """v(x, t) [n, D] at times t [n] (guided). `final`: t = 1 exactly, where a data-predicting
        flow with σ_min = 0 has no finite velocity: the caller must not take that slope."""
        out = guided(net, x, t, cond, guidance)
        if self.prediction == "velocity":
            return out
        if final and self.sigma_min == 0.0:
            raise ValueError("the velocity of a data-predicting flow at t=1 is undefined for sigma_min=0")
        return (out - (1 - self.sigma_min) * x) / (1 - (1 - self.sigma_min) * t[:, None])

    @torch.no_grad()
    def sample(self, net, noise: torch.Tensor, cond=None, guidance: float = 1.0, steps: int | None = None,
               solver: str | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Integrate the learned ODE from `noise` [n, D] at t=0 to samples [n, D] at t=1.

        `generator` is unused (the ODE is deterministic); accepted for a common signature with DDIM.
        """
        steps = self.steps if steps is None else steps
        solver = self.solver if solver is None else solver
        if solver not in SOLVERS:
            raise ConfigError(f"solver={solver!r} is unknown; valid: {', '.join(SOLVERS)}")
        x, n = noise, noise.shape[0]
        ts = torch.linspace(0.0, 1.0, steps + 1, device=x.device, dtype=x.dtype)
        for i in range(steps):
            t0, t1 = ts[i], ts[i + 1]
            h = t1 - t0
            v0 = self.velocity(net, x, t0.expand(n), cond, guidance)
            last = i == steps - 1
            if solver == "euler" or (last and self.prediction == "data" and self.sigma_min == 0.0):
                x = x + h * v0  # (a data-predicting flow ends with an Euler step, like EDM's last step)
            else:  # Heun: trapezoid of the slopes at both ends (second order)
                v1 = self.velocity(net, x + h * v0, t1.expand(n), cond, guidance, final=last)
                x = x + 0.5 * h * (v0 + v1)
        return x

    def kwargs(self) -> dict:
        """Constructor arguments (stored with a generator run)."""
        return {"ot_pairing": self.ot_pairing, "sigma_min": self.sigma_min, "steps": self.steps,
                "solver": self.solver, "prediction": self.prediction}
