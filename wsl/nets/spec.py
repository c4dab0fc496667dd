"""Permutation structure of a network: which tensor axes share a hidden-unit permutation.

A `PermutationSpec` maps each parameter name to one entry per tensor axis: the name of the
permutation acting on that axis, or None. Permuting every axis named "P0" by the same
permutation (and likewise for every other name) leaves the function the network computes
unchanged. This is the declaration that weight matching, augmentation and equivariant encoders
read (the convention of Git Re-Basin, Ainsworth et al. 2023).

`buffers` names the tensors that ride on the permuted channels but are not weights (BatchNorm's
running statistics and batch counter): they are permuted with the rest, never matched, encoded or
generated (a sampled net gets them re-estimated on train data). `parameters()` is the spec
without them: the structure of a net's learnable weights.

`heads` declares block structure (attention heads): `heads[p] = h` says that the sizes[p] units of
permutation p are `num_heads[h]` consecutive blocks (heads) of sizes[p] // num_heads[h] units each,
and that only the permutations of p that move whole blocks (by the head permutation h, shared by
every p with heads[p] == h) and re-order the units inside each block (one order per block, p's own)
are symmetries. A transformer's queries and keys share p = "A<b>.qk" (q/k dims within a head),
values and output-projection columns "A<b>.vo", both with h = "H<b>". Permutations are still
stored flat (LongTensor[sizes[p]]): the head permutation is read off them (unit i*d of p lies in
head perm[i*d] // d), so every caller that re-indexes axes by name (permute, flat indices, layouts)
needs nothing new; those that draw or search permutations (wsl.symmetry) keep to the block form.
Head permutations are not in `sizes` (no axis is indexed by them alone).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PermutationSpec:
    axes: dict  # param name -> tuple[str | None, ...], one entry per tensor axis
    sizes: dict  # permutation name -> number of units it permutes
    buffers: frozenset = frozenset()  # names in `axes` that are buffers (BatchNorm statistics), not weights
    heads: dict = field(default_factory=dict)  # permutation name -> head permutation name (block structure)
    num_heads: dict = field(default_factory=dict)  # head permutation name -> number of heads (blocks)

    def __post_init__(self):
        for p, h in self.heads.items():
            if p not in self.sizes or h not in self.num_heads or self.num_heads[h] < 1 \
                    or self.sizes[p] % self.num_heads[h]:
                raise ValueError(f"permutation spec: heads[{p!r}] = {h!r} needs {p!r} in sizes and {h!r} "
                                 f"in num_heads dividing its size (size {self.sizes.get(p)}, "
                                 f"heads {self.num_heads.get(h)})")
        clash = set(self.num_heads) & set(self.sizes)
        if clash:
            raise ValueError(f"permutation spec: {sorted(clash)} name both a permutation and a head permutation")
        unused = set(self.num_heads) - set(self.heads.values())
        if unused:
            raise ValueError(f"permutation spec: head permutation(s) {sorted(unused)} name no permutation")

    @property
    def head_groups(self) -> dict:
        """head permutation name -> the permutations whose blocks it moves (in `sizes` order)."""
        out: dict = {h: [] for h in self.num_heads}
        for p in self.sizes:
            if p in self.heads:
                out[self.heads[p]].append(p)
        return out

    def block_size(self, p: str) -> int:
        """Units per block of permutation p (sizes[p] for a permutation without heads)."""
        return self.sizes[p] // self.num_heads[self.heads[p]] if p in self.heads else self.sizes[p]

    @property
    def perm_to_axes(self) -> dict:
        """permutation name -> list of (param name, axis) it acts on."""
        out: dict = {p: [] for p in self.sizes}
        for name, ax in self.axes.items():
            for i, p in enumerate(ax):
                if p is not None:
                    out[p].append((name, i))
        return out

    def parameters(self) -> "PermutationSpec":
        """The spec of the weights alone (buffers left out)."""
        if not self.buffers:
            return self
        return PermutationSpec({k: v for k, v in self.axes.items() if k not in self.buffers}, dict(self.sizes),
                               heads=dict(self.heads), num_heads=dict(self.num_heads))

    def with_axes(self, axes: dict, sizes: dict | None = None, buffers: frozenset | None = None) -> "PermutationSpec":
        """The same permutations (and their head structure) over other tensors `axes` (and `sizes`:
        permutations that no longer exist drop their head entries)."""
        sizes = dict(self.sizes) if sizes is None else dict(sizes)
        heads = {p: h for p, h in self.heads.items() if p in sizes}
        return PermutationSpec(dict(axes), sizes, self.buffers if buffers is None else frozenset(buffers), heads,
                               {h: n for h, n in self.num_heads.items() if h in heads.values()})

    def to_json(self) -> dict:
        out = {"axes": {k: list(v) for k, v in self.axes.items()}, "sizes": dict(self.sizes)}
        if self.buffers:
            out["buffers"] = sorted(self.buffers)
        if self.heads:
            out["heads"], out["num_heads"] = dict(self.heads), dict(self.num_heads)
        return out

    @classmethod
    def from_json(cls, d: dict) -> "PermutationSpec":
        return cls({k: tuple(v) for k, v in d["axes"].items()}, {k: int(v) for k, v in d["sizes"].items()},
                   frozenset(d.get("buffers", ())), {k: str(v) for k, v in d.get("heads", {}).items()},
                   {k: int(v) for k, v in d.get("num_heads", {}).items()})


def chain_spec(depth: int, width: int, layers: str = "hidden", spatial_axes: int = 0,
               head: str = "head") -> PermutationSpec:
    """The spec of a plain chain of `depth` hidden layers of `width` units followed by a head:
    layer i's output units (weight axis 0, bias) share permutation P<i>, which also acts on the next
    layer's input axis (weight axis 1); `spatial_axes` kernel axes (convolutions) are never permuted."""
    axes, sizes = {}, {}
    prev = None
    spatial = (None,) * spatial_axes
    for i in range(depth):
        p = f"P{i}"
        sizes[p] = width
        axes[f"{layers}.{i}.weight"] = (p, prev, *spatial)
        axes[f"{layers}.{i}.bias"] = (p,)
        prev = p
    axes[f"{head}.weight"] = (None, prev)
    axes[f"{head}.bias"] = (None,)
    return PermutationSpec(axes, sizes)
