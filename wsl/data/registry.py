"""Datasets by name, as the `dataset=` config group selects them."""

from __future__ import annotations

from wsl.data import embedded, vision
from wsl.data.task import TaskData, subsample_train
from wsl.errors import ConfigError

DATASETS = {
    "digits": embedded.digits,
    "mnist1d": embedded.mnist1d,
    "mnist": vision.mnist,
    "fashion_mnist": vision.fashion_mnist,
    "cifar10": vision.cifar10,
}


def load_dataset(name: str, root: str | None = None, train_fraction: float = 1.0,
                 subset_seed: int = 0, split_seed: int = 0, val_fraction: float = 0.2,
                 test_fraction: float = 0.2) -> TaskData:
    """Build a TaskData by name. Unknown names raise ConfigError listing the valid ones."""
    if name not in DATASETS:
        raise ConfigError(f"dataset.name={name!r} is unknown; valid: {', '.join(sorted(DATASETS))}")
    if not (0.0 <= val_fraction < 1.0 and 0.0 < test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
        raise ConfigError("dataset.val_fraction and dataset.test_fraction must be in [0, 1) and sum to < 1, "
                          f"got {val_fraction} and {test_fraction}")
    data = DATASETS[name](root=root, split_seed=split_seed, val_fraction=val_fraction,
                          test_fraction=test_fraction)
    data.info.update(train_fraction=1.0, subset_seed=int(subset_seed), split_seed=int(split_seed))
    return subsample_train(data, train_fraction, subset_seed)
