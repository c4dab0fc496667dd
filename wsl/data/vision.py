"""torchvision datasets for users who have the files on disk. Never downloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from wsl.data.task import TaskData, split_indices
from wsl.errors import DatasetError


def _torchvision_arrays(cls_name: str, root):
    if root is None:
        raise DatasetError(f"dataset {cls_name} needs dataset.root=<directory holding the torchvision files>")
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"dataset.root={root} does not exist (dataset {cls_name} is read from disk, never downloaded)")
    try:
        import torchvision
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DatasetError(f"dataset {cls_name} needs torchvision: pip install 'wsl[vision]'") from e
    cls = getattr(torchvision.datasets, cls_name)
    out = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=False)
        except RuntimeError as e:
            raise DatasetError(f"dataset {cls_name}: files not found under {root} ({e})") from e
        x = np.asarray(ds.data)
        y = np.asarray(ds.targets)
        out.append((x, y))
    return out


def _from_torchvision(name, cls_name, root, split_seed, val_fraction, test_fraction, channels_last):
    (x_tr, y_tr), (x_te, y_te) = _torchvision_arrays(cls_name, root)
    x_tr = x_tr.astype(np.float32) / 255.0
    x_te = x_te.astype(np.float32) / 255.0
    if channels_last:  # CIFAR stores [N, H, W, C]
        x_tr, x_te = x_tr.transpose(0, 3, 1, 2), x_te.transpose(0, 3, 1, 2)
    else:
        x_tr, x_te = x_tr[:, None], x_te[:, None]
    # the official test split stays the test split; val is carved out of train with a recorded seed
    n = len(y_tr)
    tr, va, _ = split_indices(n, val_fraction, 0.0, split_seed)
    mean = x_tr[tr].mean(axis=(0, 2, 3), keepdims=True)
    std = x_tr[tr].std(axis=(0, 2, 3), keepdims=True) + 1e-6
    norm = lambda a: torch.from_numpy(np.ascontiguousarray((a - mean) / std, dtype=np.float32))
    lab = lambda a: torch.from_numpy(np.asarray(a, dtype=np.int64))
    info = {"source": f"torchvision.datasets.{cls_name}", "root": str(root), "split_seed": split_seed,
            "val_fraction": val_fraction, "test_split": "official", "n_train": len(tr), "n_val": len(va),
            "n_test": len(y_te), "input_shape": list(x_tr.shape[1:])}
    return TaskData(name, norm(x_tr[tr]), lab(y_tr[tr]), norm(x_tr[va]), lab(y_tr[va]),
                    norm(x_te), lab(y_te), 10, info)


def mnist(root=None, split_seed=0, val_fraction=0.1, test_fraction=None):
    return _from_torchvision("mnist", "MNIST", root, split_seed, val_fraction, test_fraction, False)


def fashion_mnist(root=None, split_seed=0, val_fraction=0.1, test_fraction=None):
    return _from_torchvision("fashion_mnist", "FashionMNIST", root, split_seed, val_fraction, test_fraction, False)


def cifar10(root=None, split_seed=0, val_fraction=0.1, test_fraction=None):
    return _from_torchvision("cifar10", "CIFAR10", root, split_seed, val_fraction, test_fraction, True)
