"""Schemas of the encoder room: the `encoder=` group (conf/encoder/), the `task=` group (conf/task/),
the weight-space augmentations wsl-train-encoder applies (`augment:`), and wsl-train-encoder itself
(conf/train_encoder.yaml). Plain dataclasses; ranges and cross-field rules in `__post_init__`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from wsl import schema
from wsl.schema import MISSING, fail, is_num, target_schema


# ------------------------------------------------------------------------------------------ encoder=
class _Encoder:
    """Every integer option of an encoder is a size (>= 1; num_layers >= 0), dropout is in [0, 1)."""

    def __post_init__(self):
        for f in fields(self):
            if f.type == "int":
                schema.integer(self, f.name, 0 if f.name == "num_layers" else 1)
        schema.number(self, "dropout", 0.0, 1.0, hi_open=True)


@target_schema
@dataclass
class FlatConfig(_Encoder):
    name: str = "flat"
    _target_: str = "wsl.encoders.FlatMLP"
    hidden: int = 256
    layers: int = 3
    dropout: float = 0.1


@target_schema
@dataclass
class StatsConfig(_Encoder):
    name: str = "stats"
    _target_: str = "wsl.encoders.StatNN"
    hidden: int = 128
    layers: int = 3
    dropout: float = 0.0


@target_schema
@dataclass
class DeepSetsConfig(_Encoder):
    name: str = "deepsets"
    _target_: str = "wsl.encoders.DeepSets"
    hidden: int = 64
    head_hidden: int = 128
    dropout: float = 0.0
    norm_readout: bool = True  # standardize the invariant embedding before the head (BatchNorm)


@target_schema
@dataclass
class GraphConfig(_Encoder):
    name: str = "graph"
    _target_: str = "wsl.encoders.GraphEncoder"
    hidden: int = 32
    num_layers: int = 3
    head_hidden: int = 128
    dropout: float = 0.0
    norm_readout: bool = True  # standardize the invariant embedding before the head (BatchNorm)
    fold_fixed: bool = True  # a hidden neuron's weights to/from the fixed inputs/outputs as one vector


@target_schema
@dataclass
class NFNConfig(_Encoder):
    name: str = "nfn"
    _target_: str = "wsl.encoders.NFN"
    mode: str = "hnp"  # hnp: hidden neurons permutable | np: all neurons permutable
    channels: int = 32
    num_layers: int = 3
    head_hidden: int = 128
    dropout: float = 0.0
    io_embed: bool = True
    entry_mlp: bool = True  # an MLP on every entry of an edge tensor (False: one Linear, NFN's input layer)
    norm: str = "layer"  # layer: LayerNorm over channels after every equivariant layer | none
    norm_readout: bool = True  # standardize the invariant embedding before the head (BatchNorm)

    def __post_init__(self):
        super().__post_init__()
        schema.choice(self, "mode", ("hnp", "np"))
        schema.choice(self, "norm", ("layer", "none"))


@target_schema
@dataclass
class TransformerConfig(_Encoder):
    name: str = "transformer"
    _target_: str = "wsl.encoders.NeuronTransformer"
    dim: int = 64
    heads: int = 4
    num_layers: int = 3
    edge_dim: int = 16
    head_hidden: int = 128
    dropout: float = 0.0
    norm_readout: bool = True  # standardize the invariant embedding before the head (BatchNorm)
    fold_fixed: bool = True  # a hidden neuron's weights to/from the fixed inputs/outputs as one vector

    def __post_init__(self):
        super().__post_init__()
        if self.dim % self.heads:
            fail(f"@dim={self.dim} must be divisible by @heads={self.heads}")


@target_schema
@dataclass
class LoRASpectrumConfig:
    """DSiRe's baseline (wsl.encoders.lora_spectrum): per-layer k-NN on LoRA spectra, layers vote. LoRA zoos only."""

    name: str = "lora_spectrum"
    _target_: str = "wsl.encoders.lora_spectrum.LoRASpectrum"
    k: int = 5  # neighbours per layer
    log: bool = True  # features in log

    def __post_init__(self):
        schema.integer(self, "k", 1)


ENCODER_SCHEMAS = (FlatConfig, StatsConfig, DeepSetsConfig, GraphConfig, NFNConfig, TransformerConfig,
                   LoRASpectrumConfig)


# ------------------------------------------------------------------------------------------ task=
@target_schema
@dataclass
class TaskConfig:
    """Every task (gen_gap, hparams, inr_class, phase, test_acc, test_bpc, test_rel_l2) is a
    wsl.encoders.tasks.Task (a subclass: these options, in this order); conf/task/<name>.yaml sets which
    columns it predicts and how."""

    name: str = MISSING
    kind: str = "regression"
    columns: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)  # regression columns predicted as log10
    drop_constant: bool = False  # regression: skip columns with one value in the zoo
    _target_: str = "wsl.encoders.tasks.Task"

    def __post_init__(self):
        schema.text(self, "name")
        schema.choice(self, "kind", ("regression", "classification"))
        if not self.columns:
            fail(f"task={self.name}: @columns is empty; name the column(s) to predict")
        if self.kind == "classification" and len(self.columns) != 1:
            fail(f"task={self.name}: classification predicts one column, got @columns={list(self.columns)}")
        unknown = [c for c in self.log if c not in self.columns]
        if unknown:
            fail(f"task={self.name}: @log names {unknown}, which are not in @columns")


# ------------------------------------------------------------------------------------------ augment:
# wsl.symmetry's weight-space augmentations as wsl-train-encoder configures them (`spec` is the
# zoo's, given at run time)
@dataclass
class _Augment:
    batched: bool = False  # a stacked batch of nets, each member augmented independently
    seed: Optional[int] = None  # None: torch's global generator


@target_schema
@dataclass
class PermutationAugmentConfig(_Augment):
    _target_: str = "wsl.symmetry.PermutationAugment"


@target_schema
@dataclass
class GaussianNoiseAugmentConfig(_Augment):
    _target_: str = "wsl.symmetry.GaussianNoiseAugment"
    sigma: float = MISSING  # 0: off
    relative: bool = True

    def __post_init__(self):
        schema.number(self, "sigma", 0.0)


@target_schema
@dataclass
class WeightDropoutAugmentConfig(_Augment):
    _target_: str = "wsl.symmetry.WeightDropoutAugment"
    p: float = MISSING  # 0: off
    rescale: bool = True

    def __post_init__(self):
        schema.number(self, "p", 0.0, 1.0, hi_open=True)


@target_schema
@dataclass
class AlignedMixUpConfig(_Augment):
    _target_: str = "wsl.symmetry.AlignedMixUp"
    alpha: float = 0.2
    max_iter: int = 100

    def __post_init__(self):
        schema.number(self, "alpha", 0.0, lo_open=True)
        schema.integer(self, "max_iter", 1)


# ------------------------------------------------------------------------------------------ wsl-train-encoder
@dataclass
class EncoderZoo:
    """`zoo:` of wsl-train-encoder: the zoo whose nets the encoder reads."""

    path: str = MISSING
    epoch: int = -1  # which checkpoint of every model (-1: the last)
    pad: bool = False  # nets of different widths: zero-pad to the widest
    bn_stats: bool = False  # also read BatchNorm running mean/var as per-unit features (off: parameters only)

    def __post_init__(self):
        schema.text(self, "path")
        schema.integer(self, "epoch", -1)


@dataclass
class Split:
    """Model-level split. by=cell (default): seed replicas of a hyperparameter cell stay together (the test
    split measures generalization to unseen cells); by=model: every net on its own (replicas of a cell
    then sit on both sides of the split; for grids with too few cells)."""

    fractions: Any = field(default_factory=lambda: [0.7, 0.15, 0.15])  # train, val, test
    seed: int = 0
    by: str = "cell"

    def __post_init__(self):
        fr = self.fractions
        if not isinstance(fr, list) or len(fr) != 3 or not all(is_num(f) and f >= 0 for f in fr) \
                or not math.isclose(sum(fr), 1.0):
            fail(f"@fractions must be three non-negative numbers summing to 1 (train, val, test), got {fr!r}")
        schema.integer(self, "seed", 0)
        schema.choice(self, "by", ("cell", "model"))


@dataclass
class Optim:
    """AdamW, linear warmup then cosine decay (per epoch)."""

    lr: float = 1.0e-3
    weight_decay: float = 1.0e-4
    warmup_epochs: int = 2

    def __post_init__(self):
        schema.number(self, "lr", 0.0, lo_open=True)
        schema.number(self, "weight_decay", 0.0)
        schema.integer(self, "warmup_epochs", 0)


@dataclass
class TrainEncoderConfig:
    """wsl-train-encoder (conf/train_encoder.yaml). `augment` and `trainer` default to empty here: the
    YAML holds their defaults (a schema default would come back after `~augment.noise`)."""

    zoo: EncoderZoo = field(default_factory=EncoderZoo)
    encoder: Any = MISSING  # one of ENCODER_SCHEMAS (encoder=<name>)
    task: TaskConfig = field(default_factory=lambda: TaskConfig(name="test_acc", columns=["test_acc"]))
    split: Split = field(default_factory=Split)
    seeds: Any = field(default_factory=lambda: [0, 1, 2])  # one encoder trained per seed
    batch_size: int = 32
    eval_batch_size: int = 256
    optim: Optim = field(default_factory=Optim)
    augment: Optional[dict[str, Any]] = field(default_factory=dict)  # name -> augmentation node or null
    trainer: dict[str, Any] = field(default_factory=dict)  # lightning.Trainer options
    logger: Any = None

    def __post_init__(self):
        from wsl.trainer import check_trainer

        if not isinstance(self.encoder, ENCODER_SCHEMAS):
            target = self.encoder.get("_target_") if isinstance(self.encoder, dict) else None
            names = ", ".join(sorted(c.name for c in ENCODER_SCHEMAS))
            fail(f"@encoder._target_={target!r} is not an encoder of wsl; choose one with encoder=<name> ({names})"
                 if target else f"@encoder._target_ is missing; choose an encoder with encoder=<name> ({names})")
        if not isinstance(self.seeds, list) or not self.seeds or not all(schema.is_int(x) for x in self.seeds):
            fail(f"@seeds must be a non-empty list of integers, got {self.seeds!r}")
        for name in ("batch_size", "eval_batch_size"):
            schema.integer(self, name, 1)
        for name, node in (self.augment or {}).items():
            if node is not None and not (hasattr(node, "_target_") or isinstance(node, dict) and "_target_" in node):
                fail(f"@augment.{name} must be null or an augmentation config with a _target_, got {node!r}")
        check_trainer(self.trainer)
        v = self.trainer.get("max_epochs")
        if not schema.is_int(v) or v < 1:
            fail(f"@trainer.max_epochs must be an integer >= 1, got {v!r}")


# ------------------------------------------------------------------------------------------ wsl-embed
@dataclass
class EmbedZoo:
    """`zoo:` of wsl-embed: the zoo whose nets are embedded (any zoo: trained, generated by wsl-sample)."""

    path: str = MISSING
    epoch: int = -1  # which checkpoint of every model (-1: the last)

    def __post_init__(self):
        schema.text(self, "path")
        schema.integer(self, "epoch", -1)


@dataclass
class EmbedConfig:
    """wsl-embed (conf/embed.yaml): a saved encoder run applied to a zoo, written as an annotation group."""

    run: str = MISSING  # a wsl-train-encoder run directory
    zoo: EmbedZoo = field(default_factory=EmbedZoo)
    seed: Optional[int] = None  # None: every saved seed (predictions: their mean, and each seed's)
    group: Optional[str] = None  # annotation group; None: embed_<encoder>_<task>
    score: Optional[bool] = None  # None: when the zoo has the task's columns; true: required; false: never
    batch_size: int = 256
    device: str = "cpu"
    logger: Any = None

    def __post_init__(self):
        schema.text(self, "run")
        schema.integer(self, "seed", null=True)
        schema.text(self, "group", null=True)
        schema.integer(self, "batch_size", 1)
        schema.choice(self, "device", ("cpu", "cuda"))
