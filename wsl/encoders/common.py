"""Pieces the encoders share: MLP heads, per-tensor input scaling, neuron embeddings."""

from __future__ import annotations

import torch
from torch import nn

from wsl.encoders.weightspace import WeightSpace, WSBatch, masked_mean


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 2, dropout: float = 0.0) -> nn.Sequential:
    """`layers` Linear layers with ReLU (and dropout) between them."""
    mods, d = [], in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden), nn.ReLU(), *([nn.Dropout(dropout)] if dropout > 0 else [])]
        d = hidden
    mods.append(nn.Linear(d, out_dim))
    return nn.Sequential(*mods)


def readout_norm(dim: int, on: bool) -> nn.Module:
    """Standardization of an invariant embedding [B, dim] before the head (BatchNorm without affine: batch
    statistics in training, running statistics of the training nets in eval), or nothing.

    Nets of one zoo often differ by little against what they share (a SIREN zoo fitted from one shared
    init: the fitting moves each weight by a few percent of its init): the pooled features of such
    nets are then nearly equal, and a head reads their differences only once they are standardized,
    as StatNN's statistics are. It acts on pooled, already invariant features, so it keeps invariance
    exactly (in eval mode; in training a net's output also depends on its batch, as with any BatchNorm).
    """
    return nn.BatchNorm1d(dim, affine=False) if on else nn.Identity()


def _rms(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((x.pow(2) * mask).sum() / mask.sum().clamp_min(1)).sqrt()


class LayerScale(nn.Module):
    """Divides every tensor of a net (each weight, bias, BatchNorm scale...) by one scalar fitted on
    the training nets.

    Tensors of one net differ in scale by orders of magnitude (fan-in scaled inits, weight decay,
    BatchNorm scales near 1); one scalar per tensor keeps every encoder's input O(1) and, being a
    scalar, commutes with every permutation. Stored as buffers so a saved encoder carries its scaling.
    """

    def __init__(self, space: WeightSpace):
        super().__init__()
        self.space = space
        self.register_buffer("w_scale", torch.ones(len(space.edges)))
        self.register_buffer("b_scale", torch.ones(len(space.nodes)))

    @torch.no_grad()
    def fit(self, batch: WSBatch) -> "LayerScale":
        """RMS of the real (unpadded) entries of each tensor over the given nets (1 for an all-zero one)."""
        M = batch.masks
        for l, (w, e) in enumerate(zip(batch.edges, self.space.edges)):
            rms = _rms(w, (M[e.out][:, :, None] * M[e.inp][:, None, :])[..., None].expand_as(w))
            self.w_scale[l] = rms if rms > 0 else 1.0
        for j, (b, n) in enumerate(zip(batch.nodes, self.space.nodes)):
            rms = _rms(b, M[n.set])
            self.b_scale[j] = rms if rms > 0 else 1.0
        return self

    def forward(self, batch: WSBatch) -> WSBatch:
        return WSBatch([w / s for w, s in zip(batch.edges, self.w_scale)],
                       [b / s for b, s in zip(batch.nodes, self.b_scale)], batch.masks)


class NeuronEmbedding(nn.Module):
    """Initial features of every neuron: a projection of its per-unit features (biases, BatchNorm
    scale and shift), a learned embedding of its set and, for the fixed input and output neurons
    only (which no symmetry permutes), of its position.

    Permuted neurons get no positional information, so permuting them permutes the embeddings.
    `fold_fixed`: a permuted neuron also gets a projection of its weights to and from the fixed
    neurons (its row of a tensor reading the fixed inputs, its column of one writing the fixed
    outputs), read in their fixed order: a fixed axis is not permuted, so it folds into features,
    as NFN-HNP and DeepSets read it. Without it, that information reaches a hidden neuron only as a
    mean over its edges of messages from position-embedded fixed neurons. The configs default to
    it (encoder.fold_fixed, graph and transformer); the constructors default to False so that an
    encoder saved before the option existed (its kwargs lack the key) is rebuilt as it was trained.
    Returns one tensor [B, n_m, dim] per set.
    """

    def __init__(self, space: WeightSpace, dim: int, fold_fixed: bool = False):
        super().__init__()
        self.space = space
        # (set m, tensor l, "in" | "out") for every tensor between a permuted set m and a fixed set
        self.folds = [(m, l, d) for l, e in enumerate(space.edges)
                      for m, other, d in ((e.out, e.inp, "in"), (e.inp, e.out, "out"))
                      if fold_fixed and not space.sets[m].fixed and space.sets[other].fixed]
        self.fold = nn.ModuleDict({f"{m}_{d}_{l}": nn.Linear(
            space.sizes[space.edges[l].inp if d == "in" else space.edges[l].out] * space.edges[l].kernel_numel,
            dim, bias=False) for m, l, d in self.folds})
        self.proj = nn.ModuleDict({str(m): nn.Linear(len(space.features(m)), dim, bias=False)
                                   for m in range(len(space.sets)) if space.features(m)})
        self.set_emb = nn.Parameter(torch.randn(len(space.sets), dim) * 0.1)
        self.pos = nn.ParameterDict({str(m): nn.Parameter(torch.randn(n, dim) * 0.1)
                                     for m, (s, n) in enumerate(zip(space.sets, space.sizes)) if s.fixed})

    def forward(self, batch: WSBatch) -> list:
        out = []
        for m, n in enumerate(self.space.sizes):
            h = self.set_emb[m].expand(batch.batch_size, n, -1)
            if str(m) in self.proj:
                h = h + self.proj[str(m)](self.space.node_features(batch, m))
            if str(m) in self.pos:
                h = h + self.pos[str(m)]
            out.append(h)
        for m, l, d in self.folds:  # rows of W[l] [B, n_m, n_fixed, K] (columns for "out"), in fixed order
            w = batch.edges[l] if d == "in" else batch.edges[l].transpose(1, 2)
            out[m] = out[m] + self.fold[f"{m}_{d}_{l}"](w.flatten(2))
        return out


def pad_kernel(w: torch.Tensor, k_max: int) -> torch.Tensor:
    """[..., K] -> [..., k_max] with zeros (Neural Graphs pad every kernel to the largest one)."""
    return w if w.shape[-1] == k_max else torch.nn.functional.pad(w, (0, k_max - w.shape[-1]))


def pooled_sets(feats: list, masks: list) -> torch.Tensor:
    """Concatenate the masked mean of every set's features [B, n_m, C] -> [B, (number of sets) C]."""
    return torch.cat([masked_mean(h, m, dim=1) for h, m in zip(feats, masks)], dim=-1)


def edge_mean(e: torch.Tensor, m_out: torch.Tensor, m_in: torch.Tensor) -> torch.Tensor:
    """Mean over the real entries of an edge tensor [B, n_out, n_in, C] -> [B, C]."""
    return masked_mean(masked_mean(e, m_in, dim=2), m_out, dim=1)
