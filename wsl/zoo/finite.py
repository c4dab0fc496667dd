"""Non-finite weights in a zoo: the one test every consumer applies, and how the nets it drops are named."""

from __future__ import annotations

import torch

from wsl.errors import printable


def all_finite(state_dict: dict) -> bool:
    """Whether every floating-point tensor of a checkpoint is finite (integer buffers cannot be NaN)."""
    return all(bool(torch.isfinite(v).all()) for v in state_dict.values() if v.is_floating_point())


def some_ids(ids: list, shown: int = 5) -> str:
    """The first few model ids, escaped, for a one-line message ("a, b, c, ... (12 in all)")."""
    head = ", ".join(printable(m) for m in ids[:shown])
    return head + (f", ... ({len(ids)} in all)" if len(ids) > shown else "")
