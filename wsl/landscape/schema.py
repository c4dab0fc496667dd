"""Schemas of the `landscape` config group (conf/landscape/*.yaml) and of the wsl-landscape and wsl-plot apps.

Every metric has its settings dataclass; its values are stored with the metric's values in the zoo
(`dataclasses.asdict`: the same dict a rerun compares).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from wsl import schema
from wsl.schema import fail, is_int
from wsl.zoo.schema import ZooPath

SPLITS = ("train", "val", "test")
EIG_METHODS = ("lanczos", "power")
TRACE_METHODS = ("auto", "exact", "hutchinson")
REPRESENTATIONS = ("logits", "features")
CONV_CONVENTIONS = ("slices", "unfold")  # how spectra read a conv kernel as matrices (spectra.layer_matrices)
PLOT_FORMATS = ("png", "pdf", "svg")


def _integers(obj, **lows) -> None:
    """Each obj.<name> is an integer >= lows[name]."""
    for k, lo in lows.items():
        schema.integer(obj, k, lo)


def _sampling(obj) -> None:
    """The data sample every metric that reads data draws (defaults: `landscape.num_samples`, `.sample_seed`)."""
    schema.integer(obj, "num_samples", 1, null=True)
    schema.integer(obj, "sample_seed", 0)


@dataclass
class PhaseThresholds:
    """Thresholds of the phase taxonomy's labelling rule (wsl.landscape.phases)."""

    loss: float = 0.1  # train loss above this is "high"
    mc_tolerance: float = 0.05  # |mc| <= this is "≈ 0"
    cka: float = 0.9  # CKA at or above this is "large"

    def __post_init__(self):
        for k in ("loss", "mc_tolerance", "cka"):
            schema.number(self, k, 0.0)


@dataclass
class _CurvatureSettings:
    """What the Hessian metrics share."""

    splits: list[str] = field(default_factory=lambda: ["train"])
    num_samples: Optional[int] = 2048
    sample_seed: int = 0
    seed: int = 0
    batch_size: int = 256
    retain_graphs: bool = True

    def __post_init__(self):
        v = self.splits
        if not isinstance(v, (list, tuple)) or not v or any(x not in SPLITS for x in v) or len(set(v)) != len(v):
            fail(f"@splits must be a non-empty list of distinct splits from {', '.join(SPLITS)}, got {v!r}")
        _sampling(self)
        _integers(self, seed=0, batch_size=1)


@dataclass
class HessianEigSettings(_CurvatureSettings):
    method: str = "lanczos"
    max_iters: int = 100
    tol: float = 1e-3

    def __post_init__(self):
        super().__post_init__()
        schema.choice(self, "method", EIG_METHODS)
        schema.integer(self, "max_iters", 1)
        schema.number(self, "tol", 0.0)


@dataclass
class HessianTraceSettings(_CurvatureSettings):
    method: str = "auto"
    samples: int = 100
    min_samples: int = 10
    rel_stderr: float = 0.05
    deflation: int = 10

    def __post_init__(self):
        super().__post_init__()
        schema.choice(self, "method", TRACE_METHODS)
        _integers(self, samples=1, min_samples=2, deflation=0)
        schema.number(self, "rel_stderr", 0.0)


def _pairs(obj, **integers) -> None:
    """What the metrics on pairs of seed replicas share, and their own `integers` (as _integers)."""
    schema.choice(obj, "split", SPLITS)
    _sampling(obj)
    _integers(obj, max_pairs=0, batch_size=1, **integers)


@dataclass
class BarrierSettings:
    split: str = "train"
    num_samples: Optional[int] = 2048
    sample_seed: int = 0
    points: int = 11
    max_pairs: int = 3
    batch_size: int = 4096

    def __post_init__(self):
        _pairs(self, points=2)


@dataclass
class ModeConnectivitySettings:
    split: str = "train"
    num_samples: Optional[int] = 2048
    sample_seed: int = 0
    steps: int = 200
    lr: float = 0.01
    batch_size: int = 128
    points: int = 21
    max_pairs: int = 3
    seed: int = 0
    eval_batch_size: int = 4096

    def __post_init__(self):
        _pairs(self, steps=0, points=3, seed=0, eval_batch_size=1)
        schema.number(self, "lr", 0.0, lo_open=True)


@dataclass
class CKASettings:
    split: str = "test"
    num_samples: Optional[int] = 2048
    sample_seed: int = 0
    representation: str = "logits"
    max_pairs: int = 10
    batch_size: int = 4096

    def __post_init__(self):
        _pairs(self)
        schema.choice(self, "representation", REPRESENTATIONS)


@dataclass
class SpectraSettings:
    min_evals: int = 10
    min_tail: int = 5
    farms: bool = False
    aspect_ratio: float = 1.0
    max_blocks: int = 64
    max_candidates: int = 1000
    conv: str = "slices"

    def __post_init__(self):
        _integers(self, min_evals=2, min_tail=2, max_blocks=1, max_candidates=2)
        schema.choice(self, "conv", CONV_CONVENTIONS)
        schema.number(self, "aspect_ratio", 0.0, lo_open=True)


def group_name(metric: str, epoch: int) -> str:
    """Annotation group of a metric at an epoch: '<metric>' at the final checkpoint, else '<metric>_epoch<E>'."""
    return metric if epoch == -1 else f"{metric}_epoch{epoch}"


# metric name -> its settings (the order of `valid:` in messages and of wsl.landscape.metrics.METRICS)
SETTINGS = {"hessian_eig": HessianEigSettings, "hessian_trace": HessianTraceSettings, "barrier": BarrierSettings,
            "mode_connectivity": ModeConnectivitySettings, "cka": CKASettings, "spectra": SpectraSettings}


@dataclass
class LandscapeConfig:
    """The `landscape:` node (conf/landscape/*.yaml; also read by wsl-zoo): which metrics, at which
    checkpoints, with which settings. The defaults are basic.yaml's settings with no metrics (none.yaml)."""

    metrics: list[str] = field(default_factory=list)
    epoch: Any = -1  # -1 (each model's final checkpoint), an epoch >= 0, or a list of such
    chunk_size: int = 64
    device: str = "cpu"  # where the metrics compute; the values stored do not depend on it (float tolerance)
    num_samples: Optional[int] = 2048
    sample_seed: int = 0
    phase: Optional[PhaseThresholds] = field(default_factory=PhaseThresholds)  # None: no phase labels
    hessian_eig: HessianEigSettings = field(default_factory=HessianEigSettings)
    hessian_trace: HessianTraceSettings = field(default_factory=HessianTraceSettings)
    barrier: BarrierSettings = field(default_factory=BarrierSettings)
    mode_connectivity: ModeConnectivitySettings = field(default_factory=ModeConnectivitySettings)
    cka: CKASettings = field(default_factory=CKASettings)
    spectra: SpectraSettings = field(default_factory=SpectraSettings)

    def __post_init__(self):
        schema.names(self, "metrics")
        unknown = [n for n in self.metrics if n not in SETTINGS]
        if unknown:
            fail(f"@metrics: unknown metric(s) {', '.join(map(repr, unknown))}; valid: {', '.join(SETTINGS)}")
        dups = sorted({n for n in self.metrics if list(self.metrics).count(n) > 1})
        if dups:
            fail(f"@metrics lists {', '.join(dups)} more than once")
        if len(set(self.epochs)) != len(self.epochs) or not self.epochs or \
                not all(is_int(e) and e >= -1 for e in self.epochs):
            fail(f"@epoch must be -1 (each model's final checkpoint), an epoch >= 0, or a list of distinct such "
                 f"values, got {self.epoch!r}")
        schema.integer(self, "chunk_size", 1)
        _sampling(self)
        from wsl.trainer import check_device

        check_device(self, "device")

    @property
    def epochs(self) -> list:
        """The checkpoint epochs to analyze, in order (-1: each model's final one)."""
        return list(self.epoch) if isinstance(self.epoch, (list, tuple)) else [self.epoch]


@dataclass
class LandscapeApp:
    """wsl-landscape (conf/landscape.yaml)."""

    zoo: ZooPath = field(default_factory=ZooPath)
    model_ids: Optional[list[str]] = None  # null: every model
    landscape: LandscapeConfig = field(default_factory=LandscapeConfig)
    logger: Any = None

    def __post_init__(self):
        schema.names(self, "model_ids", null=True, empty=False)


@dataclass
class PlotOptions:
    """The `plot:` node of wsl-plot."""

    x: Optional[str] = None  # swept hyperparameter on the x axis (None: a load axis such as width)
    y: Optional[str] = None
    metrics: Optional[list[str]] = None  # table columns to draw (None: every metric present)
    out_dir: Optional[str] = None  # None: <zoo>/plots
    format: str = "png"
    dpi: int = 120

    def __post_init__(self):
        for k in ("x", "y", "out_dir"):
            schema.text(self, k, null=True)
        schema.names(self, "metrics", null=True, empty=False)
        schema.choice(self, "format", PLOT_FORMATS)
        schema.integer(self, "dpi", 10, 2400)


@dataclass
class PlotApp:
    """wsl-plot (conf/plot.yaml)."""

    zoo: ZooPath = field(default_factory=ZooPath)
    plot: PlotOptions = field(default_factory=PlotOptions)
    phase: PhaseThresholds = field(default_factory=PhaseThresholds)
    logger: Any = None
