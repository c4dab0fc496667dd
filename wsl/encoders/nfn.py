"""Neural functionals with permutation-equivariant layers (NFN; Zhou et al. 2023,
"Permutation Equivariant Neural Functionals"), NP and HNP variants, with invariant pooling,
written for any permutation structure (wsl.encoders.weightspace): the chains of layers NFN was
defined on, and residual nets, whose streams are sets that many weight tensors read and write.

An equivariant linear layer maps weight-space features to weight-space features so that permuting
the input's neurons permutes the output the same way. Which neuron sets are permutable is what
distinguishes the two variants:

- HNP (hidden neuron permutation): only the sets of the net's permutation spec; the net's input and
  output neurons are fixed. This is the exact symmetry group of an MLP, CNN or ResNet.
- NP (neuron permutation): the input and output neurons are treated as sets too (a larger group,
  hence fewer parameters; `io_embed` adds learned input/output position embeddings, as NFN does,
  to give back the information the larger group throws away).

Hidden state (C channels), built from the weights:
  E[l] [B, n_out, n_in, C]  edge features of weight tensor l when both its neuron sets are sets;
  V[m] [B, n_m, C]          neuron features of every set m;
  g    [B, C]               global features.
A fixed neuron axis is not permuted by anything, so it is folded into channels (a weight whose
inputs are fixed becomes a feature vector of each of its output neurons; HNP's layers treat such
axes densely, which is the same thing). A per-unit tensor (bias, BatchNorm scale or shift) of a set
is a neuron feature; of a fixed set, global.

The equivariant layer is a linear basis for this group, written through pooled summaries:
  S[m] = [V[m], for every tensor l writing m: mean_k E[l][:, :, k],
                for every tensor l reading m: mean_j E[l][:, j, :]]                  neuron summary
  s    = [g, mean V[m] for all m, mean E[l] for all l]                              global summary
  E'[l][j, k] = A E[l][j, k] + B S[out(l)][j] + C S[in(l)][k] + D s
                + sum over tensors l' between the same sets   P E[l'][j, k]
                + sum over tensors l' between them reversed   T E[l'][k, j]
  V'[m][j]    = F S[m][j] + G s
  g'          = H s
(self, row-mean, column-mean and total-mean terms of every edge tensor, broadcasts of neuron and
global features, pooled edges into neurons, and the parallel and transposed tensors that share
both sets, as a residual block's two convolutions do: conv1 maps stream -> block, conv2 block ->
stream). For a chain this is NFN's basis; with several tensors on one set every pattern of shared
and pooled indices is still present, except the diagonal terms of a tensor from a set to itself,
which no wsl net has. Means count only real (unpadded) neurons. The invariant readout is the
global summary s (NFN's pooling), standardized over the training nets (`norm_readout`,
wsl.encoders.common.readout_norm), followed by an MLP.
"""

from __future__ import annotations

import torch
from torch import nn

from wsl.encoders.common import edge_mean, mlp, readout_norm
from wsl.encoders.weightspace import WeightSpace, WSBatch, masked_mean


class _Structure:
    """Which neuron sets are permutable, which weight tensors stay edge tensors, how they meet."""

    def __init__(self, space: WeightSpace, mode: str):
        self.links = [(e.out, e.inp) for e in space.edges]
        self.sets = [m for m, s in enumerate(space.sets) if mode == "np" or not s.fixed]
        self.edges = [l for l, (o, i) in enumerate(self.links) if o in self.sets and i in self.sets]
        self.rows = {m: [l for l in self.edges if self.links[l][0] == m] for m in self.sets}  # tensors writing m
        self.cols = {m: [l for l in self.edges if self.links[l][1] == m] for m in self.sets}  # tensors reading m
        # channels of the neuron summary S[m], in units of C
        self.s_units = {m: 1 + len(self.rows[m]) + len(self.cols[m]) for m in self.sets}
        self.g_units = 1 + len(self.sets) + len(self.edges)
        self.parallel = {l: [k for k in self.edges if k != l and self.links[k] == self.links[l]] for l in self.edges}
        self.reversed = {l: [k for k in self.edges if self.links[k] == self.links[l][::-1]] for l in self.edges}


def _summaries(st: _Structure, E: dict, V: dict, g: torch.Tensor, M: list):
    S = {}
    for m in st.sets:
        parts = [V[m]]
        parts += [masked_mean(E[l], M[st.links[l][1]], dim=2) for l in st.rows[m]]  # over the inputs of l
        parts += [masked_mean(E[l], M[st.links[l][0]], dim=1) for l in st.cols[m]]  # over the outputs of l
        S[m] = torch.cat(parts, dim=-1)
    s = torch.cat([g] + [masked_mean(V[m], M[m], dim=1) for m in st.sets]
                  + [edge_mean(E[l], M[st.links[l][0]], M[st.links[l][1]]) for l in st.edges], dim=-1)
    return S, s


class EquivariantLayer(nn.Module):
    """One NP/HNP-equivariant linear layer on (E, V, g) features, c_in -> c_out channels."""

    def __init__(self, st: _Structure, c_in: int, c_out: int):
        super().__init__()
        self.st = st
        g_in = st.g_units * c_in
        self.e_self, self.e_row, self.e_col, self.e_glob, self.e_par, self.e_tr = (nn.ModuleDict() for _ in range(6))
        for l in st.edges:
            o, i = st.links[l]
            k = str(l)
            self.e_self[k] = nn.Linear(c_in, c_out)
            self.e_row[k] = nn.Linear(st.s_units[o] * c_in, c_out, bias=False)
            self.e_col[k] = nn.Linear(st.s_units[i] * c_in, c_out, bias=False)
            self.e_glob[k] = nn.Linear(g_in, c_out, bias=False)
            for other in st.parallel[l]:
                self.e_par[f"{l}_{other}"] = nn.Linear(c_in, c_out, bias=False)
            for other in st.reversed[l]:
                self.e_tr[f"{l}_{other}"] = nn.Linear(c_in, c_out, bias=False)
        self.v_self, self.v_glob = nn.ModuleDict(), nn.ModuleDict()
        for m in st.sets:
            self.v_self[str(m)] = nn.Linear(st.s_units[m] * c_in, c_out)
            self.v_glob[str(m)] = nn.Linear(g_in, c_out, bias=False)
        self.g = nn.Linear(g_in, c_out)

    def forward(self, E: dict, V: dict, g: torch.Tensor, M: list):
        st = self.st
        S, s = _summaries(st, E, V, g, M)
        E2 = {}
        for l in st.edges:
            o, i = st.links[l]
            k = str(l)
            e = (self.e_self[k](E[l]) + self.e_row[k](S[o])[:, :, None, :]
                 + self.e_col[k](S[i])[:, None, :, :] + self.e_glob[k](s)[:, None, None, :])
            for other in st.parallel[l]:
                e = e + self.e_par[f"{l}_{other}"](E[other])
            for other in st.reversed[l]:
                e = e + self.e_tr[f"{l}_{other}"](E[other].transpose(1, 2))
            E2[l] = e
        V2 = {m: self.v_self[str(m)](S[m]) + self.v_glob[str(m)](s)[:, None, :] for m in st.sets}
        return E2, V2, self.g(s)


class NFN(nn.Module):
    """Equivariant NP/HNP layers, ReLU and channel LayerNorm between them, invariant pooling, MLP head."""

    invariant = True

    def __init__(self, space: WeightSpace, out_dim: int, mode: str = "hnp", channels: int = 32,
                 num_layers: int = 3, head_hidden: int = 128, dropout: float = 0.0, io_embed: bool = True,
                 entry_mlp: bool = True, norm: str = "layer", norm_readout: bool = True):
        super().__init__()
        self.mode, self.channels = mode, channels
        st = self.st = _Structure(space, mode)
        n, C = space.sizes, channels
        # input embedding: each weight tensor lands on edges, on one of its neuron sets, or on g
        self.w_in, self.w_kind = nn.ModuleDict(), {}
        for l, (o, i) in enumerate(st.links):
            K = space.edges[l].kernel_numel
            out_set, in_set = o in st.sets, i in st.sets
            if out_set and in_set:
                self.w_kind[l], d = "edge", K
            elif out_set:  # inputs fixed: fold them into channels of the output set
                self.w_kind[l], d = "out", n[i] * K
            elif in_set:  # outputs fixed: fold them into channels of the input set
                self.w_kind[l], d = "in", n[o] * K
            else:
                self.w_kind[l], d = "global", n[o] * n[i] * K
            # entry_mlp: an edge tensor's entries go through a small MLP (the same for every entry), not
            # one Linear, so that the first layer's pooled summaries are means of nonlinear features of
            # the weights rather than of raw weights (~0 for every net). On the MNIST-1D CNN benchmark zoo
            # it changes nothing measurable (tau 0.891 +- 0.010 with it, 0.894 +- 0.018 without); INR
            # classification (0.849 +- 0.020) was measured with it
            edge_mlp = entry_mlp and self.w_kind[l] == "edge"
            self.w_in[str(l)] = mlp(d, C, C, 2) if edge_mlp else nn.Linear(d, C)
        self.node_sets = [s.set for s in space.nodes]
        self.b_in = nn.ModuleDict({str(j): nn.Linear(1 if m in st.sets else n[m], C)
                                   for j, m in enumerate(self.node_sets)})
        # a set that nothing lands on (NP's input neurons carry no bias) starts from a learned vector
        self.v_const = nn.ParameterDict({str(m): nn.Parameter(torch.zeros(C)) for m in st.sets})
        self.io_embed = bool(io_embed) and mode == "np"
        if self.io_embed:
            self.pos = nn.ParameterDict({str(m): nn.Parameter(torch.randn(n[m], C) * 0.1)
                                         for m, s in enumerate(space.sets) if s.fixed})
        self.layers = nn.ModuleList(EquivariantLayer(st, C, C) for _ in range(num_layers))
        self.norm = nn.LayerNorm(C) if norm == "layer" else nn.Identity()  # over channels only: every entry alike
        self.readout_norm = readout_norm(st.g_units * C, norm_readout)
        self.head = mlp(st.g_units * C, head_hidden, out_dim, 3, dropout)

    def embed(self, batch: WSBatch):
        st, W, bsz = self.st, batch.edges, batch.batch_size
        E, V = {}, {m: self.v_const[str(m)].expand(bsz, batch.masks[m].shape[1], -1) for m in st.sets}
        g = W[0].new_zeros(bsz, self.channels)
        for l, (o, i) in enumerate(st.links):
            w, lin, kind = W[l], self.w_in[str(l)], self.w_kind[l]  # w [B, n_out, n_in, K]
            if kind == "edge":
                E[l] = lin(w)
            elif kind == "out":
                V[o] = V[o] + lin(w.flatten(2))
            elif kind == "in":
                V[i] = V[i] + lin(w.transpose(1, 2).flatten(2))
            else:
                g = g + lin(w.flatten(1))
        for j, (b, m) in enumerate(zip(batch.nodes, self.node_sets)):
            if m in st.sets:
                V[m] = V[m] + self.b_in[str(j)](b[..., None])
            else:
                g = g + self.b_in[str(j)](b)
        if self.io_embed:
            for m, p in self.pos.items():
                V[int(m)] = V[int(m)] + p
        return E, V, g

    def forward(self, batch: WSBatch) -> torch.Tensor:  # -> [B, out_dim]
        E, V, g = self.embed(batch)
        act = lambda t: self.norm(torch.relu(t))  # noqa: E731
        for layer in self.layers:
            E, V, g = layer(E, V, g, batch.masks)
            E, V, g = {k: act(v) for k, v in E.items()}, {k: act(v) for k, v in V.items()}, act(g)
        _, s = _summaries(self.st, E, V, g, batch.masks)
        return self.head(self.readout_norm(s))
