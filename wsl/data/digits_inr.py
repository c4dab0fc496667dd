"""Digits as implicit-neural-representation tasks: each 8x8 image of scikit-learn's digits becomes a
coordinate -> intensity regression problem (the data an INR zoo is fitted to, one net per image).

coords [64, 2]: pixel centres on a regular grid in [-1, 1]^2, (row, column) order;
values [M, 64, 1]: intensities scaled from 0..16 to [-1, 1] (the range a SIREN's sine layers suit);
labels [M]: the digit each image shows (the class an INR classifier predicts from the weights).
Every image is its own task, so member k of an INR population fits image k (per-member targets,
unlike a classification zoo where every member sees the same data).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from wsl.errors import ConfigError

SIDE = 8  # sklearn digits are 8x8
MAX_INTENSITY = 16.0


@dataclass
class INRData:
    name: str
    coords: torch.Tensor  # [P, 2] float32, P = pixels per image
    values: torch.Tensor  # [M, P, 1] float32 in [-1, 1]
    labels: torch.Tensor  # [M] int64, the digit
    image_index: torch.Tensor  # [M] int64, row of sklearn.datasets.load_digits()
    info: dict = field(default_factory=dict)

    @property
    def num_images(self) -> int:
        return self.values.shape[0]

    @property
    def input_shape(self) -> tuple:
        return tuple(self.coords.shape[1:])

    @property
    def out_channels(self) -> int:
        return self.values.shape[-1]


def pixel_grid(side: int = SIDE) -> torch.Tensor:
    """[side*side, 2] pixel-centre coordinates in [-1, 1]^2, row-major like image.reshape(-1)."""
    ax = torch.linspace(-1.0, 1.0, side)
    rr, cc = torch.meshgrid(ax, ax, indexing="ij")
    return torch.stack([rr.reshape(-1), cc.reshape(-1)], dim=1)


def digits_inr(root=None, num_images: int | None = None, per_class: int | None = None, seed: int = 0) -> INRData:
    """The digits images as INR tasks.

    num_images: a random subset of that many images (None: all 1,797); per_class: instead, that
    many images of every digit (a balanced subset). The subset is drawn with `seed` and recorded.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    images, labels = d.images.astype(np.float32), d.target.astype(np.int64)
    n = len(labels)
    rng = np.random.default_rng(seed)
    if num_images is not None and per_class is not None:
        raise ConfigError("dataset.num_images and dataset.per_class are alternatives; set one")
    if per_class is not None:
        if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
            raise ConfigError(f"dataset.per_class must be a positive integer, got {per_class!r}")
        idx = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(10)])
        idx.sort()
    elif num_images is not None:
        if isinstance(num_images, bool) or not isinstance(num_images, int) or not 1 <= num_images <= n:
            raise ConfigError(f"dataset.num_images must be an integer in [1, {n}], got {num_images!r}")
        idx = np.sort(rng.permutation(n)[:num_images])
    else:
        idx = np.arange(n)
    vals = images[idx].reshape(len(idx), -1, 1) / MAX_INTENSITY * 2.0 - 1.0
    info = {"source": "sklearn.datasets.load_digits", "side": SIDE, "coords": "pixel centres in [-1,1]^2, row-major",
            "values": "intensity/16*2-1 in [-1,1]", "num_images": num_images, "per_class": per_class,
            "seed": seed, "n_images": int(len(idx))}
    return INRData("digits_inr", pixel_grid(SIDE), torch.from_numpy(np.ascontiguousarray(vals)),
                   torch.from_numpy(labels[idx]), torch.from_numpy(idx.astype(np.int64)), info)
