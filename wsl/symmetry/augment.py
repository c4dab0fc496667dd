"""Weight-space augmentations over state dicts (one net, or a stacked population with `batched=True`).

Each is an nn.Module without parameters whose forward takes a state dict (and the net's
PermutationSpec where it needs one) and returns a new state dict; inputs are never modified.
Randomness comes from the module's own generator when `seed` is given, else from torch's
global generator (which a DataLoader reseeds in every worker).

- PermutationAugment: a random function-preserving permutation of the hidden units (SANE), on
  state dicts or, given the zoo's `layout`, on flat weight vectors (Zoo.weights: parameters only;
  the BatchNorm statistics a spec declares are simply absent there).
- GaussianNoiseAugment: w + sigma * scale * eps, eps ~ N(0, 1) drawn per coordinate (real noise:
  a published "noise" augmentation added one constant shift instead).
- WeightDropoutAugment: zero each weight with probability p (inverted scaling by default).
- AlignedMixUp: align net b to net a by weight matching, then lam * a + (1 - lam) * b with
  lam ~ Beta(alpha, alpha); interpolating unaligned nets mixes unrelated units.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from wsl.errors import ConfigError
from wsl.nets.spec import PermutationSpec
from wsl.symmetry.matching import align
from wsl.symmetry.permute import flat_permutation_index, permute, random_permutations


class _Augment(nn.Module):
    def __init__(self, spec: PermutationSpec | None = None, batched: bool = False, seed: int | None = None):
        super().__init__()
        self.spec, self.batched, self.seed = spec, bool(batched), seed
        self._generator = None  # created lazily: nothing unpicklable until first use

    @property
    def generator(self) -> torch.Generator | None:
        if self.seed is not None and self._generator is None:
            self._generator = torch.Generator().manual_seed(int(self.seed))
        return self._generator

    def _spec(self, spec: PermutationSpec | None) -> PermutationSpec:
        spec = spec if spec is not None else self.spec
        if spec is None:
            raise ConfigError(f"{type(self).__name__} needs the net's permutation spec "
                              "(pass spec= to the constructor or the call)")
        return spec

    def _draw(self, fn, t: torch.Tensor) -> torch.Tensor:  # fn: torch.randn or torch.rand, shaped like t
        return fn(t.shape, generator=self.generator, dtype=t.dtype).to(t.device)


class PermutationAugment(_Augment):
    """Re-order the hidden units at random; batched: an independent permutation per member.

    forward(state dict) -> state dict; with `layout` (a wsl.zoo.Layout or its entries) forward also
    takes flat weight vectors [N] (or [P, N] batched) in that layout and returns them permuted (one
    gather per call: the index is `flat_permutation_index` of the drawn permutations)."""

    def __init__(self, spec: PermutationSpec | None = None, batched: bool = False, seed: int | None = None,
                 layout=None):
        super().__init__(spec=spec, batched=batched, seed=seed)
        self.layout = layout

    def forward(self, x, spec: PermutationSpec | None = None):
        spec = self._spec(spec)
        if isinstance(x, torch.Tensor):
            return self._flat(x, spec)
        batch = next(iter(x.values())).shape[0] if self.batched else None
        perms = random_permutations(spec, self.generator, batch=batch)
        return permute(x, spec, perms, batched=self.batched)

    def _flat(self, flat: torch.Tensor, spec: PermutationSpec) -> torch.Tensor:
        if self.layout is None:
            raise ConfigError("PermutationAugment: flat weight vectors need their layout (layout=zoo.layout())")
        entries = self.layout.entries if hasattr(self.layout, "entries") else self.layout
        numel = max((int(stop) for *_, stop in entries), default=0)
        if flat.shape[-1] != numel or flat.dim() != (2 if self.batched else 1):
            raise ConfigError(f"PermutationAugment: expected flat weights [{'P, ' if self.batched else ''}{numel}] "
                              f"in the given layout, got {tuple(flat.shape)}")
        if not self.batched:
            return flat[flat_permutation_index(entries, spec, random_permutations(spec, self.generator))]
        # one permutation per row: permute a stacked state dict of coordinates, then gather
        members = flat.shape[0]
        coords = {name: torch.arange(a, b).reshape(tuple(shape)).expand(members, *shape)
                  for name, shape, a, b in entries}
        moved = permute(coords, spec, random_permutations(spec, self.generator, batch=members), batched=True)
        idx = torch.cat([moved[name].reshape(members, -1) for name, *_ in entries], dim=1)
        return flat.gather(1, idx.to(flat.device))


class GaussianNoiseAugment(_Augment):
    """w + s * eps per coordinate, eps ~ N(0, 1). relative=True: s = sigma * RMS of that tensor
    (per member when batched), so every layer gets the same signal-to-noise ratio whatever its
    scale (an all-zero tensor stays zero); relative=False: s = sigma."""

    def __init__(self, sigma: float, relative: bool = True, batched: bool = False, seed: int | None = None):
        super().__init__(batched=batched, seed=seed)
        if float(sigma) < 0:
            raise ConfigError(f"augment.sigma must be >= 0, got {sigma}")
        self.sigma, self.relative = float(sigma), bool(relative)

    def scale(self, t: torch.Tensor) -> torch.Tensor:  # [] or [P, 1, ...] broadcastable to t
        if not self.relative:
            return torch.tensor(self.sigma, dtype=t.dtype, device=t.device)
        if self.batched:
            return self.sigma * t.pow(2).flatten(1).mean(1).sqrt().view(-1, *[1] * (t.dim() - 1))
        return self.sigma * t.pow(2).mean().sqrt()

    def forward(self, state_dict: dict, spec: PermutationSpec | None = None) -> dict:
        return {k: t + self.scale(t) * self._draw(torch.randn, t) if t.is_floating_point() else t for k, t in state_dict.items()}


class WeightDropoutAugment(_Augment):
    """Zero each coordinate independently with probability p; rescale=True divides survivors by
    1 - p so every coordinate keeps its expected value (as nn.Dropout does)."""

    def __init__(self, p: float, rescale: bool = True, batched: bool = False, seed: int | None = None):
        super().__init__(batched=batched, seed=seed)
        if not 0.0 <= float(p) < 1.0:
            raise ConfigError(f"augment.p must be in [0, 1), got {float(p)}")
        self.p, self.rescale = float(p), bool(rescale)

    def forward(self, state_dict: dict, spec: PermutationSpec | None = None) -> dict:
        keep = 1.0 - self.p
        factor = 1.0 / keep if self.rescale else 1.0
        return {k: t * (self._draw(torch.rand, t) < keep).to(t.dtype) * factor if t.is_floating_point() else t
                for k, t in state_dict.items()}


class AlignedMixUp(_Augment):
    """MixUp of two nets after weight-matching the second onto the first.

    forward(sd_a, sd_b) -> (mixed state dict, lam) with lam ~ Beta(alpha, alpha) (a float, or
    Tensor[P] when batched); mix the targets with the same lam: y = lam * y_a + (1 - lam) * y_b.
    """

    def __init__(self, alpha: float = 0.2, spec: PermutationSpec | None = None, batched: bool = False,
                 seed: int | None = None, max_iter: int = 100):
        super().__init__(spec=spec, batched=batched, seed=seed)
        if float(alpha) <= 0:
            raise ConfigError(f"augment.alpha must be > 0, got {alpha}")
        self.alpha, self.max_iter = float(alpha), int(max_iter)
        self._rng = None

    def _lam(self, n: int) -> torch.Tensor:  # [n] ~ Beta(alpha, alpha)
        if self._rng is None:  # numpy's Beta takes a seed (torch.distributions cannot take a generator)
            self._rng = np.random.default_rng(self.seed)
        return torch.from_numpy(self._rng.beta(self.alpha, self.alpha, size=n))

    def forward(self, sd_a: dict, sd_b: dict, spec: PermutationSpec | None = None):
        spec = self._spec(spec)
        if not self.batched:
            b = align(sd_a, sd_b, spec, max_iter=self.max_iter)
            lam = float(self._lam(1)[0])
            return {k: lam * sd_a[k] + (1 - lam) * b[k] for k in sd_a}, lam
        members = next(iter(sd_a.values())).shape[0]
        aligned = [align({k: v[i] for k, v in sd_a.items()}, {k: v[i] for k, v in sd_b.items()}, spec,
                         max_iter=self.max_iter) for i in range(members)]
        lam = self._lam(members)  # [P]
        out = {}
        for k, a in sd_a.items():
            b = torch.stack([m[k] for m in aligned])
            w = lam.to(a.dtype).view(-1, *[1] * (a.dim() - 1))
            out[k] = w * a + (1 - w) * b
        return out, lam


class Compose(nn.Module):
    """Apply single-net augmentations in order (each receives the spec)."""

    def __init__(self, augments):
        super().__init__()
        self.augments = nn.ModuleList(list(augments))

    def forward(self, state_dict: dict, spec: PermutationSpec | None = None) -> dict:
        for aug in self.augments:
            state_dict = aug(state_dict, spec)
        return state_dict
