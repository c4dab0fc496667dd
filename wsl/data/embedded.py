"""Datasets that need no network: scikit-learn's bundled digits and locally generated MNIST-1D."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from wsl.data.classification import ClassificationData, split_indices


def _standardize(x_train, *others):
    """Per-feature standardization with train statistics (so val/test never leak into them)."""
    mean = x_train.mean(axis=0, keepdims=True)
    std = x_train.std(axis=0, keepdims=True) + 1e-6
    return [(a - mean) / std for a in (x_train, *others)]


def _build(name, x, y, tr, va, te, shape, num_classes, info) -> ClassificationData:
    xs = _standardize(x[tr], x[va], x[te])
    xs = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).reshape(-1, *shape) for a in xs]
    ys = [torch.from_numpy(y[i].astype(np.int64)) for i in (tr, va, te)]
    info = dict(info, n_train=len(tr), n_val=len(va), n_test=len(te), input_shape=list(shape))
    return ClassificationData(name, xs[0], ys[0], xs[1], ys[1], xs[2], ys[2], num_classes, info)


def digits(root=None, split_seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2) -> ClassificationData:
    """scikit-learn's 1,797 8×8 handwritten digits, as [N, 1, 8, 8]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = d.data.astype(np.float32), d.target
    tr, va, te = split_indices(len(y), val_fraction, test_fraction, split_seed)
    info = {"source": "sklearn.datasets.load_digits", "split_seed": split_seed,
            "val_fraction": val_fraction, "test_fraction": test_fraction}
    return _build("digits", x, y, tr, va, te, (1, 8, 8), 10, info)


def _mnist1d_arrays(seed: int, num_samples: int):
    """Generate MNIST-1D with the package's own generator (never its downloader); cache as .npz."""
    path = Path(os.environ.get("WSL_CACHE", Path.home() / ".cache" / "wsl")) / f"mnist1d_seed{seed}_n{num_samples}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                return f["x"], f["y"]
        except Exception:  # a torn cache file is regenerated, never trusted
            path.unlink(missing_ok=True)
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    state = np.random.get_state()  # make_dataset reseeds numpy's global generator
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(state)
    x = np.concatenate([d["x"], d["x_test"]]).astype(np.float32)
    y = np.concatenate([d["y"], d["y_test"]]).astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, x=x, y=y)
    os.replace(tmp, path)
    return x, y


def mnist1d(root=None, split_seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2,
            generator_seed: int = 42, num_samples: int = 5000) -> ClassificationData:
    """MNIST-1D (Greydanus 2020) generated locally: 40-sample 1-D signals, 10 classes, as [N, 1, 40]."""
    x, y = _mnist1d_arrays(generator_seed, num_samples)
    tr, va, te = split_indices(len(y), val_fraction, test_fraction, split_seed)
    info = {"source": "mnist1d.data.make_dataset", "generator_seed": generator_seed,
            "num_samples": num_samples, "split_seed": split_seed,
            "val_fraction": val_fraction, "test_fraction": test_fraction}
    return _build("mnist1d", x, y, tr, va, te, (1, x.shape[1]), 10, info)
