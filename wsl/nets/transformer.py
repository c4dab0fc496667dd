"""A small pre-LayerNorm transformer (Vaswani et al. 2017; pre-LN as in GPT-2 and ViT, Dosovitskiy et al. 2021)
for token sequences and for images or 1-D signals cut into patches.

    h_0 = embed(x) + positions
    h <- h + o(attention(LN_1(h)))         per block: multi-head self-attention,
    h <- h + fc2(act(fc1(LN_2(h))))        then a two-layer MLP (mlp_ratio * width hidden units)
    logits = head(LN(h))                   read at the last position, every position (causal), or the mean

Token inputs (`vocab` given; in_shape [T], x [N, T] int64): `causal=False` reads the last position
([N, num_classes]: modular arithmetic "a b ="), `causal=True` masks attention to earlier positions
and predicts at every position ([N, T, num_classes]). Float inputs ([C, H, W] or [C, L]) are cut into
`patch` x `patch` (or `patch`-long) patches, each a token; the output is read from the mean of the
final tokens ([N, num_classes]); `patch=None` means 1 (every pixel a token).

Attention is written out with plain Linear layers (q, k, v, o), so that a population of these nets
runs as one vmapped program (torch.func.vmap over functional_call) and the permutation spec can name
each projection.

The embedding is ONE Linear without bias, `embed.weight` [width, D + T]: its first D columns embed a
token (the one-hot of a token id, D = vocab) or a patch (its C*patch^(ndim) values), its last T columns
are the learned positional embeddings (the one-hot of the position). Embedding a token at position t is
exactly W[:, token] + W[:, D + t]: one input edge into the residual stream, which is how weight-space
readers (wsl.encoders) see it. Default init: token columns N(0, 1) (nn.Embedding's), position columns
N(0, 0.02^2) (GPT-2, ViT), patch columns nn.Linear's U(+-1/sqrt(D)); every other layer PyTorch's own.

Permutation structure (see wsl.nets.spec): the residual stream "S" (embedding outputs and positions,
every LayerNorm's weight and bias, each block's o and fc2 outputs, the q/k/v and fc1 inputs, the head's
input) is ONE permutation; each block's MLP hidden units "M<b>"; each block's attention "A<b>.qk" (the
rows of q and k: the dims of each head's queries and keys, shared) and "A<b>.vo" (the rows of v and the
columns of o), both with heads "H<b>": heads move as units, and the dims inside each head are
permuted (q/k by one order, v/o by another), which leaves every head's scores and output unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from wsl.errors import ConfigError
from wsl.nets.common import activation as make_activation, as_shape, init_weights
from wsl.nets.registry import register_net
from wsl.nets.spec import PermutationSpec
from wsl.schema import positive


class Attention(nn.Module):
    """Multi-head self-attention: heads of width // heads dims; scores q.k / sqrt(d), causal on request."""

    def __init__(self, width: int, heads: int, causal: bool):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.q, self.v, self.o = (nn.Linear(width, width) for _ in range(3))
        # no key bias: it adds q.b_k to every score of a query, which the softmax cancels (its gradient is
        # exactly zero, and an optimizer that normalizes steps, like Adam, would only move it by rounding noise)
        self.k = nn.Linear(width, width, bias=False)
        # a module, so that memory estimates that count leaf-module outputs (wsl.population.schema.net_footprint)
        # see the [heads, T, T] attention weights, the largest activation of long sequences
        self.attend = nn.Softmax(dim=-1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # [N, T, width] -> [N, T, width]
        n, t, w = h.shape
        split = lambda z: z.reshape(n, t, self.heads, w // self.heads).transpose(1, 2)  # noqa: E731 [N, H, T, d]
        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        scores = q @ k.transpose(-1, -2) / math.sqrt(w // self.heads)  # [N, H, T, T]
        if self.causal:
            future = torch.ones(t, t, dtype=torch.bool, device=h.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        out = self.attend(scores) @ v  # [N, H, T, d]
        return self.o(out.transpose(1, 2).reshape(n, t, w))


class Block(nn.Module):
    """Pre-LayerNorm block: h + attention(LN(h)), then + fc2(act(fc1(LN(h))))."""

    def __init__(self, width: int, heads: int, hidden: int, causal: bool, act: nn.Module):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, causal)
        self.ln2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.act = act

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.ln1(h))
        return h + self.fc2(self.act(self.fc1(self.ln2(h))))


@register_net
class Transformer(nn.Module):
    """Embedding (+ learned positions), `depth` pre-LN blocks, final LayerNorm, linear head (module docstring).

    Parameters: embed.weight [width, D + T]; blocks.{b}.ln1.{weight, bias}, blocks.{b}.attn.{q, v, o}.{weight,
    bias}, blocks.{b}.attn.k.weight (keys have no bias: the softmax cancels it), blocks.{b}.ln2.{weight, bias},
    blocks.{b}.fc1.{weight, bias} [hidden, width], blocks.{b}.fc2.{weight, bias}; norm.{weight, bias};
    head.weight [num_classes, width], head.bias.
    """

    name = "transformer"

    def __init__(self, in_shape, num_classes: int, width: int = 32, depth: int = 2, heads: int = 4,
                 mlp_ratio: float = 4, patch: int | None = None, vocab: int | None = None, causal: bool = False,
                 activation: str = "gelu", init: str = "default"):
        super().__init__()
        self.in_shape = as_shape(in_shape)
        self.num_classes = positive("num_classes", num_classes)
        self.width = positive("width", width)
        self.depth = positive("depth", depth)
        self.heads = positive("heads", heads)
        if width % heads:
            raise ConfigError(f"net.heads={heads} does not divide net.width={width}")
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or not mlp_ratio >= 1:
            raise ConfigError(f"net.mlp_ratio must be a number >= 1, got {mlp_ratio!r}")
        self.mlp_ratio, self.causal = mlp_ratio, bool(causal)
        self.hidden = max(1, int(round(mlp_ratio * width)))
        self.vocab = None if vocab is None else positive("vocab", vocab)
        if self.vocab is not None:  # token ids
            if patch is not None:
                raise ConfigError(f"net.patch={patch}: patches cut float inputs (images, signals); this dataset "
                                  "gives token ids (set net.patch=null)")
            if len(self.in_shape) != 1:
                raise ConfigError(f"net=transformer with token ids needs in_shape [T] (sequence length), got "
                                  f"{list(self.in_shape)}")
            self.patch, self.tokens, self.d_in = None, self.in_shape[0], self.vocab
        else:
            if self.causal:
                raise ConfigError("net=transformer: causal attention is for token sequences (a vocab), not for "
                                  "float inputs")
            if len(self.in_shape) not in (2, 3):
                raise ConfigError(f"net=transformer reads token ids [T] or float inputs [C, L] / [C, H, W], got "
                                  f"in_shape {list(self.in_shape)}")
            self.patch = 1 if patch is None else positive("net.patch", patch)
            sides = self.in_shape[1:]
            if any(s % self.patch for s in sides):
                raise ConfigError(f"net.patch={self.patch} does not divide the input sides "
                                  f"{'x'.join(map(str, sides))}")
            self.tokens = math.prod(s // self.patch for s in sides)
            self.d_in = self.in_shape[0] * self.patch ** len(sides)
        self.activation_name, self.init = activation, init
        self.act = make_activation(activation)
        self.embed = nn.Linear(self.d_in + self.tokens, width, bias=False)
        self.blocks = nn.ModuleList(Block(width, heads, self.hidden, self.causal, self.act) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, self.num_classes)
        if init == "default":
            with torch.no_grad():
                w = self.embed.weight
                if self.vocab is not None:
                    w[:, : self.d_in].normal_(0.0, 1.0)
                else:
                    bound = 1 / math.sqrt(self.d_in)
                    w[:, : self.d_in].uniform_(-bound, bound)
                w[:, self.d_in :].normal_(0.0, 0.02)
        init_weights(self, init)

    # ---------------------------------------------------------------- forward
    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """x -> [N, T, width]: embedded tokens or patches plus positions."""
        w = self.embed.weight  # [width, D + T]
        pos = w[:, self.d_in :].t()  # [T, width]
        if self.vocab is not None:
            return F.embedding(x, w[:, : self.d_in].t()) + pos
        n, c, p = x.shape[0], self.in_shape[0], self.patch
        if len(self.in_shape) == 2:  # [N, C, L] -> [N, L/p, C*p]
            patches = x.reshape(n, c, -1, p).permute(0, 2, 1, 3).reshape(n, self.tokens, self.d_in)
        else:  # [N, C, H, W] -> [N, (H/p)(W/p), C*p*p]
            hh, ww = self.in_shape[1] // p, self.in_shape[2] // p
            patches = x.reshape(n, c, hh, p, ww, p).permute(0, 2, 4, 1, 3, 5).reshape(n, self.tokens, self.d_in)
        return patches @ w[:, : self.d_in].t() + pos

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The final LayerNorm's output read where the head reads it: [N, width] (the mean over patches, or
        the last position), or [N, T, width] for a causal model (every position)."""
        h = self._tokens(x)
        for block in self.blocks:
            h = block(h)
        h = self.norm(h)
        if self.vocab is None:
            return h.mean(1)
        return h if self.causal else h[:, -1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # -> [N, num_classes] or [N, T, num_classes] (causal)
        return self.head(self.features(x))

    @property
    def piecewise_linear(self) -> bool:
        """Softmax attention and LayerNorm are not affine in any single weight: False."""
        return False

    @property
    def arch(self) -> dict:
        return {"name": self.name, "in_shape": list(self.in_shape), "num_classes": self.num_classes,
                "width": self.width, "depth": self.depth, "heads": self.heads, "mlp_ratio": self.mlp_ratio,
                "patch": None if self.vocab is not None else self.patch, "vocab": self.vocab, "causal": self.causal,
                "activation": self.activation_name, "init": self.init}

    # ---------------------------------------------------------------- symmetry
    def permutation_spec(self) -> PermutationSpec:
        s = "S"
        axes = {"embed.weight": (s, None)}
        sizes = {s: self.width}
        heads, num_heads = {}, {}
        for b in range(self.depth):
            pre, qk, vo, m, h = f"blocks.{b}", f"A{b}.qk", f"A{b}.vo", f"M{b}", f"H{b}"
            sizes.update({qk: self.width, vo: self.width, m: self.hidden})
            heads.update({qk: h, vo: h})
            num_heads[h] = self.heads
            for ln in ("ln1", "ln2"):
                axes[f"{pre}.{ln}.weight"], axes[f"{pre}.{ln}.bias"] = (s,), (s,)
            for proj, out in (("q", qk), ("k", qk), ("v", vo)):
                axes[f"{pre}.attn.{proj}.weight"] = (out, s)
                if proj != "k":
                    axes[f"{pre}.attn.{proj}.bias"] = (out,)
            axes[f"{pre}.attn.o.weight"], axes[f"{pre}.attn.o.bias"] = (s, vo), (s,)
            axes[f"{pre}.fc1.weight"], axes[f"{pre}.fc1.bias"] = (m, s), (m,)
            axes[f"{pre}.fc2.weight"], axes[f"{pre}.fc2.bias"] = (s, m), (s,)
        axes["norm.weight"], axes["norm.bias"] = (s,), (s,)
        axes["head.weight"], axes["head.bias"] = (None, s), (None,)
        return PermutationSpec(axes, sizes, heads=heads, num_heads=num_heads)
