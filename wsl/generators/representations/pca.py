"""representation=pca: k principal-component codes of the aligned, normalized training nets.

Fitted exactly through the M x M Gram matrix of the centered nets, accumulated over blocks of `block`
coordinates (memory: M^2 + k x D floats beyond the nets themselves; no D x D covariance, no full SVD): its top
k eigenvectors U [M, k] and eigenvalues lam give the components V = U^T Xc / sqrt(lam) [k, D] (orthonormal
rows) and the training codes Xc V^T = U sqrt(lam). The generator sees codes divided by their training std.

A sample is mean + codes @ V: it lies in the affine span of the training nets, whatever the generator does.
How much novelty that rules out is measured on the zoo itself: `info["loo_span_distance"]` is, per training net,
its distance from the affine span of the OTHER nets over its distance from their mean (leave-one-out, from the
Gram matrix alone), averaged. A new independently trained net typically sits that far outside the span; a PCA
sample sits at 0 (and its nearest-neighbour distance to the zoo is all the novelty it has).
"""

from __future__ import annotations

import math

import torch

from wsl.errors import ConfigError, ZooFormatError, printable
from wsl.generators.limits import MAX_WIDTH


def _loo_span(gram: torch.Tensor) -> tuple[float, float]:
    """(mean over nets of dist(x_i, affine span of the others) / dist(x_i, mean of the others),
    median nearest-neighbour distance), from the Gram matrix [M, M] of the (centered) nets alone."""
    m = gram.shape[0]
    sq = gram.diag()
    d2 = (sq[:, None] + sq[None] - 2 * gram).clamp_min(0)  # squared pairwise distances
    nn = (d2 + torch.diag(torch.full((m,), float("inf"), dtype=gram.dtype))).min(1).values.sqrt()
    ratios = []
    for i in range(m):
        others = [j for j in range(m) if j != i]
        r, rest = others[0], others[1:]
        # inner products of differences from x_r: <x_a - x_r, x_b - x_r> = G_ab - G_ar - G_rb + G_rr
        g = gram
        a = g[rest][:, rest] - g[rest, r][:, None] - g[r, rest][None] + g[r, r]
        b = g[rest, i] - g[rest, r] - g[r, i] + g[r, r]
        c = g[i, i] - 2 * g[i, r] + g[r, r]
        res2 = float((c - b @ torch.linalg.pinv(a, hermitian=True, rtol=1e-10) @ b).clamp_min(0)) if rest else float(c)
        mean_o = g[others][:, others].mean()  # |x_i - mean(others)|^2 = G_ii - 2 mean_j G_ij + mean_jk G_jk
        to_mean = float((g[i, i] - 2 * g[i, others].mean() + mean_o).clamp_min(1e-30))
        ratios.append(math.sqrt(res2 / to_mean))
    return float(sum(ratios) / len(ratios)), float(nn.median())


class PCACodes:
    """The PCA stage (see the module docstring): normalized vectors [M, D] <-> standardized codes [M, k]."""

    name = "pca"

    def __init__(self, mean: torch.Tensor, components: torch.Tensor, scale: torch.Tensor, info: dict | None = None):
        self.mean, self.components, self.scale = mean.float(), components.float(), scale.float()  # [D], [k, D], [k]
        self.info = dict(info or {})

    @property
    def dim(self) -> int:
        return int(self.scale.numel())

    @classmethod
    def fit(cls, x: torch.Tensor, k: int, block: int = 65536, key: str = "representation.k") -> "PCACodes":
        m, d = x.shape
        if k > m - 1:
            raise ConfigError(f"{key}={k} is more than the {m - 1} components that {m} training nets span "
                              f"(at most nets - 1 = {m - 1}); lower {key}")
        mean = x.double().mean(0)
        gram = torch.zeros(m, m, dtype=torch.float64)
        for a in range(0, d, block):
            xc = x[:, a : a + block].double() - mean[a : a + block]
            gram += xc @ xc.T
        evals, u = torch.linalg.eigh(gram)  # ascending
        evals, u = evals.flip(0), u.flip(1)
        total = float(evals.clamp_min(0).sum())
        lam = evals[:k].clamp_min(1e-12 * max(total, 1e-30))
        u = u[:, :k]
        comps = torch.empty(k, d, dtype=torch.float32)
        for a in range(0, d, block):
            xc = x[:, a : a + block].double() - mean[a : a + block]
            comps[:, a : a + block] = ((u.T @ xc) / lam.sqrt()[:, None]).float()
        scale = (lam / m).sqrt()  # std of each code over the training nets
        loo, nn_median = _loo_span(gram)
        info = {"k": int(k), "nets": int(m), "explained_variance": float(lam.sum()) / max(total, 1e-30),
                "loo_span_distance": loo, "nn_median": nn_median}
        return cls(mean.float(), comps, scale.float(), info)

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # [M, D] normalized -> [M, k]
        return ((x.float() - self.mean.to(x.device)) @ self.components.to(x.device).T) / self.scale.to(x.device)

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # [M, k] -> [M, D] normalized
        return (z.float() * self.scale.to(z.device)) @ self.components.to(z.device) + self.mean.to(z.device)

    def span_distance(self, x: torch.Tensor) -> torch.Tensor:
        """Distance [M] of normalized vectors from the components' affine span (0 for every sample, up to rounding)."""
        xc = x.float() - self.mean
        return (xc - (xc @ self.components.T) @ self.components).norm(dim=1)

    def summary(self) -> dict:
        return dict(self.info)

    # ---- storage -------------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "components": self.components, "scale": self.scale}

    def meta(self) -> dict:
        return {"name": self.name, "k": self.dim, "info": self.info}

    @staticmethod
    def _k(meta: dict, source) -> int:
        k = meta.get("k")
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_WIDTH:
            raise ZooFormatError(f"{source}: key representation.stage.k={printable(k)[:40]} must be an integer in "
                                 f"[1, {MAX_WIDTH}]")
        return k

    @classmethod
    def expected(cls, meta: dict, n: int, source) -> tuple[dict, int]:
        """({tensor: shape} a run with this stage holds, the generator's dimension)."""
        k = cls._k(meta, source)
        return {"mean": (n,), "components": (k, n), "scale": (k,)}, k

    @classmethod
    def load(cls, meta: dict, tensors: dict) -> "PCACodes":
        info = meta.get("info") if isinstance(meta.get("info"), dict) else {}
        return cls(tensors["mean"], tensors["components"], tensors["scale"], info)
