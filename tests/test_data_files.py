"""MNIST / Fashion-MNIST IDX files and the CIFAR-10 binary batches, read with numpy (no torchvision).

The tests write small files in the exact official formats (a big-endian IDX header + bytes; CIFAR records
of 1 label byte + 3072 CHW pixel bytes) and read them back through the loaders and the real wsl-zoo."""

from __future__ import annotations

import gzip
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wsl.data import load_dataset
from wsl.data.files import CIFAR_BINARY_URL, CIFAR_FILES, read_cifar_dataset, read_idx_dataset
from wsl.data.classification import split_indices
from wsl.errors import DatasetError

ROOT = Path(__file__).resolve().parent.parent
N_TRAIN, N_TEST = 40, 20  # per split, per file pair (CIFAR: per batch)


# ---- writers of the official formats -----------------------------------------------------------------

def write_idx(path: Path, a: np.ndarray, gz: bool = False, magic: int | None = None) -> Path:
    """An IDX file of unsigned bytes: magic 0x0000080<ndim>, one big-endian int32 per dim, the bytes."""
    a = np.asarray(a, dtype=np.uint8)
    head = (0x0800 | a.ndim if magic is None else magic).to_bytes(4, "big")
    head += np.asarray(a.shape, dtype=">i4").tobytes()
    path = path.with_name(path.name + ".gz") if gz else path
    path.parent.mkdir(parents=True, exist_ok=True)
    return put(path, head + a.tobytes(), gz)


def put(path: Path, data: bytes, gz: bool) -> Path:
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(data)
    return path


def make_idx(directory: Path, seed: int, gz: bool = False) -> dict:
    """The four MNIST-format files in `directory`; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {"train": (rng.integers(0, 256, (N_TRAIN, 28, 28)), rng.integers(0, 10, N_TRAIN)),
              "t10k": (rng.integers(0, 256, (N_TEST, 28, 28)), rng.integers(0, 10, N_TEST))}
    for split, (x, y) in arrays.items():
        write_idx(directory / f"{split}-images-idx3-ubyte", x, gz)
        write_idx(directory / f"{split}-labels-idx1-ubyte", y, gz)
    return arrays


def write_cifar(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """A CIFAR-10 binary batch: per image 1 label byte, then 1024 red, 1024 green, 1024 blue bytes."""
    rec = np.concatenate([np.asarray(y, np.uint8)[:, None], np.asarray(x, np.uint8).reshape(len(y), -1)], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(rec.tobytes())
    return path


def make_cifar(directory: Path, seed: int, n: int = 8) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for name in CIFAR_FILES:
        x, y = rng.integers(0, 256, (n, 3, 32, 32)), rng.integers(0, 10, n)
        write_cifar(directory / name, x, y)
        out[name] = (x, y)
    return out


# ---- loaders: exact round trip -----------------------------------------------------------------------

def _round_trip(data, pixels_train, labels_train, pixels_test, labels_test, seed=0, val_fraction=0.2):
    """The loaded splits are the written pixels and labels: train/val carved from the train files with
    the split seed, the official test split as test, standardized by train-split statistics."""
    tr, va, _ = split_indices(len(labels_train), val_fraction, 0.0, seed)
    px_tr = pixels_train[tr].astype(np.float32) / 255.0
    mean = px_tr.mean(axis=(0, 2, 3), keepdims=True)
    std = px_tr.std(axis=(0, 2, 3), keepdims=True) + 1e-6
    back = lambda x: np.rint((x.numpy() * std + mean) * 255.0).astype(np.int64)
    assert np.array_equal(back(data.x_train), pixels_train[tr])
    assert np.array_equal(back(data.x_val), pixels_train[va])
    assert np.array_equal(back(data.x_test), pixels_test)
    assert torch.equal(data.y_train, torch.from_numpy(labels_train[tr]))
    assert torch.equal(data.y_val, torch.from_numpy(labels_train[va]))
    assert torch.equal(data.y_test, torch.from_numpy(labels_test))
    assert abs(float(data.x_train.mean())) < 1e-4 and data.x_train.dtype == torch.float32


@pytest.mark.parametrize("name,layout,gz", [("mnist", "torchvision", False), ("mnist", "flat", True),
                                            ("fashion_mnist", "torchvision", True), ("fashion_mnist", "flat", False)])
def test_idx_files_round_trip_exactly(tmp_path, monkeypatch, name, layout, gz):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # `import torchvision` would raise
    sub = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}[name]
    directory = tmp_path / sub / "raw" if layout == "torchvision" else tmp_path / "files"
    arrays = make_idx(directory, seed=1, gz=gz)
    root = tmp_path if layout == "torchvision" else directory
    (x_tr, y_tr), (x_te, y_te) = arrays["train"], arrays["t10k"]

    (rx_tr, ry_tr), (rx_te, ry_te), found = read_idx_dataset(name, root)
    assert found == directory and rx_tr.dtype == np.uint8 and rx_tr.shape == (N_TRAIN, 28, 28)
    assert np.array_equal(rx_tr, x_tr) and np.array_equal(ry_tr, y_tr)
    assert np.array_equal(rx_te, x_te) and np.array_equal(ry_te, y_te)

    data = load_dataset(name, root=str(root), split_seed=3)
    assert data.input_shape == (1, 28, 28) and data.x_test.shape == (N_TEST, 1, 28, 28) and data.num_classes == 10
    assert data.x_train.shape[0] + data.x_val.shape[0] == N_TRAIN and data.info["test_split"] == "official"
    _round_trip(data, x_tr[:, None], y_tr, x_te[:, None], y_te, seed=3)
    assert "torchvision" not in data.info["source"]


def test_raw_file_is_preferred_to_its_gz_and_files_in_root_are_found(tmp_path):
    """torchvision leaves both the .gz and the extracted file in MNIST/raw/: the extracted one is read."""
    d = tmp_path / "MNIST" / "raw"
    raw = make_idx(d, seed=1)
    make_idx(d, seed=2, gz=True)
    (x, _), _, _ = read_idx_dataset("mnist", tmp_path)
    assert np.array_equal(x, raw["train"][0])


@pytest.mark.parametrize("layout", ["torchvision", "flat"])
def test_cifar_binary_round_trips_exactly_in_chw_order(tmp_path, monkeypatch, layout):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    directory = tmp_path / "cifar-10-batches-bin" if layout == "torchvision" else tmp_path / "mine"
    arrays = make_cifar(directory, seed=4)
    root = tmp_path if layout == "torchvision" else directory
    x_tr = np.concatenate([arrays[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
    y_tr = np.concatenate([arrays[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
    x_te, y_te = arrays["test_batch.bin"]

    (rx_tr, ry_tr), (rx_te, ry_te), found = read_cifar_dataset(root)
    assert found == directory and rx_tr.shape == (40, 3, 32, 32)
    assert np.array_equal(rx_tr, x_tr) and np.array_equal(ry_tr, y_tr)
    assert np.array_equal(rx_te, x_te) and np.array_equal(ry_te, y_te)
    # byte 1 + c*1024 + h*32 + w of a record is channel c, row h, column w
    rec = np.frombuffer((directory / "test_batch.bin").read_bytes(), np.uint8).reshape(-1, 3073)
    assert rx_te[2, 1, 5, 7] == rec[2, 1 + 1024 + 5 * 32 + 7]

    data = load_dataset("cifar10", root=str(root))
    assert data.input_shape == (3, 32, 32) and data.x_test.shape == (8, 3, 32, 32)
    _round_trip(data, x_tr, y_tr, x_te, y_te)
    assert data.x_train.mean(dim=(0, 2, 3)).abs().max() < 1e-4  # per channel


# ---- bad files: one line naming the file -------------------------------------------------------------

def _one_line_error(fn, *needles):
    with pytest.raises(DatasetError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert str(needle) in msg, (needle, msg)
    return msg


@pytest.mark.parametrize("gz", [False, True])
def test_bad_idx_files_name_the_file_and_what_was_expected(tmp_path, gz):
    d = tmp_path / "f"
    make_idx(d, seed=0, gz=gz)
    sfx = ".gz" if gz else ""
    load = lambda: load_dataset("mnist", root=str(d))
    images, labels = d / f"train-images-idx3-ubyte{sfx}", d / f"t10k-labels-idx1-ubyte{sfx}"
    rng = np.random.default_rng(0)

    # bad magic: a labels header on an images file
    write_idx(d / "train-images-idx3-ubyte", rng.integers(0, 256, (N_TRAIN, 28, 28)), gz, magic=0x00000801)
    _one_line_error(load, images, "magic number 0x00000801", "expected 0x00000803")
    # truncated: the header promises more than the file holds
    good = bytearray(gzip.decompress(images.read_bytes()) if gz else images.read_bytes())
    good[3] = 3  # the images magic back
    trunc = bytes(good[:-100])
    put(images, trunc, gz)
    _one_line_error(load, images, f"{len(trunc)} bytes", f"expected {16 + N_TRAIN * 784}")
    # too long (trailing bytes) is refused as well
    put(images, bytes(good) + b"\0", gz)
    _one_line_error(load, images, f"expected {16 + N_TRAIN * 784}")
    # a forged header claiming 2**32 - 1 images: refused by size, without allocating them
    forged = (0x803).to_bytes(4, "big") + np.asarray([2**32 - 1, 28, 28], ">u4").tobytes() + bytes(784)
    put(images, forged, gz)
    _one_line_error(load, images, f"{16 + 784} bytes", f"expected {16 + (2**32 - 1) * 784}")
    # images that are not 28x28
    write_idx(d / "train-images-idx3-ubyte", rng.integers(0, 256, (N_TRAIN, 32, 32)), gz)
    _one_line_error(load, images, "32 x 32", "expected N x 28 x 28")
    write_idx(d / "train-images-idx3-ubyte", rng.integers(0, 256, (N_TRAIN, 28, 28)), gz)
    load()  # repaired: loads again

    # label out of range
    write_idx(d / "t10k-labels-idx1-ubyte", np.r_[np.zeros(5), 12, np.zeros(N_TEST - 6)], gz)
    _one_line_error(load, labels, "label 12 at record 5", "0-9")
    # counts of images and labels disagree
    write_idx(d / "t10k-labels-idx1-ubyte", np.zeros(N_TEST - 1), gz)
    _one_line_error(load, labels, d / f"t10k-images-idx3-ubyte{sfx}", f"{N_TEST} images", f"{N_TEST - 1} labels")
    # a torn gzip stream / a file shorter than the header
    (d / f"t10k-labels-idx1-ubyte{sfx}").write_bytes(b"\x1f\x8b\x08\x00garbage" if gz else b"\0\0\x08")
    _one_line_error(load, labels)


def test_bad_cifar_files_name_the_file_and_what_was_expected(tmp_path):
    d = tmp_path / "cifar-10-batches-bin"
    make_cifar(d, seed=0)
    load = lambda: load_dataset("cifar10", root=str(tmp_path))
    batch = d / "data_batch_3.bin"
    batch.write_bytes(batch.read_bytes()[:-1])  # a torn record
    _one_line_error(load, batch, f"{8 * 3073 - 1} bytes", "multiple of 3073")
    x = np.zeros((2, 3, 32, 32))
    write_cifar(batch, x, [3, 10])
    _one_line_error(load, batch, "label 10 at record 1", "0-9")
    (d / "test_batch.bin").unlink()
    _one_line_error(load, d, "lacks test_batch.bin", "binary batches")


def test_pickled_cifar_is_refused_unopened_with_a_pointer_to_the_binary_version(tmp_path):
    """The Python version of CIFAR-10 is a set of pickles: wsl refuses it without unpickling anything."""
    marker = tmp_path / "unpickled"

    class Evil:  # unpickling this creates `marker`
        def __reduce__(self):
            return (Path.touch, (marker,))

    py = tmp_path / "cifar-10-batches-py"
    py.mkdir()
    for name in ("data_batch_1", "data_batch_2", "test_batch", "batches.meta"):
        (py / name).write_bytes(pickle.dumps(Evil()))
    for root in (tmp_path, py):
        _one_line_error(lambda: load_dataset("cifar10", root=str(root)), py, "pickled", CIFAR_BINARY_URL)
    assert not marker.exists()


def test_missing_root_or_files_name_what_was_expected(tmp_path):
    missing = tmp_path / "no-such-dir"
    for name in ("mnist", "fashion_mnist"):
        _one_line_error(lambda: load_dataset(name, root=str(missing)), missing, "does not exist",
                        "train-images-idx3-ubyte")
        _one_line_error(lambda: load_dataset(name, root=None), "dataset.root", "t10k-labels-idx1-ubyte")
    _one_line_error(lambda: load_dataset("cifar10", root=str(missing)), missing, "data_batch_1.bin")
    _one_line_error(lambda: load_dataset("cifar10", root=str(tmp_path)), "test_batch.bin",
                    tmp_path / "cifar-10-batches-bin")
    d = tmp_path / "MNIST" / "raw"
    make_idx(d, seed=0)
    (d / "t10k-labels-idx1-ubyte").unlink()
    _one_line_error(lambda: load_dataset("mnist", root=str(tmp_path)), d, "lacks t10k-labels-idx1-ubyte")
    # a newline in a file name cannot split the message
    odd = tmp_path / "a\nb"
    _one_line_error(lambda: load_dataset("mnist", root=str(odd)), "a\\x0ab")


# ---- the real console script -------------------------------------------------------------------------

def wsl_zoo(*args, cwd) -> subprocess.CompletedProcess:
    """Run the installed `wsl-zoo` console script (this checkout's code first on the path)."""
    script = Path(sys.executable).with_name("wsl-zoo")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "wsl.apps.zoo"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


QUIET = ["population.size=2", "train.epochs=1", "train.batch_size=16", "logger=none", "progress_refresh_rate=0",
         "trainer.accelerator=cpu"]
TINY = ["net=cnn", "net.width=4", "net.depth=2", *QUIET]
TINY_RESNET = ["net=resnet", "net.width=2", "net.depth=1", *QUIET]  # BatchNorm, projection shortcuts on 32x32


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_wsl_zoo_trains_on_the_files(tmp_path, name):
    if name == "mnist":
        make_idx(tmp_path / "data" / "MNIST" / "raw", seed=5, gz=True)
        shape = [1, 28, 28]
    else:
        make_cifar(tmp_path / "data" / "cifar-10-batches-bin", seed=5)
        shape = [3, 32, 32]
    zoo = tmp_path / "zoo"
    net = TINY if name == "mnist" else TINY_RESNET  # the issue's `wsl-zoo net=resnet dataset=cifar10 dataset.root=...`
    p = wsl_zoo(f"dataset={name}", f"dataset.root={tmp_path / 'data'}", f"zoo.path={zoo}", *net, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    from wsl.zoo.reader import Zoo

    z = Zoo(zoo)
    assert len(z.ids) == 2
    data = z.training_data()  # the zoo records dataset.root: its data rebuilds from the same files
    assert list(data.input_shape) == shape and data.x_test.shape[0] == (N_TEST if name == "mnist" else 8)
    assert data.fingerprint() == load_dataset(name, root=str(tmp_path / "data"), val_fraction=0.1).fingerprint()
    if name == "cifar10":
        sd = z.state_dict(z.ids[0])
        assert z.arch(z.ids[0])["name"] == "resnet" and "stages.2.0.shortcut.bn.running_var" in sd


def test_wsl_zoo_missing_root_is_one_line_exit_2(tmp_path):
    p = wsl_zoo("dataset=mnist", "dataset.root=/missing", f"zoo.path={tmp_path / 'zoo'}", *TINY, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: dataset.root=/missing does not exist"), p.stderr
    assert "train-images-idx3-ubyte" in lines[0] and not (tmp_path / "zoo").exists()
