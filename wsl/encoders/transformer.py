"""Transformer over neuron tokens with weights as relational attention biases (the relational
transformer of Neural Graphs, Kofinas et al. 2024; cf. Diao & Loynd 2023).

Tokens: every neuron of every layer (bias, layer embedding, and a position embedding for input and
output neurons only). Attention runs over all tokens of a net; the weight between two connected
neurons enters as an edge feature of that token pair:
  logits_ij = q_i . k_j / sqrt(d) + w_h . e~_ij          (a bias per head)
  out_i     = sum_j a_ij (V x_j) + U sum_j a_ij e~_ij     (edge values, summed before projecting)
where e~_ij = MLP(weight) for an incoming edge, another MLP for an outgoing one (direction matters),
and a learned per-kind embedding for token pairs that are the same neuron or unconnected.
Without positions on hidden tokens, attention is permutation equivariant; the readout (mean of each
neuron layer's tokens) is invariant. Padded neurons are excluded as keys and from the readout.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from wsl.encoders.common import NeuronEmbedding, mlp, pad_kernel, pooled_layers
from wsl.encoders.weightspace import WeightSpace, WSBatch

# token-pair kinds
UNCONNECTED, SELF, INCOMING, OUTGOING = 0, 1, 2, 3


class RelationalBlock(nn.Module):
    """Pre-norm transformer block whose attention reads edge features [B, N, N, D]."""

    def __init__(self, dim: int, heads: int, edge_dim: int, dropout: float = 0.0):
        super().__init__()
        self.h, self.dh = heads, dim // heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.edge_bias = nn.Linear(edge_dim, heads)
        self.edge_value = nn.Linear(heads * edge_dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.ff = mlp(dim, 2 * dim, dim, 2, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, edges: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        # x [B, N, dim], edges [B, N, N, D], key_mask [B, N] (1 = real token)
        bsz, n, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(bsz, n, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)  # [B, H, N, dh]
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.dh) + self.edge_bias(edges).permute(0, 3, 1, 2)
        logits = logits.masked_fill(key_mask[:, None, None, :] == 0, float("-inf"))
        a = self.drop(torch.softmax(logits, dim=-1))  # [B, H, N, N]
        out = (a @ v).transpose(1, 2).reshape(bsz, n, dim)
        # sum_j a_hij e_ij for every token i: batched over (B, N) as [H, N] @ [N, D] (no einsum copies)
        e_val = torch.matmul(a.transpose(1, 2), edges).reshape(bsz, n, -1)  # [B, N, H*D]
        x = x + self.drop(self.proj(out) + self.edge_value(e_val))
        return x + self.drop(self.ff(self.norm2(x)))


class NeuronTransformer(nn.Module):
    invariant = True

    def __init__(self, space: WeightSpace, out_dim: int, dim: int = 64, heads: int = 4, num_layers: int = 3,
                 edge_dim: int = 16, head_hidden: int = 128, dropout: float = 0.0):
        super().__init__()
        self.k_max = max(space.kernel_numels)
        self.sizes = list(space.sizes)
        self.tokens = NeuronEmbedding(space, dim)
        self.edge_in = mlp(self.k_max, edge_dim, edge_dim, 2)
        self.edge_out = mlp(self.k_max, edge_dim, edge_dim, 2)
        self.kind_emb = nn.Embedding(4, edge_dim)
        self.register_buffer("kinds", self._kinds(space.sizes), persistent=False)
        self.blocks = nn.ModuleList(RelationalBlock(dim, heads, edge_dim, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.head = mlp(len(space.sizes) * dim, head_hidden, out_dim, 3, dropout)

    @staticmethod
    def _kinds(sizes) -> torch.Tensor:
        """[N, N] kind of every token pair (row = receiving token i, column = sending token j)."""
        off = [0, *itertools.accumulate(sizes)]
        kinds = torch.full((off[-1], off[-1]), UNCONNECTED, dtype=torch.long)
        kinds.fill_diagonal_(SELF)
        for m in range(1, len(sizes)):
            kinds[off[m]:off[m + 1], off[m - 1]:off[m]] = INCOMING  # i in layer m, j in m-1
            kinds[off[m - 1]:off[m], off[m]:off[m + 1]] = OUTGOING  # i in m-1, j in m
        return kinds

    def edges(self, batch: WSBatch) -> torch.Tensor:
        """Dense token-pair features [B, N, N, D]: assembled block by block with cat (in-place writes
        into one big tensor would cost a full copy per block in the backward pass)."""
        w = [pad_kernel(x, self.k_max) for x in batch.weights]  # [B, n_l, n_{l-1}, K]
        e_in = [self.edge_in(x) for x in w]  # row layer l, column layer l-1
        e_out = [self.edge_out(x.transpose(1, 2)) for x in w]  # row layer l-1, column layer l

        def block(m: int, c: int) -> torch.Tensor:  # rows: neuron layer m, columns: neuron layer c
            if c == m - 1:
                return e_in[m - 1]
            if c == m + 1:
                return e_out[m]
            return e_in[0].new_zeros(batch.batch_size, self.sizes[m], self.sizes[c], e_in[0].shape[-1])

        layers = range(len(self.sizes))
        rows = [torch.cat([block(m, c) for c in layers], dim=2) for m in layers]
        return torch.cat(rows, dim=1) + self.kind_emb(self.kinds)

    def forward(self, batch: WSBatch) -> torch.Tensor:  # -> [B, out_dim]
        x = torch.cat(self.tokens(batch), dim=1)  # [B, N, dim]
        mask = torch.cat(batch.masks, dim=1)  # [B, N]
        e = self.edges(batch)
        for block in self.blocks:
            x = block(x, e, mask)
        feats = list(torch.split(self.norm(x), self.sizes, dim=1))
        return self.head(pooled_layers(feats, batch.masks))
