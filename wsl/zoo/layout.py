"""Flattening a state dict to one vector and back, with a layout table."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Layout:
    entries: tuple  # ((name, shape, start, stop), ...) in state-dict order

    @classmethod
    def from_state_dict(cls, sd: dict) -> "Layout":
        entries, start = [], 0
        for name, t in sd.items():
            n = math.prod(t.shape)
            entries.append((name, tuple(t.shape), start, start + n))
            start += n
        return cls(tuple(entries))

    @classmethod
    def of(cls, net) -> "Layout":
        """The layout of a net's weights: its parameters, in state-dict order. Buffers (BatchNorm
        running statistics) are left out: they describe the data a net saw, and are re-estimated
        rather than learned, encoded or generated."""
        return cls.from_state_dict(dict(net.named_parameters()))

    @property
    def numel(self) -> int:
        return self.entries[-1][3] if self.entries else 0

    @property
    def names(self) -> list[str]:
        return [e[0] for e in self.entries]

    def flatten(self, sd: dict) -> torch.Tensor:  # {name: T} -> [N]
        return torch.cat([sd[name].reshape(-1) for name, *_ in self.entries])

    def unflatten(self, flat: torch.Tensor) -> dict:  # [..., N] -> {name: [..., *shape]}
        lead = flat.shape[:-1]
        return {name: flat[..., a:b].reshape(*lead, *shape) for name, shape, a, b in self.entries}

    def to_json(self) -> list:
        return [[n, list(s), a, b] for n, s, a, b in self.entries]

    @classmethod
    def from_json(cls, rows) -> "Layout":
        return cls(tuple((str(n), tuple(int(x) for x in s), int(a), int(b)) for n, s, a, b in rows))
