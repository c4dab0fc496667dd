"""Linear centered kernel alignment (Kornblith et al. 2019) between replicas' representations.

CKA(X, Y) = ||Ycᵀ Xc||_F² / (||Xcᵀ Xc||_F ||Ycᵀ Yc||_F) with Xc, Yc column-centred [N, d] matrices
of the same N inputs. It is 1 for X = Y, and invariant to orthogonal transforms and isotropic
scaling of either side (not to arbitrary invertible maps), so it compares what two nets compute
independently of how their units are ordered.
"""

from __future__ import annotations

import itertools

import torch


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x [..., N, d1], y [..., N, d2] -> [...] (batched over leading dims; computed in float64)."""
    x = x.double() - x.double().mean(dim=-2, keepdim=True)
    y = y.double() - y.double().mean(dim=-2, keepdim=True)
    # Forms in d×d (feature) space: cheaper than N×N Gram matrices when d << N.
    cross = (y.transpose(-1, -2) @ x).pow(2).sum(dim=(-1, -2))
    nx = (x.transpose(-1, -2) @ x).pow(2).sum(dim=(-1, -2)).sqrt()
    ny = (y.transpose(-1, -2) @ y).pow(2).sum(dim=(-1, -2)).sqrt()
    return cross / (nx * ny)


def replica_pairs(n: int, max_pairs: int | None = None) -> list[tuple[int, int]]:
    """All pairs i < j of n replicas in lexicographic order, the first max_pairs of them."""
    pairs = list(itertools.combinations(range(n), 2))
    return pairs if not max_pairs or max_pairs <= 0 else pairs[: int(max_pairs)]


def pairwise_cka(outputs: torch.Tensor, pairs: list[tuple[int, int]]) -> torch.Tensor:
    """outputs [M, N, d] of M replicas on shared inputs -> CKA of each pair [len(pairs)]."""
    i = torch.tensor([p[0] for p in pairs], dtype=torch.long, device=outputs.device)
    j = torch.tensor([p[1] for p in pairs], dtype=torch.long, device=outputs.device)
    return linear_cka(outputs[i], outputs[j])
