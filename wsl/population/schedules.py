"""Learning-rate schedules as multipliers of each member's base learning rate, per optimizer step."""

from __future__ import annotations

import math


def lr_factor(name: str, total_steps: int, warmup_steps: int = 0, step_size: int = 0, gamma: float = 0.1):
    """A function step -> multiplier (for torch.optim.lr_scheduler.LambdaLR)."""
    total = max(1, int(total_steps))
    warm = max(0, int(warmup_steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        if name == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
        if name == "linear":
            return max(0.0, 1.0 - t)
        if name == "step":
            return gamma ** ((step - warm) // max(1, step_size))
        return 1.0

    return factor
