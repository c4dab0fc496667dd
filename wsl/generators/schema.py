"""Schemas of the generators room: the `generator` group (conf/generator/: method, denoiser, optimizer, ema),
wsl-train-generator (conf/train_generator.yaml) and wsl-sample (conf/sample.yaml).

The method and denoiser schemas are registered targets: a `generator.method` or `generator.denoiser` node is
typed by the schema of the class its `_target_` names, and a generator run's stored constructor arguments are
checked by the same schema when the run is loaded (wsl.generators.generator_run). Plain Python: `--help` must
not wait for torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from wsl import schema
from wsl.evaluate.schema import BatchNormConfig
from wsl.generators.limits import MAX_DEPTH, MAX_PARAMS, MAX_SAMPLER_STEPS, MAX_TIMESTEPS, MAX_WIDTH
from wsl.schema import MISSING, FieldError, fail, target_schema
from wsl.trainer import check_device, check_trainer

FLOW_SOLVERS = ("euler", "heun")
DIFFUSION_SCHEDULES = ("linear", "cosine")


def _sizes(obj, **caps) -> None:
    """Each named field of obj is an integer in [1, cap] (cap None: no upper bound)."""
    for name, cap in caps.items():
        schema.integer(obj, name, 1, cap)


# ------------------------------------------------------------------------------------------ methods
@target_schema
@dataclass
class FlowMatchingConfig:
    """generator=flow: wsl.generators.flow.FlowMatching."""

    _target_: str = "wsl.generators.flow.FlowMatching"
    prediction: str = "data"
    ot_pairing: bool = True
    sigma_min: float = 0.0
    steps: int = 5  # the sampler's default (capped: a run file's steps=10^9 would hang every batch)
    solver: str = "heun"

    def __post_init__(self):
        schema.choice(self, "prediction", ("velocity", "data"))
        schema.number(self, "sigma_min", 0.0, 1.0, hi_open=True)
        schema.integer(self, "steps", 1, MAX_SAMPLER_STEPS)
        schema.choice(self, "solver", FLOW_SOLVERS)


@target_schema
@dataclass
class DiffusionConfig:
    """generator=diffusion: wsl.generators.diffusion.Diffusion."""

    _target_: str = "wsl.generators.diffusion.Diffusion"
    timesteps: int = 1000  # capped: the noise schedule is a float64 table of that length
    schedule: str = "cosine"
    prediction: str = "x0"
    steps: int = 10
    eta: float = 0.0
    clip: Optional[float] = None

    def __post_init__(self):
        _sizes(self, timesteps=MAX_TIMESTEPS, steps=MAX_SAMPLER_STEPS)
        schema.choice(self, "schedule", DIFFUSION_SCHEDULES)
        schema.choice(self, "prediction", ("eps", "v", "x0"))
        if self.steps > self.timesteps:
            fail(f"@steps={self.steps} exceeds @timesteps={self.timesteps}")
        schema.number(self, "eta", 0.0, 1.0)
        schema.number(self, "clip", 0.0, lo_open=True, null=True)


# ------------------------------------------------------------------------------------------ denoisers
# Sizes are capped (wsl.generators.limits): a run file is untrusted, and a width of 10^9 or a depth of
# 10^9 would allocate terabytes or hang while the module is built. dim, cond_dim and segments come
# from the zoo, not from the config.
@target_schema
@dataclass
class MLPDenoiserConfig:
    """generator/denoiser=mlp: wsl.generators.denoisers.MLPDenoiser."""

    _target_: str = "wsl.generators.denoisers.MLPDenoiser"
    hidden: int = 128
    depth: int = 2
    emb_dim: int = 128
    dropout: float = 0.0

    def __post_init__(self):
        _sizes(self, hidden=MAX_WIDTH, depth=MAX_DEPTH, emb_dim=MAX_WIDTH)
        schema.number(self, "dropout", 0.0, 1.0, hi_open=True)


@target_schema
@dataclass
class TransformerDenoiserConfig:
    """generator/denoiser=transformer: wsl.generators.denoisers.TransformerDenoiser."""

    _target_: str = "wsl.generators.denoisers.TransformerDenoiser"
    d_model: int = 128
    nhead: int = 4
    layers: int = 4
    max_token: Optional[int] = 1024
    dropout: float = 0.0

    def __post_init__(self):
        _sizes(self, d_model=MAX_WIDTH, nhead=self.d_model, layers=MAX_DEPTH)
        if self.d_model % self.nhead:
            fail(f"@d_model={self.d_model} must be divisible by @nhead={self.nhead}")
        schema.integer(self, "max_token", 1, MAX_PARAMS, null=True)
        schema.number(self, "dropout", 0.0, 1.0, hi_open=True)


# ------------------------------------------------------------------------------------------ the group
@dataclass
class OptimizerConfig:
    lr: float = 1.0e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"  # constant | cosine (with a short linear warm-up)

    def __post_init__(self):
        schema.number(self, "lr", 0.0, lo_open=True)
        schema.number(self, "weight_decay", 0.0)
        schema.choice(self, "schedule", ("constant", "cosine"))


@dataclass
class GeneratorConfig:
    """The `generator` group: a method (flow | diffusion), its denoiser, the optimizer, the EMA."""

    method: Any = MISSING  # FlowMatchingConfig | DiffusionConfig (or a node naming another class)
    denoiser: Any = MISSING  # MLPDenoiserConfig | TransformerDenoiserConfig (or another class)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    ema: Optional[float] = 0.999  # EMA decay of the weights; null: off

    def __post_init__(self):
        for name, how in (("method", "generator=flow|diffusion"), ("denoiser", "generator/denoiser=mlp|transformer")):
            node = getattr(self, name)
            named = dataclasses.is_dataclass(node) or (isinstance(node, dict) and node.get("_target_"))
            if node != MISSING and not named:
                fail(f"@{name}._target_ is missing; choose one with {how}")
        schema.number(self, "ema", 0.0, 1.0, lo_open=True, hi_open=True, null=True)


# ------------------------------------------------------------------------------------------ wsl-train-generator
@dataclass
class TrainZoo:
    path: str = MISSING
    epoch: int = -1  # which checkpoint of every net (-1: its last)
    filter: Optional[dict[str, Any]] = None  # hyperparameter equalities; only status=trained nets are used
    val_fraction: float = 0.0
    split_seed: int = 0
    exclude: Optional[dict[str, Any]] = None  # column -> value(s) whose nets are left out, e.g. {task: [3v8]}

    def __post_init__(self):
        schema.text(self, "path")
        for k, v in (self.exclude or {}).items():
            values = v if isinstance(v, list) else [v]
            if not values or not all(isinstance(e, (str, int, float, bool)) for e in values):
                fail(f"@exclude.{k} must be a value or a list of values, got {v!r}")
        schema.integer(self, "epoch", -1)
        schema.number(self, "val_fraction", 0.0, 1.0, hi_open=True)
        schema.integer(self, "split_seed", 0)


@dataclass
class LatentConfig:
    """representation.latent: a p-diff style autoencoder latent (`true`: every default)."""

    latent_dim: int = 64
    hidden: int = 512
    depth: int = 2
    steps: int = 2000
    lr: float = 1e-3
    weight_decay: float = 0.0
    input_noise: float = 0.001
    latent_noise: float = 0.1

    def __post_init__(self):
        _sizes(self, latent_dim=MAX_WIDTH, hidden=MAX_WIDTH, depth=MAX_DEPTH, steps=None)
        schema.number(self, "lr", 0.0, lo_open=True)
        for name in ("weight_decay", "input_noise", "latent_noise"):
            schema.number(self, name, 0.0)


@dataclass
class _Alignment:
    """Fields every representation shares: how the nets are aligned before anything is fitted."""

    align: bool = True  # weight matching of every net to one reference before flattening
    reference: int = 0  # which training net (index in zoo order) is the reference
    iterations: int = 1  # > 1: re-align everything to the mean of the previous alignment
    max_iter: int = 100  # weight-matching coordinate-descent passes

    def __post_init__(self):
        schema.integer(self, "reference", 0)
        _sizes(self, iterations=None, max_iter=None)


@target_schema
@dataclass
class RepresentationConfig(_Alignment):
    """representation=flat: the aligned, per-tensor standardized flat weight vector (optionally p-diff's
    autoencoder latent, `latent`); wsl.generators.representation.WeightRepresentation."""

    _target_: str = "wsl.generators.representation.WeightRepresentation"
    latent: Any = None  # null/false: none; true or a mapping of LatentConfig's fields: a LatentConfig

    def __post_init__(self):
        super().__post_init__()
        if self.latent is None or self.latent is False or isinstance(self.latent, LatentConfig):
            return
        given = {} if self.latent is True else self.latent
        valid = [f.name for f in dataclasses.fields(LatentConfig)]
        if not isinstance(given, dict):
            fail(f"@latent must be null, true or a mapping of {valid}, got {given!r}")
        unknown = sorted(set(map(str, given)) - set(valid))
        if unknown:
            fail(f"@latent: unknown key(s) {unknown}; valid: {valid}")
        try:
            self.latent = LatentConfig(**given)
        except FieldError as e:
            raise FieldError(str(e).replace("@", "@latent.")) from None


FlatRepresentationConfig = RepresentationConfig


@target_schema
@dataclass
class TokensConfig(_Alignment):
    """representation=tokens: every layer's normalized weights cut into chunks of `chunk` coordinates (the last one
    of a layer zero-padded), one token each, through ONE shared input and output projection plus layer, position
    and kind embeddings, denoised by a transformer (wsl.generators.representations.tokens.TokenDenoiser; it
    replaces generator.denoiser). Its size grows with the zoo's nets only through the embeddings."""

    _target_: str = "wsl.generators.representations.tokens.TokenDenoiser"
    chunk: int = 256  # coordinates per token
    d_model: int = 128
    nhead: int = 4
    layers: int = 4
    dropout: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        _sizes(self, chunk=MAX_WIDTH, d_model=MAX_WIDTH, nhead=self.d_model, layers=MAX_DEPTH)
        if self.d_model % self.nhead:
            fail(f"@d_model={self.d_model} must be divisible by @nhead={self.nhead}")
        schema.number(self, "dropout", 0.0, 1.0, hi_open=True)


@target_schema
@dataclass
class PCAConfig(_Alignment):
    """representation=pca: the generator runs on k principal-component codes of the aligned, normalized training
    nets (wsl.generators.representations.pca.PCACodes). Samples lie in the training nets' affine span."""

    _target_: str = "wsl.generators.representations.pca.PCACodes"
    k: int = 32  # components; at most (training nets - 1), checked against the zoo
    block: int = 65536  # coordinates per block while fitting (memory: nets x block floats at a time)
    noise: float = 0.0  # std of Gaussian noise added to the standardized training codes at every step (0: none)

    def __post_init__(self):
        super().__post_init__()
        _sizes(self, k=MAX_WIDTH, block=None)
        schema.number(self, "noise", 0.0)


@target_schema
@dataclass
class VAEConfig(_Alignment):
    """representation=latent: a KL-regularized variational autoencoder over fixed-size chunks of the normalized
    weight vector (D2NWG's design; wsl.generators.representations.vae.ChunkVAE). The generator learns the
    posterior means, trained on fresh posterior samples (so it cannot replay the training codes exactly)."""

    _target_: str = "wsl.generators.representations.vae.ChunkVAE"
    chunk: int = 256  # coordinates per chunk (the vector is zero-padded to a multiple of it)
    latent_dim: int = 4  # latent coordinates per chunk (< chunk)
    hidden: int = 128
    beta: float = 0.01  # weight of the KL term (per latent coordinate, against the mean squared error per weight)
    steps: int = 2000
    batch: int = 512  # (net, chunk) pairs per step
    lr: float = 1e-3
    weight_decay: float = 0.0
    posterior: bool = True  # the generator trains on posterior samples (false: on the means; memorizes sooner)

    def __post_init__(self):
        super().__post_init__()
        _sizes(self, chunk=MAX_WIDTH, latent_dim=MAX_WIDTH, hidden=MAX_WIDTH, steps=None, batch=None)
        if self.latent_dim >= self.chunk:
            fail(f"@latent_dim={self.latent_dim} must be less than @chunk={self.chunk} (a latent that does not compress)")
        schema.number(self, "beta", 0.0)
        schema.number(self, "lr", 0.0, lo_open=True)
        schema.number(self, "weight_decay", 0.0)


REPRESENTATIONS = {"flat": RepresentationConfig, "tokens": TokensConfig, "pca": PCAConfig, "latent": VAEConfig}


def representation_name(cfg) -> str:
    """flat | tokens | pca | latent of a representation config."""
    return next(k for k, v in REPRESENTATIONS.items() if type(cfg) is v)


@dataclass
class SetEncoderConfig:
    """condition.set_encoder: the DeepSets encoder of a task condition (wsl.generators.conditions)."""

    hidden: int = 64
    dim: int = 32  # width of the task embedding the denoiser reads
    set_size: int = 64  # labelled train examples per task in each training step (all of them when sampling)

    def __post_init__(self):
        _sizes(self, hidden=MAX_WIDTH, dim=MAX_WIDTH, set_size=None)


@dataclass
class ConditionConfig:
    columns: list[str] = field(default_factory=list)  # zoo table columns to condition on; []: unconditional
    dropout: float = 0.1  # classifier-free guidance: probability that a training row's condition is hidden
    categorical: list[str] = field(default_factory=list)  # number columns read as categories (text columns are)
    set_encoder: SetEncoderConfig = field(default_factory=SetEncoderConfig)  # the `task` column's encoder

    def __post_init__(self):
        schema.names(self, "columns")
        schema.names(self, "categorical")
        unknown = [k for k in self.categorical if k not in self.columns]
        if unknown:
            fail(f"@categorical: {unknown} are not in @columns={self.columns}")
        for k in self.columns:
            if k.startswith("test_") or k.endswith("/test_acc") or k.endswith("/test_loss"):
                fail(f"@columns: {k!r} is measured on the test split; nothing may be fitted on it "
                     "(condition on val_acc or train_acc instead)")
        schema.number(self, "dropout", 0.0, 1.0, hi_open=True)


@dataclass
class SpreadConfig:
    """The collapse monitor: std of samples / std of training weights, logged as spread_ratio."""

    every_n_steps: int = 500
    n: int = 256

    def __post_init__(self):
        _sizes(self, every_n_steps=None, n=None)


@dataclass
class TrainGeneratorConfig:
    """wsl-train-generator (conf/train_generator.yaml)."""

    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    zoo: TrainZoo = field(default_factory=TrainZoo)
    representation: Any = MISSING  # representation=flat|tokens|pca|latent (a schema instance; MISSING: flat's defaults)
    condition: ConditionConfig = field(default_factory=ConditionConfig)
    batch_size: int = 128  # nets per step (capped at a rank's share of the training nets)
    seed: int = 0
    threads: Optional[int] = None  # torch threads; null: one per core (1 is often faster on a shared machine)
    spread: SpreadConfig = field(default_factory=SpreadConfig)
    progress_refresh_rate: int = 50  # progress bar update every n steps (0: no bar)
    trainer: dict[str, Any] = field(default_factory=lambda: {  # lightning.Trainer options
        "strategy": "auto", "accelerator": "auto", "devices": 1, "max_steps": 600, "max_epochs": -1,
        "log_every_n_steps": 50})
    logger: Any = None

    def __post_init__(self):
        schema.integer(self, "batch_size", 1)
        schema.integer(self, "threads", 1, null=True)
        for name in ("seed", "progress_refresh_rate"):
            schema.integer(self, name, 0)
        check_trainer(self.trainer, steps=True)
        if self.representation == MISSING:  # built in Python without one: the config group's default
            self.representation = RepresentationConfig()
        r = self.representation
        if isinstance(r, dict):
            if r.get("_target_") is None:
                fail("@representation._target_ is missing; choose one with representation=flat|tokens|pca|latent")
            fail(f"@representation._target_={r['_target_']!r} is not a representation; "
                 "choose one with representation=flat|tokens|pca|latent")
        if not isinstance(r, tuple(REPRESENTATIONS.values())):
            fail("@representation must be one of representation=flat|tokens|pca|latent")


# ------------------------------------------------------------------------------------------ wsl-sample
@dataclass
class SampleZoo:
    path: str = MISSING  # the output zoo (created, or extended with more samples of the same generator run)
    name: Optional[str] = None

    def __post_init__(self):
        schema.text(self, "path")
        schema.text(self, "name", null=True)


@dataclass
class SampleConfig:
    """wsl-sample (conf/sample.yaml). What depends on the generator run (condition keys, the
    diffusion's step count, a batch's memory, the disk's room for n nets) is checked when the run is loaded."""

    run: str = MISSING  # a wsl-train-generator run directory
    n: int = 100
    seed: int = 0
    condition: Optional[dict[str, Any]] = None  # values of the run's condition keys; null: unconditional
    guidance: float = 1.0
    steps: Optional[int] = None  # ODE / DDIM steps; null: the generator's default
    batch_size: int = 1000
    device: str = "cpu"
    threads: Optional[int] = None
    zoo: SampleZoo = field(default_factory=SampleZoo)
    batchnorm: BatchNormConfig = field(default_factory=BatchNormConfig)  # statistics of sampled BatchNorm nets
    job_id: Optional[str] = None  # shard name; default: gen-<run dir name>-s<seed>
    logger: Any = None

    def __post_init__(self):
        schema.text(self, "run")
        _sizes(self, n=None, batch_size=None)  # n's cap (nets per run, disk space) needs the run: wsl.generators.sample
        schema.integer(self, "seed", 0)
        for k, v in (self.condition or {}).items():  # numbers, category names, task names (checked by the run)
            if not isinstance(v, (str, bool)) and (not schema.is_num(v) or not math.isfinite(v)):
                fail(f"@condition.{k} must be a finite number or a category name, got {v!r}")
        schema.number(self, "guidance", 0.0)
        schema.integer(self, "steps", 1, MAX_SAMPLER_STEPS, null=True)
        check_device(self, "device")
        schema.integer(self, "threads", 1, null=True)
        schema.text(self, "job_id", null=True)
