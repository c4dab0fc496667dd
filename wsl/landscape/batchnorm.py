"""BatchNorm running statistics along a path in weight space.

Mixing the weights of two nets mixes their features, so the running statistics stored with
either endpoint (or their average) no longer match the activations: without a reset, barriers
measure the stale statistics rather than the landscape. The reset recomputes them exactly as
the plain average over the given train inputs (momentum=None is a cumulative average).
"""

from __future__ import annotations

import torch
from torch import nn

from wsl.population.functional import batches

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def batchnorm_layers(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in net.modules() if isinstance(m, _BN) and m.track_running_stats]


def has_batchnorm(net: nn.Module) -> bool:
    return bool(batchnorm_layers(net))


@torch.no_grad()
def reset_bn_stats(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> nn.Module:
    """Recompute every BatchNorm's running mean/var from train inputs x [N, ...]; returns model in eval mode.

    With batch_size None the statistics are those of all N inputs at once (exact mean and
    unbiased variance); with batches, the average of the batch statistics.
    """
    layers = batchnorm_layers(model)
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the forward passes below
    model.train()
    try:
        for sl in batches(x.shape[0], batch_size):
            model(x[sl])
    finally:
        for m, mom in zip(layers, momenta):
            m.momentum = mom
        model.eval()
    return model
