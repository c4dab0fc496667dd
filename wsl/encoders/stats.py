"""Per-tensor weight statistics (StatNN, Unterthiner et al. 2020, "Predicting Neural Network
Accuracy from Weights").

For every tensor of the net (each layer's weight and bias, each BatchNorm's scale and shift): mean,
variance and the 0/25/50/75/100 percentiles (7 numbers each), concatenated and fed to an MLP.
Statistics of a tensor do not depend on the order of its entries, so the encoder is invariant to
every permutation, residual ones included. Padded entries are excluded (NaN for the quantiles,
masked for the moments).
"""

from __future__ import annotations

import torch
from torch import nn

from wsl.encoders.common import mlp
from wsl.encoders.weightspace import WeightSpace, WSBatch

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
STATS = 2 + len(QUANTILES)


def tensor_stats(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x, mask [B, N] (mask 1 = real entry) -> [B, 7]: mean, var, 5 quantiles of the real entries."""
    cnt = mask.sum(1).clamp_min(1)
    mean = (x * mask).sum(1) / cnt
    var = ((x - mean[:, None]).pow(2) * mask).sum(1) / cnt
    q = torch.nanquantile(x.masked_fill(mask == 0, float("nan")),
                          torch.tensor(QUANTILES, dtype=x.dtype, device=x.device), dim=1)  # [5, B]
    return torch.cat([mean[:, None], var[:, None], q.T.nan_to_num(0.0)], dim=1)


class StatNN(nn.Module):
    invariant = True

    def __init__(self, space: WeightSpace, out_dim: int, hidden: int = 128, layers: int = 3, dropout: float = 0.0):
        super().__init__()
        self.links = [(e.out, e.inp) for e in space.edges]
        self.sets = [n.set for n in space.nodes]
        n_feat = STATS * (len(space.edges) + len(space.nodes))
        # the statistics differ in scale by orders of magnitude (a variance vs a maximum): normalize
        # each feature with running statistics of the training nets
        self.norm = nn.BatchNorm1d(n_feat, affine=False)
        self.net = mlp(n_feat, hidden, out_dim, layers, dropout)

    def features(self, batch: WSBatch) -> torch.Tensor:  # -> [B, 7 (weight tensors + per-unit tensors)]
        M = batch.masks
        feats = [tensor_stats(w.flatten(1), (M[o][:, :, None, None] * M[i][:, None, :, None]).expand_as(w).flatten(1))
                 for w, (o, i) in zip(batch.edges, self.links)]
        feats += [tensor_stats(b, M[m]) for b, m in zip(batch.nodes, self.sets)]
        return torch.cat(feats, dim=1)

    def forward(self, batch: WSBatch) -> torch.Tensor:  # -> [B, out_dim]
        return self.net(self.norm(self.features(batch)))
