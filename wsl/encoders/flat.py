"""Flattened-weights MLP: the baseline that ignores the permutation symmetry.

All weights and biases of a net concatenated into one vector and fed to an MLP. It is the only
encoder here that is not invariant to hidden-unit permutations (a permuted net is a different
input vector); on INR classification it reaches ~18% where permutation-aware encoders reach 90%+.
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
        in_dim = sum(n_out * n_in * k + n_out for n_out, n_in, k in
                     zip(space.sizes[1:], space.sizes[:-1], space.kernel_numels))
        self.net = mlp(in_dim, hidden, out_dim, layers, dropout)

    def forward(self, batch: WSBatch) -> torch.Tensor:  # -> [B, out_dim]
        x = torch.cat([t.flatten(1) for w, b in zip(batch.weights, batch.biases) for t in (w, b)], dim=1)
        return self.net(x)
