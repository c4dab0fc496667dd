"""Pieces the encoders share: MLP heads, per-layer input scaling, neuron and edge embeddings."""

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


class LayerScale(nn.Module):
    """Divides each layer's weights and biases by one scalar fitted on the training nets.

    Layers of one net differ in scale by orders of magnitude (fan-in scaled inits, weight decay);
    one scalar per tensor keeps every encoder's input O(1) and, being a scalar, commutes with
    every permutation. Stored as buffers so a saved encoder carries its scaling.
    """

    def __init__(self, space: WeightSpace):
        super().__init__()
        self.register_buffer("w_scale", torch.ones(space.num_layers))
        self.register_buffer("b_scale", torch.ones(space.num_layers))

    @torch.no_grad()
    def fit(self, batch: WSBatch) -> "LayerScale":
        """RMS of the real (unpadded) entries of each layer over the given nets."""
        for l, (w, b) in enumerate(zip(batch.weights, batch.biases)):
            m_out, m_in = batch.masks[l + 1], batch.masks[l]
            wm = (m_out[:, :, None] * m_in[:, None, :])[..., None].expand_as(w)
            rms_w = (w.pow(2) * wm).sum() / wm.sum().clamp_min(1)
            rms_b = (b.pow(2) * m_out).sum() / m_out.sum().clamp_min(1)
            self.w_scale[l] = rms_w.sqrt().clamp_min(1e-8)
            self.b_scale[l] = rms_b.sqrt().clamp_min(1e-8) if rms_b > 0 else torch.tensor(1.0)
        return self

    def forward(self, batch: WSBatch) -> WSBatch:
        return WSBatch([w / s for w, s in zip(batch.weights, self.w_scale)],
                       [b / s for b, s in zip(batch.biases, self.b_scale)], batch.masks)


class NeuronEmbedding(nn.Module):
    """Initial features of every neuron: its bias, a learned embedding of its neuron layer and,
    for input and output neurons only (which no symmetry permutes), of its position.

    Hidden neurons get no positional information, so permuting them permutes the embeddings.
    Returns a list of L + 1 tensors [B, n_m, dim].
    """

    def __init__(self, space: WeightSpace, dim: int):
        super().__init__()
        self.bias_proj = nn.Linear(1, dim)
        self.layer_emb = nn.Parameter(torch.randn(space.num_layers + 1, dim) * 0.1)
        self.in_pos = nn.Parameter(torch.randn(space.sizes[0], dim) * 0.1)
        self.out_pos = nn.Parameter(torch.randn(space.sizes[-1], dim) * 0.1)

    def forward(self, batch: WSBatch) -> list:
        bsz, w0 = batch.batch_size, batch.weights[0]
        out = [(self.layer_emb[0] + self.in_pos).expand(bsz, -1, -1)
               + self.bias_proj(w0.new_zeros(bsz, w0.shape[2], 1))]
        out += [self.bias_proj(b[..., None]) + self.layer_emb[m] for m, b in enumerate(batch.biases, start=1)]
        out[-1] = out[-1] + self.out_pos
        return out


def pad_kernel(w: torch.Tensor, k_max: int) -> torch.Tensor:
    """[..., K] -> [..., k_max] with zeros (Neural Graphs pad every kernel to the largest one)."""
    return w if w.shape[-1] == k_max else torch.nn.functional.pad(w, (0, k_max - w.shape[-1]))


def pooled_layers(feats: list, masks: list) -> torch.Tensor:
    """Concatenate the masked mean of every per-neuron-layer feature [B, n_m, C] -> [B, (L+1) C]."""
    return torch.cat([masked_mean(h, m, dim=1) for h, m in zip(feats, masks)], dim=-1)
