"""Merge methods as pure functions on state dicts ({name: tensor}, one architecture).

`keys`: the tensors a method merges (the net's parameters; default: every floating tensor). Every other
tensor (BatchNorm statistics, integer counters, constant buffers) is copied from the first state dict
(the reference of `aligned`); wsl.merge.job re-estimates BatchNorm statistics of the merged net on train
data afterwards. Arithmetic is float64, results are cast back to each tensor's dtype.

- uniform soup: the mean of the ingredients.
- greedy soup (Wortsman et al. 2022, Algorithm 1): ingredients sorted by VALIDATION score, best first;
  the soup starts as the best one; each next ingredient stays if the validation score of the soup with it
  is not worse than without (>=). The validation score of the result is therefore never below the best
  ingredient's (measured by the same `val_score`).
- Model Stock (Jang et al. 2024): per tensor (layer) l, with task deltas d_i = w_i - w_0 from the
  pretrained w_0, cos(theta_l) is the cosine of the mean pairwise angle between the d_i (the paper assumes
  one angle for every pair; with k = 2 it is that pair's), and
      t_l = k cos(theta_l) / ((k - 1) cos(theta_l) + 1),  merged_l = t_l * mean_i w_i + (1 - t_l) * w_0.
- TIES (Yadav et al. 2023): task vectors tau_i = w_i - w_0 (flattened over all merged tensors); trim:
  keep the top `density` fraction of |tau_i| entries of each task vector (the rest 0); elect: sign
  gamma = sign(sum_i trimmed tau_i) per entry; disjoint mean: per entry, the mean of the trimmed tau_i
  whose sign equals gamma (non-zero ones); merged = w_0 + scale * that mean.
- DARE (Yu et al. 2024) with task arithmetic: each entry of each tau_i dropped with probability `drop`,
  the kept ones rescaled by 1 / (1 - drop); merged = w_0 + scale * mean_i of those (scale 1: equal in
  expectation to the uniform soup).
- aligned: every ingredient weight-matched (wsl.symmetry, Git Re-Basin) to the reference (the first),
  then the uniform soup: for nets trained from scratch, whose hidden units are in arbitrary order.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from wsl.errors import ConfigError


@dataclass
class Merged:
    """A merged state dict and what made it: weights of the ingredients (None where a method has none
    per ingredient), per-tensor coefficients (Model Stock's t), and notes (greedy soup's trail)."""

    state_dict: dict
    weights: list | None = None
    coefficients: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def _check(sds: list, base: dict | None = None) -> None:
    if not sds:
        raise ConfigError("nothing to merge: no state dicts")
    names = list(sds[0])
    for i, sd in enumerate(sds[1:] + ([base] if base is not None else []), 1):
        what = "the base" if base is not None and i == len(sds) else f"state dict {i}"
        if list(sd) != names and set(sd) != set(names):
            extra, missing = sorted(set(sd) - set(names)), sorted(set(names) - set(sd))
            raise ConfigError(f"{what} does not have the tensors of state dict 0 (extra {extra[:3]}, missing "
                              f"{missing[:3]}): nets of different architectures cannot be merged")
        for k in names:
            if sd[k].shape != sds[0][k].shape:
                raise ConfigError(f"{what}: tensor {k} has shape {tuple(sd[k].shape)}, state dict 0 has "
                                  f"{tuple(sds[0][k].shape)}: nets of different architectures cannot be merged")


def merged_keys(sd: dict, keys=None) -> list:
    """The tensors merged: `keys` (in sd order) or every floating tensor."""
    if keys is None:
        return [k for k, v in sd.items() if v.is_floating_point()]
    keys = set(keys)
    return [k for k in sd if k in keys]


def _assemble(first: dict, values: dict) -> dict:
    """first's tensors, with `values` (float64) cast back in place."""
    return {k: (values[k].to(v.dtype) if k in values else v.clone()) for k, v in first.items()}


def weighted_average(sds: list, weights, keys=None) -> dict:
    """sum_i weights[i] * sds[i] on the merged tensors (weights need not sum to 1)."""
    _check(sds)
    if len(weights) != len(sds):
        raise ConfigError(f"{len(weights)} weights for {len(sds)} state dicts")
    ks = merged_keys(sds[0], keys)
    out = {k: sum(float(w) * sd[k].double() for w, sd in zip(weights, sds)) for k in ks}
    return _assemble(sds[0], out)


def uniform_soup(sds: list, keys=None) -> Merged:
    k = len(sds)
    return Merged(weighted_average(sds, [1.0 / k] * k, keys), [1.0 / k] * k)


def greedy_soup(sds: list, val_score: Callable[[dict], float], keys=None, higher_is_better: bool = True,
                scores: list | None = None) -> Merged:
    """Greedy soup on validation scores. val_score(sd) -> the soup candidate's validation score (never test
    data); `scores`: the ingredients' own validation scores when already measured (else val_score of each).
    Ingredients are ranked best first (ties: input order); weights: 1/|kept| for kept ones, 0 otherwise;
    info: the ranking, each candidate's score and whether it was kept. The tensors not merged come from the
    best ingredient (the soup's first), so the result is exactly the candidate whose score was measured."""
    _check(sds)
    own = [float(val_score(sd)) for sd in sds] if scores is None else [float(s) for s in scores]
    sign = 1.0 if higher_is_better else -1.0
    order = sorted(range(len(sds)), key=lambda i: (-sign * _key(own[i]), i))
    kept, best = [order[0]], own[order[0]]
    trail = [{"ingredient": order[0], "score": best, "kept": True}]
    soup = {k: v.clone() for k, v in sds[order[0]].items()}
    for i in order[1:]:
        cand = kept + [i]
        cand_sd = weighted_average([sds[j] for j in cand], [1.0 / len(cand)] * len(cand), keys)
        s = float(val_score(cand_sd))
        ok = math.isfinite(s) and (sign * (s - best) >= 0 or not math.isfinite(best))
        trail.append({"ingredient": i, "score": s, "kept": ok})
        if ok:
            kept, best, soup = cand, s, cand_sd
    weights = [1.0 / len(kept) if i in kept else 0.0 for i in range(len(sds))]
    return Merged(soup, weights, info={"ranking": order, "ingredient_scores": own, "trail": trail, "kept": sorted(kept),
                                 "val_score": best})


def _key(v: float) -> float:
    return v if math.isfinite(v) else -math.inf


def stock_ratio(cos: float, k: int) -> float:
    """Model Stock's interpolation ratio t = k cos / ((k - 1) cos + 1) for k fine-tuned nets."""
    return k * cos / ((k - 1) * cos + 1)


def mean_pairwise_cos(deltas: list) -> float:
    """cos of the mean angle between every pair of vectors (flattened); an all-zero delta: angle 90 deg."""
    angles = []
    for a, b in itertools.combinations(deltas, 2):
        a, b = a.double().flatten(), b.double().flatten()
        na, nb = a.norm(), b.norm()
        c = float((a @ b) / (na * nb)) if na > 0 and nb > 0 else 0.0
        angles.append(math.acos(max(-1.0, min(1.0, c))))
    return math.cos(sum(angles) / len(angles))


def model_stock(sds: list, base: dict, keys=None) -> Merged:
    """Model Stock of k >= 2 nets fine-tuned from `base`, layer-wise (one ratio per merged tensor; a tensor no net
    changed is the base's, and has no ratio in `coefficients`)."""
    _check(sds, base)
    k = len(sds)
    if k < 2:
        raise ConfigError("Model Stock needs at least 2 fine-tuned nets (the angle between their deltas)")
    out, ratios = {}, {}
    for name in merged_keys(sds[0], keys):
        w0 = base[name].double()
        deltas = [sd[name].double() - w0 for sd in sds]
        if not any(bool(d.any()) for d in deltas):  # no net moved it (e.g. a layer LoRA does not adapt): w0
            out[name] = w0
            continue
        t = stock_ratio(mean_pairwise_cos(deltas), k)
        ratios[name] = t
        avg = sum(sd[name].double() for sd in sds) / k
        out[name] = t * avg + (1 - t) * w0
    return Merged(_assemble(sds[0], out), [1.0 / k] * k, ratios)


def _flat_task_vectors(sds: list, base: dict, ks: list) -> torch.Tensor:
    """[k, N] task vectors w_i - w_0 over the merged tensors, in `ks` order."""
    return torch.stack([torch.cat([(sd[n].double() - base[n].double()).flatten() for n in ks]) for sd in sds])


def _unflat(base: dict, ks: list, flat: torch.Tensor) -> dict:
    out, i = {}, 0
    for n in ks:
        m = base[n].numel()
        out[n] = base[n].double() + flat[i: i + m].view(base[n].shape)
        i += m
    return out


def ties_vector(tau: torch.Tensor, density: float) -> torch.Tensor:
    """TIES on task vectors tau [k, N]: trim (top `density` of |entries| per row), elect sign, disjoint mean."""
    k, n = tau.shape
    keep = max(1, min(n, int(math.ceil(density * n)))) if density > 0 else 0
    trimmed = torch.zeros_like(tau)
    if keep:
        idx = tau.abs().topk(keep, dim=1).indices
        trimmed.scatter_(1, idx, tau.gather(1, idx))
    gamma = torch.sign(trimmed.sum(0))  # elected sign per entry (0 where the mass cancels or is empty)
    agree = (torch.sign(trimmed) == gamma) & (trimmed != 0)
    count = agree.sum(0)
    return torch.where(count > 0, (trimmed * agree).sum(0) / count.clamp_min(1), torch.zeros(n, dtype=tau.dtype))


def ties(sds: list, base: dict, density: float = 0.2, scale: float = 1.0, keys=None) -> Merged:
    _check(sds, base)
    if not 0 < density <= 1:
        raise ConfigError(f"merge.density={density}: the fraction of task-vector entries TIES keeps, in (0, 1]")
    ks = merged_keys(sds[0], keys)
    merged = ties_vector(_flat_task_vectors(sds, base, ks), density)
    return Merged(_assemble(sds[0], _unflat(base, ks, scale * merged)), None,
                  info={"density": density, "scale": scale})


def dare_vector(tau: torch.Tensor, drop: float, generator: torch.Generator) -> torch.Tensor:
    """DARE on task vectors tau [k, N]: each entry dropped with probability `drop`, kept ones / (1 - drop);
    returns the mean over the k rows."""
    keep = torch.rand(tau.shape, generator=generator, dtype=torch.float64) >= drop
    return (tau * keep / (1.0 - drop)).mean(0)


def dare(sds: list, base: dict, drop: float = 0.5, scale: float = 1.0, seed: int = 0, keys=None) -> Merged:
    _check(sds, base)
    if not 0 <= drop < 1:
        raise ConfigError(f"merge.drop={drop}: DARE's drop rate, in [0, 1)")
    ks = merged_keys(sds[0], keys)
    merged = dare_vector(_flat_task_vectors(sds, base, ks), drop, torch.Generator().manual_seed(int(seed)))
    k = len(sds)
    return Merged(_assemble(sds[0], _unflat(base, ks, scale * merged)), [scale / k] * k,
                  info={"drop": drop, "scale": scale, "seed": int(seed)})


def aligned_soup(sds: list, spec, keys=None, max_iter: int = 100, seed: int = 0) -> Merged:
    """Weight-match every state dict to sds[0] (wsl.symmetry.align), then average them uniformly."""
    from wsl.symmetry import align

    _check(sds)
    moved = [sds[0]] + [{k: v.to(sd[k].dtype) for k, v in align(sds[0], sd, spec, max_iter=max_iter,
                                                                 seed=seed).items()} for sd in sds[1:]]
    out = uniform_soup(moved, keys)
    out.info["reference"] = 0
    return out
