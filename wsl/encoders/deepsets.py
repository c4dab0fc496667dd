"""DeepSets over neurons (Zaheer et al. 2017), applied set by set to the permuted neurons.

The neurons one permutation acts on form a set (a hidden layer of an MLP; a residual stream or the
channels inside one block of a ResNet): each neuron becomes a token, a shared network phi embeds
every token, the tokens are averaged (order-free), and rho maps the averages of all sets to the
prediction. A neuron's token must itself not depend on the order of the *neighbouring* sets, so
its per-unit features (bias, BatchNorm scale and shift) enter as they are and, for every weight
tensor that writes or reads it:

- towards a fixed set (the net's inputs or outputs): the raw weight vector, in its fixed order;
- towards a permuted set: a set too, summarized by a mean of a small per-weight network
  (DeepSets of sets), which is unchanged when that set is permuted.

A residual stream is read by several tensors, so its tokens have one such part per tensor.
Per-unit features of the fixed outputs (the head's bias) enter rho directly. The pooled vector is standardized
over the training nets before rho (`norm_readout`, wsl.encoders.common.readout_norm). Invariant to every
permutation of the net's spec.
"""

from __future__ import annotations

import torch
from torch import nn

from wsl.encoders.common import mlp, readout_norm
from wsl.encoders.weightspace import WeightSpace, WSBatch, masked_mean


class DeepSets(nn.Module):
    invariant = True

    def __init__(self, space: WeightSpace, out_dim: int, hidden: int = 64, head_hidden: int = 128,
                 dropout: float = 0.0, norm_readout: bool = True):
        super().__init__()
        self.space = space
        n, sets = space.sizes, space.sets
        self.edge_mlp, self.phi = nn.ModuleDict(), nn.ModuleDict()
        self.permuted = [m for m, s in enumerate(sets) if not s.fixed]
        for m in self.permuted:
            d = len(space.features(m))
            for direction, ls, far in (("in", space.incoming(m), "inp"), ("out", space.outgoing(m), "out")):
                for l in ls:
                    e = space.edges[l]
                    other = getattr(e, far)
                    if sets[other].fixed:
                        d += n[other] * e.kernel_numel  # the raw weights to/from the fixed neurons
                    else:
                        self.edge_mlp[f"{m}_{direction}_{l}"] = mlp(e.kernel_numel, hidden, hidden, 2)
                        d += hidden
            self.phi[str(m)] = mlp(d, hidden, hidden, 2)
        self.fixed_nodes = [j for j, s in enumerate(space.nodes) if sets[s.set].fixed]
        self.fixed_edges = [l for l, e in enumerate(space.edges) if sets[e.out].fixed and sets[e.inp].fixed]
        rho_in = (len(self.permuted) * hidden + sum(n[space.nodes[j].set] for j in self.fixed_nodes)
                  + sum(n[space.edges[l].out] * n[space.edges[l].inp] * space.edges[l].kernel_numel
                        for l in self.fixed_edges))  # a net without permuted sets: its weights in their fixed order
        self.readout_norm = readout_norm(rho_in, norm_readout)
        self.rho = mlp(rho_in, head_hidden, out_dim, 3, dropout)

    def forward(self, batch: WSBatch) -> torch.Tensor:  # -> [B, out_dim]
        W, M, space = batch.edges, batch.masks, self.space
        pooled = []
        for m in self.permuted:
            feats = space.node_features(batch, m)
            parts = [] if feats is None else [feats]  # [B, n_m, F_m]
            for direction, ls in (("in", space.incoming(m)), ("out", space.outgoing(m))):
                for l in ls:
                    e = space.edges[l]
                    w = W[l] if direction == "in" else W[l].transpose(1, 2)  # [B, n_m, n_other, K]
                    other = e.inp if direction == "in" else e.out
                    key = f"{m}_{direction}_{l}"
                    parts.append(w.flatten(2) if key not in self.edge_mlp
                                 else masked_mean(self.edge_mlp[key](w), M[other], dim=2))
            tokens = self.phi[str(m)](torch.cat(parts, dim=-1))  # [B, n_m, hidden]
            pooled.append(masked_mean(tokens, M[m], dim=1))
        pooled += [batch.nodes[j] for j in self.fixed_nodes]
        pooled += [W[l].flatten(1) for l in self.fixed_edges]
        return self.rho(self.readout_norm(torch.cat(pooled, dim=-1)))
