"""Pieces shared by the zoo architectures."""

from __future__ import annotations

import math

import torch
from torch import nn

from wsl.errors import ConfigError

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid,
               "silu": nn.SiLU, "leaky_relu": nn.LeakyReLU}
# activations under which each parameter enters the output affinely once the activation pattern is
# fixed (so the Hessian's diagonal has no second-derivative-of-the-net term: wsl.landscape.exact_trace)
PIECEWISE_LINEAR = ("relu", "leaky_relu")
INITS = ("default", "kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal", "orthogonal")


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError(f"net.activation={name!r} is unknown; valid: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def check_positive_int(key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return value


def init_weights(module: nn.Module, scheme: str) -> None:
    """(Re)initialize the weights of every Linear/Conv layer with `scheme`, biases with zeros
    (except `default`, which keeps PyTorch's own layer initialization)."""
    if scheme not in INITS:
        raise ConfigError(f"net.init={scheme!r} is unknown; valid: {', '.join(INITS)}")
    if scheme == "default":
        return
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            w = m.weight
            if scheme == "kaiming_uniform":
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            elif scheme == "kaiming_normal":
                nn.init.kaiming_normal_(w, nonlinearity="relu")
            elif scheme == "xavier_uniform":
                nn.init.xavier_uniform_(w)
            elif scheme == "xavier_normal":
                nn.init.xavier_normal_(w)
            elif scheme == "orthogonal":
                nn.init.orthogonal_(w)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def as_shape(in_shape) -> tuple[int, ...]:
    shape = tuple(int(s) for s in in_shape)
    if not shape or any(s < 1 for s in shape):
        raise ConfigError(f"input shape must be a non-empty tuple of positive sizes, got {in_shape!r}")
    return shape


@torch.no_grad()
def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
