"""Linear CKA properties and the power-law fit of weight spectra (synthetic spectra with known exponents)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsl.landscape.cka import linear_cka, pairwise_cka, replica_pairs
from wsl.landscape.spectra import esd, farms_esd, fit_power_law, layer_matrices, layer_spectrum

# ---- CKA --------------------------------------------------------------------------------------


def _features(seed, n=200, d=12):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g)  # correlated features


def _orthogonal(d, seed):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def test_cka_of_a_representation_with_itself_is_one():
    x = _features(0)
    torch.testing.assert_close(linear_cka(x, x), torch.tensor(1.0, dtype=torch.float64))


def test_cka_is_invariant_to_orthogonal_maps_isotropic_scaling_and_shifts():
    x, y = _features(0), _features(1, d=7)
    base = linear_cka(x, y)
    assert 0.0 < base < 0.9
    q = _orthogonal(12, 5)
    torch.testing.assert_close(linear_cka(x.double() @ q * 7.5 + 3.0, y), base)
    torch.testing.assert_close(linear_cka(x, y * 0.01), base)
    torch.testing.assert_close(linear_cka(x.double() @ q, x), torch.tensor(1.0, dtype=torch.float64))
    # but not to anisotropic scaling: CKA is not invariant to every invertible map
    s = torch.linspace(0.1, 10, 12)
    assert abs(linear_cka(x * s, y) - base) > 1e-3


def test_cka_in_feature_space_equals_gram_matrix_definition():
    x, y = _features(2).double(), _features(3, d=5).double()
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    kx, ky = h @ x @ x.T @ h, h @ y @ y.T @ h
    hsic = lambda a, b: (a * b).sum()  # noqa: E731  (tr(K L) of centred Gram matrices)
    want = hsic(kx, ky) / (hsic(kx, kx) * hsic(ky, ky)).sqrt()
    torch.testing.assert_close(linear_cka(x, y), want)


def test_pairwise_cka_is_batched_per_pair():
    outs = torch.stack([_features(s, d=6) for s in range(4)])
    pairs = replica_pairs(4)
    assert pairs == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert replica_pairs(4, max_pairs=2) == [(0, 1), (0, 2)] and replica_pairs(1) == []
    got = pairwise_cka(outs, pairs)
    for k, (i, j) in enumerate(pairs):
        torch.testing.assert_close(got[k], linear_cka(outs[i], outs[j]))


# ---- spectra ----------------------------------------------------------------------------------


def _quantile_power_law(alpha, n, xmin=1.0):
    """A noise-free power-law spectrum: the n quantiles of p(λ) ∝ λ^-α on [xmin, ∞)."""
    u = (np.arange(n) + 0.5) / n
    return xmin * (1 - u) ** (-1 / (alpha - 1))


@pytest.mark.parametrize("alpha", [1.8, 2.5, 3.5, 5.0])
def test_alpha_recovers_exponent_of_a_noise_free_power_law(alpha):
    fit = fit_power_law(_quantile_power_law(alpha, 400))
    assert abs(fit.alpha - alpha) < 0.1


@pytest.mark.parametrize("alpha", [2.0, 3.0])
def test_alpha_recovers_exponent_of_sampled_power_law_with_a_bulk(alpha):
    """Random power-law tail above a uniform bulk: the KS search must find xmin and the MLE α."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        tail = 2.0 * rng.uniform(size=10000) ** (-1 / (alpha - 1))
        bulk = rng.uniform(0.01, 2.0, size=2000)
        fit = fit_power_law(np.concatenate([bulk, tail]))
        assert abs(fit.alpha - alpha) < 0.1, (seed, fit)
        assert 1.5 < fit.xmin < 4.0


def test_layer_spectrum_of_a_matrix_with_planted_power_law_spectrum():
    """W = U diag(√λ) Vᵀ has ESD exactly λ: α within 0.1, norms exact."""
    lam = _quantile_power_law(2.5, 300, xmin=0.5)
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.normal(size=(300, 300)))
    v, _ = np.linalg.qr(rng.normal(size=(450, 300)))
    w = torch.tensor((u * np.sqrt(lam)) @ v.T)  # [300, 450]
    np.testing.assert_allclose(esd(w), np.sort(lam), rtol=1e-8)
    r = layer_spectrum("w", w)
    assert r.note == "" and r.num_evals == 300
    assert abs(r.alpha - 2.5) < 0.1
    assert r.log_spectral_norm == pytest.approx(np.log10(lam.max()))
    assert r.stable_rank == pytest.approx(lam.sum() / lam.max())
    assert r.alpha_hat == pytest.approx(r.alpha * np.log10(lam.max()))


def test_small_layers_say_why_instead_of_failing():
    r = layer_spectrum("tiny", torch.randn(3, 40))
    assert np.isnan(r.alpha) and "3 eigenvalues < min_evals=10" in r.note
    assert np.isfinite(r.stable_rank) and np.isfinite(r.log_spectral_norm)  # norms need no fit
    assert "non-finite" in layer_spectrum("nan", torch.full((20, 20), float("nan"))).note
    assert "all-zero" in layer_spectrum("zero", torch.zeros(20, 20)).note
    with pytest.raises(ValueError, match="at least"):
        fit_power_law([1.0, 2.0, 3.0])


def _with_singular_values(sv, rows, cols, seed):
    """A [rows, cols] matrix U diag(sv) Vᵀ with random orthonormal U, V."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(rows, len(sv))))
    v, _ = np.linalg.qr(rng.normal(size=(cols, len(sv))))
    return (u * sv) @ v.T


def test_conv_kernels_are_one_matrix_per_kernel_position_with_pooled_eigenvalues():
    """WeightWatcher's reading (conv="slices"): kernel position (i, j) is the matrix W[:, :, i, j] [c_out, c_in];
    the layer's ESD is the union of their squared singular values, planted here: 9 x 12 power-law values."""
    lam = _quantile_power_law(2.5, 9 * 12, xmin=0.5)
    rng = np.random.default_rng(1)
    rng.shuffle(lam)
    w = np.zeros((20, 12, 3, 3))
    for pos in range(9):
        w[:, :, pos // 3, pos % 3] = _with_singular_values(np.sqrt(lam[pos * 12:(pos + 1) * 12]), 20, 12, pos)
    w = torch.tensor(w)
    mats = layer_matrices(w)
    assert len(mats) == 9 and all(m.shape == (20, 12) for m in mats)
    torch.testing.assert_close(mats[5], w[:, :, 1, 2])
    r = layer_spectrum("conv", w)
    assert r.note == "" and r.num_evals == 9 * 12
    assert r.log_spectral_norm == pytest.approx(np.log10(lam.max()))
    assert r.stable_rank == pytest.approx(lam.sum() / lam.max())  # ||W||_F² / the largest slice's ||W_ij||_2²
    assert r.alpha == pytest.approx(fit_power_law(lam).alpha) and abs(r.alpha - 2.5) < 0.3
    # the other reading of the same kernel: one [20, 108] matrix, 20 other eigenvalues
    other = layer_spectrum("conv", w, conv="unfold")
    assert other.num_evals == 20 and other.stable_rank != pytest.approx(r.stable_rank)
    # a 1x1 kernel (projection shortcut) is its single matrix either way; Conv1d kernels have k positions
    sq = torch.tensor(_with_singular_values(np.arange(1.0, 13.0), 16, 12, 7))
    for conv in ("slices", "unfold"):
        one = layer_spectrum("short", sq[:, :, None, None], conv=conv)
        np.testing.assert_allclose(10 ** one.log_spectral_norm, 144.0, rtol=1e-9)
        assert one.num_evals == 12 and one.alpha == layer_spectrum("m", sq).alpha
    assert [m.shape for m in layer_matrices(torch.randn(5, 3, 4))] == [(5, 3)] * 4
    with pytest.raises(ValueError, match="conv must be one of"):
        layer_matrices(w, "fft")


def test_unfold_reads_a_conv_kernel_as_one_matrix_over_input_and_kernel():
    """conv="unfold": the kernel is the matrix [c_out, c_in·k·k], whose planted singular values come back."""
    sv = np.linspace(0.5, 3.0, 16)
    m = _with_singular_values(sv, 16, 36, 3)
    w = torch.tensor(m).reshape(16, 4, 3, 3)
    np.testing.assert_allclose(esd(layer_matrices(w, "unfold")[0]), np.sort(sv**2), rtol=1e-9)
    conv, mat = layer_spectrum("c", w, conv="unfold"), layer_spectrum("m", torch.tensor(m))
    assert conv.num_evals == 16 and conv.alpha == mat.alpha and conv.stable_rank == pytest.approx(mat.stable_rank)


def test_farms_blocks_tile_the_matrix():
    w = torch.randn(30, 100, dtype=torch.float64)
    # square blocks [30, 30] at columns 0, 23, 47, 70: ceil(100/30) windows, the last one at the edge
    want = np.sort(np.concatenate([esd(w[:, c:c + 30]) for c in (0, 23, 47, 70)]))
    np.testing.assert_allclose(farms_esd(w, aspect_ratio=1.0), want)
    np.testing.assert_allclose(farms_esd(w.T, aspect_ratio=1.0), want)  # tall matrices are read transposed
    want2 = np.sort(np.concatenate([esd(w[:, c:c + 60]) for c in (0, 40)]))  # [30, 60] blocks
    np.testing.assert_allclose(farms_esd(w, aspect_ratio=2.0), want2)
    sq = torch.randn(40, 40, dtype=torch.float64)
    np.testing.assert_allclose(farms_esd(sq), esd(sq))  # a square matrix is its own single block


def test_farms_removes_most_of_the_aspect_ratio_bias_of_alpha():
    """Heavy-tailed (Student-t) random matrices of one distribution but different shapes: plain α
    drifts with the aspect ratio, the fixed-aspect-ratio estimate much less (the FARMS claim)."""
    plain, farms = {}, {}
    for cols in (256, 1024):
        a, b = [], []
        for seed in range(3):
            w = torch.tensor(np.random.default_rng(seed).standard_t(2.5, size=(128, cols)))
            a.append(layer_spectrum("w", w).alpha)
            b.append(layer_spectrum("w", w, farms=True).alpha)
        plain[cols], farms[cols] = np.mean(a), np.mean(b)
    assert abs(farms[256] - farms[1024]) < 0.5 * abs(plain[256] - plain[1024])
