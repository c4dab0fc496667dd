"""BatchNorm running statistics along a path in weight space.

Mixing the weights of two nets mixes their features, so the running statistics stored with
either endpoint (or their average) no longer match the activations: without a reset, barriers
measure the stale statistics rather than the landscape (the variance collapse REPAIR, Jordan et
al. 2023, describes). The reset recomputes them from train inputs: train-mode forward passes over
contiguous batches, each batch weighted by its size (batch i updates with momentum
n_i / (n_1 + ... + n_i)), so the running mean is the exact mean over all inputs and the running
variance the size-weighted average of the batches' unbiased variances (exact with one batch).
`reset_bn_stats` does this on one module; `population_reset_bn_stats` on a stacked population
{name: [P, ...]} in one vmapped program per batch (the same numbers, member by member).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, vmap

from wsl.population.functional import batches, split_state

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def batchnorm_layers(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in net.modules() if isinstance(m, _BN) and m.track_running_stats]


def has_batchnorm(net: nn.Module) -> bool:
    return bool(batchnorm_layers(net))


def _schedule(n: int, batch_size: int | None) -> list[tuple[slice, float]]:
    """(batch, momentum) pairs: momentum n_i / (inputs seen so far) makes the running mean the exact
    mean over all n inputs, whatever the size of the last batch (one input left over joins the batch
    before it: train-mode BatchNorm has no variance of a single value)."""
    slices = list(batches(n, batch_size))
    if len(slices) > 1 and slices[-1].stop - slices[-1].start == 1:
        slices[-2:] = [slice(slices[-2].start, n)]
    out, seen = [], 0
    for sl in slices:
        seen += sl.stop - sl.start
        out.append((sl, (sl.stop - sl.start) / seen))
    return out


def reset_record(n: int, batch_size: int | None) -> dict:
    """What a reset on n train inputs in batches of `batch_size` (None: one batch) does, for provenance:
    {"reset": True, "samples": n, "batch_size": ..., "batches": ...}."""
    size = n if not batch_size or batch_size <= 0 else min(int(batch_size), n)
    return {"reset": True, "samples": int(n), "batch_size": int(size), "batches": len(_schedule(n, batch_size))}


def _check_inputs(x: torch.Tensor) -> None:
    if x.shape[0] < 2:
        raise ValueError(f"a BatchNorm reset needs at least 2 train inputs, got {x.shape[0]}")


@torch.no_grad()
def reset_bn_stats(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> nn.Module:
    """Recompute every BatchNorm's running mean/var from train inputs x [N, ...]; returns model in eval mode.

    With batch_size None the statistics are those of all N inputs at once (exact mean and
    unbiased variance); with batches, the size-weighted average of the batch statistics (the
    mean is still exact). Momenta are restored afterwards.
    """
    _check_inputs(x)
    layers = batchnorm_layers(model)
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
    model.train()
    try:
        for sl, momentum in _schedule(x.shape[0], batch_size):
            for m in layers:
                m.momentum = momentum
            model(x[sl])
    finally:
        for m, mom in zip(layers, momenta):
            m.momentum = mom
        model.eval()
    return model


def fresh_buffers(buffers: dict) -> dict:
    """Reset running statistics (mean 0, variance 1, no batches tracked) shaped like `buffers`."""
    out = {}
    for k, v in buffers.items():
        if k.endswith("running_var"):
            out[k] = torch.ones_like(v)
        else:  # running_mean, num_batches_tracked
            out[k] = torch.zeros_like(v)
    return out


@torch.no_grad()
def population_reset_bn_stats(net: nn.Module, state: dict, x: torch.Tensor, batch_size: int | None = None) -> dict:
    """`state` {name: [P, ...]} (parameters, and BatchNorm buffers or not, of P members of `net`'s
    architecture) with every member's running statistics recomputed on x [N, ...] exactly as
    `reset_bn_stats` does on that member alone; the parameters are the same tensors. `net` may be a
    meta skeleton."""
    _check_inputs(x)
    model = copy.deepcopy(net)
    layers = batchnorm_layers(model)
    params, buffers = split_state(model, state)
    first = next(iter(params.values()))
    # buffers the state lacks (a weights-only state: a flat weight vector, a generated net) are created
    new = fresh_buffers({k: buffers[k] if k in buffers else torch.empty((first.shape[0], *b.shape), dtype=b.dtype,
                                                                        device=first.device)
                         for k, b in model.named_buffers()})

    def run(p, b, xb):
        return functional_call(model, {**p, **b}, (xb,))  # train mode: updates b in place, member by member

    step = vmap(run, in_dims=(0, 0, None))
    model.train()
    for sl, momentum in _schedule(x.shape[0], batch_size):
        for m in layers:
            m.momentum = momentum
        step(params, new, x[sl])
    return {**params, **new}
