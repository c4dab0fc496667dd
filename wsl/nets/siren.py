"""SIREN: an implicit neural representation with sine activations (Sitzmann et al. 2020).

A SIREN maps a coordinate (e.g. a pixel position in [-1, 1]^2) to a value (the pixel's intensity);
fitted to one image, its weights *are* that image. Layer i computes sin(w0 * (W_i x + b_i)); the
last layer is linear. Initialization (the paper's, which keeps activations well distributed):
first layer W ~ U(-1/fan_in, 1/fan_in), later layers W ~ U(-sqrt(6/fan_in)/w0, sqrt(6/fan_in)/w0);
biases keep PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

Parameters have the MLP's names (hidden.{i}.weight/bias, head.weight/bias), so the permutation
structure is the MLP's: permuting hidden units leaves the function unchanged. (sin is odd, so
flipping the sign of a unit's incoming weights, bias and outgoing weights is a further symmetry
the spec does not declare.)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from wsl.errors import ConfigError
from wsl.nets.common import as_shape
from wsl.nets.registry import register_net
from wsl.nets.spec import PermutationSpec, chain_spec
from wsl.schema import is_num, positive


@register_net
class SIREN(nn.Module):
    """`depth` sine layers of `width` units, then a linear head with `num_classes` outputs
    (the number of output channels: 1 for grey images). Input [N, *in_shape] is flattened
    (in_shape = [2] for 2-D coordinates)."""

    name = "siren"

    def __init__(self, in_shape=(2,), num_classes: int = 1, width: int = 32, depth: int = 2, w0: float = 30.0,
                 w0_initial: float | None = None):
        super().__init__()
        self.in_shape = as_shape(in_shape)
        self.num_classes = positive("num_classes", num_classes)
        self.width = positive("width", width)
        self.depth = positive("depth", depth)
        w0_initial = w0 if w0_initial is None else w0_initial
        for name, v in (("w0", w0), ("w0_initial", w0_initial)):
            if not is_num(v) or not v > 0:
                raise ConfigError(f"{name} must be a positive number, got {v!r}")
        self.w0, self.w0_initial = float(w0), float(w0_initial)
        self.hidden = nn.ModuleList(nn.Linear(width if i else math.prod(self.in_shape), width) for i in range(depth))
        self.head = nn.Linear(width, self.num_classes)
        with torch.no_grad():
            first = self.hidden[0]
            first.weight.uniform_(-1 / first.in_features, 1 / first.in_features)
            for layer in list(self.hidden[1:]) + [self.head]:
                bound = math.sqrt(6 / layer.in_features) / self.w0
                layer.weight.uniform_(-bound, bound)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # [N, *in_shape] -> [N, width]
        h = x.flatten(1)
        for i, layer in enumerate(self.hidden):
            h = torch.sin((self.w0_initial if i == 0 else self.w0) * layer(h))
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, *in_shape] -> [N, num_classes]
        return self.head(self.features(x))

    @property
    def arch(self) -> dict:
        return {"name": self.name, "in_shape": list(self.in_shape), "num_classes": self.num_classes,
                "width": self.width, "depth": self.depth, "w0": self.w0, "w0_initial": self.w0_initial}

    def permutation_spec(self) -> PermutationSpec:
        return chain_spec(self.depth, self.width)
