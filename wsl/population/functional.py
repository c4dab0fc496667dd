"""Stacked parameters and the vmapped forward pass every population computation uses."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, vmap


def stack_state_dicts(state_dicts: list[dict]) -> dict[str, torch.Tensor]:
    """[{name: T}] * P -> {name: T[P, ...]}."""
    if not state_dicts:
        raise ValueError("cannot stack an empty list of state dicts")
    return {k: torch.stack([sd[k] for sd in state_dicts]) for k in state_dicts[0]}


def unstack(params: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """{name: T[P, ...]} -> [{name: T}] * P (views, no copies)."""
    n = next(iter(params.values())).shape[0]
    return [{k: v[i] for k, v in params.items()} for i in range(n)]


def psnr(mse: torch.Tensor, value_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of a mean squared error, for values spanning `value_range`
    ([-1, 1] -> 2): 10 log10(range^2 / mse)."""
    return 10 * torch.log10(value_range**2 / mse.clamp_min(1e-12))


def skeleton(net: nn.Module) -> nn.Module:
    """A parameter-free copy of `net` on the meta device, for functional_call."""
    return copy.deepcopy(net).to("meta")


def population_forward(net: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
                       shared_input: bool | None = None, method: str = "forward") -> torch.Tensor:
    """Outputs of every member: params {name: [P, ...]}, x [N, ...] (shared) or [P, N, ...] -> [P, N, out].

    `net` may be a real module or a meta skeleton; only its structure is used. `method="features"`
    returns penultimate activations instead of logits.
    """
    p = next(iter(params.values())).shape[0]
    if shared_input is None:
        shared_input = not (x.dim() >= 2 and x.shape[0] == p and x.dim() == len(getattr(net, "in_shape", ())) + 2)

    def one(prm, xb):
        if method == "forward":
            return functional_call(net, prm, (xb,))
        return _call_method(net, prm, xb, method)

    return vmap(one, in_dims=(0, None if shared_input else 0))(params, x)


def _call_method(net, prm, xb, method):
    # functional_call only calls forward(); swap params in and call another method with the same trick
    return functional_call(_MethodAdapter(net, method), {f"net.{k}": v for k, v in prm.items()}, (xb,))


class _MethodAdapter(nn.Module):
    def __init__(self, net, method):
        super().__init__()
        self.net, self.method = net, method

    def forward(self, x):
        return getattr(self.net, self.method)(x)
