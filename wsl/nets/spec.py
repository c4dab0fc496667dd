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
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PermutationSpec:
    axes: dict  # param name -> tuple[str | None, ...], one entry per tensor axis
    sizes: dict  # permutation name -> number of units it permutes
    buffers: frozenset = frozenset()  # names in `axes` that are buffers (BatchNorm statistics), not weights

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
        return PermutationSpec({k: v for k, v in self.axes.items() if k not in self.buffers}, dict(self.sizes))

    def to_json(self) -> dict:
        out = {"axes": {k: list(v) for k, v in self.axes.items()}, "sizes": dict(self.sizes)}
        if self.buffers:
            out["buffers"] = sorted(self.buffers)
        return out

    @classmethod
    def from_json(cls, d: dict) -> "PermutationSpec":
        return cls({k: tuple(v) for k, v in d["axes"].items()}, {k: int(v) for k, v in d["sizes"].items()},
                   frozenset(d.get("buffers", ())))


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
