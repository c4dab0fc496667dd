"""Networks that predict noise (diffusion) or velocity (flow matching) for a batch of weight vectors.

Both take the same arguments, so either generator method can drive either network:

    net(x [B, D], t [B] in [0, 1], cond [B, C] or None, drop [B] bool or None) -> [B, D]

`cond` is a vector of scalar properties (e.g. a target accuracy, hyperparameters), already
normalized. Rows where `drop` is True (and every row when `cond` is None) see a learned "null"
condition instead: training with random drops gives one network that is both conditional and
unconditional, which is what classifier-free guidance (`guided`) mixes at sampling time.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from wsl.errors import ConfigError
from wsl.generators.limits import MAX_TOKENS


class SinusoidalEmbedding(nn.Module):
    """t [B] in [0, 1] -> [B, dim] sines and cosines over geometric frequencies (Vaswani et al.)."""

    def __init__(self, dim: int, max_period: float = 10_000.0):
        super().__init__()
        half = dim // 2
        # t is scaled to [0, 1000] so the fastest frequency still separates neighbouring DDPM steps
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / max(half, 1))
        self.register_buffer("freqs", freqs * 1000.0, persistent=False)
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.float()[:, None] * self.freqs[None]  # [B, half]
        return nn.functional.pad(torch.cat([torch.cos(args), torch.sin(args)], dim=-1), (0, self.dim % 2))


class Conditioning(nn.Module):
    """cond [B, C] -> [B, E]; a learned null embedding stands in for dropped or absent conditions."""

    def __init__(self, cond_dim: int, emb_dim: int):
        super().__init__()
        self.cond_dim = int(cond_dim)
        self.proj = (nn.Sequential(nn.Linear(cond_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
                     if self.cond_dim > 0 else None)
        self.null = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, cond: torch.Tensor | None, batch: int, drop: torch.Tensor | None = None) -> torch.Tensor:
        null = self.null[None].expand(batch, -1)
        if cond is None or self.proj is None:
            return null
        if cond.shape != (batch, self.cond_dim):
            raise ConfigError(f"condition has shape {tuple(cond.shape)}, the generator expects ({batch}, {self.cond_dim})")
        emb = self.proj(cond)
        return emb if drop is None else torch.where(drop[:, None], null, emb)


def time_embedding(dim: int) -> nn.Module:
    """t [B] -> [B, dim]: sinusoidal features through a small MLP (every transformer denoiser's)."""
    return nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))


def pre_norm_encoder(d_model: int, nhead: int, layers: int, dropout: float) -> tuple[nn.Module, nn.Module]:
    """A pre-LayerNorm transformer encoder over tokens [B, T, d_model] and the final LayerNorm after it."""
    layer = nn.TransformerEncoderLayer(d_model, nhead, 4 * d_model, dropout, activation="gelu", batch_first=True,
                                       norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False), nn.LayerNorm(d_model)


class _ResBlock(nn.Module):
    """Pre-norm residual MLP block, modulated by the time+condition embedding (FiLM / adaLN)."""

    def __init__(self, hidden: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.film = nn.Linear(hidden, 2 * hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.SiLU(), nn.Dropout(dropout),
                                 nn.Linear(2 * hidden, hidden))
        # start as the identity, so a deep stack trains as stably as a shallow one
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # [B, H], [B, H]
        scale, shift = self.film(emb).chunk(2, dim=-1)
        return h + self.mlp(self.norm(h) * (1 + scale) + shift)


class MLPDenoiser(nn.Module):
    """Residual MLP over the whole flat weight vector.

    `segments` (per-layer slices of the vector) is accepted for a common signature with the
    transformer and ignored: the MLP sees every coordinate at once. The sizes are checked (and
    capped) by wsl.generators.schema.MLPDenoiserConfig, for a config and a loaded run alike.
    """

    name = "mlp"

    def __init__(self, dim: int, cond_dim: int = 0, segments=None, hidden: int = 512, depth: int = 3,
                 emb_dim: int = 128, dropout: float = 0.0):
        super().__init__()
        self.kwargs = {"dim": dim, "cond_dim": cond_dim, "segments": None, "hidden": hidden, "depth": depth,
                       "emb_dim": emb_dim, "dropout": dropout}  # what rebuilds it from a generator run
        self.inp = nn.Linear(dim, hidden)
        self.time = nn.Sequential(SinusoidalEmbedding(emb_dim), nn.Linear(emb_dim, hidden), nn.SiLU(),
                                  nn.Linear(hidden, hidden))
        self.cond = Conditioning(cond_dim, hidden)
        self.blocks = nn.ModuleList(_ResBlock(hidden, dropout) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x, t, cond=None, drop=None):  # [B, D], [B], [B, C] -> [B, D]
        emb = nn.functional.silu(self.time(t) + self.cond(cond, x.shape[0], drop))  # [B, H]
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)


def split_segments(segments, dim: int, max_token: int | None):
    """Per-layer (start, stop) slices, each cut into tokens of at most `max_token` coordinates."""
    covered = sorted((int(a), int(b)) for a, b in segments) if segments else [(0, dim)]
    if covered[0][0] != 0 or covered[-1][1] != dim or any(a[1] != b[0] for a, b in zip(covered, covered[1:])):
        raise ConfigError(f"denoiser segments {str(segments)[:200]} do not tile the weight vector of {dim} coordinates")
    steps = [int(max_token) if max_token else max(b - a, 1) for a, b in covered]
    count = sum(-(-(b - a) // step) for (a, b), step in zip(covered, steps))
    if count > MAX_TOKENS:  # counted first: a run file's max_token=1 on a huge vector would hang the loop below
        raise ConfigError(f"max_token={max_token} cuts the {dim} weights into {count} tokens; "
                          f"at most {MAX_TOKENS} (raise max_token)")
    return [(s, min(s + step, b)) for (a, b), step in zip(covered, steps) for s in range(a, b, step)]


class TransformerDenoiser(nn.Module):
    """Transformer over per-layer tokens (in the manner of G.pt / p-diff's token models).

    Each layer's slice of the weight vector (cut into chunks of at most `max_token` coordinates)
    is projected to one token by its own linear map; a time+condition token is prepended and the
    same embedding is added to every token; each output token is projected back to its slice.
    The sizes are checked by wsl.generators.schema.TransformerDenoiserConfig.
    """

    name = "transformer"

    def __init__(self, dim: int, cond_dim: int = 0, segments=None, d_model: int = 128, nhead: int = 4,
                 layers: int = 4, max_token: int | None = 1024, dropout: float = 0.0):
        super().__init__()
        self.tokens = split_segments(segments, dim, max_token)
        self.kwargs = {"dim": dim, "cond_dim": cond_dim, "segments": [list(s) for s in segments] if segments else None,
                       "d_model": d_model, "nhead": nhead, "layers": layers, "max_token": max_token,
                       "dropout": dropout}  # what rebuilds it from a generator run
        self.embed = nn.ModuleList(nn.Linear(b - a, d_model) for a, b in self.tokens)
        self.unembed = nn.ModuleList(nn.Linear(d_model, b - a) for a, b in self.tokens)
        self.pos = nn.Parameter(torch.randn(len(self.tokens) + 1, d_model) * 0.02)
        self.time = time_embedding(d_model)
        self.cond = Conditioning(cond_dim, d_model)
        self.encoder, self.norm = pre_norm_encoder(d_model, nhead, layers, dropout)

    def forward(self, x, t, cond=None, drop=None):  # [B, D], [B], [B, C] -> [B, D]
        emb = self.time(t) + self.cond(cond, x.shape[0], drop)  # [B, d]
        toks = torch.stack([e(x[:, a:b]) for e, (a, b) in zip(self.embed, self.tokens)], dim=1)  # [B, T, d]
        seq = torch.cat([emb[:, None], toks + emb[:, None]], dim=1) + self.pos  # [B, T+1, d]
        h = self.norm(self.encoder(seq))[:, 1:]  # [B, T, d]
        return torch.cat([u(h[:, i]) for i, u in enumerate(self.unembed)], dim=-1)


def guided(net: nn.Module, x, t, cond=None, scale: float = 1.0):
    """Classifier-free guidance (Ho & Salimans 2022): u + scale * (c - u).

    scale=1 is the plain conditional prediction, 0 the unconditional one, >1 pushes samples
    further towards the condition. Without a condition the net runs once, unconditionally.
    """
    if cond is None:
        return net(x, t, None)
    if scale == 1.0:
        return net(x, t, cond)
    drop = torch.arange(2 * x.shape[0], device=x.device) >= x.shape[0]  # the second copy is unconditional
    c, u = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, cond]), drop).chunk(2)  # one batched pass
    return u + scale * (c - u)
