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


def _seed(*parts: int) -> int:
    """A 31-bit seed derived from parts (independent streams for init and data order)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint32)[0] >> 1)


derive_seed = _seed  # public name: e.g. a per-image init seed derived from (member seed, image index)


def make_members(size: int, lr, weight_decay, seed: int = 0) -> list[Member]:
    """`size` members covering the grid lr × weight_decay with size / |grid| seed replicas each.

    Member k gets grid cell k mod |grid| and replica k div |grid|, so growing `size` adds replicas
    without changing the members that exist (resume keeps them). `size` is a multiple of the grid's
    size, so every cell gets the same seeds (wsl.population.schema.ZooJobConfig checks it).
    """
    cells = grid(lr, weight_decay)
    members = []
    for k in range(size):
        lr_k, wd_k = cells[k % len(cells)]
        r = k // len(cells)
        members.append(Member(k, r, lr_k, wd_k, _seed(seed, r, 0), _seed(seed, r, 1)))
    return members
