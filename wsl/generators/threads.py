"""The `threads` config key of wsl-train-generator and wsl-sample."""

from __future__ import annotations

import torch

from wsl.errors import ConfigError


def set_threads(threads) -> None:
    """Set torch's intra-op thread count; None keeps torch's default (one per core).

    Why a knob: on a machine shared with other jobs, torch's threads wait on each other at every
    op; one thread was 3.5x faster for sampling on a loaded 2-core machine (scripts/bench_generators.py).
    """
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be a positive integer or null, got {threads!r}")
    torch.set_num_threads(threads)
