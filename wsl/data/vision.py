"""MNIST, Fashion-MNIST and CIFAR-10 from the official files the user already has. Never downloads.

The files are read by wsl.data.files with numpy (IDX files, the CIFAR-10 binary batches); torchvision is
not needed and never imported. `root` is torchvision's root (MNIST/raw/, FashionMNIST/raw/,
cifar-10-batches-bin/) or the directory holding the files themselves.
"""

from __future__ import annotations

import numpy as np
import torch

from wsl.data.files import NUM_CLASSES, read_cifar_dataset, read_idx_dataset
from wsl.data.classification import ClassificationData, split_indices

SOURCES = {"mnist": "MNIST IDX files", "fashion_mnist": "Fashion-MNIST IDX files",
           "cifar10": "CIFAR-10 binary version"}


def _splits(name, train, test, directory, root, split_seed, val_fraction) -> ClassificationData:
    """uint8 images [N, C, H, W] and labels [N] -> ClassificationData. The official test split stays the test split;
    val is carved out of train with the recorded split seed; per-channel standardization with the
    statistics of the train split alone."""
    (x_tr, y_tr), (x_te, y_te) = train, test
    if x_tr.ndim == 3:  # grey IDX images [N, H, W] -> [N, 1, H, W]
        x_tr, x_te = x_tr[:, None], x_te[:, None]
    tr, va, _ = split_indices(len(y_tr), val_fraction, 0.0, split_seed)
    x_fit = x_tr[tr].astype(np.float32) / 255.0
    mean = x_fit.mean(axis=(0, 2, 3), keepdims=True)  # [1, C, 1, 1]
    std = x_fit.std(axis=(0, 2, 3), keepdims=True) + 1e-6

    def norm(a):
        a = a if a.dtype == np.float32 else a.astype(np.float32) / 255.0
        return torch.from_numpy(np.ascontiguousarray((a - mean) / std, dtype=np.float32))

    def lab(a):
        return torch.from_numpy(np.asarray(a, dtype=np.int64))

    info = {"source": SOURCES[name], "root": str(root), "files": str(directory), "split_seed": split_seed,
            "val_fraction": val_fraction, "test_split": "official", "n_train": len(tr), "n_val": len(va),
            "n_test": len(y_te), "input_shape": list(x_tr.shape[1:])}
    return ClassificationData(name, norm(x_fit), lab(y_tr[tr]), norm(x_tr[va]), lab(y_tr[va]), norm(x_te), lab(y_te),
                    NUM_CLASSES, info)


def mnist(root=None, split_seed=0, val_fraction=0.1, test_fraction=None):
    """MNIST as [N, 1, 28, 28] from its four IDX files (raw or .gz)."""
    return _splits("mnist", *read_idx_dataset("mnist", root), root, split_seed, val_fraction)


def fashion_mnist(root=None, split_seed=0, val_fraction=0.1, test_fraction=None):
    """Fashion-MNIST as [N, 1, 28, 28] from its four IDX files (raw or .gz)."""
    return _splits("fashion_mnist", *read_idx_dataset("fashion_mnist", root), root, split_seed, val_fraction)


def cifar10(root=None, split_seed=0, val_fraction=0.1, test_fraction=None):
    """CIFAR-10 as [N, 3, 32, 32] from the binary version's six batches (the pickled version is refused)."""
    return _splits("cifar10", *read_cifar_dataset(root), root, split_seed, val_fraction)
