"""Which data samples a metric was computed on, stored so that anyone can recompute it.

A sample set is a sorted subset of one split, drawn by a seeded generator. It is stored in the
zoo as a bitmask over the split (base64): exact, and compact enough for an HDF5 attribute even
for splits of tens of thousands of samples (N/6 characters).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

import numpy as np
import torch

from wsl.data import ClassificationData


def encode_indices(indices: np.ndarray, n: int) -> str:
    mask = np.zeros(n, dtype=bool)
    mask[indices] = True
    return base64.b64encode(np.packbits(mask).tobytes()).decode("ascii")


def decode_indices(text: str, n: int) -> np.ndarray:
    """Inverse of encode_indices: the sorted sample indices."""
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n]
    return np.flatnonzero(bits).astype(np.int64)


@dataclass
class SampleSet:
    split: str
    n_split: int
    seed: int
    indices: np.ndarray  # [k] sorted
    data_fingerprint: str  # sha256 of the task data the indices refer to

    @property
    def key(self) -> str:
        """A short id of (data, split, indices): equal keys mean identical samples."""
        h = hashlib.sha256(f"{self.data_fingerprint}:{self.split}:{self.n_split}:".encode())
        h.update(self.indices.tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> str:
        """JSON stored as an attribute `samples:<key>` of the annotation group."""
        return json.dumps({"split": self.split, "n_split": self.n_split, "count": int(self.indices.size),
                           "seed": self.seed, "data_fingerprint": self.data_fingerprint,
                           "encoding": "bitmask over the split, numpy packbits (big-endian), base64",
                           "indices": encode_indices(self.indices, self.n_split)}, sort_keys=True)

    def tensors(self, data: ClassificationData) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = data.split(self.split)
        idx = torch.from_numpy(self.indices)
        return x[idx], y[idx]


def make_sample_set(data: ClassificationData, split: str, num_samples: int | None, seed: int,
                    fingerprint: str | None = None) -> SampleSet:
    """min(num_samples, n) samples of the split's n, drawn with `seed` (all of them when num_samples is None/0)."""
    n = data.split(split)[0].shape[0]
    k = n if not num_samples else min(int(num_samples), n)
    idx = np.arange(n) if k == n else np.sort(np.random.default_rng(int(seed)).choice(n, k, replace=False))
    return SampleSet(split, int(n), int(seed), idx.astype(np.int64), fingerprint or data.fingerprint())
