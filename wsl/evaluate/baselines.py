"""The plain baselines a weight generator has to beat (Zeng et al. 2025), built from the training zoo.

- noise: a training checkpoint plus Gaussian noise, over a sweep of σ. σ is relative: each tensor
  gets noise of standard deviation σ × its own root-mean-square value, so one σ perturbs every
  layer by the same fraction whatever its scale.
- average: the mean of k training checkpoints after aligning them to the first of them (weight
  averaging without alignment mixes unrelated hidden units).
- gaussian: a per-coordinate Gaussian fitted to the anchor-aligned training checkpoints.
- the ensemble of all training checkpoints (upper reference; no weights of its own) is scored by
  wsl.evaluate.accuracy.ensemble_scores.

Every setting of every sweep is evaluated and reported; nothing is chosen on the test split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from wsl.errors import ConfigError
from wsl.evaluate.novelty import AlignedReference


@dataclass
class BaselineSet:
    """The nets of one baseline setting."""

    method: str  # "noise", "average", "gaussian"
    setting: str  # e.g. "sigma=0.1", "k=3"
    value: float | None  # the swept value (σ, k) or None
    state_dicts: list = field(repr=False)


def _draw(T: int, n: int, g: torch.Generator) -> list[int]:
    """n indices into T checkpoints, each used as evenly as possible, in random order."""
    return torch.cat([torch.randperm(T, generator=g) for _ in range(-(-n // T))])[:n].tolist()


class NoiseBaseline:
    """Training checkpoints + relative Gaussian noise, one set of n nets per σ."""

    method = "noise"

    def __init__(self, sigmas, n: int = 100):
        self.sigmas, self.n = [float(s) for s in sigmas], n

    def check(self, n_reference: int) -> None:
        """Raise ConfigError if this baseline cannot be built from n_reference checkpoints."""

    def generate(self, ref: AlignedReference, align: Callable | None, g: torch.Generator) -> list[BaselineSet]:
        out = []
        for sigma in self.sigmas:  # noise of std sigma x the tensor's RMS
            sds = [{k: v + sigma * v.detach().pow(2).mean().sqrt() * torch.randn(v.shape, generator=g, dtype=v.dtype)
                    if v.is_floating_point() else v.clone() for k, v in ref.state_dicts[i].items()}
                   for i in _draw(len(ref), self.n, g)]
            out.append(BaselineSet(self.method, f"sigma={sigma:g}", sigma, sds))
        return out


class AverageBaseline:
    """Means of k aligned training checkpoints (k distinct ones drawn at random), one set per k."""

    method = "average"

    def __init__(self, ks, n: int = 100):
        self.ks, self.n = [int(k) for k in ks], n

    def check(self, n_reference: int) -> None:
        too_big = [k for k in self.ks if k > n_reference]
        if too_big:
            raise ConfigError(f"ks has k={too_big[0]} but the training zoo holds only "
                              f"{n_reference} checkpoints")

    def generate(self, ref: AlignedReference, align: Callable | None, g: torch.Generator) -> list[BaselineSet]:
        self.check(len(ref))
        out = []
        for k in self.ks:
            sds = []
            for _ in range(self.n):
                members = [ref.state_dicts[i] for i in torch.randperm(len(ref), generator=g)[:k].tolist()]
                first = members[0]
                aligned = [first] + [align(first, m) if align is not None else m for m in members[1:]]
                sds.append({name: torch.stack([m[name] for m in aligned]).mean(0) if first[name].is_floating_point()
                            else first[name].clone() for name in first})
            out.append(BaselineSet(self.method, f"k={k}", float(k), sds))
        return out


class GaussianFitBaseline:
    """Samples of a per-coordinate Gaussian (mean and std of each weight over the aligned zoo)."""

    method = "gaussian"

    def __init__(self, n: int = 100):
        self.n = n

    def check(self, n_reference: int) -> None:
        if n_reference < 2:
            raise ConfigError("a per-coordinate Gaussian needs at least two training checkpoints to fit a std")

    def generate(self, ref: AlignedReference, align: Callable | None, g: torch.Generator) -> list[BaselineSet]:
        self.check(len(ref))
        stacked = {k: torch.stack([sd[k] for sd in ref.state_dicts]) for k in ref.state_dicts[0]}  # {name: [T, ...]}
        mean = {k: v.mean(0) for k, v in stacked.items() if v.is_floating_point()}
        std = {k: v.std(0) for k, v in stacked.items() if v.is_floating_point()}
        sds = [{k: mean[k] + std[k] * torch.randn(mean[k].shape, generator=g, dtype=mean[k].dtype)
                if k in mean else v[0].clone() for k, v in stacked.items()} for _ in range(self.n)]
        return [BaselineSet(self.method, "per-coordinate", None, sds)]


def build_baselines(nodes: dict | None) -> dict:
    """The baselines of a `baselines:` mapping (name -> a node naming a `_target_`, or None: off)."""
    from hydra.utils import instantiate

    out = {}
    for name, node in (nodes or {}).items():
        if node is None:
            continue
        try:
            out[name] = instantiate(node, _convert_="all")
        except Exception as e:  # Hydra wraps the constructor's error: report it under its key
            raise ConfigError(f"baselines.{name}: {str(e.__cause__ or e).splitlines()[0]}") from e
    return out


def check_baselines(baselines: dict, n_reference: int) -> None:
    """Refuse unusable baselines before any work (a dict name -> baseline object; None entries are off)."""
    for name, b in baselines.items():
        if b is None:
            continue
        if not (hasattr(b, "generate") and hasattr(b, "check")):
            raise ConfigError(f"baselines.{name} is not a baseline (needs a _target_ with check and generate methods)")
        try:
            b.check(n_reference)
        except ConfigError as e:
            raise ConfigError(f"baselines.{name}: {e}") from None


def generate_baselines(baselines: dict, ref: AlignedReference, align: Callable | None, seed: int) -> list[BaselineSet]:
    """Every set of every configured baseline (checked by check_baselines), in configuration order."""
    g = torch.Generator().manual_seed(int(seed))
    return [s for b in baselines.values() if b is not None for s in b.generate(ref, align, g)]
