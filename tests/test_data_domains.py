"""The datasets beyond images: modular arithmetic, character-level text, the convection PDE. Labels by
brute force, splits fixed and disjoint, deterministic fingerprints, bad values one line naming the key."""

import math

import numpy as np
import pytest
import torch

from wsl.data import load_dataset, load_task_dataset, rebuild_dataset
from wsl.errors import ConfigError


# ---- modular arithmetic ---------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_modular_labels_are_the_operation_mod_p(op):
    p = 11
    d = load_task_dataset("modular", p=p, op=op, train_fraction=0.5, val_fraction=0.2, test_fraction=0.3)
    x = torch.cat([d.x_train, d.x_val, d.x_test])
    y = torch.cat([d.y_train, d.y_val, d.y_test])
    assert x.dtype == torch.int64 and x.shape[1] == 3 and bool((x[:, 2] == p).all())  # "=" token is p
    for (a, b, _), label in zip(x.tolist(), y.tolist()):
        want = {"add": (a + b) % p, "sub": (a - b) % p, "mul": (a * b) % p,
                "div": next(c for c in range(p) if (c * b) % p == a) if b else None}[op]
        assert label == want
    pairs = {(a, b) for a, b, _ in x.tolist()}
    assert len(pairs) == len(x) == (p * (p - 1) if op == "div" else p * p)  # every pair once, splits disjoint
    assert d.vocab_size == p + 1 and d.num_classes == p and d.input_shape == (3,) and not d.causal
    assert d.kind == "classification"


def test_modular_splits_are_fixed_nested_and_held_out_never_moves():
    a = load_task_dataset("modular", p=13, train_fraction=0.3)
    b = load_task_dataset("modular", p=13, train_fraction=0.6)
    assert a.fingerprint() == load_task_dataset("modular", p=13, train_fraction=0.3).fingerprint()
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.x_val, b.x_val)
    assert len(a.x_train) == round(169 * 0.3) and len(b.x_train) == round(169 * 0.6)
    small, large = {tuple(r) for r in a.x_train.tolist()}, {tuple(r) for r in b.x_train.tolist()}
    assert small < large  # a larger fraction holds every pair of a smaller one
    c = load_task_dataset("modular", p=13, train_fraction=0.3, subset_seed=1)
    assert {tuple(r) for r in c.x_train.tolist()} != small and torch.equal(c.x_test, a.x_test)
    assert not torch.equal(load_task_dataset("modular", p=13, split_seed=1).x_test, a.x_test)


@pytest.mark.parametrize("kwargs,match", [
    (dict(p=12), "dataset.p must be a prime"), (dict(p=1), "dataset.p"), (dict(op="pow"), "dataset.op='pow'"),
    (dict(train_fraction=0.7), "dataset.train_fraction=0.7 \\+ dataset.val_fraction=0.1 \\+ dataset.test_fraction=0.3"),
])
def test_modular_refuses_bad_values_naming_the_key(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        load_task_dataset("modular", **kwargs)


# ---- text -----------------------------------------------------------------------------------------
def test_text_windows_are_next_characters_in_contiguous_blocks():
    d = load_task_dataset("text", context=32)
    from pydoc_data.topics import topics

    corpus = "\n".join(topics[k] for k in sorted(topics))
    assert d.vocab == "".join(sorted(set(corpus))) and d.vocab_size == len(d.vocab) == d.num_classes
    assert d.kind == "lm" and d.causal and d.input_shape == (32,)
    b = d.info["blocks"]
    assert b["train"][0] == 0 and b["train"][1] == b["val"][0] and b["val"][1] == b["test"][0] == \
        len(corpus) - round(len(corpus) * 0.1) and b["test"][1] == len(corpus)
    for split in ("train", "val", "test"):
        x, y = d.split(split)
        start = b[split][0]
        assert x.dtype == torch.int64 and x.shape[1] == 32 and x.shape[0] == (b[split][1] - start - 1) // 32
        for i in (0, x.shape[0] - 1):  # windows are non-overlapping slices of the block, y one character later
            s = start + 32 * i
            assert d.decode(x[i]) == corpus[s:s + 32] and d.decode(y[i]) == corpus[s + 1:s + 33]
            assert s + 33 <= b[split][1]  # never reads into the next block
    assert d.fingerprint() == load_task_dataset("text", context=32).fingerprint()


def test_text_reads_any_utf8_file_and_train_fraction_subsamples_windows(tmp_path):
    f = tmp_path / "poem.txt"
    f.write_text("ünïcödé and plain text, repeated. " * 40, encoding="utf-8")
    d = load_task_dataset("text", path=str(f), context=8)
    assert "ü" in d.vocab and d.info["source"] == str(f.resolve())
    h = load_task_dataset("text", path=str(f), context=8, train_fraction=0.5, subset_seed=2)
    assert len(h.x_train) == round(len(d.x_train) * 0.5) and torch.equal(h.x_test, d.x_test)
    rows = {r.numpy().tobytes() for r in d.x_train}
    assert all(r.numpy().tobytes() in rows for r in h.x_train)
    g = tmp_path / "other.txt"
    g.write_text("ÜNÏCÖDÉ AND PLAIN TEXT, REPEATED. " * 40, encoding="utf-8")  # same ids, other characters
    assert load_task_dataset("text", path=str(g), context=8).fingerprint() != d.fingerprint()


def test_text_refuses_non_utf8_files_and_too_long_contexts_in_one_line(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    with pytest.raises(ConfigError, match=f"dataset.path={bad} is not UTF-8 text \\(byte 3") as e:
        load_task_dataset("text", path=str(bad))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="dataset.path=.*no such file"):
        load_task_dataset("text", path=str(tmp_path / "missing.txt"))
    short = tmp_path / "short.txt"
    short.write_text("x" * 100, encoding="utf-8")
    with pytest.raises(ConfigError, match="dataset.context=20 is longer than the corpus allows: the val block of "
                                          ".*short.txt has 10 characters"):
        load_task_dataset("text", path=str(short), context=20)


# ---- convection -----------------------------------------------------------------------------------
def test_convection_points_are_seeded_in_the_domain_and_the_test_grid_is_regular():
    d = load_task_dataset("convection", beta=10.0, collocation=200, initial=20, boundary=30, test_nx=16, test_nt=5)
    assert d.kind == "pinn" and d.input_shape == (2,) and d.num_classes == 1 and d.vocab_size is None
    for s in ("train", "val"):
        x, u = d.split(s)
        assert x.shape == (200, 2) and u.shape == (200, 1)
        assert float(x[:, 0].min()) >= 0 and float(x[:, 0].max()) < 2 * math.pi
        assert float(x[:, 1].min()) >= 0 and float(x[:, 1].max()) <= 1
        torch.testing.assert_close(u, torch.sin(x[:, :1] - 10.0 * x[:, 1:]))
        assert d.initial(s)[0].shape == (20, 2) and bool((d.initial(s)[0][:, 1] == 0).all())
        left, right = d.boundary(s)
        assert left.shape == (30, 2) and bool((left[:, 0] == 0).all())
        assert torch.allclose(right[:, 0], torch.tensor(2 * math.pi))
    assert not torch.equal(d.split("train")[0], d.split("val")[0])
    xt = d.split("test")[0]
    assert xt.shape == (80, 2) and sorted(set(xt[:, 1].tolist()))[-1] == 1.0 and float(xt[:, 0].max()) < 2 * math.pi
    again = load_task_dataset("convection", beta=10.0, collocation=200, initial=20, boundary=30, test_nx=16, test_nt=5)
    assert again.fingerprint() == d.fingerprint()
    other = load_task_dataset("convection", beta=10.0, collocation=200, initial=20, boundary=30, test_nx=16,
                              test_nt=5, subset_seed=1)
    assert other.fingerprint() != d.fingerprint()
    assert load_task_dataset("convection", beta=11.0, collocation=200, initial=20, boundary=30, test_nx=16,
                             test_nt=5).fingerprint() != d.fingerprint()  # same points, another problem


@pytest.mark.parametrize("kwargs,match", [(dict(beta=-1.0), "dataset.beta must be a number in \\[0, 100\\]"),
                                          (dict(beta=float("nan")), "dataset.beta"), (dict(beta=1e3), "dataset.beta"),
                                          (dict(collocation=0), "dataset.collocation")])
def test_convection_refuses_bad_values_naming_the_key(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        load_task_dataset("convection", **kwargs)


# ---- schemas and rebuilding -------------------------------------------------------------------------
def test_schemas_know_the_shapes_and_rebuild_gives_the_same_data(tmp_path):
    """A zoo records the dataset config: rebuild_dataset must give the very data (same fingerprint)."""
    from dataclasses import asdict

    from wsl.data.schema import ConvectionDatasetConfig, ModularDatasetConfig, TextDatasetConfig

    for node in (ModularDatasetConfig(p=7, op="mul", train_fraction=0.4), TextDatasetConfig(context=16, max_chars=5000),
                 ConvectionDatasetConfig(beta=5.0, collocation=50, test_nx=8, test_nt=4)):
        d = node.load()
        assert (tuple(d.input_shape), d.num_classes) == tuple(node.shape())
        assert (node.vocab_size, node.causal) == (d.vocab_size, d.causal)
        assert d.kind == node.kind
        assert rebuild_dataset(asdict(node)).fingerprint() == d.fingerprint()
    with pytest.raises(ConfigError, match="load_task_dataset"):
        load_dataset("modular")
    from wsl.schema import FieldError

    with pytest.raises(FieldError, match="@p=9 is not a prime"):
        ModularDatasetConfig(p=9)
    with pytest.raises(FieldError, match="@name='modular' is the modular-arithmetic dataset: choose it with "
                                         "dataset=modular"):
        from wsl.data.schema import ClassificationDatasetConfig

        ClassificationDatasetConfig(name="modular")
    np.testing.assert_equal(TextDatasetConfig(context=8).shape()[1], load_task_dataset("text", context=8).vocab_size)
