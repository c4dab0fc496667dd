"""Pieces shared by the zoo architectures."""

from __future__ import annotations

import math

import torch
from torch import nn

from wsl.errors import ConfigError
from wsl.nets.schema import ACTIVATIONS, INITS, NORMS

_ACTIVATIONS = dict(zip(ACTIVATIONS, (nn.ReLU, nn.Tanh, nn.GELU, nn.Sigmoid, nn.SiLU, nn.LeakyReLU)))
# activations under which each parameter enters the output affinely once the activation pattern is
# fixed (so the Hessian's diagonal has no second-derivative-of-the-net term: wsl.landscape.exact_trace)
PIECEWISE_LINEAR = ("relu", "leaky_relu")


def activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ConfigError(f"activation={name!r} is unknown; valid: {', '.join(ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


_INITS = {"kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, a=math.sqrt(5)),
          "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
          "xavier_uniform": nn.init.xavier_uniform_, "xavier_normal": nn.init.xavier_normal_,
          "orthogonal": nn.init.orthogonal_}


def init_weights(module: nn.Module, scheme: str) -> None:
    """(Re)initialize the weights of every Linear/Conv layer with `scheme`, biases with zeros
    (except `default`, which keeps PyTorch's own layer initialization)."""
    if scheme not in INITS:
        raise ConfigError(f"init={scheme!r} is unknown; valid: {', '.join(INITS)}")
    if scheme == "default":
        return
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            _INITS[scheme](m.weight)
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


def conv_layer(ndim: int, c_in: int, c_out: int, kernel: int, stride: int, bias: bool) -> nn.Module:
    return (nn.Conv1d if ndim == 1 else nn.Conv2d)(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=bias)


def norm_layer(ndim: int, channels: int, norm: str) -> nn.Module:
    """BatchNorm over `channels` (norm="batch") or nothing (norm="none")."""
    if norm not in NORMS:
        raise ConfigError(f"norm={norm!r} is unknown; valid: {', '.join(NORMS)}")
    if norm == "none":
        return nn.Identity()
    return (nn.BatchNorm1d if ndim == 1 else nn.BatchNorm2d)(channels)


def norm_axes(prefix: str, perm: str, norm: str) -> dict:
    """Spec entries of a BatchNorm over channels permuted by `perm` (none without BatchNorm)."""
    if norm == "none":
        return {}
    return {f"{prefix}.weight": (perm,), f"{prefix}.bias": (perm,), f"{prefix}.running_mean": (perm,),
            f"{prefix}.running_var": (perm,), f"{prefix}.num_batches_tracked": ()}


BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def conv_axes(prefix: str, out: str, inp: str | None, spatial: int, bias: bool) -> dict:
    axes = {f"{prefix}.weight": (out, inp, *(None,) * spatial)}
    if bias:
        axes[f"{prefix}.bias"] = (out,)
    return axes
