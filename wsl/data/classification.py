"""A classification dataset held in memory as tensors, with fixed and recorded splits."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np
import torch

from wsl.errors import ConfigError


@dataclass
class ClassificationData:
    """Train/val/test tensors of one classification dataset.

    x_*: [N, C, *spatial] float32 (C=1 for grey images and 1-D signals), or [N, T] int64 token ids
    (`vocab_size` set); y_*: [N] int64.
    `info` holds everything needed to rebuild the same splits (and is stored with every zoo).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    info: dict = field(default_factory=dict)
    vocab_size: int | None = None  # token inputs (x int64 ids < vocab_size, e.g. dataset=modular); None: float inputs
    causal: bool = False  # a label per position (next-token prediction) rather than one per sample
    kind: ClassVar[str] = "classification"  # shared data, cross-entropy (wsl.data.digits_inr.INRData: "inr")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; expected train, val or test")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def fingerprint(self) -> str:
        """sha256 over all split tensors: two zoos trained on the same data share it."""
        h = hashlib.sha256()
        for s in ("train", "val", "test"):
            for t in self.split(s):
                h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int):
    """Deterministic permutation split of range(n) into train/val/test index arrays."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    return perm[n_test + n_val :], perm[n_test : n_test + n_val], perm[:n_test]


def subsample_train(data: ClassificationData, fraction: float, seed: int) -> ClassificationData:
    """Keep a class-agnostic random `fraction` of the training split (the 'load' axis of a phase diagram)."""
    if not (0.0 < fraction <= 1.0):
        raise ConfigError(f"train_fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return data
    n = data.x_train.shape[0]
    k = max(1, int(round(n * fraction)))
    g = torch.Generator().manual_seed(int(seed))
    keep = torch.randperm(n, generator=g)[:k].sort().values
    info = dict(data.info, train_fraction=fraction, subset_seed=int(seed), n_train=k)
    return replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep], info=info)
