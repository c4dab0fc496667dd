"""Small CNN in the shape of the Small CNN Zoo (Unterthiner et al. 2020).

With the defaults (3 conv layers of 16 channels, 3-wide kernels, stride 2, global average
pooling, linear head) on a 1×28×28 input it has 4,970 parameters, like that zoo's nets.
Works on 1-D signals ([C, L], Conv1d) and images ([C, H, W], Conv2d) alike.
"""

from __future__ import annotations

import torch
from torch import nn

from wsl.errors import ConfigError
from wsl.nets.common import PIECEWISE_LINEAR, activation as make_activation, as_shape, init_weights
from wsl.nets.schema import POOLINGS
from wsl.nets.spec import PermutationSpec, chain_spec
from wsl.schema import positive


class CNN(nn.Module):
    """`depth` conv layers of `width` channels, then global average pooling and a linear head.

    pooling="stride": each conv has stride 2; "max"/"avg": stride-1 convs each followed by a
    2-wide pooling (skipped once the spatial size is 1).
    Parameters: convs.{i}.weight [width, c_in, k(, k)], convs.{i}.bias, head.weight, head.bias.
    """

    name = "cnn"

    def __init__(self, in_shape, num_classes: int, width: int = 16, depth: int = 3, kernel: int = 3,
                 pooling: str = "stride", activation: str = "relu", init: str = "default"):
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
        conv = nn.Conv1d if ndim == 1 else nn.Conv2d
        self._pool = {1: {"max": nn.functional.max_pool1d, "avg": nn.functional.avg_pool1d},
                      2: {"max": nn.functional.max_pool2d, "avg": nn.functional.avg_pool2d}}[ndim].get(pooling)
        stride = 2 if pooling == "stride" else 1
        self.convs = nn.ModuleList(conv(width if i else self.in_shape[0], width, kernel, stride=stride,
                                        padding=kernel // 2) for i in range(depth))
        self.head = nn.Linear(width, num_classes)
        init_weights(self, init)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, *S] -> [N, width]
        h = x
        for conv in self.convs:
            h = self.act(conv(h))
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
                "activation": self.activation_name, "init": self.init}

    def permutation_spec(self) -> PermutationSpec:
        return chain_spec(self.depth, self.width, layers="convs", spatial_axes=len(self.in_shape) - 1)
