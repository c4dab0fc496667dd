"""Physics-informed losses of a whole population: PDE residuals by automatic differentiation of every
member with respect to its inputs, inside the vmapped program.

The convection residual u_t + beta u_x of member k at point (x, t) is the derivative of member k's
output along the direction (beta, 1) of the input. `input_gradients` takes it as torch.func.grad of the
member's scalar output with respect to one input point, vmapped over the points and then over the
members (with their stacked parameters): one program for the population, differentiable with respect
to the parameters (training backpropagates through it; a member's residual depends on its own
parameters only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from wsl.population.functional import population_forward


def input_gradients(net: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
                    shared_input: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Every member's output u and its gradient du/dinput at every point.

    params {name: [P, ...]}; x [N, D] (shared) or [P, N, D] -> (u [P, N], du [P, N, D]). The net maps
    [n, D] to [n, 1]; each point is run alone (as a batch of one), so the derivative of a point never
    depends on the others, whatever the net."""
    def u(prm, point):
        out = functional_call(net, prm, (point[None],))[0, 0]
        return out, out

    def point(prm, pt):
        du, out = grad(u, argnums=1, has_aux=True)(prm, pt)
        return out, du

    per_point = vmap(point, in_dims=(None, 0))
    return vmap(per_point, in_dims=(0, None if shared_input else 0))(params, x)


def convection_residual(net: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, beta: float,
                        shared_input: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(u [P, N], residual u_t + beta u_x [P, N]) of every member at points x [N, 2] or [P, N, 2] (x, t)."""
    u, du = input_gradients(net, params, x, shared_input)
    return u, du[..., 1] + beta * du[..., 0]


@dataclass
class ConvectionLoss:
    """The physics-informed loss of the convection problem on one split's initial points and boundary pairs:
    mean squared residual at collocation points + initial-condition MSE + periodic-boundary MSE (weights 1),
    every member at once. Training (PopulationModule) and the landscape metrics (wsl.landscape.losses) both
    call it: the curvature, barriers and mode connectivity of a PINN zoo are those of its training loss."""

    beta: float
    initial_x: torch.Tensor  # [Ni, 2] points (x, 0)
    initial_u: torch.Tensor  # [Ni, 1] u(x, 0) there
    boundary_left: torch.Tensor  # [Nb, 2] points (0, t)
    boundary_right: torch.Tensor  # [Nb, 2] points (2 pi, t): u must agree with the left one

    @classmethod
    def of(cls, data, split: str) -> "ConvectionLoss":
        """The loss of a PINNData (wsl.data.convection) on `split`'s initial and boundary points."""
        return cls(float(data.beta), *data.initial(split), *data.boundary(split))

    def initial_and_boundary(self, net: nn.Module, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """(initial MSE [P], boundary MSE [P]) of every member."""
        ic = (population_forward(net, params, self.initial_x, shared_input=True) - self.initial_u).pow(2)
        left = self.boundary_left.shape[0]
        ends = population_forward(net, params, torch.cat([self.boundary_left, self.boundary_right]), shared_input=True)
        return ic.mean(dim=(1, 2)), (ends[:, :left] - ends[:, left:]).pow(2).mean(dim=(1, 2))

    def terms(self, net: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
              shared_input: bool = True) -> tuple[torch.Tensor, ...]:
        """(mean squared residual [P] at points x ([N, 2] shared or [P, N, 2] per member), initial MSE [P],
        boundary MSE [P], u at x [P, N]); the loss is the sum of the first three."""
        res, u = self.residual(net, params, x, shared_input)
        return (res, *self.initial_and_boundary(net, params), u)

    def residual(self, net: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
                 shared_input: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean squared residual [P] at points x, u at x [P, N]) of every member."""
        u, res = convection_residual(net, params, x, self.beta, shared_input)
        return res.pow(2).mean(1), u
