"""Digits as implicit-neural-representation targets: each 8x8 image of scikit-learn's digits becomes a
coordinate -> intensity regression problem (the data an INR zoo is fitted to, one net per image).

coords [64, 2]: pixel centres on a regular grid in [-1, 1]^2, (row, column) order;
values [M, 64, 1]: intensities scaled from 0..16 to [-1, 1] (the range a SIREN's sine layers suit);
labels [M]: the digit each image shows (the class an INR classifier predicts from the weights).
Every image is its own target, so member k of an INR population fits image k (per-member targets,
unlike a classification zoo where every member sees the same data).

INRData speaks the population trainer's data interface (`split`, `x_train`, `input_shape`,
`num_classes`, `kind`): the inputs (the coordinate grid) are shared by every member, the targets
are `values`, one row per image; `wsl-zoo dataset=digits_inr net=siren` fits a SIREN to each row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from wsl.schema import positive

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
    shared_init: bool = True  # recipe: every image's net starts from one initialization (per seed replica)
    value_range: float = 2.0  # values span [-1, 1]: the peak of the PSNR
    vocab_size: ClassVar = None  # float inputs
    causal: ClassVar[bool] = False
    kind: ClassVar[str] = "inr"  # per-image targets, mean-squared-error fits (ClassificationData: "classification")

    @property
    def num_images(self) -> int:
        return self.values.shape[0]

    @property
    def input_shape(self) -> tuple:
        return tuple(self.coords.shape[1:])

    @property
    def num_classes(self) -> int:  # the net's number of outputs, the values' channels (as the zoo job passes it)
        return self.values.shape[-1]

    @property
    def x_train(self) -> torch.Tensor:
        return self.coords

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """("train"): (coords [P, 2], values [M, P, C]); an INR is fitted to all its pixels, so "val"
        and "test" are empty ([0, 2], [M, 0, C])."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; expected train, val or test")
        if name == "train":
            return self.coords, self.values
        return self.coords[:0], self.values[:, :0]

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for t in (self.coords, self.values, self.labels, self.image_index):
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()


def pixel_grid(side: int = SIDE) -> torch.Tensor:
    """[side*side, 2] pixel-centre coordinates in [-1, 1]^2, row-major like image.reshape(-1)."""
    ax = torch.linspace(-1.0, 1.0, side)
    rr, cc = torch.meshgrid(ax, ax, indexing="ij")
    return torch.stack([rr.reshape(-1), cc.reshape(-1)], dim=1)


def digits_inr(root=None, num_images: int | None = None, per_class: int | None = None, seed: int = 0,
               shared_init: bool = True) -> INRData:
    """The digits images as INR targets.

    num_images: a random subset of that many images (None: all 1,797); per_class: instead, that
    many images of every digit (a balanced subset). The subset is drawn with `seed` and recorded.
    shared_init: the fitting recipe's choice, carried with the data (see INRData.shared_init).
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    images, labels = d.images.astype(np.float32), d.target.astype(np.int64)
    n = len(labels)
    rng = np.random.default_rng(seed)
    if per_class is not None:
        positive("per_class", per_class)
        idx = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(10)]))
    elif num_images is not None:
        idx = np.sort(rng.permutation(n)[:positive("num_images", num_images)])
    else:
        idx = np.arange(n)
    vals = images[idx].reshape(len(idx), -1, 1) / MAX_INTENSITY * 2.0 - 1.0
    info = {"source": "sklearn.datasets.load_digits", "side": SIDE, "coords": "pixel centres in [-1,1]^2, row-major",
            "values": "intensity/16*2-1 in [-1,1]", "num_images": num_images, "per_class": per_class,
            "subset_seed": seed, "n_images": int(len(idx)), "shared_init": bool(shared_init)}
    return INRData("digits_inr", pixel_grid(SIDE), torch.from_numpy(np.ascontiguousarray(vals)),
                   torch.from_numpy(labels[idx]), torch.from_numpy(idx.astype(np.int64)), info, bool(shared_init))
