"""Graph encoder: a net as a graph, neurons as nodes and weights as edges, read by message passing
(Neural Graphs, Kofinas et al. 2024; Graph Metanetworks, Lim et al. 2024).

Nodes: every neuron of every layer, with its bias, an embedding of its layer and, for input and
output neurons only, of its position. Edges: every weight W_l[j, k] from neuron k of layer l-1 to
neuron j of layer l, with the kernel entries (zero-padded to the largest kernel, as Neural Graphs
do for CNNs) and an embedding of its layer as features.

Each message-passing step is a graph-network block (Battaglia et al. 2018) with edge updates, as
Neural Graphs use: messages are the updated edges, aggregated at both of their endpoints:
  e'_jk = LayerNorm(e_jk + MLP_e([h_j, h_k, e_jk]))         edge k -> j (neuron k of layer l-1)
  h'_j  = LayerNorm(h_j + MLP_h([h_j, mean_k e'_jk, mean_i e'_ij]))   incoming and outgoing edges
The graph is layered, so it is stored densely per layer ([B, n_l, n_{l-1}, C] edges). Nothing
refers to a hidden neuron's index, so the readout (mean over each layer's nodes and edges) is
invariant to hidden permutations. Padded neurons are masked out of every mean.
"""

from __future__ import annotations

import torch
from torch import nn

from wsl.encoders.common import NeuronEmbedding, mlp, pad_kernel, pooled_layers
from wsl.encoders.weightspace import WeightSpace, WSBatch, masked_mean


class _PairMLP(nn.Module):
    """MLP([a_j, b_k, e_jk]) on every (j, k) pair without materializing the concatenation:
    the first Linear splits into parts applied to a, b and e separately and broadcast-added."""

    def __init__(self, dim: int, out: int):
        super().__init__()
        self.a, self.b, self.e = nn.Linear(dim, dim), nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, out)

    def forward(self, a: torch.Tensor, b: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        # a [B, n_out, C], b [B, n_in, C], e [B, n_out, n_in, C] -> [B, n_out, n_in, out]
        return self.out(torch.relu(self.a(a)[:, :, None] + self.b(b)[:, None, :] + self.e(e)))


class MessagePassing(nn.Module):
    """One graph-network block: update every edge from its endpoints, then every node from the mean
    of its updated incoming and outgoing edges (masked: padded neurons send and receive nothing)."""

    def __init__(self, dim: int):
        super().__init__()
        self.edge = _PairMLP(dim, dim)
        self.node = mlp(3 * dim, dim, dim, 2)
        self.norm_h, self.norm_e = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, h: list, e: list, masks: list):
        # h: L+1 x [B, n_m, C]; e: L x [B, n_{l+1}, n_l, C] (edges from neuron layer l to l+1)
        e = [self.norm_e(x + self.edge(h[l + 1], h[l], x)) for l, x in enumerate(e)]
        # edges from layer l to l+1: their mean over the sources (layer l) reaches the targets, and vice versa
        incoming = [torch.zeros_like(h[0])] + [masked_mean(x, masks[l], dim=2) for l, x in enumerate(e)]
        outgoing = [masked_mean(x, masks[l + 1], dim=1) for l, x in enumerate(e)] + [torch.zeros_like(h[-1])]
        h = [self.norm_h(x + self.node(torch.cat([x, i, o], dim=-1))) for x, i, o in zip(h, incoming, outgoing)]
        return h, e


class GraphEncoder(nn.Module):
    invariant = True

    def __init__(self, space: WeightSpace, out_dim: int, hidden: int = 32, num_layers: int = 3,
                 head_hidden: int = 128, dropout: float = 0.0):
        super().__init__()
        L = space.num_layers
        self.k_max = max(space.kernel_numels)
        self.nodes = NeuronEmbedding(space, hidden)
        self.edge_proj = nn.Linear(self.k_max, hidden)
        self.edge_layer = nn.Parameter(torch.randn(L, hidden) * 0.1)
        self.layers = nn.ModuleList(MessagePassing(hidden) for _ in range(num_layers))
        self.head = mlp((2 * L + 1) * hidden, head_hidden, out_dim, 3, dropout)

    def forward(self, batch: WSBatch) -> torch.Tensor:  # -> [B, out_dim]
        h = self.nodes(batch)  # L+1 x [B, n_m, C]
        e = [self.edge_proj(pad_kernel(w, self.k_max)) + self.edge_layer[l] for l, w in enumerate(batch.weights)]
        for layer in self.layers:
            h, e = layer(h, e, batch.masks)
        M = batch.masks
        edges = torch.cat([masked_mean(masked_mean(x, M[l], dim=2), M[l + 1], dim=1) for l, x in enumerate(e)], -1)
        return self.head(torch.cat([pooled_layers(h, M), edges], dim=-1))
