"""Heavy-tailed spectral analysis of weight matrices (Martin & Mahoney 2021).

A Linear layer's weight W [out, in] is one matrix. A conv layer's weight [c_out, c_in, *k] is read as
WeightWatcher reads it (conv="slices", the default): one [c_out, c_in] matrix per kernel position
(k·k matrices for a k x k Conv2d, k for a Conv1d; a 1x1 projection shortcut is a single [c_out, c_in]
matrix, like a Linear layer), whose eigenvalues are pooled into the layer's one ESD; conv="unfold"
reads it as the single matrix [c_out, c_in·k·k] instead. Either way the empirical spectral density
(ESD) is the set of eigenvalues of WᵀW (the squared singular values of W). BatchNorm's γ and β are
vectors, not matrices: no spectrum. A power law
p(λ) ∝ λ^(-α) is fitted to the tail λ >= xmin by maximum likelihood,
    α = 1 + n / Σ ln(λ_i / xmin),
with xmin chosen to minimize the Kolmogorov-Smirnov distance between the tail's empirical CDF
and the fitted one (Clauset, Shalizi & Newman 2009). Derived: α-hat = α·log10 λmax,
log spectral norm = log10 λmax, stable rank = Σλ / λmax = ||W||_F² / ||W||_2² (with slices, λmax is
the largest over the kernel positions and Σλ = ||W||_F² of the whole kernel). Kernels are not rescaled
(a rescaling would change the norm metrics, never α).

Aspect ratio biases α; the FARMS correction (2025) averages the ESDs of submatrices of one fixed
aspect ratio instead (here: their eigenvalues are pooled, which is averaging the densities).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from wsl.landscape.schema import CONV_CONVENTIONS


@dataclass
class PowerLawFit:
    alpha: float
    xmin: float
    ks: float  # KS distance of the fitted tail
    n_tail: int


def fit_power_law(evals, min_tail: int = 5, max_candidates: int = 1000) -> PowerLawFit:
    """Continuous power-law MLE with the KS-optimal xmin.

    Candidates for xmin are the eigenvalues leaving >= min_tail points in the tail; past
    max_candidates of them, an evenly spaced subset (by rank) bounds the O(n²) search.
    """
    lam = np.sort(np.asarray(evals, dtype=np.float64))
    lam = lam[lam > 0]
    n = lam.size
    if n < max(2, min_tail):
        raise ValueError(f"need at least {max(2, min_tail)} positive eigenvalues, got {n}")
    logs = np.log(lam)
    suffix = np.cumsum(logs[::-1])[::-1]  # suffix[i] = Σ_{j>=i} ln λ_j
    last = n - max(2, min_tail)
    cands = np.unique(np.linspace(0, last, min(int(max_candidates), last + 1)).round().astype(int))
    best = None
    for i in cands:
        if i > 0 and lam[i] == lam[i - 1]:
            continue  # the tail would include points below xmin
        m = n - i
        denom = suffix[i] - m * logs[i]
        if denom <= 0:
            continue
        alpha = 1.0 + m / denom
        fitted = 1.0 - (lam[i:] / lam[i]) ** (1.0 - alpha)  # model CDF at each tail point
        ks = float(max(np.max(np.abs(np.arange(1, m + 1) / m - fitted)),
                       np.max(np.abs(np.arange(0, m) / m - fitted))))
        if best is None or ks < best.ks:
            best = PowerLawFit(float(alpha), float(lam[i]), ks, int(m))
    if best is None:
        raise ValueError("all eigenvalues are equal: no power-law tail to fit")
    return best


def esd(w: torch.Tensor) -> np.ndarray:
    """Eigenvalues of WᵀW for W [m, n] (the min(m, n) nonzero ones), ascending, float64."""
    sv = torch.linalg.svdvals(w.double())
    return np.sort(sv.numpy() ** 2)


def farms_esd(w: torch.Tensor, aspect_ratio: float = 1.0, max_blocks: int = 64) -> np.ndarray:
    """Pooled eigenvalues of submatrices [s, round(s·aspect_ratio)] tiling W (long side along columns).

    Blocks are placed on a grid whose windows cover W (the last window of each axis ends at the
    edge), so every weight enters at least one block; at most max_blocks blocks, evenly chosen.
    """
    if w.shape[0] > w.shape[1]:
        w = w.T
    m, n = w.shape
    rows = min(m, max(1, int(n / aspect_ratio)))
    cols = min(n, max(1, int(round(rows * aspect_ratio))))
    blocks = list(itertools.product(_window_starts(m, rows), _window_starts(n, cols)))
    if len(blocks) > max_blocks:
        keep = np.linspace(0, len(blocks) - 1, max_blocks).round().astype(int)
        blocks = [blocks[i] for i in keep]
    return np.sort(np.concatenate([esd(w[r:r + rows, c:c + cols]) for r, c in blocks]))


def _window_starts(total: int, size: int) -> list[int]:
    k = math.ceil(total / size)
    return sorted({int(round(s)) for s in np.linspace(0, total - size, k)}) if k > 1 else [0]


@dataclass
class LayerSpectrum:
    name: str
    shape: tuple
    num_evals: int
    alpha: float = float("nan")
    alpha_hat: float = float("nan")
    log_spectral_norm: float = float("nan")
    stable_rank: float = float("nan")
    xmin: float = float("nan")
    ks: float = float("nan")
    n_tail: int = 0
    note: str = ""


def layer_matrices(w: torch.Tensor, conv: str = "slices") -> list[torch.Tensor]:
    """The matrices whose pooled ESD is a layer's: [W] for a matrix; for a conv kernel [c_out, c_in, *k]
    one [c_out, c_in] matrix per kernel position (conv="slices", WeightWatcher's reading), or the single
    [c_out, c_in·prod(k)] matrix (conv="unfold")."""
    if conv not in CONV_CONVENTIONS:
        raise ValueError(f"conv must be one of {CONV_CONVENTIONS}, got {conv!r}")
    w = w.detach()
    if w.dim() <= 2:
        return [w.reshape(w.shape[0], -1)]
    if conv == "unfold":
        return [w.reshape(w.shape[0], -1)]
    flat = w.reshape(w.shape[0], w.shape[1], -1)  # [c_out, c_in, positions]
    return [flat[:, :, i] for i in range(flat.shape[2])]


def layer_spectrum(name: str, w: torch.Tensor, min_evals: int = 10, min_tail: int = 5, farms: bool = False,
                   aspect_ratio: float = 1.0, max_blocks: int = 64, max_candidates: int = 1000,
                   conv: str = "slices") -> LayerSpectrum:
    """All spectral metrics of one weight tensor; a layer too small to fit says why in `note`.

    `conv`: how a conv kernel becomes matrices (layer_matrices); their eigenvalues are pooled into one ESD
    (with FARMS, each matrix's submatrix eigenvalues are)."""
    mats = layer_matrices(w, conv)
    out = LayerSpectrum(name, tuple(w.shape), int(sum(min(m.shape) for m in mats)))
    if not all(torch.isfinite(m).all() for m in mats):
        return replace(out, note="non-finite weights")
    lam = np.sort(np.concatenate([esd(m) for m in mats]))
    lam_max = float(lam[-1])
    if lam_max <= 0:
        return replace(out, note="all-zero weights")
    # Norm-type metrics use the full matrices; only α comes from the (optionally FARMS) ESD.
    out.log_spectral_norm = math.log10(lam_max)
    out.stable_rank = float(lam.sum() / lam_max)
    if out.num_evals < min_evals:
        return replace(out, note=f"too small to fit a power law: {out.num_evals} eigenvalues < min_evals={min_evals}")
    try:
        evals = np.sort(np.concatenate([farms_esd(m, aspect_ratio, max_blocks) for m in mats])) if farms else lam
        fit = fit_power_law(evals, min_tail, max_candidates)
    except ValueError as e:
        return replace(out, note=f"power-law fit failed: {e}")
    out.alpha, out.xmin, out.ks, out.n_tail = fit.alpha, fit.xmin, fit.ks, fit.n_tail
    out.alpha_hat = fit.alpha * out.log_spectral_norm
    return out


def weight_layers(state_dict: dict) -> list[str]:
    """Names of the tensors that are layer weight matrices or conv kernels (>= 2 dims), in state-dict order
    (BatchNorm's γ, β and statistics, and biases, are vectors: left out)."""
    return [k for k, v in state_dict.items() if v.dim() >= 2 and v.is_floating_point()]
