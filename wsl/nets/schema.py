"""Schemas of the `net=` group (conf/net/*.yaml): one per architecture, chosen by its `_target_`.

`arch(in_shape, num_classes)` is what `wsl.nets.build_net` builds the net from (the dataset gives
the shapes); `reads` names the kinds of data (wsl.data.schema) the architecture is trained on."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar, Optional

from wsl import schema
from wsl.schema import MISSING, target_schema

ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid", "silu", "leaky_relu")
INITS = ("default", "kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal", "orthogonal")
POOLINGS = ("stride", "max", "avg")
NORMS = ("none", "batch")  # normalization after each conv: none, or BatchNorm (running statistics stored)


@dataclass
class NetConfig:
    """What every `net:` node holds: the class, its width (units, channels) and depth (layers)."""

    _target_: str = MISSING
    _partial_: bool = True  # in_shape and num_classes come from the dataset
    width: int = 32
    depth: int = 1
    name: ClassVar[str] = ""
    reads: ClassVar[tuple[str, ...]] = ("classification",)

    def __post_init__(self):
        schema.integer(self, "width", 1)
        schema.integer(self, "depth", 1)
        for name, allowed in (("activation", ACTIVATIONS), ("init", INITS), ("pooling", POOLINGS), ("norm", NORMS)):
            if hasattr(self, name):
                schema.choice(self, name, allowed)

    def arch(self, in_shape, num_classes: int) -> dict:
        kw = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        return {"name": self.name, "in_shape": list(in_shape), "num_classes": num_classes, **kw}


@target_schema
@dataclass
class MLPConfig(NetConfig):
    _target_: str = "wsl.nets.MLP"
    activation: str = "relu"
    init: str = "default"
    name: ClassVar[str] = "mlp"
    reads: ClassVar[tuple[str, ...]] = ("classification", "inr")


@target_schema
@dataclass
class CNNConfig(NetConfig):
    _target_: str = "wsl.nets.CNN"
    width: int = 16
    depth: int = 3
    kernel: int = 3
    pooling: str = "stride"
    norm: str = "none"
    activation: str = "relu"
    init: str = "default"
    name: ClassVar[str] = "cnn"

    def __post_init__(self):
        super().__post_init__()
        schema.integer(self, "kernel", 1)


@target_schema
@dataclass
class SIRENConfig(NetConfig):
    _target_: str = "wsl.nets.SIREN"
    depth: int = 2
    w0: float = 30.0  # frequency of the hidden sine layers
    w0_initial: Optional[float] = None  # of the first layer (null: w0)
    name: ClassVar[str] = "siren"
    reads: ClassVar[tuple[str, ...]] = ("inr",)

    def __post_init__(self):
        super().__post_init__()
        schema.number(self, "w0", 0.0, lo_open=True)
        schema.number(self, "w0_initial", 0.0, lo_open=True, null=True)


@target_schema
@dataclass
class ResNetConfig(NetConfig):
    """CIFAR-style ResNet: `width` channels in the first stage (doubled by each later one), `depth`
    residual blocks per stage (1: ResNet-8, 3: ResNet-20 with 3 stages)."""

    _target_: str = "wsl.nets.ResNet"
    width: int = 16
    depth: int = 1
    stages: int = 3
    norm: str = "batch"
    activation: str = "relu"
    init: str = "default"
    name: ClassVar[str] = "resnet"

    def __post_init__(self):
        super().__post_init__()
        schema.integer(self, "stages", 1, 6)


NETS = (MLPConfig, CNNConfig, SIRENConfig, ResNetConfig)
