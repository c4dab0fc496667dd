"""Weight matching (Git Re-Basin, Ainsworth et al. 2023): permute a net's hidden units so that its
weights are as close as possible (in L2) to a reference net's.

Minimizing sum_l ||W_ref_l - P(W)_l||^2 over permutations equals maximizing the inner product
    J(perms) = sum over tensors of <W_ref, permute(W, perms)>
because permutations keep norms. Over all permutations jointly this is an NP-hard quadratic
assignment problem; coordinate descent solves it one permutation at a time: with the others
fixed, J is linear in the permutation `p`, so the best `p` is a linear assignment on the
similarity matrix S_p[i, j] = sum over axes named p of <ref unit i, (other perms applied) unit j>,
which scipy's `linear_sum_assignment` solves exactly. Permutations are visited in random order;
the descent stops after a pass that improves nothing.

Attention heads (spec.heads; TransFusion's two levels): the permutations of one head group (a block's
q/k dims "A<b>.qk" and v/o dims "A<b>.vo", heads "H<b>") are one coordinate, solved exactly with the
others fixed. J restricted to them is sum over new heads i of sum over the group's permutations p of
<S_p block (i, head[i]), inner_p[i]>, so: for every pair (reference head i, head j) the best order of
the dims inside is a linear assignment on the [d, d] block S_p[i, j] (each p apart); the pair's cost is
the sum of those optima; the heads are matched as units by a linear assignment on that [k, k] cost;
each matched pair keeps its best inner orders. A flat assignment over all units would mix dims of
different heads, which is no symmetry.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from wsl.errors import ConfigError
from wsl.nets.spec import PermutationSpec
from wsl.schema import positive
from wsl.symmetry.permute import (Perms, block_permutation, check_state_dict, identity_permutations, permute,
                                  random_permutations)

# an update must raise J by more than this (relative) to count: ties never flip units back and forth
_REL_TOL = 1e-12


@dataclass
class MatchResult:
    perms: Perms  # name -> LongTensor[n]; permute(sd, spec, perms) is aligned to the reference
    objective: float  # J at the returned permutations
    passes: int  # coordinate-descent passes run (the last one improved nothing when converged)
    converged: bool


def _as_float64(sd: dict, spec: PermutationSpec) -> dict:
    """The weights of `sd` as float64 (BatchNorm statistics describe data, not the net: never matched)."""
    return {k: sd[k].detach().to("cpu", torch.float64) for k in spec.parameters().axes}


def _checked(sd_ref: dict, sd: dict, spec: PermutationSpec) -> tuple[dict, dict]:
    """Both nets' weights as float64, refused (ConfigError) unless each fits the spec and the other."""
    check_state_dict(sd_ref, spec, what="reference state dict")
    check_state_dict(sd, spec, what="state dict to align")
    for k in spec.parameters().axes:
        if sd_ref[k].shape != sd[k].shape:
            raise ConfigError(f"weight matching: parameter {k!r} has shape {tuple(sd[k].shape)}, "
                              f"the reference {tuple(sd_ref[k].shape)}")
    return _as_float64(sd_ref, spec), _as_float64(sd, spec)


def _inner(ref: dict, moved: dict) -> float:  # J of float64 tensors
    return float(sum((ref[k] * moved[k]).sum() for k in ref))


def _units(t: torch.Tensor, axis: int) -> torch.Tensor:  # [*shape] -> [n units along axis, rest]
    return t.movedim(axis, 0).reshape(t.shape[axis], -1)


class _Similarity:
    """S_p[i, j] = <ref unit i, unit j of sd with every other permutation applied>: [n, n].

    Terms of tensors that no other permutation touches (the first layer, biases) are the same at
    every step: they are summed once; only the terms that depend on another permutation are
    recomputed (for a wide first layer this halves the cost of a step).
    """

    def __init__(self, ref: dict, w: dict, spec: PermutationSpec):
        self.w, self.const, self.varying = w, {}, {}
        for p, uses in spec.perm_to_axes.items():
            n = spec.sizes[p]
            self.const[p] = torch.zeros(n, n, dtype=torch.float64)
            self.varying[p] = []
            for name, axis in uses:
                others = [(ax, q) for ax, q in enumerate(spec.axes[name]) if ax != axis and q is not None]
                r = _units(ref[name], axis)  # [n, rest]
                if others:
                    self.varying[p].append((name, axis, others, r))
                else:
                    self.const[p] += r @ _units(w[name], axis).T

    def __call__(self, p: str, perms: Perms) -> torch.Tensor:
        s = self.const[p].clone()
        for name, axis, others, r in self.varying[p]:
            t = self.w[name]
            for ax, q in others:
                t = t.index_select(ax, perms[q])
            s += r @ _units(t, axis).T
        return s


def objective(sd_ref: dict, sd: dict, spec: PermutationSpec, perms: Perms) -> float:
    """J = sum over tensors of <W_ref, permute(W, perms)> (higher is closer)."""
    return _inner(_as_float64(sd_ref, spec), permute(_as_float64(sd, spec), spec.parameters(), perms))


def _coordinates(spec: PermutationSpec) -> list:
    """What one step of the descent solves: (name, [permutation]) for a permutation without heads, or
    (head permutation name, [its permutations]) for a head group; those acting on no axis are left out."""
    uses, out, seen = spec.perm_to_axes, [], set()
    for p in spec.sizes:
        if p not in spec.heads:
            if uses[p]:
                out.append((p, [p]))
            continue
        h = spec.heads[p]
        if h not in seen:
            seen.add(h)
            members = spec.head_groups[h]
            if any(uses[q] for q in members):
                out.append((h, members))
    return out


def best_head_blocks(sims: list, num_heads: int) -> list:
    """The block permutations that maximize sum_p <S_p, P_p> over one head group exactly: S_p [n_p, n_p]
    similarity matrices (numpy) of the group's permutations, which share one head permutation. Returns one
    flat LongTensor[n_p] per S_p (see the module docstring)."""
    k = num_heads
    cost = np.zeros((k, k))
    inner = []  # per p: [k, k, d] best order of head j's dims under reference head i
    for s in sims:
        d = s.shape[0] // k
        blocks = s.reshape(k, d, k, d)
        best = np.zeros((k, k, d), dtype=np.int64)
        for i in range(k):
            for j in range(k):
                block = blocks[i, :, j, :]
                rows, cols = linear_sum_assignment(block, maximize=True)
                cost[i, j] += block[rows, cols].sum()
                best[i, j] = cols
        inner.append(best)
    _, head = linear_sum_assignment(cost, maximize=True)
    return [block_permutation(torch.as_tensor(head), torch.as_tensor(best[np.arange(k), head])) for best in inner]


def _descend(similarity: _Similarity, spec: PermutationSpec, perms: Perms, max_iter: int,
             rng: np.random.Generator) -> tuple[Perms, int, bool]:
    """Coordinate descent from `perms` (updated in place); returns (perms, passes, converged)."""
    coords = _coordinates(spec)
    passes, improved = 0, True
    while improved and passes < max_iter:
        passes += 1
        improved = False
        for i in rng.permutation(len(coords)):
            name, members = coords[i]
            sims = [similarity(p, perms).numpy() for p in members]  # [n, n] each
            if name in spec.num_heads:
                new_perms = best_head_blocks(sims, spec.num_heads[name])
            else:
                new_perms = [torch.as_tensor(linear_sum_assignment(sims[0], maximize=True)[1], dtype=torch.long)]
            old = sum(float(s[np.arange(s.shape[0]), perms[p].numpy()].sum()) for s, p in zip(sims, members))
            new = sum(float(s[np.arange(s.shape[0]), q.numpy()].sum()) for s, q in zip(sims, new_perms))
            if new > old + _REL_TOL * max(1.0, abs(old)):
                perms.update(zip(members, new_perms))
                improved = True
    return perms, passes, not improved


def match(sd_ref: dict, sd: dict, spec: PermutationSpec, max_iter: int = 100, seed: int = 0,
          init: Perms | None = None, restarts: int = 1) -> MatchResult:
    """Coordinate descent on the permutations of `sd` towards `sd_ref` (see the module docstring).

    The first descent starts from `init` (default: identity); each further restart starts from
    random permutations, and the best objective wins. Coordinate descent finds a coordinate-wise
    optimum (no single permutation can improve), not always the joint one: restarts buy the joint
    optimum more often on deep nets.
    """
    positive("max_iter", max_iter)
    positive("restarts", restarts)
    ref, w = _checked(sd_ref, sd, spec)
    spec = spec.parameters()
    similarity = _Similarity(ref, w, spec)
    rng = np.random.default_rng(seed)
    start = identity_permutations(spec)
    start.update({p: torch.as_tensor(v, dtype=torch.long).clone() for p, v in (init or {}).items()})
    best = None
    for r in range(restarts):
        if r > 0:
            start = random_permutations(spec, torch.Generator().manual_seed(int(rng.integers(2**62))))
        perms, passes, converged = _descend(similarity, spec, start, max_iter, rng)
        result = MatchResult(perms, _inner(ref, permute(w, spec, perms)), passes, converged)
        if best is None or result.objective > best.objective:
            best = result
    return best


def weight_matching(sd_ref: dict, sd: dict, spec: PermutationSpec, max_iter: int = 100, seed: int = 0,
                    init: Perms | None = None, restarts: int = 1) -> Perms:
    """Permutations that align `sd` to `sd_ref`: `permute(sd, spec, perms)` is the aligned net."""
    return match(sd_ref, sd, spec, max_iter=max_iter, seed=seed, init=init, restarts=restarts).perms


def align(sd_ref: dict, sd: dict, spec: PermutationSpec, **kw) -> dict:
    """`sd` with its hidden units permuted to match `sd_ref` (computes the same function as `sd`)."""
    return permute(sd, spec, weight_matching(sd_ref, sd, spec, **kw))


def symmetries(spec: PermutationSpec):
    """(count, iterator over every joint permutation the spec declares a symmetry): all orders of each
    permutation without heads; for a head group every head permutation times every order of the dims
    inside each head, per permutation of the group."""
    factors, count = [], 1
    for p in spec.sizes:
        if p not in spec.heads:
            n = spec.sizes[p]
            count *= math.factorial(n)
            factors.append(lambda p=p, n=n: ({p: torch.tensor(c, dtype=torch.long)}
                                             for c in itertools.permutations(range(n))))
    for h, members in spec.head_groups.items():
        k = spec.num_heads[h]
        ds = [spec.block_size(p) for p in members]
        count *= math.factorial(k) * math.prod(math.factorial(d) ** k for d in ds)

        def group(k=k, members=members, ds=ds):
            orders = [list(itertools.product(*[list(itertools.permutations(range(d)))] * k)) for d in ds]
            for head in itertools.permutations(range(k)):
                for combo in itertools.product(*orders):
                    yield {p: block_permutation(torch.tensor(head), torch.tensor(o)) for p, o in zip(members, combo)}
        factors.append(group)

    def every():
        for combo in itertools.product(*(f() for f in factors)):
            yield {p: v for part in combo for p, v in part.items()}

    return count, every()


def brute_force_matching(sd_ref: dict, sd: dict, spec: PermutationSpec, limit: int = 1_000_000) -> MatchResult:
    """The exact maximizer of J over every joint permutation the spec declares a symmetry (`symmetries`):
    a reference for tiny nets (tests), refused above `limit` candidates. `passes` holds the candidates tried."""
    count, candidates = symmetries(spec)
    if count > limit:
        raise ConfigError(f"brute-force matching would try {count} permutations (limit {limit})")
    ref, w = _checked(sd_ref, sd, spec)
    spec = spec.parameters()
    best, best_j = None, -math.inf
    for perms in candidates:
        j = _inner(ref, permute(w, spec, perms))
        if j > best_j:
            best, best_j = perms, j
    return MatchResult(best, best_j, passes=count, converged=True)
