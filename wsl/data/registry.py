"""Datasets by name, as the `dataset=` config group selects them."""

from __future__ import annotations

from wsl.data.classification import ClassificationData, subsample_train
from wsl.data.digits_inr import digits_inr
from wsl.data.embedded import digits, mnist1d
from wsl.data.vision import cifar10, fashion_mnist, mnist
from wsl.errors import ConfigError

DATASETS = {"digits": digits, "mnist1d": mnist1d, "mnist": mnist, "fashion_mnist": fashion_mnist, "cifar10": cifar10}
# INR datasets: one regression target (an image) per net, inputs = the coordinate grid shared by all
INR_DATASETS = {"digits_inr": digits_inr}


def load_dataset(name: str, root: str | None = None, train_fraction: float = 1.0,
                 subset_seed: int = 0, split_seed: int = 0, val_fraction: float = 0.2,
                 test_fraction: float = 0.2) -> ClassificationData:
    """Build a ClassificationData by name. Unknown names raise ConfigError listing the valid ones."""
    if name in INR_DATASETS:
        raise ConfigError(f"name={name!r} is an INR dataset (one image per net); it is read by "
                          f"wsl.data.load_inr_dataset")
    if name not in DATASETS:
        raise ConfigError(f"name={name!r} is unknown; valid: {', '.join(sorted(DATASETS))}")
    data = DATASETS[name](root=root, split_seed=split_seed, val_fraction=val_fraction,
                          test_fraction=test_fraction)
    data.info.update(train_fraction=1.0, subset_seed=int(subset_seed), split_seed=int(split_seed))
    return subsample_train(data, train_fraction, subset_seed)


def load_inr_dataset(name: str, root: str | None = None, num_images: int | None = None,
                     per_class: int | None = None, subset_seed: int = 0, shared_init: bool = True):
    """Build an INRData by name (`dataset=digits_inr`). Unknown names raise ConfigError listing the valid ones."""
    if name not in INR_DATASETS:
        raise ConfigError(f"name={name!r} is not an INR dataset; valid: {', '.join(sorted(INR_DATASETS))}")
    return INR_DATASETS[name](root=root, num_images=num_images, per_class=per_class, seed=subset_seed,
                              shared_init=shared_init)
