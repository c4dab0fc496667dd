"""Datasets by name, as the `dataset=` config group selects them."""

from __future__ import annotations

import inspect

from wsl.data.classification import ClassificationData, subsample_train
from wsl.data.convection import convection
from wsl.data.digits_inr import digits_inr
from wsl.data.embedded import digits, mnist1d
from wsl.data.modular import modular
from wsl.data.tasks import restrict_to_task
from wsl.data.text import text
from wsl.data.vision import cifar10, fashion_mnist, mnist
from wsl.errors import ConfigError

DATASETS = {"digits": digits, "mnist1d": mnist1d, "mnist": mnist, "fashion_mnist": fashion_mnist, "cifar10": cifar10}
# INR datasets: one regression target (an image) per net, inputs = the coordinate grid shared by all
INR_DATASETS = {"digits_inr": digits_inr}
# datasets with options of their own (one loader each, `dataset=<name>`): modular arithmetic (token triples,
# classification), character-level text (kind "lm"), the convection PDE (kind "pinn")
TASK_DATASETS = {"modular": modular, "text": text, "convection": convection}


def load_dataset(name: str, root: str | None = None, train_fraction: float = 1.0,
                 subset_seed: int = 0, split_seed: int = 0, val_fraction: float = 0.2,
                 test_fraction: float = 0.2, task: str | None = None) -> ClassificationData:
    """Build a ClassificationData by name. Unknown names raise ConfigError listing the valid ones.
    task: a class pair '<a>v<b>' (wsl.data.tasks): every split restricted to the two classes, labels 0/1."""
    if name in INR_DATASETS:
        raise ConfigError(f"name={name!r} is an INR dataset (one image per net); it is read by "
                          f"wsl.data.load_inr_dataset")
    if name in TASK_DATASETS:
        raise ConfigError(f"name={name!r} has options of its own; it is read by wsl.data.load_task_dataset")
    if name not in DATASETS:
        raise ConfigError(f"name={name!r} is unknown; valid: {', '.join(sorted(DATASETS))}")
    data = DATASETS[name](root=root, split_seed=split_seed, val_fraction=val_fraction,
                          test_fraction=test_fraction)
    data.info.update(train_fraction=1.0, subset_seed=int(subset_seed), split_seed=int(split_seed))
    return subsample_train(restrict_to_task(data, task), train_fraction, subset_seed)


def load_inr_dataset(name: str, root: str | None = None, num_images: int | None = None,
                     per_class: int | None = None, subset_seed: int = 0, shared_init: bool = True):
    """Build an INRData by name (`dataset=digits_inr`). Unknown names raise ConfigError listing the valid ones."""
    if name not in INR_DATASETS:
        raise ConfigError(f"name={name!r} is not an INR dataset; valid: {', '.join(sorted(INR_DATASETS))}")
    return INR_DATASETS[name](root=root, num_images=num_images, per_class=per_class, seed=subset_seed,
                              shared_init=shared_init)


def load_task_dataset(name: str, **options):
    """Build `dataset=modular|text|convection` by name with its own options (see each loader)."""
    if name not in TASK_DATASETS:
        raise ConfigError(f"name={name!r} is not one of {', '.join(sorted(TASK_DATASETS))}")
    return TASK_DATASETS[name](**options)


def rebuild_dataset(cfg: dict):
    """The data a stored dataset config (a zoo's record of `dataset:`) describes: the same loader with the
    recorded options (keys a loader does not take, such as `_target_`, are left out)."""
    name = cfg.get("name")
    if name in INR_DATASETS:
        load, fixed = load_inr_dataset, {"name": name}
        keys = ("root", "num_images", "per_class", "subset_seed", "shared_init")
    elif name in TASK_DATASETS:
        load, fixed = load_task_dataset, {"name": name}
        keys = tuple(inspect.signature(TASK_DATASETS[name]).parameters)
    else:
        load, fixed = load_dataset, {"name": name}
        keys = ("root", "train_fraction", "subset_seed", "split_seed", "val_fraction", "test_fraction", "task")
    return load(**fixed, **{k: cfg[k] for k in keys if k in cfg})
