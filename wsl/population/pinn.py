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

import torch
from torch import nn
from torch.func import functional_call, grad, vmap


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
