"""Small CNN in the shape of the Small CNN Zoo (Unterthiner et al. 2020).

With the defaults (3 conv layers of 16 channels, 3-wide kernels, stride 2, global average
pooling, linear head) on a 1×28×28 input it has 4,970 parameters, like that zoo's nets.
Works on 1-D signals ([C, L], Conv1d) and images ([C, H, W], Conv2d) alike.
"""

from __future__ import annotations

import torch
from torch import nn

from wsl.errors import ConfigError
from wsl.nets.common import (BN_BUFFERS, PIECEWISE_LINEAR, activation as make_activation, as_shape, conv_layer,
                             init_weights, norm_axes, norm_layer)
from wsl.nets.schema import POOLINGS
from wsl.nets.spec import PermutationSpec, chain_spec
from wsl.schema import positive


class CNN(nn.Module):
    """`depth` conv layers of `width` channels, then global average pooling and a linear head.

    pooling="stride": each conv has stride 2; "max"/"avg": stride-1 convs each followed by a
    2-wide pooling (skipped once the spatial size is 1). norm="batch": BatchNorm after each conv
    (then the convs have no bias), before the activation.
    Parameters: convs.{i}.weight [width, c_in, k(, k)], convs.{i}.bias (norm="none"),
    norms.{i}.{weight, bias} and buffers norms.{i}.{running_mean, running_var, num_batches_tracked}
    (norm="batch"), head.weight, head.bias.
    """

    name = "cnn"

    def __init__(self, in_shape, num_classes: int, width: int = 16, depth: int = 3, kernel: int = 3,
                 pooling: str = "stride", norm: str = "none", activation: str = "relu", init: str = "default"):
        super().__init__()
        self.in_shape = as_shape(in_shape)
        if len(self.in_shape) not in (2, 3):
            raise ConfigError(f"CNN needs inputs [C, L] or [C, H, W], got in_shape {self.in_shape}")
        self.num_classes = positive("num_classes", num_classes)
        self.width = positive("width", width)
        self.depth = positive("depth", depth)
        self.kernel = positive("kernel", kernel)
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling={pooling!r} is unknown; valid: {', '.join(POOLINGS)}")
        self.pooling, self.activation_name, self.init = pooling, activation, init
        self.act = make_activation(activation)
        ndim = len(self.in_shape) - 1
        self._pool = {1: {"max": nn.functional.max_pool1d, "avg": nn.functional.avg_pool1d},
                      2: {"max": nn.functional.max_pool2d, "avg": nn.functional.avg_pool2d}}[ndim].get(pooling)
        stride = 2 if pooling == "stride" else 1
        self.norm = norm
        self.convs = nn.ModuleList(conv_layer(ndim, width if i else self.in_shape[0], width, kernel, stride,
                                              bias=norm == "none") for i in range(depth))
        if norm != "none":
            self.norms = nn.ModuleList(norm_layer(ndim, width, norm) for _ in range(depth))
        self.head = nn.Linear(width, num_classes)
        init_weights(self, init)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, *S] -> [N, width]
        h = x
        for i, conv in enumerate(self.convs):
            h = conv(h)
            h = self.act(self.norms[i](h) if self.norm != "none" else h)
            if self._pool is not None and min(h.shape[2:]) > 1:
                h = self._pool(h, 2)
        return h.flatten(2).mean(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @property
    def piecewise_linear(self) -> bool:
        """Every parameter in one Linear/Conv layer, ReLU-family activations (and max/avg pooling)."""
        return self.activation_name in PIECEWISE_LINEAR

    @property
    def arch(self) -> dict:
        return {"name": self.name, "in_shape": list(self.in_shape), "num_classes": self.num_classes,
                "width": self.width, "depth": self.depth, "kernel": self.kernel, "pooling": self.pooling,
                "norm": self.norm, "activation": self.activation_name, "init": self.init}

    def permutation_spec(self) -> PermutationSpec:
        spec = chain_spec(self.depth, self.width, layers="convs", spatial_axes=len(self.in_shape) - 1)
        if self.norm == "none":
            return spec
        axes = {k: v for k, v in spec.axes.items() if not (k.startswith("convs.") and k.endswith(".bias"))}
        for i in range(self.depth):
            axes.update(norm_axes(f"norms.{i}", f"P{i}", self.norm))
        return PermutationSpec(axes, spec.sizes, frozenset(k for k in axes if k.rsplit(".", 1)[-1] in BN_BUFFERS))
