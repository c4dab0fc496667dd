"""Architectures by name. Zoo files name their architecture as JSON; only names listed here
can be rebuilt, so a zoo file can never make the reader import or call arbitrary code."""

from __future__ import annotations

import inspect

from torch import nn

from wsl.errors import ConfigError
from wsl.nets.cnn import CNN
from wsl.nets.mlp import MLP

NETS: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN}


def register_net(cls: type[nn.Module]) -> type[nn.Module]:
    """Add an architecture (a class with `name`, `arch` and `permutation_spec`) to the registry."""
    NETS[cls.name] = cls
    return cls


def build_net(arch: dict) -> nn.Module:
    """Rebuild a net from its `arch` dict ({"name": ..., **constructor arguments})."""
    if not isinstance(arch, dict) or "name" not in arch:
        raise ConfigError(f"an architecture must be a dict with a 'name' key, got {arch!r}")
    name = arch["name"]
    if name not in NETS:
        raise ConfigError(f"net={name!r} is unknown; valid: {', '.join(sorted(NETS))}")
    cls = NETS[name]
    kwargs = {k: v for k, v in arch.items() if k != "name"}
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = set(kwargs) - allowed
    if unknown:
        raise ConfigError(f"net={name}: unknown argument(s) {sorted(unknown)}; valid: {sorted(allowed)}")
    return cls(**kwargs)
