"""DeepSets over neurons (Zaheer et al. 2017), applied layer by layer to the hidden neurons.

The hidden neurons of one layer form a set: each neuron becomes a token, a shared network phi
embeds every token, the tokens are averaged (order-free), and rho maps the averages of all layers
to the prediction. A neuron's token must itself not depend on the order of the *neighbouring*
hidden layers, so its incoming and outgoing weights enter as follows:

- towards a fixed layer (the net's inputs or outputs): the raw weight vector, in its fixed order;
- towards a hidden layer: a set too, summarized by a mean of a small per-weight network
  (DeepSets of sets), which is unchanged when that layer is permuted.

Biases of the output layer (not permuted) enter rho directly. Invariant to all hidden permutations.
"""

from __future__ import annotations

import torch
from torch import nn

from wsl.encoders.common import mlp
from wsl.encoders.weightspace import WeightSpace, WSBatch, masked_mean


class DeepSets(nn.Module):
    invariant = True

    def __init__(self, space: WeightSpace, out_dim: int, hidden: int = 64, head_hidden: int = 128,
                 dropout: float = 0.0):
        super().__init__()
        self.L = L = space.num_layers
        n, K = space.sizes, space.kernel_numels
        self.edge_in, self.edge_out, self.phi = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
        for m in range(1, L):  # hidden neuron layers
            d = 1  # the bias
            if m == 1:
                d += n[0] * K[0]  # incoming weights from the fixed inputs, raw
            else:
                self.edge_in[str(m)] = mlp(K[m - 1], hidden, hidden, 2)
                d += hidden
            if m + 1 == L:
                d += n[L] * K[L - 1]  # outgoing weights to the fixed outputs, raw
            else:
                self.edge_out[str(m)] = mlp(K[m], hidden, hidden, 2)
                d += hidden
            self.phi[str(m)] = mlp(d, hidden, hidden, 2)
        rho_in = (L - 1) * hidden + n[L]  # one pooled set per hidden layer + the output biases
        if L == 1:  # a net without hidden layers has no set: its weights enter rho in their fixed order
            rho_in += n[1] * n[0] * K[0]
        self.rho = mlp(rho_in, head_hidden, out_dim, 3, dropout)

    def forward(self, batch: WSBatch) -> torch.Tensor:  # -> [B, out_dim]
        W, b, M = batch.weights, batch.biases, batch.masks
        bsz, L = batch.batch_size, self.L
        pooled = []
        for m in range(1, L):
            parts = [b[m - 1][..., None]]  # [B, n_m, 1]
            w_in = W[m - 1]  # [B, n_m, n_{m-1}, K]
            if m == 1:
                parts.append(w_in.flatten(2))
            else:  # set of incoming weights, over the hidden neurons of layer m-1
                parts.append(masked_mean(self.edge_in[str(m)](w_in), M[m - 1], dim=2))
            w_out = W[m].transpose(1, 2)  # [B, n_m, n_{m+1}, K]
            if m + 1 == L:
                parts.append(w_out.flatten(2))
            else:
                parts.append(masked_mean(self.edge_out[str(m)](w_out), M[m + 1], dim=2))
            tokens = self.phi[str(m)](torch.cat(parts, dim=-1))  # [B, n_m, hidden]
            pooled.append(masked_mean(tokens, M[m], dim=1))
        pooled.append(b[L - 1])
        if L == 1:
            pooled.append(W[0].reshape(bsz, -1))
        return self.rho(torch.cat(pooled, dim=-1))
