"""representation=tokens: a transformer over fixed-size chunk tokens with SHARED projections.

Each layer's slice of the normalized weight vector is cut into tokens of `chunk` coordinates (the last one
of a layer zero-padded: wsl.generators.representations.chunks). Every token goes through the same
Linear(chunk, d_model); a layer embedding (which layer), a position embedding (which chunk of its layer) and
a kind embedding (the layer's tensor rank: conv2d / conv1d / linear / vector) tell the tokens apart; a time +
condition token is prepended and the same embedding added to every token (as TransformerDenoiser does);
the same Linear(d_model, chunk) maps every output token back. Unlike TransformerDenoiser (one linear map per
token, so D x d_model parameters), the parameter count grows with the net only through the embeddings
(layers + max chunks per layer rows of d_model).

Interface of every denoiser: forward(x [B, D], t [B], cond [B, C] | None, drop [B] | None) -> [B, D].
"""

from __future__ import annotations

import torch
from torch import nn

from wsl.errors import ConfigError
from wsl.generators.denoisers import Conditioning, pre_norm_encoder, time_embedding
from wsl.generators.representations.chunks import chunk_tokens, gather_index

KINDS = 5  # tensor rank of a layer's first tensor, 0..4 (rank >= 4 shares 4)


def layer_kinds(layout) -> list[int]:
    """The kind of every layer segment (wsl.generators.representation.layer_segments order): its first tensor's rank."""
    from wsl.generators.representation import layer_segments

    first = {a: len(shape) for _, shape, a, _ in layout.entries}
    return [min(first[a], KINDS - 1) for a, _ in layer_segments(layout)]


class TokenDenoiser(nn.Module):
    """Transformer over chunk tokens of every layer (see the module docstring). `segments`: per-layer (start, stop)
    slices of the vector; `kinds`: one integer in [0, 5) per segment. Sizes checked (and capped) by
    wsl.generators.schema.TokensConfig, for a config and a loaded run alike."""

    name = "tokens"

    def __init__(self, dim: int, cond_dim: int = 0, segments=None, kinds=None, chunk: int = 256, d_model: int = 128,
                 nhead: int = 4, layers: int = 4, dropout: float = 0.0):
        super().__init__()
        segments = [list(map(int, s)) for s in segments] if segments else [[0, dim]]
        kinds = [0] * len(segments) if kinds is None else [int(k) for k in kinds]
        if len(kinds) != len(segments) or any(not 0 <= k < KINDS for k in kinds):
            raise ConfigError(f"kinds must give one integer in [0, {KINDS}) per segment ({len(segments)}), "
                              f"got {str(kinds)[:100]}")
        self.kwargs = {"dim": dim, "cond_dim": cond_dim, "segments": segments, "kinds": kinds, "chunk": chunk,
                       "d_model": d_model, "nhead": nhead, "layers": layers, "dropout": dropout}
        tokens, layer, pos = chunk_tokens(segments, dim, chunk)
        self.dim, self.chunk, self.n_tokens = int(dim), int(chunk), len(tokens)
        gather, keep = gather_index(tokens, dim, chunk)
        # index tensors: plain attributes, not buffers (weight averaging lerps every buffer; these are integers)
        self._index = {"gather": gather, "keep": keep, "layer": torch.tensor(layer, device="cpu"),
                       "pos": torch.tensor(pos, device="cpu"),
                       "kind": torch.tensor([kinds[i] for i in layer], device="cpu")}
        self.embed, self.unembed = nn.Linear(chunk, d_model), nn.Linear(d_model, chunk)
        self.layer_emb = nn.Embedding(len(segments), d_model)
        self.pos_emb = nn.Embedding(max(pos) + 1, d_model)
        self.kind_emb = nn.Embedding(KINDS, d_model)
        for e in (self.layer_emb, self.pos_emb, self.kind_emb):
            nn.init.normal_(e.weight, std=0.02)
        self.time = time_embedding(d_model)
        self.cond = Conditioning(cond_dim, d_model)
        self.encoder, self.norm = pre_norm_encoder(d_model, nhead, layers, dropout)

    def index(self, device) -> dict:
        if self._index["gather"].device != device:
            self._index = {k: v.to(device) for k, v in self._index.items()}
        return self._index

    def forward(self, x, t, cond=None, drop=None):  # [B, D], [B], [B, C] -> [B, D]
        b, ix = x.shape[0], self.index(x.device)
        emb = self.time(t) + self.cond(cond, b, drop)  # [B, d]
        pad = torch.cat([x, x.new_zeros(b, 1)], dim=1)  # [B, D + 1]: index D is the padding zero
        toks = self.embed(pad[:, ix["gather"]].view(b, self.n_tokens, self.chunk))  # [B, T, d]
        toks = toks + self.layer_emb(ix["layer"]) + self.pos_emb(ix["pos"]) + self.kind_emb(ix["kind"])
        seq = torch.cat([emb[:, None], toks + emb[:, None]], dim=1)  # [B, T + 1, d]
        h = self.norm(self.encoder(seq))[:, 1:]  # [B, T, d]
        return self.unembed(h).reshape(b, -1)[:, ix["keep"]]  # [B, D]
