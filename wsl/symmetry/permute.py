"""Function-preserving permutations of hidden units, driven by a net's `PermutationSpec`.

Convention (used everywhere in wsl): a permutation `perm` of `n` units means
"new unit i = old unit perm[i]", i.e. every axis named by that permutation is re-indexed with
`tensor.index_select(axis, perm)`. Permuting every axis that shares a name with the same `perm`
leaves the function the net computes unchanged.

State dicts are either one net's ({name: Tensor[*shape]}) or a stacked population's
({name: Tensor[P, *shape]}, `batched=True`). Batched permutations are either shared by all members
(LongTensor[n]) or one per member (LongTensor[P, n]).

Permutations with head structure (`spec.heads`: attention heads) are stored flat too; only block
permutations are symmetries there (whole heads moved by the head permutation that every permutation
of the group shares, units re-ordered inside each head): `random_permutations` draws only those,
`permute` refuses others, `block_permutation` / `head_permutation` build and read them.
"""

from __future__ import annotations

import torch

from wsl.errors import ConfigError
from wsl.nets.spec import PermutationSpec

Perms = dict  # permutation name -> LongTensor[n] (or [P, n] for per-member batched permutations)


def check_state_dict(state_dict: dict, spec: PermutationSpec, batched: bool = False, what: str = "state dict") -> None:
    """Raise ConfigError naming the parameter when `state_dict` does not fit `spec`.

    Every tensor must be declared in the spec (an undeclared tensor, e.g. BatchNorm statistics,
    would silently keep the old unit order and break the function), have one spec entry per axis
    and the declared number of units on each permuted axis. Buffers the spec declares may be absent
    (the weights of a net alone: a flat weight vector, a generated net).
    """
    off = 1 if batched else 0
    missing = [k for k in spec.axes if k not in state_dict and k not in spec.buffers]
    if missing:
        raise ConfigError(f"{what} lacks parameter(s) {missing} declared by the permutation spec")
    members = None
    for name, t in state_dict.items():
        if name not in spec.axes:
            raise ConfigError(f"{what}: parameter {name!r} has no entry in the permutation spec "
                              f"(declared: {sorted(spec.axes)})")
        axes = spec.axes[name]
        if t.dim() != len(axes) + off:
            raise ConfigError(f"{what}: parameter {name!r} has shape {tuple(t.shape)} but the permutation spec "
                              f"declares {len(axes)} axes{' after the population axis' if batched else ''}")
        if batched:
            if members is not None and t.shape[0] != members:
                raise ConfigError(f"{what}: parameter {name!r} stacks {t.shape[0]} members, others {members}")
            members = t.shape[0]
        for ax, p in enumerate(axes):
            if p is None:
                continue
            if p not in spec.sizes:
                raise ConfigError(f"permutation spec: parameter {name!r} names unknown permutation {p!r}")
            if t.shape[ax + off] != spec.sizes[p]:
                raise ConfigError(f"{what}: parameter {name!r} axis {ax} has {t.shape[ax + off]} units, "
                                  f"permutation {p!r} permutes {spec.sizes[p]}")


def _check_perms(perms: Perms, spec: PermutationSpec, members: int | None) -> dict:
    """Validate the permutations (known names, right size, real permutations); return them as long tensors."""
    out = {}
    for p, perm in perms.items():
        if p not in spec.sizes:
            raise ConfigError(f"unknown permutation {p!r}; the spec declares {sorted(spec.sizes)}")
        perm = torch.as_tensor(perm, dtype=torch.long)
        n = spec.sizes[p]
        if perm.dim() == 2 and members is None:
            raise ConfigError(f"permutation {p!r} has one row per member ([P, n]) but the state dict is not batched")
        if perm.dim() not in (1, 2) or perm.shape[-1] != n or (perm.dim() == 2 and perm.shape[0] != members):
            raise ConfigError(f"permutation {p!r} has shape {tuple(perm.shape)}, expected [{n}]"
                              + (f" or [{members}, {n}]" if members is not None else ""))
        if not torch.equal(perm.sort(dim=-1).values, torch.arange(n).expand_as(perm)):
            raise ConfigError(f"permutation {p!r} is not a permutation of range({n})")
        out[p] = perm
    _check_heads(out, spec)
    return out


def block_permutation(head: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """The flat permutation [..., k*d] that moves block `head[i]` to block i and re-orders its units by
    `inner[i]`: flat[i*d + j] = head[i]*d + inner[i, j]. head [..., k], inner [..., k, d]."""
    d = inner.shape[-1]
    return (head.unsqueeze(-1) * d + inner).flatten(-2)


def head_permutation(perm: torch.Tensor, num_heads: int) -> torch.Tensor | None:
    """The head permutation [..., k] of a flat block permutation [..., k*d] (block i of the result is
    block head[i] of the input), or None when `perm` splits a block."""
    blocks = torch.as_tensor(perm).unflatten(-1, (num_heads, -1))
    heads = torch.div(blocks, blocks.shape[-1], rounding_mode="floor")
    return heads[..., 0] if bool((heads == heads[..., :1]).all()) else None


def _check_heads(perms: dict, spec: PermutationSpec) -> None:
    """Every permutation with heads keeps each head's units together, and the permutations of one head
    group move the heads alike (a name left out is the identity)."""
    for h, members in spec.head_groups.items():
        k, seen = spec.num_heads[h], None
        for p in members:
            head = head_permutation(perms[p], k) if p in perms else torch.arange(k)
            if head is None:
                raise ConfigError(f"permutation {p!r} splits the heads of {h!r} ({k} heads of {spec.block_size(p)} "
                                  "units): only whole heads may move")
            if seen is not None and not torch.equal(*torch.broadcast_tensors(head, seen[1])):
                raise ConfigError(f"permutations {seen[0]!r} and {p!r} move the heads of {h!r} differently "
                                  "(they must share one head permutation)")
            seen = (p, head)


def _reindex(t: torch.Tensor, axis: int, perm: torch.Tensor) -> torch.Tensor:
    """t[..., perm, ...] along `axis`; perm [n] shared, or [P, n] per member of a stacked t [P, ...]."""
    if perm.dim() == 1:
        return t.index_select(axis, perm.to(t.device))
    # per-member: index [P, 1.., n, 1..] broadcast over the other axes, then gather along `axis`
    shape = [1] * t.dim()
    shape[0], shape[axis] = perm.shape[0], perm.shape[1]
    return t.gather(axis, perm.to(t.device).view(shape).expand_as(t))


def permute(state_dict: dict, spec: PermutationSpec, perms: Perms, batched: bool = False) -> dict:
    """A new state dict whose hidden units are re-ordered by `perms` (missing names: identity).

    state_dict: {name: Tensor[*shape]} or, batched, {name: Tensor[P, *shape]}.
    perms: {perm name: LongTensor[n]}; batched also accepts LongTensor[P, n] (one per member).
    """
    check_state_dict(state_dict, spec, batched)
    members = next(iter(state_dict.values())).shape[0] if batched and state_dict else None
    perms = _check_perms(perms, spec, members)
    off = 1 if batched else 0
    out = {}
    for name, t in state_dict.items():
        for ax, p in enumerate(spec.axes[name]):
            if p is not None and p in perms:
                t = _reindex(t, ax + off, perms[p])
        out[name] = t
    return out


def random_permutations(spec: PermutationSpec, generator: torch.Generator | None = None,
                        batch: int | None = None) -> Perms:
    """One uniformly random permutation per name in the spec ([n], or [batch, n] with `batch`); with
    heads, a uniformly random block permutation: one head permutation per head group (shared by its
    permutations) and one order of the units inside each head per permutation."""
    def draw(n):
        return (torch.randperm(n, generator=generator) if batch is None
                else torch.argsort(torch.rand(batch, n, generator=generator), dim=-1))

    out, heads = {}, {}
    for p, n in spec.sizes.items():
        if p not in spec.heads:
            out[p] = draw(n)
            continue
        h = spec.heads[p]
        k = spec.num_heads[h]
        if h not in heads:
            heads[h] = draw(k)
        out[p] = block_permutation(heads[h], torch.stack([draw(n // k) for _ in range(k)], dim=-2))
    return out


def identity_permutations(spec: PermutationSpec) -> Perms:
    return {p: torch.arange(n) for p, n in spec.sizes.items()}


def inverse(perms: Perms) -> Perms:
    """inverse(p) undoes p: permute(permute(sd, p), inverse(p)) == sd."""
    return {p: torch.argsort(torch.as_tensor(v), dim=-1) for p, v in perms.items()}


def compose(first: Perms, second: Perms) -> Perms:
    """The single permutation equal to applying `first`, then `second` (names missing in one: identity there)."""
    out = dict(first)
    for p, b in second.items():
        a = first.get(p)
        out[p] = b if a is None else torch.as_tensor(a)[torch.as_tensor(b)]
    return out


def flat_permutation_index(layout, spec: PermutationSpec, perms: Perms) -> torch.Tensor:
    """LongTensor[N] `idx` such that `flat[..., idx]` is the flattened weight vector of the permuted net.

    `layout` is a wsl.zoo.Layout or its `.entries` [(name, shape, start, stop)]. Built by permuting a
    state dict of coordinates, so it is exactly `permute` expressed on flat vectors (cheap to apply
    to a whole batch of flattened nets with one gather).
    """
    entries = layout.entries if hasattr(layout, "entries") else layout
    coords = {name: torch.arange(start, stop).reshape(tuple(shape)) for name, shape, start, stop in entries}
    moved = permute(coords, spec, perms)
    idx = torch.arange(max((int(stop) for *_, stop in entries), default=0))
    for name, _, start, stop in entries:
        idx[int(start):int(stop)] = moved[name].reshape(-1)
    return idx
