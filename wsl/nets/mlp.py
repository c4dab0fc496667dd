"""Multi-layer perceptron: the simplest zoo architecture."""

from __future__ import annotations

import math

import torch
from torch import nn

from wsl.nets.common import PIECEWISE_LINEAR, activation as make_activation, as_shape, init_weights
from wsl.nets.spec import PermutationSpec, chain_spec
from wsl.schema import positive


class MLP(nn.Module):
    """`depth` hidden layers of `width` units each, then a linear head.

    Parameters: hidden.{i}.weight [width, fan_in], hidden.{i}.bias [width], head.weight
    [num_classes, width], head.bias [num_classes]. Input [N, *in_shape] is flattened.
    """

    name = "mlp"

    def __init__(self, in_shape, num_classes: int, width: int = 32, depth: int = 1,
                 activation: str = "relu", init: str = "default"):
        super().__init__()
        self.in_shape = as_shape(in_shape)
        self.num_classes = positive("num_classes", num_classes)
        self.width = positive("width", width)
        self.depth = positive("depth", depth)
        self.activation_name, self.init = activation, init
        self.act = make_activation(activation)
        self.hidden = nn.ModuleList(nn.Linear(width if i else math.prod(self.in_shape), width) for i in range(depth))
        self.head = nn.Linear(width, num_classes)
        init_weights(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, *in_shape] -> [N, num_classes]
        return self.head(self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations [N, width] (for CKA and probing)."""
        h = x.flatten(1)
        for layer in self.hidden:
            h = self.act(layer(h))
        return h

    @property
    def piecewise_linear(self) -> bool:
        """Every parameter in one Linear/Conv layer, ReLU-family activations (and max/avg pooling)."""
        return self.activation_name in PIECEWISE_LINEAR

    @property
    def arch(self) -> dict:
        return {"name": self.name, "in_shape": list(self.in_shape), "num_classes": self.num_classes,
                "width": self.width, "depth": self.depth, "activation": self.activation_name,
                "init": self.init}

    def permutation_spec(self) -> PermutationSpec:
        return chain_spec(self.depth, self.width)

