"""Modular arithmetic (the grokking task of Power et al. 2022): every pair (a, b) with label a op b mod p.

x [N, 3] int64 tokens (a, b, "="), where the "=" token is the id p (so the vocabulary is 0..p, p + 1
tokens); y [N] int64 in 0..p-1 (p classes). A transformer (net=transformer) reads the label at the last
position. `op`: add, sub, mul, or div (a * b^-1 mod p, pairs with b = 0 left out: p (p - 1) of them).

Splits are fixed and recorded: all pairs are permuted with `split_seed`; the first `test_fraction` of them
are the test split, the next `val_fraction` the validation split, and the train split is the first
`train_fraction` of ALL pairs drawn from the rest with `subset_seed` (the grokking convention: train_fraction
is the fraction of the whole table trained on, the load axis of a phase diagram). A larger train_fraction
holds every pair of a smaller one (same seeds), and the held-out splits do not change with it.
"""

from __future__ import annotations

import numpy as np
import torch

from wsl.data.classification import ClassificationData
from wsl.errors import ConfigError

OPS = ("add", "sub", "mul", "div")
MAX_P = 1021  # p^2 pairs: a million at most (a table of the largest prime below 1024)


def is_prime(p: int) -> bool:
    return p >= 2 and all(p % d for d in range(2, int(p**0.5) + 1))


def modular_table(p: int, op: str) -> tuple[np.ndarray, np.ndarray]:
    """(pairs [N, 2], labels [N]) of every (a, b) in 0..p-1, row-major (a, then b); div drops b = 0."""
    a, b = (g.reshape(-1) for g in np.meshgrid(np.arange(p), np.arange(p), indexing="ij"))
    if op == "add":
        y = (a + b) % p
    elif op == "sub":
        y = (a - b) % p
    elif op == "mul":
        y = (a * b) % p
    elif op == "div":
        keep = b != 0
        a, b = a[keep], b[keep]
        inverse = np.array([0] + [pow(int(v), -1, p) for v in range(1, p)], dtype=np.int64)  # Fermat
        y = (a * inverse[b]) % p
    else:
        raise ConfigError(f"dataset.op={op!r} is not allowed; valid: {', '.join(OPS)}")
    return np.stack([a, b], 1).astype(np.int64), y.astype(np.int64)


def check_modular(p, op, train_fraction, val_fraction, test_fraction) -> None:
    """The values a modular table can be built from; one line naming the key otherwise."""
    if isinstance(p, bool) or not isinstance(p, int) or not 2 <= p <= MAX_P or not is_prime(p):
        raise ConfigError(f"dataset.p must be a prime in [2, {MAX_P}] (labels mod p; div needs inverses), got {p!r}")
    if op not in OPS:
        raise ConfigError(f"dataset.op={op!r} is not allowed; valid: {', '.join(OPS)}")
    for key, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            raise ConfigError(f"dataset.{key} must be a number in [0, 1), got {v!r}")
    if isinstance(train_fraction, bool) or not isinstance(train_fraction, (int, float)) or not 0 < train_fraction <= 1:
        raise ConfigError(f"dataset.train_fraction must be a number in (0, 1], got {train_fraction!r}")
    if train_fraction + val_fraction + test_fraction > 1.0 + 1e-9:
        raise ConfigError(f"dataset.train_fraction={train_fraction} + dataset.val_fraction={val_fraction} + "
                          f"dataset.test_fraction={test_fraction} exceeds 1 (fractions of all pairs)")


def modular(root=None, p: int = 97, op: str = "add", train_fraction: float = 0.5, split_seed: int = 0,
            val_fraction: float = 0.1, test_fraction: float = 0.3, subset_seed: int = 0) -> ClassificationData:
    """The table a op b mod p as a classification dataset of token triples (see the module doc); `root`
    is accepted for the common dataset interface and unused."""
    check_modular(p, op, train_fraction, val_fraction, test_fraction)
    pairs, labels = modular_table(p, op)
    n = len(labels)
    perm = np.random.default_rng(int(split_seed)).permutation(n)
    n_test, n_val = int(round(n * test_fraction)), int(round(n * val_fraction))
    n_train = int(round(n * train_fraction))
    if train_fraction + val_fraction + test_fraction >= 1.0 - 1e-9:  # every pair, whatever the rounding
        n_train = n - n_test - n_val
    if n_test < 1:
        raise ConfigError(f"dataset.test_fraction={test_fraction} leaves no test pair of the {n} (p={p})")
    if n_train < 1:
        raise ConfigError(f"dataset.train_fraction={train_fraction} leaves no train pair of the {n} (p={p})")
    te, va = perm[:n_test], perm[n_test:n_test + n_val]
    rest = perm[n_test + n_val:]
    tr = rest[np.random.default_rng(int(subset_seed)).permutation(len(rest))[:n_train]]
    n_train = len(tr)  # rounding may ask one more than is left

    def tokens(idx):
        x = np.concatenate([pairs[idx], np.full((len(idx), 1), p, dtype=np.int64)], 1)  # a, b, "="
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(labels[idx]))

    (xtr, ytr), (xva, yva), (xte, yte) = tokens(np.sort(tr)), tokens(np.sort(va)), tokens(np.sort(te))
    info = {"source": f"a {op} b mod {p}, every pair (a, b)" + (", b != 0" if op == "div" else ""), "p": p, "op": op,
            "tokens": f"a, b, '=' (id {p})", "train_fraction": float(train_fraction), "split_seed": int(split_seed),
            "subset_seed": int(subset_seed),
            "val_fraction": float(val_fraction), "test_fraction": float(test_fraction), "pairs": n,
            "n_train": int(n_train), "n_val": len(va), "n_test": len(te), "input_shape": [3], "vocab_size": p + 1}
    return ClassificationData("modular", xtr, ytr, xva, yva, xte, yte, p, info, vocab_size=p + 1, causal=False)
