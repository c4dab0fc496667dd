"""Losses of stacked populations: the one place where landscape code calls a net.

Parameters of a population are stacked: {name: Tensor[P, ...]} (P members, same architecture).
Every metric is written for one member and vmapped over P, so a population costs one program.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap


# Local twins of wsl.population.functional: importing that package loads Lightning (seconds),
# which a metric over stored weights does not need.
def stack_states(states: list[dict]) -> dict[str, torch.Tensor]:
    """[{name: T}] * P -> {name: T[P, ...]}."""
    return {k: torch.stack([sd[k] for sd in states]) for k in states[0]}


def unstack(params: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """{name: T[P, ...]} -> [{name: T}] * P (views)."""
    return [{k: v[i] for k, v in params.items()} for i in range(num_members(params))]


def num_members(params: dict[str, torch.Tensor]) -> int:
    return next(iter(params.values())).shape[0]


class _Method(nn.Module):
    """Calls another method of `net` under functional_call (which only calls forward)."""

    def __init__(self, net: nn.Module, method: str):
        super().__init__()
        self.net, self.method = net, method

    def forward(self, x):
        return getattr(self.net, self.method)(x)


def population_forward(net: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
                       method: str = "forward") -> torch.Tensor:
    """Every member on shared inputs: params {name: [P, ...]}, x [N, ...] -> [P, N, out]."""
    if method == "forward":
        return vmap(lambda prm: functional_call(net, prm, (x,)))(params)
    wrapped = _Method(net, method)
    return vmap(lambda prm: functional_call(wrapped, {f"net.{k}": v for k, v in prm.items()}, (x,)))(params)


def member_loss(net: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Mean cross-entropy of one member: params {name: T}, x [N, ...], y [N] -> scalar.

    Buffers (e.g. BatchNorm running statistics) are passed apart so that derivatives are taken
    with respect to the parameters only.
    """
    return F.cross_entropy(functional_call(net, {**params, **(buffers or {})}, (x,)), y)


def split_state(net: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """A (stacked) state dict -> (parameters, buffers) by the names of `net`'s parameters."""
    names = {k for k, _ in net.named_parameters()}
    return {k: v for k, v in state.items() if k in names}, {k: v for k, v in state.items() if k not in names}


def batches(n: int, batch_size: int | None) -> Iterator[slice]:
    """Contiguous slices covering range(n); batch_size None or <= 0 means one batch."""
    step = n if not batch_size or batch_size <= 0 else int(batch_size)
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


@torch.no_grad()
def population_loss(net: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                    batch_size: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of every member over (x [N, ...], y [N]) -> [P] (float64 accumulation)."""
    total = torch.zeros(num_members(params), dtype=torch.float64)
    for sl in batches(x.shape[0], batch_size):
        logits = population_forward(net, params, x[sl])  # [P, n, C]
        nll = F.cross_entropy(logits.flatten(0, 1), y[sl].repeat(logits.shape[0]), reduction="none")
        total += nll.view(logits.shape[0], -1).double().sum(1)
    return total / x.shape[0]


@torch.no_grad()
def population_outputs(net: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
                       representation: str = "logits", batch_size: int | None = None) -> torch.Tensor:
    """Outputs of every member on shared inputs: [P, N, C] logits or [P, N, width] features."""
    method = {"logits": "forward", "features": "features"}[representation]
    outs = [population_forward(net, params, x[sl], method)
            for sl in batches(x.shape[0], batch_size)]
    return torch.cat(outs, dim=1)


def float_keys(params: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating tensors (parameters and BN running statistics; not integer counters)."""
    return [k for k, v in params.items() if v.is_floating_point()]
