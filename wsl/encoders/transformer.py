"""Transformer over neuron tokens with weights as relational attention biases (the relational
transformer of Neural Graphs, Kofinas et al. 2024; cf. Diao & Loynd 2023).

Tokens: every neuron of every set (wsl.encoders.weightspace: one token per channel of a residual
stream, shared by every layer that reads or writes it), with its per-unit features (biases,
BatchNorm scale and shift), an embedding of its set and a position embedding for input and
output neurons only. Attention runs over all tokens of a net; the weight between two connected
neurons enters as an edge feature of that token pair:
  logits_ij = q_i . k_j / sqrt(d) + w_h . e~_ij          (a bias per head)
  out_i     = sum_j a_ij (V x_j) + U sum_j a_ij e~_ij     (edge values, summed before projecting)
where e~_ij = MLP(weight) for an incoming edge, another MLP for an outgoing one (direction matters),
plus a learned embedding of the pair's kind: the same neuron, unconnected, or incoming / outgoing
through weight tensor l (one kind per tensor and direction).
Without positions on permuted tokens, attention is permutation equivariant; the readout (mean of
each set's tokens) is invariant. Padded neurons are excluded as keys and from the readout.
`fold_fixed` (wsl.encoders.common.NeuronEmbedding): a hidden neuron's weights to and from the fixed
inputs and outputs also enter its token as a vector in their fixed order.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from wsl.encoders.common import NeuronEmbedding, mlp, pad_kernel, pooled_sets, readout_norm
from wsl.encoders.weightspace import WeightSpace, WSBatch

# token-pair kinds: then INCOMING + 2 l and INCOMING + 2 l + 1 (outgoing) through weight tensor l
UNCONNECTED, SELF, INCOMING = 0, 1, 2


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
                 edge_dim: int = 16, head_hidden: int = 128, dropout: float = 0.0, norm_readout: bool = True,
                 fold_fixed: bool = False):
        super().__init__()
        self.k_max = max(space.kernel_numels)
        self.sizes = list(space.sizes)
        self.links = [(e.out, e.inp) for e in space.edges]
        self.tokens = NeuronEmbedding(space, dim, fold_fixed)
        self.edge_in = mlp(self.k_max, edge_dim, edge_dim, 2)
        self.edge_out = mlp(self.k_max, edge_dim, edge_dim, 2)
        self.kind_emb = nn.Embedding(INCOMING + 2 * len(space.edges), edge_dim)
        self.register_buffer("kinds", self._kinds(space), persistent=False)
        self.blocks = nn.ModuleList(RelationalBlock(dim, heads, edge_dim, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.readout_norm = readout_norm(len(space.sizes) * dim, norm_readout)
        self.head = mlp(len(space.sizes) * dim, head_hidden, out_dim, 3, dropout)

    @staticmethod
    def _kinds(space: WeightSpace) -> torch.Tensor:
        """[N, N] kind of every token pair (row = receiving token i, column = sending token j)."""
        off = [0]
        for n in space.sizes:
            off.append(off[-1] + n)
        kinds = torch.full((off[-1], off[-1]), UNCONNECTED, dtype=torch.long)
        for l, e in enumerate(space.edges):
            kinds[off[e.out]:off[e.out + 1], off[e.inp]:off[e.inp + 1]] = INCOMING + 2 * l  # i reads j through l
            kinds[off[e.inp]:off[e.inp + 1], off[e.out]:off[e.out + 1]] = INCOMING + 2 * l + 1  # i feeds j
        kinds.fill_diagonal_(SELF)
        return kinds

    def edges(self, batch: WSBatch) -> torch.Tensor:
        """Dense token-pair features [B, N, N, D]: assembled block by block with cat (in-place writes
        into one big tensor would cost a full copy per block in the backward pass). A block of two
        sets sums the features of every weight tensor between them (one, in wsl's nets)."""
        blocks: dict = {}
        for w, (o, i) in zip(batch.edges, self.links):
            w = pad_kernel(w, self.k_max)  # [B, n_out, n_in, K]
            blocks.setdefault((o, i), []).append(self.edge_in(w))  # row: the output set, column: the input set
            blocks.setdefault((i, o), []).append(self.edge_out(w.transpose(1, 2)))
        bsz, d = batch.batch_size, self.kind_emb.embedding_dim

        def block(m: int, c: int) -> torch.Tensor:  # rows: set m, columns: set c
            parts = blocks.get((m, c))
            if parts is None:
                return self.kind_emb.weight.new_zeros(bsz, self.sizes[m], self.sizes[c], d)
            return parts[0] if len(parts) == 1 else torch.stack(parts).sum(0)

        sets = range(len(self.sizes))
        rows = [torch.cat([block(m, c) for c in sets], dim=2) for m in sets]
        return torch.cat(rows, dim=1) + self.kind_emb(self.kinds)

    def forward(self, batch: WSBatch) -> torch.Tensor:  # -> [B, out_dim]
        x = torch.cat(self.tokens(batch), dim=1)  # [B, N, dim]
        mask = torch.cat(batch.masks, dim=1)  # [B, N]
        e = self.edges(batch)
        for block in self.blocks:
            x = block(x, e, mask)
        feats = list(torch.split(self.norm(x), self.sizes, dim=1))
        return self.head(self.readout_norm(pooled_sets(feats, batch.masks)))
