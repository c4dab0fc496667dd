"""Cutting a flat weight vector into fixed-size tokens (chunks) that never straddle two layers.

tokens: (start, stop) slices of the vector, each at most `chunk` long, in vector order and covering it;
`gather` [T * chunk] indexes a zero-padded copy of the vector (index D = the padding zero) so that
x_pad[:, gather].view(B, T, chunk) are the tokens, and `keep` [D] picks the real coordinates back out of
the [B, T * chunk] output (tokens are contiguous and in order, so this inverts the gather exactly).
"""

from __future__ import annotations

import torch

from wsl.errors import ConfigError
from wsl.generators.limits import MAX_TOKENS


def chunk_tokens(segments, dim: int, chunk: int, what: str = "representation.chunk"):
    """(tokens, layer index of each token, position of each token within its layer)."""
    covered = sorted((int(a), int(b)) for a, b in segments) if segments else [(0, dim)]
    if covered[0][0] != 0 or covered[-1][1] != dim or any(a[1] != b[0] for a, b in zip(covered, covered[1:])):
        raise ConfigError(f"segments {str(segments)[:200]} do not tile the weight vector of {dim} coordinates")
    chunk = int(chunk)
    count = sum(-(-(b - a) // chunk) for a, b in covered)
    if count > MAX_TOKENS:
        raise ConfigError(f"{what}={chunk} cuts the {dim} weights into {count} tokens; at most {MAX_TOKENS} "
                          f"(raise {what})")
    tokens, layer, pos = [], [], []
    for i, (a, b) in enumerate(covered):
        for j, s in enumerate(range(a, b, chunk)):
            tokens.append((s, min(s + chunk, b)))
            layer.append(i)
            pos.append(j)
    return tokens, layer, pos


def gather_index(tokens, dim: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(gather [T * chunk], keep [dim]) for `tokens` (see the module docstring)."""
    gather = torch.full((len(tokens), chunk), dim, dtype=torch.long, device="cpu")  # cpu: also while building on meta
    for t, (a, b) in enumerate(tokens):
        gather[t, : b - a] = torch.arange(a, b, device="cpu")
    flat = gather.flatten()
    keep = (flat < dim).nonzero().flatten()
    return flat, keep
