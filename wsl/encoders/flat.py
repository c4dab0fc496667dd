"""Flattened-weights MLP: the baseline that ignores the permutation symmetry.

Every tensor of a net (weights, biases, BatchNorm scales and shifts) concatenated into one vector
and fed to an MLP. It is the only encoder here that is not invariant to hidden-unit permutations (a
permuted net is a different input vector); on INR classification it reaches ~18% where
permutation-aware encoders reach 90%+. Any architecture a WeightSpace reads, residual nets included,
is a vector to it.
"""

from __future__ import annotations

import torch
from torch import nn

from wsl.encoders.common import mlp
from wsl.encoders.weightspace import WeightSpace, WSBatch


class FlatMLP(nn.Module):
    invariant = False

    def __init__(self, space: WeightSpace, out_dim: int, hidden: int = 256, layers: int = 3, dropout: float = 0.1):
        super().__init__()
        in_dim = sum(space.sizes[e.out] * space.sizes[e.inp] * e.kernel_numel for e in space.edges)
        in_dim += sum(space.sizes[n.set] for n in space.nodes)
        self.net = mlp(in_dim, hidden, out_dim, layers, dropout)

    def forward(self, batch: WSBatch) -> torch.Tensor:  # -> [B, out_dim]
        return self.net(torch.cat([t.flatten(1) for t in (*batch.edges, *batch.nodes)], dim=1))
