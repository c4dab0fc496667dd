"""Schema of wsl-align (conf/align.yaml): a canonicalized copy of a zoo."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from wsl import schema
from wsl.schema import fail
from wsl.zoo.schema import ZooPath


@dataclass
class MatchingConfig:
    """`matching:` weight matching (coordinate descent) of every net to its reference."""

    max_iter: int = 100  # coordinate-descent passes at most
    seed: int = 0  # order in which permutations are visited
    restarts: int = 1  # descents: the first from the identity, each further one from random permutations

    def __post_init__(self):
        for name, lo in (("max_iter", 1), ("seed", 0), ("restarts", 1)):
            schema.integer(self, name, lo)


@dataclass
class BarrierConfig:
    """`barrier:` the linear loss (and accuracy) barrier to the reference, before and after alignment."""

    split: str = "train"  # data of the loss along the straight line
    samples: Optional[int] = 2000  # first N examples of that split (splits are already shuffled); None: all
    points: int = 11  # interpolation points, both ends included
    chunk: int = 64  # model pairs per vmapped evaluation
    batch_size: Optional[int] = 1000  # examples per forward pass of the evaluation (no effect on the result); None: all
    bn_reset: bool = True  # BatchNorm nets: recompute running statistics on train inputs at every point
    bn_samples: Optional[int] = 2000  # first N train examples for the reset; None: the whole train split
    bn_batch_size: Optional[int] = 500  # train examples per forward pass of the reset; None: all at once

    def __post_init__(self):
        schema.choice(self, "split", ("train", "val", "test"))
        for name, lo, null in (("samples", 1, True), ("points", 2, False), ("chunk", 1, False),
                               ("batch_size", 1, True), ("bn_samples", 2, True), ("bn_batch_size", 2, True)):
            schema.integer(self, name, lo, null=null)


@dataclass
class AlignConfig:
    """wsl-align (conf/align.yaml)."""

    zoo: ZooPath = field(default_factory=ZooPath)  # the zoo to canonicalize (left untouched)
    out: Optional[str] = None  # directory of the copy; None: <zoo.path>-aligned
    name: Optional[str] = None  # zoo name of the copy; None: <source name>-aligned
    reference: str = "cell"  # cell: first model of each hyperparameter cell; global: one per architecture
    reference_id: Optional[str] = None  # with reference=global: the reference of every model
    epoch: int = -1  # checkpoint whose weights are matched (-1: each model's last)
    epochs: str = "all"  # all: every checkpoint, permuted like the matched one; matched: only that one
    annotations: str = "copy"  # copy | drop the source's annotation groups
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    barrier: BarrierConfig = field(default_factory=BarrierConfig)
    logger: Any = None

    def __post_init__(self):
        for name in ("out", "name", "reference_id"):
            schema.text(self, name, null=True)
        for name, allowed in (("reference", ("cell", "global")), ("epochs", ("all", "matched")),
                              ("annotations", ("copy", "drop"))):
            schema.choice(self, name, allowed)
        schema.integer(self, "epoch", -1)
        if self.reference_id is not None and self.reference != "global":
            fail("@reference_id is only used with reference=global")
