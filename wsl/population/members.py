"""The members of one population: per-member seeds and hyperparameters."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np

from wsl.population.schema import grid


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


def derive_seed(*parts: int) -> int:
    """A 31-bit seed derived from parts (independent streams for init and data order; a per-image init)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint32)[0] >> 1)


def make_members(size: int, lr, weight_decay, seed: int = 0) -> list[Member]:
    """`size` members covering the grid lr × weight_decay with size / |grid| seed replicas each.

    Member k gets grid cell k mod |grid| and replica k div |grid|, so growing `size` adds replicas
    without changing the members that exist (resume keeps them). `size` is a multiple of the grid's
    size, so every cell gets the same seeds (wsl.population.schema.ZooJobConfig checks it).
    """
    cells = grid(lr, weight_decay)
    n = len(cells)
    return [Member(k, k // n, *cells[k % n], derive_seed(seed, k // n, 0), derive_seed(seed, k // n, 1))
            for k in range(size)]
