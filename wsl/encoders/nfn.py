"""Neural functionals with permutation-equivariant layers (NFN; Zhou et al. 2023,
"Permutation Equivariant Neural Functionals"), NP and HNP variants, with invariant pooling.

An equivariant linear layer maps weight-space features to weight-space features so that permuting
the input's neurons permutes the output the same way. Which neuron layers count as permutable sets
is what distinguishes the two variants:

- HNP (hidden neuron permutation): only hidden neuron layers are sets; the net's input and output
  neurons are fixed. This is the exact symmetry group of an MLP/CNN.
- NP (neuron permutation): every neuron layer, inputs and outputs included, is treated as a set (a
  larger group, hence fewer parameters; `io_embed` adds learned input/output position embeddings,
  as NFN does, to give back the information the larger group throws away).

Hidden state (C channels), built from the weights:
  E[l] [B, n_l, n_{l-1}, C]  edge features of layer l when both its neuron layers are sets;
  V[m] [B, n_m, C]           neuron features of every set layer m;
  g    [B, C]                global features.
A fixed neuron axis is not permuted by anything, so it is folded into channels (a weight W_1 whose
inputs are fixed becomes a feature vector of each neuron of layer 1; HNP's layers treat such axes
densely, which is the same thing). A bias of a set layer is a neuron feature; of a fixed layer, global.

The equivariant layer is the complete linear basis for this group, written through pooled summaries:
  S[m] = [V[m], mean_k E[m][:, :, k], mean_j E[m+1][:, j, :]]                    neuron summary
  s    = [g, mean V[m] for all m, mean E[l] for all l]                           global summary
  E'[l][j, k] = A E[l][j, k] + B S[l][j] + C S[l-1][k] + D s
  V'[m][j]    = F S[m][j] + G s
  g'          = H s
(self, row-mean, column-mean and total-mean terms of every edge tensor, broadcasts of neuron and
global features, and pooled edges into neurons: every pattern of shared and pooled indices).
Means count only real (unpadded) neurons. The invariant readout concatenates g and the means of
every V[m] and E[l] (NFN's pooling), followed by an MLP.
"""

from __future__ import annotations

import torch
from torch import nn

from wsl.encoders.common import mlp
from wsl.encoders.weightspace import WeightSpace, WSBatch, masked_mean

class _Structure:
    """Which neuron layers are sets and which weight layers stay edge tensors."""

    def __init__(self, space: WeightSpace, mode: str):
        self.L = L = space.num_layers
        self.sets = [m for m in range(L + 1) if mode == "np" or 0 < m < L]
        self.edges = [l for l in range(1, L + 1) if (l - 1) in self.sets and l in self.sets]
        # channels of the neuron summary S[m], in units of C
        self.s_units = {m: 1 + (m in self.edges) + ((m + 1) in self.edges) for m in self.sets}
        self.g_units = 1 + len(self.sets) + len(self.edges)


def _edge_mean(e: torch.Tensor, m_out: torch.Tensor, m_in: torch.Tensor) -> torch.Tensor:
    """Mean over the real entries of an edge tensor [B, n_out, n_in, C] -> [B, C]."""
    return masked_mean(masked_mean(e, m_in, dim=2), m_out, dim=1)


def _summaries(st: _Structure, E: dict, V: dict, g: torch.Tensor, M: list):
    S = {}
    for m in st.sets:
        parts = [V[m]]
        if m in st.edges:  # row mean of E[m]: over its inputs (neuron layer m-1)
            parts.append(masked_mean(E[m], M[m - 1], dim=2))
        if (m + 1) in st.edges:  # column mean of E[m+1]: over its outputs (neuron layer m+1)
            parts.append(masked_mean(E[m + 1], M[m + 1], dim=1))
        S[m] = torch.cat(parts, dim=-1)
    s = torch.cat([g] + [masked_mean(V[m], M[m], dim=1) for m in st.sets]
                  + [_edge_mean(E[l], M[l], M[l - 1]) for l in st.edges], dim=-1)
    return S, s


class EquivariantLayer(nn.Module):
    """One NP/HNP-equivariant linear layer on (E, V, g) features, c_in -> c_out channels."""

    def __init__(self, st: _Structure, c_in: int, c_out: int):
        super().__init__()
        self.st = st
        g_in = st.g_units * c_in
        self.e_self, self.e_row, self.e_col, self.e_glob = (nn.ModuleDict() for _ in range(4))
        for l in st.edges:
            self.e_self[str(l)] = nn.Linear(c_in, c_out)
            self.e_row[str(l)] = nn.Linear(st.s_units[l] * c_in, c_out, bias=False)
            self.e_col[str(l)] = nn.Linear(st.s_units[l - 1] * c_in, c_out, bias=False)
            self.e_glob[str(l)] = nn.Linear(g_in, c_out, bias=False)
        self.v_self, self.v_glob = nn.ModuleDict(), nn.ModuleDict()
        for m in st.sets:
            self.v_self[str(m)] = nn.Linear(st.s_units[m] * c_in, c_out)
            self.v_glob[str(m)] = nn.Linear(g_in, c_out, bias=False)
        self.g = nn.Linear(g_in, c_out)

    def forward(self, E: dict, V: dict, g: torch.Tensor, M: list):
        S, s = _summaries(self.st, E, V, g, M)
        E2 = {}
        for l in self.st.edges:
            k = str(l)
            E2[l] = (self.e_self[k](E[l]) + self.e_row[k](S[l])[:, :, None, :]
                     + self.e_col[k](S[l - 1])[:, None, :, :] + self.e_glob[k](s)[:, None, None, :])
        V2 = {m: self.v_self[str(m)](S[m]) + self.v_glob[str(m)](s)[:, None, :] for m in self.st.sets}
        return E2, V2, self.g(s)


class NFN(nn.Module):
    """Equivariant NP/HNP layers, ReLU and channel LayerNorm between them, invariant pooling, MLP head."""

    invariant = True

    def __init__(self, space: WeightSpace, out_dim: int, mode: str = "hnp", channels: int = 32,
                 num_layers: int = 3, head_hidden: int = 128, dropout: float = 0.0, io_embed: bool = True):
        super().__init__()
        self.mode, self.channels = mode, channels
        st = self.st = _Structure(space, mode)
        n, K, L, C = space.sizes, space.kernel_numels, space.num_layers, channels
        # input embedding: each weight layer lands on edges, on one of its neuron layers, or on g
        self.w_in, self.w_kind = nn.ModuleDict(), {}
        for l in range(1, L + 1):
            out_set, in_set = l in st.sets, (l - 1) in st.sets
            if out_set and in_set:
                self.w_kind[l], d = "edge", K[l - 1]
            elif out_set:  # inputs fixed: fold them into channels of neuron layer l
                self.w_kind[l], d = "out", n[l - 1] * K[l - 1]
            elif in_set:  # outputs fixed: fold them into channels of neuron layer l-1
                self.w_kind[l], d = "in", n[l] * K[l - 1]
            else:
                self.w_kind[l], d = "global", n[l] * n[l - 1] * K[l - 1]
            self.w_in[str(l)] = nn.Linear(d, C)
        self.b_in = nn.ModuleDict({str(l): nn.Linear(1 if l in st.sets else n[l], C) for l in range(1, L + 1)})
        # a set layer that nothing lands on (NP's input neurons carry no bias) starts from a learned vector
        self.v_const = nn.ParameterDict({str(m): nn.Parameter(torch.zeros(C)) for m in st.sets})
        self.io_embed = bool(io_embed) and mode == "np"
        if self.io_embed:
            self.pos_in = nn.Parameter(torch.randn(n[0], C) * 0.1)
            self.pos_out = nn.Parameter(torch.randn(n[L], C) * 0.1)
        self.layers = nn.ModuleList(EquivariantLayer(st, C, C) for _ in range(num_layers))
        self.norm = nn.LayerNorm(C)  # over channels only: acts on every entry alike, so equivariant
        self.head = mlp(st.g_units * C, head_hidden, out_dim, 3, dropout)

    def embed(self, batch: WSBatch):
        st, W, b, bsz = self.st, batch.weights, batch.biases, batch.batch_size
        E, V = {}, {m: self.v_const[str(m)].expand(bsz, batch.masks[m].shape[1], -1) for m in st.sets}
        g = W[0].new_zeros(bsz, self.channels)
        for l in range(1, st.L + 1):
            w, lin, kind = W[l - 1], self.w_in[str(l)], self.w_kind[l]  # w [B, n_l, n_{l-1}, K]
            if kind == "edge":
                E[l] = lin(w)
            elif kind == "out":
                V[l] = V[l] + lin(w.flatten(2))
            elif kind == "in":
                V[l - 1] = V[l - 1] + lin(w.transpose(1, 2).flatten(2))
            else:
                g = g + lin(w.flatten(1))
            if l in st.sets:
                V[l] = V[l] + self.b_in[str(l)](b[l - 1][..., None])
            else:
                g = g + self.b_in[str(l)](b[l - 1])
        if self.io_embed:
            V[0] = V[0] + self.pos_in
            V[st.L] = V[st.L] + self.pos_out
        return E, V, g

    def forward(self, batch: WSBatch) -> torch.Tensor:  # -> [B, out_dim]
        E, V, g = self.embed(batch)
        act = lambda t: self.norm(torch.relu(t))  # noqa: E731
        for layer in self.layers:
            E, V, g = layer(E, V, g, batch.masks)
            E, V, g = {k: act(v) for k, v in E.items()}, {k: act(v) for k, v in V.items()}, act(g)
        _, s = _summaries(self.st, E, V, g, batch.masks)
        return self.head(s)
