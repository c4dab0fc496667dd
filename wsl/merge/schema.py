"""Schema of wsl-merge (conf/merge.yaml): a zoo of merged nets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from wsl import schema
from wsl.evaluate.schema import BatchNormConfig
from wsl.schema import MISSING, fail
from wsl.zoo.schema import ZooPath

METHODS = ("uniform", "greedy", "stock", "ties", "dare", "aligned")


@dataclass
class MergeOptions:
    """`merge:` how nets are grouped and the methods' settings."""

    by: str = "cell"  # cell: one merge per hyperparameter cell (seed replicas); all: one merge of the whole zoo
    base: Optional[str] = None  # "<zoo>:<model_id>[@epoch]": the pretrained net (stock, ties, dare); null: init_from
    epoch: int = -1  # checkpoint of each ingredient that is merged (-1: its last)
    min_members: int = 2  # groups with fewer nets are skipped (a merge of one net is that net)
    density: float = 0.2  # ties: fraction of each task vector's entries kept (largest magnitudes)
    drop: float = 0.5  # dare: drop rate p (kept entries rescaled by 1 / (1 - p))
    scale: float = 1.0  # ties, dare: scaling coefficient of the merged task vector
    seed: int = 0  # dare: the drop masks' seed; aligned: weight matching's visiting order
    max_iter: int = 100  # aligned: weight matching's coordinate-descent passes at most

    def __post_init__(self):
        schema.choice(self, "by", ("cell", "all"))
        schema.text(self, "base", null=True)
        schema.integer(self, "epoch", -1)
        schema.integer(self, "min_members", 2)
        schema.number(self, "density", 0.0, 1.0, lo_open=True)
        schema.number(self, "drop", 0.0, 1.0, hi_open=True)  # kept entries are rescaled by 1 / (1 - drop)
        schema.number(self, "scale", 0.0, lo_open=True)
        schema.integer(self, "seed", 0)
        schema.integer(self, "max_iter", 1)


@dataclass
class MergeConfig:
    """wsl-merge (conf/merge.yaml)."""

    zoo: ZooPath = field(default_factory=ZooPath)  # the zoo whose nets are merged (left untouched)
    method: str = MISSING  # uniform | greedy | stock | ties | dare | aligned
    out: str = MISSING  # the zoo of merged nets (a new directory)
    name: Optional[str] = None  # its zoo name; None: the directory name
    merge: MergeOptions = field(default_factory=MergeOptions)
    batchnorm: BatchNormConfig = field(default_factory=BatchNormConfig)  # statistics of merged BatchNorm nets
    chunk: int = 256  # nets per vmapped evaluation
    threads: Optional[int] = None  # torch intra-op threads; None: torch's default
    logger: Any = None

    def __post_init__(self):
        schema.choice(self, "method", METHODS)
        schema.text(self, "out")
        schema.text(self, "name", null=True)
        schema.integer(self, "chunk", 1)
        schema.integer(self, "threads", 1, null=True)
        if self.merge.base is not None and self.method not in ("stock", "ties", "dare"):
            fail(f"merge.base is used by method=stock|ties|dare only, not method={self.method}")
