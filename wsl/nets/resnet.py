"""Residual nets with BatchNorm in the shape of the CIFAR ResNets (He et al. 2016, section 4.2).

A stem conv, then `stages` stages of `depth` basic blocks each (two 3-wide convs with BatchNorm,
a skip connection, ReLU after the sum), global average pooling and a linear head. Stage s has
width * 2^s channels; its first block strides by 2 (from the second stage on) and takes a
projection shortcut (1-wide conv + BatchNorm) where the channels or the resolution change.
With the default three stages, depth 1 is ResNet-8 and depth 3 ResNet-20 (6 depth + 2 layers).
Works on 1-D signals ([C, L]: Conv1d, BatchNorm1d) and images ([C, H, W]) alike.

Permutation structure: the skip connections tie every tensor that reads or writes a stage's
residual stream to one permutation ("S<s>": the stem, each block's second conv and BatchNorm, the
projection shortcut, the next blocks' first convs, the next stage's inputs, the head for the
last stage); the hidden channels inside each block have their own ("B<s>.<b>").
"""

from __future__ import annotations

import torch
from torch import nn

from wsl.errors import ConfigError
from wsl.nets.common import (BN_BUFFERS, PIECEWISE_LINEAR, activation as make_activation, as_shape, conv_axes,
                             conv_layer, init_weights, norm_axes, norm_layer)
from wsl.nets.registry import register_net
from wsl.nets.spec import PermutationSpec
from wsl.schema import positive


class ConvNorm(nn.Module):
    """conv -> norm (the conv has a bias only without BatchNorm, which has its own shift)."""

    def __init__(self, ndim, c_in, c_out, kernel, stride, norm):
        super().__init__()
        self.conv = conv_layer(ndim, c_in, c_out, kernel, stride, bias=norm == "none")
        self.bn = norm_layer(ndim, c_out, norm)

    def forward(self, x):
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    """act(x -> conv1 -> bn1 -> act -> conv2 -> bn2, + shortcut(x))."""

    def __init__(self, ndim, c_in, c_out, stride, norm, act: nn.Module):
        super().__init__()
        self.conv1 = ConvNorm(ndim, c_in, c_out, 3, stride, norm)
        self.conv2 = ConvNorm(ndim, c_out, c_out, 3, 1, norm)
        # a projection where the stream changes shape; the identity otherwise
        self.shortcut = ConvNorm(ndim, c_in, c_out, 1, stride, norm) if stride != 1 or c_in != c_out else None
        self.act = act

    def forward(self, x):
        h = self.conv2(self.act(self.conv1(x)))
        return self.act(h + (x if self.shortcut is None else self.shortcut(x)))


@register_net
class ResNet(nn.Module):
    """Stem, `stages` x `depth` basic blocks (stage s: width * 2^s channels), average pooling, linear head.

    Parameters: stem.conv.weight, stem.bn.{weight, bias}, stages.{s}.{b}.conv{1,2}.conv.weight,
    stages.{s}.{b}.conv{1,2}.bn.*, stages.{s}.0.shortcut.{conv, bn}.* (projections), head.weight,
    head.bias; BatchNorm buffers running_mean, running_var, num_batches_tracked. With norm="none"
    the convs carry biases and there is no BatchNorm.
    """

    name = "resnet"

    def __init__(self, in_shape, num_classes: int, width: int = 16, depth: int = 1, stages: int = 3,
                 norm: str = "batch", activation: str = "relu", init: str = "default"):
        super().__init__()
        self.in_shape = as_shape(in_shape)
        if len(self.in_shape) not in (2, 3):
            raise ConfigError(f"net=resnet needs inputs [C, L] or [C, H, W], got in_shape {list(self.in_shape)}")
        self.num_classes = positive("num_classes", num_classes)
        self.width = positive("width", width)
        self.depth = positive("depth", depth)
        self.num_stages = positive("stages", stages)
        side = min(self.in_shape[1:])
        if side < 2 ** (self.num_stages - 1):
            raise ConfigError(f"net.stages={self.num_stages}: an input of side {side} is too small for "
                              f"{self.num_stages - 1} stride-2 stages (needs a side >= {2 ** (self.num_stages - 1)})")
        self.norm, self.activation_name, self.init = norm, activation, init
        self.act = make_activation(activation)
        ndim = len(self.in_shape) - 1
        self.stem = ConvNorm(ndim, self.in_shape[0], width, 3, 1, norm)
        blocks, c_in = [], width
        for s in range(self.num_stages):
            c_out = width * 2**s
            blocks.append(nn.ModuleList(BasicBlock(ndim, c_in if b == 0 else c_out, c_out,
                                                   2 if (s > 0 and b == 0) else 1, norm, self.act)
                                        for b in range(self.depth)))
            c_in = c_out
        self.stages = nn.ModuleList(blocks)
        self.head = nn.Linear(c_in, self.num_classes)
        init_weights(self, init)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, *S] -> [N, width * 2^(stages-1)]
        h = self.act(self.stem(x))
        for stage in self.stages:
            for block in stage:
                h = block(h)
        return h.flatten(2).mean(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, *S] -> [N, num_classes]
        return self.head(self.features(x))

    @property
    def piecewise_linear(self) -> bool:
        """Each logit is affine in each single parameter once the activation pattern is fixed (the Hessian's
        diagonal is the Gauss-Newton one: wsl.landscape.exact_trace): ReLU-family activations, and BatchNorm,
        if any, in eval mode, where it is the affine map γ (u - μ)/√(σ² + ε) + β of its stored statistics. Each
        parameter (conv, γ, β, head) is used once per forward pass and the skip connections only add paths
        that are linear in a layer's output. In train mode BatchNorm divides by batch statistics that depend
        on the earlier weights, which is not affine: False."""
        return self.activation_name in PIECEWISE_LINEAR and (self.norm == "none" or not self.training)

    @property
    def arch(self) -> dict:
        return {"name": self.name, "in_shape": list(self.in_shape), "num_classes": self.num_classes,
                "width": self.width, "depth": self.depth, "stages": self.num_stages, "norm": self.norm,
                "activation": self.activation_name, "init": self.init}

    def permutation_spec(self) -> PermutationSpec:
        spatial, norm, bias = len(self.in_shape) - 1, self.norm, self.norm == "none"
        axes, sizes = {}, {}

        def conv_norm(prefix, out, inp):
            axes.update(conv_axes(f"{prefix}.conv", out, inp, spatial, bias))
            axes.update(norm_axes(f"{prefix}.bn", out, norm))

        conv_norm("stem", "S0", None)
        for s, stage in enumerate(self.stages):
            stream = f"S{s}"  # stage s's residual stream; the stem writes S0, stage s > 0 projects S<s-1>
            sizes[stream] = self.width * 2**s
            for b, block in enumerate(stage):
                inner, pre = f"B{s}.{b}", f"stages.{s}.{b}"
                sizes[inner] = sizes[stream]
                source = f"S{s - 1}" if (b == 0 and s > 0) else stream
                conv_norm(f"{pre}.conv1", inner, source)
                conv_norm(f"{pre}.conv2", stream, inner)
                if block.shortcut is not None:
                    conv_norm(f"{pre}.shortcut", stream, source)
        axes["head.weight"] = (None, f"S{self.num_stages - 1}")
        axes["head.bias"] = (None,)
        buffers = frozenset(k for k in axes if k.rsplit(".", 1)[-1] in BN_BUFFERS)
        return PermutationSpec(axes, sizes, buffers)
