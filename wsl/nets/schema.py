"""Schemas of the `net=` group (conf/net/*.yaml): one per architecture, chosen by its `_target_`.

`arch(in_shape, num_classes, data_info)` is what `wsl.nets.build_net` builds the net from (the dataset
gives the shapes, and in `data_info` what else a net must know of it: `data_info(data)`); `reads` names
the kinds of data (wsl.data.schema) the architecture is trained on."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar, Optional

from wsl import schema
from wsl.errors import ConfigError
from wsl.schema import MISSING, fail, target_schema

ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid", "silu", "leaky_relu")
INITS = ("default", "kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal", "orthogonal")
POOLINGS = ("stride", "max", "avg")
NORMS = ("none", "batch")  # normalization after each conv: none, or BatchNorm (running statistics stored)


def data_info(data) -> dict:
    """What a net must know of its data beyond the shapes, read off a data object or a dataset config:
    {"vocab_size": the number of token ids (None: float inputs), "causal": next-token prediction at every
    position, "name": the dataset}. Data without the attributes give float inputs, not causal."""
    vocab = getattr(data, "vocab_size", None)
    return {"vocab_size": None if vocab is None else int(vocab), "causal": bool(getattr(data, "causal", False)),
            "name": str(getattr(data, "name", "this dataset"))}


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

    def arch(self, in_shape, num_classes: int, data_info: dict | None = None) -> dict:
        """The net's architecture for data of `in_shape` and `num_classes`; `data_info` (see data_info())
        says whether the inputs are token ids, which only a transformer reads."""
        info = data_info or {}
        if info.get("vocab_size") is not None:
            raise ConfigError(f"net={self.name} reads float inputs; dataset={info.get('name', '?')} gives token ids: "
                              "use net=transformer")
        return self._arch(in_shape, num_classes)

    def _arch(self, in_shape, num_classes: int) -> dict:
        kw = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        return {"name": self.name, "in_shape": list(in_shape), "num_classes": num_classes, **kw}


@target_schema
@dataclass
class MLPConfig(NetConfig):
    _target_: str = "wsl.nets.MLP"
    activation: str = "relu"
    init: str = "default"
    name: ClassVar[str] = "mlp"
    reads: ClassVar[tuple[str, ...]] = ("classification", "inr", "pinn")  # a PINN maps coordinates (x, t) -> u


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
    reads: ClassVar[tuple[str, ...]] = ("inr", "pinn")

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


@target_schema
@dataclass
class TransformerConfig(NetConfig):
    """Pre-LayerNorm transformer (wsl.nets.Transformer): `width` model dimension, `depth` blocks, `heads`
    attention heads (dividing width), `mlp_ratio` x width hidden units per MLP, `patch` the patch side for
    images and 1-D signals (null: 1); token datasets give the vocabulary and causality (data_info)."""

    _target_: str = "wsl.nets.Transformer"
    width: int = 32
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    patch: Optional[int] = None
    activation: str = "gelu"
    init: str = "default"
    name: ClassVar[str] = "transformer"
    reads: ClassVar[tuple[str, ...]] = ("classification", "lm")

    def __post_init__(self):
        super().__post_init__()
        schema.integer(self, "heads", 1)
        if self.width % self.heads:
            fail(f"@heads={self.heads} does not divide @width={self.width}")
        schema.number(self, "mlp_ratio", 1.0)
        schema.integer(self, "patch", 1, null=True)

    def arch(self, in_shape, num_classes: int, data_info: dict | None = None) -> dict:
        info = data_info or {}
        vocab, causal, data = info.get("vocab_size"), bool(info.get("causal", False)), info.get("name", "?")
        if vocab is not None and self.patch is not None:
            raise ConfigError(f"net.patch={self.patch}: patches cut float inputs (images, signals); dataset={data} "
                              "gives token ids (set net.patch=null)")
        sides = list(in_shape)[1:]
        if vocab is None and self.patch is not None and any(s % self.patch for s in sides):
            raise ConfigError(f"net.patch={self.patch} does not divide the input sides {'x'.join(map(str, sides))} "
                              f"of dataset={data}")
        return {**self._arch(in_shape, num_classes), "vocab": None if vocab is None else int(vocab), "causal": causal}


NETS = (MLPConfig, CNNConfig, SIRENConfig, ResNetConfig, TransformerConfig)
