"""Graph encoder: a net as a graph, neurons as nodes and weights as edges, read by message passing
(Neural Graphs, Kofinas et al. 2024; Graph Metanetworks, Lim et al. 2024).

Nodes: every neuron of every set (wsl.encoders.weightspace: one set per permutation, so one node per
channel of a residual stream however many layers read or write it), with its per-unit features
(biases, BatchNorm scale and shift), an embedding of its set and, for input and output neurons
only, of its position. Edges: every weight W[j, k] from neuron k to neuron j, with the kernel entries
(zero-padded to the largest kernel, as Neural Graphs do for CNNs) and an embedding of its weight
tensor as features.

Each message-passing step is a graph-network block (Battaglia et al. 2018) with edge updates, as
Neural Graphs use: messages are the updated edges, aggregated at both of their endpoints:
  e'_jk = LayerNorm(e_jk + MLP_e([h_j, h_k, e_jk]))         edge k -> j
  h'_j  = LayerNorm(h_j + MLP_h([h_j, in_j, out_j]))
where in_j is the mean over the weight tensors writing j's set of each one's mean over j's incoming
edges (out_j likewise over the outgoing ones; one tensor each in a chain). Edges are stored densely
per weight tensor ([B, n_out, n_in, C]). Nothing refers to a permuted neuron's index, so the readout
(mean over each set's nodes and each tensor's edges) is invariant to the net's permutations.
Padded neurons are masked out of every mean. `fold_fixed` (wsl.encoders.common.NeuronEmbedding): a
hidden neuron's weights to and from the fixed inputs and outputs also enter its initial features
as a vector in their fixed order.
"""

from __future__ import annotations

import torch
from torch import nn

from wsl.encoders.common import NeuronEmbedding, edge_mean, mlp, pad_kernel, pooled_sets, readout_norm
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


def _mean_or_zeros(parts: list, like: torch.Tensor) -> torch.Tensor:
    return torch.stack(parts).mean(0) if parts else torch.zeros_like(like)


class MessagePassing(nn.Module):
    """One graph-network block: update every edge from its endpoints, then every node from the means
    of its updated incoming and outgoing edges (masked: padded neurons send and receive nothing)."""

    def __init__(self, space: WeightSpace, dim: int):
        super().__init__()
        self.links = [(e.out, e.inp) for e in space.edges]
        self.edge = _PairMLP(dim, dim)
        self.node = mlp(3 * dim, dim, dim, 2)
        self.norm_h, self.norm_e = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, h: list, e: list, masks: list):
        # h: per set [B, n_m, C]; e: per weight tensor [B, n_out, n_in, C]
        e = [self.norm_e(x + self.edge(h[o], h[i], x)) for x, (o, i) in zip(e, self.links)]
        incoming, outgoing = [[] for _ in h], [[] for _ in h]
        for x, (o, i) in zip(e, self.links):
            incoming[o].append(masked_mean(x, masks[i], dim=2))  # over the sources: reaches the targets
            outgoing[i].append(masked_mean(x, masks[o], dim=1))  # over the targets: reaches the sources
        h = [self.norm_h(x + self.node(torch.cat([x, _mean_or_zeros(a, x), _mean_or_zeros(b, x)], dim=-1)))
             for x, a, b in zip(h, incoming, outgoing)]
        return h, e


class GraphEncoder(nn.Module):
    invariant = True

    def __init__(self, space: WeightSpace, out_dim: int, hidden: int = 32, num_layers: int = 3,
                 head_hidden: int = 128, dropout: float = 0.0, norm_readout: bool = True, fold_fixed: bool = False):
        super().__init__()
        self.links = [(e.out, e.inp) for e in space.edges]
        self.k_max = max(space.kernel_numels)
        self.nodes = NeuronEmbedding(space, hidden, fold_fixed)
        self.edge_proj = nn.Linear(self.k_max, hidden)
        self.edge_layer = nn.Parameter(torch.randn(len(space.edges), hidden) * 0.1)
        self.layers = nn.ModuleList(MessagePassing(space, hidden) for _ in range(num_layers))
        self.readout_norm = readout_norm((len(space.sets) + len(space.edges)) * hidden, norm_readout)
        self.head = mlp((len(space.sets) + len(space.edges)) * hidden, head_hidden, out_dim, 3, dropout)

    def forward(self, batch: WSBatch) -> torch.Tensor:  # -> [B, out_dim]
        h = self.nodes(batch)
        e = [self.edge_proj(pad_kernel(w, self.k_max)) + self.edge_layer[l] for l, w in enumerate(batch.edges)]
        for layer in self.layers:
            h, e = layer(h, e, batch.masks)
        M = batch.masks
        edges = torch.cat([edge_mean(x, M[o], M[i]) for x, (o, i) in zip(e, self.links)], -1)
        return self.head(self.readout_norm(torch.cat([pooled_sets(h, M), edges], dim=-1)))
