"""Per-layer weight statistics (StatNN, Unterthiner et al. 2020, "Predicting Neural Network
Accuracy from Weights").

For every layer, of its weights and of its biases separately: mean, variance and the 0/25/50/75/100
percentiles (7 numbers each), concatenated and fed to an MLP. Statistics of a tensor do not depend
on the order of its entries, so the encoder is invariant to every permutation. Padded entries are
excluded (NaN for the quantiles, masked for the moments).
"""

from __future__ import annotations

import torch
from torch import nn

from wsl.encoders.common import mlp
from wsl.encoders.weightspace import WeightSpace, WSBatch

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


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
        n_feat = 2 * len(QUANTILES + (0, 0)) * space.num_layers
        # the statistics differ in scale by orders of magnitude (a variance vs a maximum): normalize
        # each feature with running statistics of the training nets
        self.norm = nn.BatchNorm1d(n_feat, affine=False)
        self.net = mlp(n_feat, hidden, out_dim, layers, dropout)

    def features(self, batch: WSBatch) -> torch.Tensor:  # -> [B, 14 L]
        feats = []
        for l, (w, b) in enumerate(zip(batch.weights, batch.biases)):
            m_out, m_in = batch.masks[l + 1], batch.masks[l]
            wm = (m_out[:, :, None, None] * m_in[:, None, :, None]).expand_as(w)
            feats += [tensor_stats(w.flatten(1), wm.flatten(1)), tensor_stats(b, m_out)]
        return torch.cat(feats, dim=1)

    def forward(self, batch: WSBatch) -> torch.Tensor:  # -> [B, out_dim]
        return self.net(self.norm(self.features(batch)))
