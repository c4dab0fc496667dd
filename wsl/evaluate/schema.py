"""Schema of wsl-evaluate (conf/evaluate.yaml) and of the baselines it builds (`baselines.<name>`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from wsl import schema
from wsl.landscape.schema import PhaseThresholds
from wsl.schema import MISSING, fail
from wsl.zoo.schema import ZooPath

SPLITS = ("train", "val", "test")


@dataclass
class FailureConfig:
    """`failure:` when a net counts as failed: not closing `min_gain` of the gap between the best constant
    predictor and a perfect one (wsl.evaluate.domains), or a fixed threshold of the zoo's own score (one
    knob per domain; setting another domain's is refused once the zoo is read)."""

    min_accuracy: Optional[float] = None  # classification: fails below; None: majority rate + min_gain of the gap to 1
    max_bpc: Optional[float] = None  # language models: fails above; None: (1 - min_gain) x unigram entropy
    max_rel_l2: Optional[float] = None  # PINNs: fails above; None: (1 - min_gain) x the best constant field's
    min_gain: float = 0.1

    def __post_init__(self):
        schema.number(self, "min_accuracy", 0.0, 1.0, null=True)
        schema.number(self, "max_bpc", 0.0, lo_open=True, null=True)
        schema.number(self, "max_rel_l2", 0.0, lo_open=True, null=True)
        schema.number(self, "min_gain", 0.0, 1.0)


@dataclass
class NoveltyConfig:
    """`novelty:` the memorization audit against the training checkpoints."""

    align: bool = True  # weight matching before distances
    anchor: int = 0  # training checkpoint every net is first aligned to
    top_k: int = 5  # candidates re-aligned pairwise per net (>= zoo size: every pair)
    max_iter: int = 100  # weight-matching passes
    memorized_below: float = 0.5  # novelty under which a net counts as memorized

    def __post_init__(self):
        for name, lo in (("anchor", 0), ("top_k", 0), ("max_iter", 1)):
            schema.integer(self, name, lo)
        schema.number(self, "memorized_below", 0.0, lo_open=True)


@dataclass
class BatchNormConfig:
    """`batchnorm:` re-estimation of BatchNorm running statistics on the train split (nets without
    BatchNorm: unused). Shared by wsl-sample (statistics written with each sampled net) and
    wsl-evaluate (statistics of every net it scores); the test and val splits never feed them."""

    batch_size: int = 1024  # train inputs per forward pass (the statistics average the batches' statistics)
    batches: Optional[int] = None  # None: the whole train split; k: k batches of a seeded random subset of it
    seed: int = 0  # of that subset

    def __post_init__(self):
        schema.integer(self, "batch_size", 1)
        schema.integer(self, "batches", 1, null=True)
        schema.integer(self, "seed", 0)


# ---- baselines.<name>: {_target_: <class>, ...} ----------------------------------------------------
@schema.target_schema
@dataclass
class NoiseBaselineConfig:
    _target_: str = "wsl.evaluate.baselines.NoiseBaseline"
    sigmas: list[float] = MISSING  # relative noise levels, each one set of n nets
    n: int = 100

    def __post_init__(self):
        if not self.sigmas or not all(schema.is_num(s) and 0.0 <= s < float("inf") for s in self.sigmas):
            fail(f"@sigmas must be a non-empty list of finite numbers >= 0, got {list(self.sigmas)}")
        schema.integer(self, "n", 1)


@schema.target_schema
@dataclass
class AverageBaselineConfig:
    _target_: str = "wsl.evaluate.baselines.AverageBaseline"
    ks: list[int] = MISSING  # how many aligned checkpoints each mean averages, one set of n nets per k
    n: int = 100

    def __post_init__(self):
        if not self.ks or not all(schema.is_int(k) and k >= 2 for k in self.ks):
            fail(f"@ks must be a non-empty list of integers >= 2, got {list(self.ks)}")
        schema.integer(self, "n", 1)


@schema.target_schema
@dataclass
class GaussianFitBaselineConfig:
    _target_: str = "wsl.evaluate.baselines.GaussianFitBaseline"
    n: int = 100

    def __post_init__(self):
        schema.integer(self, "n", 1)


@dataclass
class FinetuneConfig:
    """`finetune:` the optimizer steps of `finetune_steps` (wsl.evaluate.finetune), the same for every net."""

    optimizer: str = "adam"  # adam | sgd (momentum 0.9)
    lr: float = 1.0e-3
    batch_size: int = 32  # train examples per step (one seeded order shared by every net)
    seed: int = 0  # that order and the random initializations

    def __post_init__(self):
        schema.choice(self, "optimizer", ("adam", "sgd"))
        schema.number(self, "lr", 0.0, lo_open=True)
        schema.integer(self, "batch_size", 1)
        schema.integer(self, "seed", 0)


MAX_FINETUNE_STEPS = 100_000


@dataclass
class EvaluateConfig:
    """wsl-evaluate (conf/evaluate.yaml): a zoo of generated nets judged against its training zoo."""

    zoo: ZooPath = field(default_factory=ZooPath)  # the generated zoo
    reference: str = MISSING  # the training zoo
    out: Optional[str] = None  # report directory; None: <zoo.path>/report
    epoch: int = -1  # checkpoint of each generated net
    reference_epoch: Optional[int] = None  # None: the generator's (recorded by wsl-sample), else -1
    reference_ids: Optional[list[str]] = None  # None: the generator's training nets, else every trained one
    split: str = "test"  # where the score (accuracy, bpc, rel_l2), loss and prediction overlap are measured
    max_nets: Optional[int] = None  # the first max_nets generated nets in index order; None: all
    chunk: int = 256  # nets per vmapped forward pass
    device: str = "cpu"  # where the forward passes, BatchNorm re-estimation and fine-tuning steps run (cpu, cuda, cuda:1)
    seed: int = 0  # random draws of the baselines
    failure: FailureConfig = field(default_factory=FailureConfig)
    novelty: NoveltyConfig = field(default_factory=NoveltyConfig)
    batchnorm: BatchNormConfig = field(default_factory=BatchNormConfig)  # statistics of every scored net (train split)
    phases: Optional[PhaseThresholds] = field(default_factory=PhaseThresholds)  # None: the taxonomy's defaults
    baselines: Optional[dict[str, Any]] = None  # name -> a baseline node ({_target_: ..., ...}) or None (off)
    encoder_run: Optional[str] = None  # a wsl-train-encoder run: predicted against measured score (screening)
    encoder_seed: Optional[int] = None  # None: every saved seed (their mean)
    finetune_steps: Optional[list[int]] = None  # e.g. [0,10,100]: the fine-tuning comparison (wsl.evaluate.finetune)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    logger: Any = None

    def __post_init__(self):
        schema.text(self, "reference")
        schema.text(self, "out", null=True)
        for name, lo, null in (("epoch", -1, False), ("reference_epoch", -1, True), ("max_nets", 1, True),
                               ("chunk", 1, False), ("seed", 0, False)):
            schema.integer(self, name, lo, null=null)
        schema.names(self, "reference_ids", null=True, empty=False)
        schema.choice(self, "split", SPLITS)
        from wsl.trainer import check_device

        check_device(self, "device")
        schema.text(self, "encoder_run", null=True)
        schema.integer(self, "encoder_seed", null=True)
        if self.finetune_steps is not None and (not self.finetune_steps or not all(
                schema.is_int(k) and 0 <= k <= MAX_FINETUNE_STEPS for k in self.finetune_steps)):
            fail(f"@finetune_steps must be a non-empty list of step counts in 0..{MAX_FINETUNE_STEPS}, "
                 f"got {self.finetune_steps!r}")
        for name, node in (self.baselines or {}).items():
            target = node.get("_target_") if isinstance(node, dict) else getattr(node, "_target_", None)
            if node is not None and not (isinstance(target, str) and target):
                fail(f"@baselines.{name} must be a baseline config with a _target_, got {node!r}")
