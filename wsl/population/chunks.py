"""How many nets of a population train together (`population.chunk`).

The population's nets are independent, so training them in groups, one group after another, gives
every net exactly what it gets in one program (member k equals its solo run either way). On a CPU a
group whose weights, gradients, optimizer state and step activations fit in the last-level cache
keeps them there for the whole step; a population far larger than the cache streams them from
memory at every step. `auto` picks the largest group that fits (the whole population when it fits,
and always on a GPU, where larger batched matmuls are faster), balanced so the groups are equal.
"""

from __future__ import annotations

import math
from pathlib import Path

DEFAULT_CACHE_BYTES = 32 * 2**20
# auto never makes groups smaller than this (unless evening out the groups does): each group pays a
# Trainer and a commit, and narrower batched matmuls run less efficiently. On the loaded 2-core
# development machine no group size measured reliably faster than another at width 512 (differences
# within the noise of load 13-16); the optimizer rewrite measured 2.9x faster there instead.
MIN_GROUP = 8
# optimizer state per parameter, in float32 numbers: the weight and its gradient, plus momentum (SGD) or
# both Adam moments
STATE_NUMBERS = {"sgd": 3, "adam": 4, "adamw": 4}


def cache_bytes() -> int:
    """This machine's largest CPU cache (the last level, shared by the cores), from sysfs on Linux;
    32 MiB where it cannot be read."""
    best = 0
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = f.read_text().strip().upper()
            n = int(text.rstrip("KMG"))
            best = max(best, n * {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1], 1))
        except (OSError, ValueError, IndexError):
            continue
    return best or DEFAULT_CACHE_BYTES


def auto_chunk(nets: int, parameters: int, step_activations: int, optimizer: str = "sgd", gpu: bool = False,
               cache: int | None = None) -> int:
    """Nets per group: all `nets` on a GPU or where they fit in `cache` bytes together; else the largest
    group that fits (MIN_GROUP at least), evened out over the groups. `parameters` per net; `step_activations`:
    float32 numbers one net keeps for a training step (batch x activations per sample)."""
    if gpu or nets <= 1:
        return max(1, nets)
    per_net = 4 * (STATE_NUMBERS.get(optimizer, 3) * parameters + step_activations)
    fit = max(MIN_GROUP, (cache or cache_bytes()) // max(1, per_net))
    if fit >= nets:
        return nets
    groups = math.ceil(nets / fit)
    return math.ceil(nets / groups)


def groups(items: list, chunk: int) -> list[list]:
    """`items` in consecutive groups of `chunk` (the last one may be smaller)."""
    return [items[i : i + chunk] for i in range(0, len(items), max(1, chunk))]
