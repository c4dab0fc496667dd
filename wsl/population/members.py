"""The members of one population: per-member seeds and hyperparameters."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from wsl.errors import ConfigError


@dataclass(frozen=True)
class Member:
    index: int  # position in the population
    replica: int  # seed replica within its (lr, weight_decay) cell
    lr: float
    weight_decay: float
    seed_init: int  # initialization
    seed_data: int  # data order

    def key(self) -> str:
        """Stable identity of the member within its job (what resume matches on)."""
        d = {k: v for k, v in asdict(self).items() if k != "index"}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def _as_list(key: str, value, minimum: float, strict: bool) -> list[float]:
    vals = list(value) if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and not isinstance(value, str) else [value]
    if not vals:
        raise ConfigError(f"{key} must not be an empty list")
    out = []
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{key} must be a finite number or a list of them, got {v!r}")
        if (v <= minimum) if strict else (v < minimum):
            raise ConfigError(f"{key} must be {'>' if strict else '>='} {minimum}, got {v}")
        out.append(float(v))
    return out


def _seed(*parts: int) -> int:
    """A 31-bit seed derived from parts (independent streams for init and data order)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint32)[0] >> 1)


derive_seed = _seed  # public name: e.g. a per-image init seed derived from (member seed, image index)


def make_members(size: int, lr, weight_decay, seed: int = 0) -> list[Member]:
    """`size` members covering the grid lr × weight_decay with size / |grid| seed replicas each.

    Member k gets grid cell k mod |grid| and replica k div |grid|, so growing `size` adds replicas
    without changing the members that exist (resume keeps them).
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"population.size must be a positive integer, got {size!r}")
    lrs = _as_list("train.lr", lr, 0.0, strict=True)
    wds = _as_list("train.weight_decay", weight_decay, 0.0, strict=False)
    grid = list(itertools.product(lrs, wds))
    if size % len(grid):
        raise ConfigError(f"population.size={size} must be a multiple of the {len(grid)} (train.lr × "
                          f"train.weight_decay) combinations, so every combination gets the same seeds")
    members = []
    for k in range(size):
        lr_k, wd_k = grid[k % len(grid)]
        r = k // len(grid)
        members.append(Member(k, r, lr_k, wd_k, _seed(seed, r, 0), _seed(seed, r, 1)))
    return members
