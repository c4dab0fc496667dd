"""Stacked parameters and the vmapped forward pass every population computation uses.

Parameters of a population are stacked: {name: Tensor[P, ...]} (P members, same architecture).
Training, landscape metrics, alignment and evaluation all compute every member in one vmapped program.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap


def stack_state_dicts(state_dicts: list[dict]) -> dict[str, torch.Tensor]:
    """[{name: T}] * P -> {name: T[P, ...]}."""
    if not state_dicts:
        raise ValueError("cannot stack an empty list of state dicts")
    return {k: torch.stack([sd[k] for sd in state_dicts]) for k in state_dicts[0]}


def unstack(params: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """{name: T[P, ...]} -> [{name: T}] * P (views, no copies)."""
    return [{k: v[i] for k, v in params.items()} for i in range(num_members(params))]


def num_members(params: dict[str, torch.Tensor]) -> int:
    return next(iter(params.values())).shape[0]


def split_state(net: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """A (stacked) state dict -> (parameters, buffers) by the names of `net`'s parameters."""
    names = {k for k, _ in net.named_parameters()}
    return {k: v for k, v in state.items() if k in names}, {k: v for k, v in state.items() if k not in names}


def float_keys(params: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating tensors (parameters and BN running statistics; not integer counters)."""
    return [k for k, v in params.items() if v.is_floating_point()]


def batches(n: int, batch_size: int | None) -> Iterator[slice]:
    """Contiguous slices covering range(n); batch_size None or <= 0 means one batch."""
    step = n if not batch_size or batch_size <= 0 else int(batch_size)
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def psnr(mse: torch.Tensor, value_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of a mean squared error, for values spanning `value_range`
    ([-1, 1] -> 2): 10 log10(range^2 / mse)."""
    return 10 * torch.log10(value_range**2 / mse.clamp_min(1e-12))


def skeleton(net: nn.Module) -> nn.Module:
    """A parameter-free copy of `net` on the meta device, for functional_call."""
    return copy.deepcopy(net).to("meta")


def population_forward(net: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
                       shared_input: bool | None = None, method: str = "forward",
                       buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Outputs of every member: params {name: [P, ...]}, x [N, ...] (shared) or [P, N, ...] -> [P, N, out].

    `net` may be a real module or a meta skeleton; only its structure is used. `method="features"`
    returns penultimate activations instead of logits. `buffers` {name: [P, ...]} (BatchNorm running
    statistics; they may also be given inside `params`): member k uses row k, read in eval mode and
    updated in place in train mode (row k by member k's batch statistics only).
    """
    if buffers:
        params = {**params, **buffers}
    p = num_members(params)
    if shared_input is None:
        shared_input = not (x.dim() >= 2 and x.shape[0] == p and x.dim() == len(getattr(net, "in_shape", ())) + 2)

    def one(prm, xb):
        if method == "forward":
            return functional_call(net, prm, (xb,))
        # functional_call only calls forward(); swap params in and call another method with the same trick
        return functional_call(_MethodAdapter(net, method), {f"net.{k}": v for k, v in prm.items()}, (xb,))

    return vmap(one, in_dims=(0, None if shared_input else 0))(params, x)


class _MethodAdapter(nn.Module):
    def __init__(self, net, method):
        super().__init__()
        self.net, self.method = net, method

    def forward(self, x):
        return getattr(self.net, self.method)(x)


def member_loss(net: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Mean cross-entropy of one member: params {name: T}, x [N, ...], y [N] (or [N, T]: a label per
    position, next-token prediction, the mean over every position) -> scalar.

    Buffers (e.g. BatchNorm running statistics) are passed apart so that derivatives are taken
    with respect to the parameters only.
    """
    out = functional_call(net, {**params, **(buffers or {})}, (x,))
    return F.cross_entropy(out.flatten(0, -2), y.flatten())


@torch.no_grad()
def population_loss(net: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                    batch_size: int | None = None, buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Mean cross-entropy of every member over shared (x [N, ...], y [N] or [N, T]: the mean over every
    position) -> [P] (float64 accumulation). `buffers`: stacked BatchNorm statistics, as for population_forward."""
    total = torch.zeros(num_members(params), dtype=torch.float64, device=x.device)
    for sl in batches(x.shape[0], batch_size):
        logits = population_forward(net, params, x[sl], shared_input=True, buffers=buffers)  # [P, n, (T,) C]
        total += stacked_nll(logits, y[sl]).double().sum(1)
    return total / max(1, y.numel())


def stacked_nll(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every member at every prediction: logits [P, n, C] with labels y [n], or
    [P, n, T, C] with y [n, T] (a label per position) -> [P, n * T]."""
    p = logits.shape[0]
    return F.cross_entropy(logits.flatten(0, -2), y.expand(p, *y.shape).flatten(), reduction="none").view(p, -1)


@torch.no_grad()
def population_outputs(net: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
                       representation: str = "logits", batch_size: int | None = None,
                       buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Outputs of every member on shared inputs: [P, N, C] logits or [P, N, width] features.
    `buffers`: stacked BatchNorm statistics, as for population_forward."""
    method = {"logits": "forward", "features": "features"}[representation]
    outs = [population_forward(net, params, x[sl], shared_input=True, method=method, buffers=buffers)
            for sl in batches(x.shape[0], batch_size)]
    return torch.cat(outs, dim=1)
