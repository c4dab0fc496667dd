"""Readers for the official image-dataset files, with numpy alone (no torchvision, nothing unpickled).

- MNIST and Fashion-MNIST: IDX files (http://yann.lecun.com/exdb/mnist/), raw or gzipped. An IDX file is
  a big-endian header (magic 0x00000803 = unsigned bytes, 3 dims for images; 0x00000801 = 1 dim for labels),
  one big-endian uint32 per dim, then the bytes row-major.
- CIFAR-10: the *binary* version (cifar-10-binary.tar.gz): data_batch_1.bin ... data_batch_5.bin and
  test_batch.bin, records of 1 label byte + 3072 pixel bytes (1024 red, 1024 green, 1024 blue; 32x32 each).
  The Python version (cifar-10-batches-py/) is a set of pickles and is refused, never opened.

Every problem raises DatasetError naming the file and what was expected (one line: paths go through
`printable`). Files are read in chunks up to the size their header promises, so a forged header or a
gzip bomb cannot make us allocate more than the file really holds.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from wsl.errors import DatasetError, printable

IDX_IMAGES = ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")
IDX_LABELS = ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte")
IDX_FILES = (IDX_IMAGES[0], IDX_LABELS[0], IDX_IMAGES[1], IDX_LABELS[1])
IDX_SUBDIR = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}  # torchvision's root layout: <root>/<sub>/raw

CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST = "test_batch.bin"
CIFAR_FILES = (*CIFAR_TRAIN, CIFAR_TEST)
CIFAR_SUBDIR = "cifar-10-batches-bin"
CIFAR_RECORD = 1 + 3 * 32 * 32
CIFAR_BINARY_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"

NUM_CLASSES = 10
_CHUNK = 1 << 20


def _p(path) -> str:
    return printable(str(path))


def _check_root(root, name: str, expected: str) -> Path:
    if root is None or str(root).strip() == "":
        raise DatasetError(f"dataset {name} needs dataset.root=<directory holding {expected}> "
                           f"(read from disk, never downloaded)")
    path = Path(root).expanduser()
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise DatasetError(f"dataset.root={_p(path)} {what}; dataset {name} reads {expected} from it "
                           f"(never downloaded)")
    return path


def _read_upto(path: Path, n: int) -> bytes:
    """At most n + 1 bytes of `path` (gunzipped if it ends in .gz): enough to tell 'too long' from 'exact'."""
    opener = gzip.open if path.suffix == ".gz" else open
    buf = bytearray()
    try:
        with opener(path, "rb") as f:
            while len(buf) <= n:
                chunk = f.read(min(_CHUNK, n + 1 - len(buf)))
                if not chunk:
                    break
                buf += chunk
    except (OSError, EOFError, zlib.error) as e:  # unreadable, or a torn/forged gzip stream
        raise DatasetError(f"{_p(path)}: cannot be read ({_p(e)})") from e
    return bytes(buf)


# ---- MNIST / Fashion-MNIST (IDX) ---------------------------------------------------------------------

def read_idx(path, shape: tuple[int | None, ...]) -> np.ndarray:
    """An IDX file of unsigned bytes as a uint8 array. `shape` is what is expected: its length is the
    number of dims (1: labels, 3: images), an int fixes that dim (28 rows), None leaves it free (N)."""
    path = Path(path)
    ndim = len(shape)
    magic_expected = 0x0800 | ndim  # 0x08: unsigned byte; low byte: number of dims
    kind = "images" if ndim == 3 else "labels"
    header = 4 + 4 * ndim
    head = _read_upto(path, header - 1)
    if len(head) < header:
        raise DatasetError(f"{_p(path)}: {len(head)} bytes, shorter than the {header}-byte header of an IDX "
                           f"{kind} file (magic 0x{magic_expected:08x} and {ndim} big-endian dims)")
    magic = int.from_bytes(head[:4], "big")
    if magic != magic_expected:
        raise DatasetError(f"{_p(path)}: magic number 0x{magic:08x}, expected 0x{magic_expected:08x} "
                           f"(IDX unsigned-byte {kind}, {ndim}-D)")
    dims = tuple(int(d) for d in np.frombuffer(head, dtype=">u4", count=ndim, offset=4))
    if any(s is not None and s != d for s, d in zip(shape, dims)):
        want = " x ".join("N" if s is None else str(s) for s in shape)
        raise DatasetError(f"{_p(path)}: IDX dims {' x '.join(map(str, dims))}, expected {want}")
    size = header + math.prod(dims)  # Python ints: a forged header cannot overflow
    raw = _read_upto(path, size)
    if len(raw) != size:
        got = f"{len(raw)} bytes" if len(raw) < size else f"more than {size} bytes"
        raise DatasetError(f"{_p(path)}: {got}{' (decompressed)' if path.suffix == '.gz' else ''}, expected "
                           f"{size} (a {header}-byte header + {' x '.join(map(str, dims))} bytes)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(directory: Path, name: str, gz: bool) -> Path | None:
    """`name` (or with `gz`, `name.gz`) in `directory`: the uncompressed file first, as torchvision leaves both."""
    return next((c for c in (directory / name, directory / f"{name}.gz")[: 2 if gz else 1] if c.is_file()), None)


def _locate(root: Path, subdirs: list[Path], names, label: str, expected: str, gz: bool) -> dict[str, Path]:
    """The first of `subdirs` (then root) that holds every one of `names`, as {name: path}."""
    best = None
    for d in [*subdirs, root]:
        found = {n: _find(d, n, gz) for n in names}
        if all(found.values()):
            return found
        if best is None and any(found.values()):
            best = (d, [n for n, p in found.items() if p is None])
    if best:
        d, missing = best
        raise DatasetError(f"dataset {label}: {_p(d)} lacks {', '.join(missing)} (expected {expected})")
    where = " or ".join(_p(d) for d in [*subdirs, root])
    raise DatasetError(f"dataset {label}: found none of {expected} in {where}")


def _labels(path: Path, y: np.ndarray) -> np.ndarray:
    bad = np.flatnonzero(y >= NUM_CLASSES)
    if bad.size:
        i = int(bad[0])
        raise DatasetError(f"{_p(path)}: label {int(y[i])} at record {i}, expected labels 0-{NUM_CLASSES - 1}")
    return y


def read_idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 28, 28] uint8 and labels [N] uint8 of one split; counts and label range checked."""
    x = read_idx(images, (None, 28, 28))
    y = _labels(labels, read_idx(labels, (None,)))
    if len(x) != len(y):
        raise DatasetError(f"{_p(images)} holds {len(x)} images but {_p(labels)} holds {len(y)} labels; "
                           "expected one label per image")
    return x, y


def read_idx_dataset(name: str, root):
    """((x_train, y_train), (x_test, y_test), directory) of `name` (mnist | fashion_mnist) from its four IDX
    files under the torchvision root or root itself: x [N, 28, 28] uint8, y [N] uint8."""
    expected = f"{', '.join(IDX_FILES)} (each raw or .gz)"
    root = _check_root(root, name, expected)
    files = _locate(root, [root / IDX_SUBDIR[name] / "raw", root / "raw"], IDX_FILES, name, expected, gz=True)
    train, test = (read_idx_pair(files[x], files[y]) for x, y in zip(IDX_IMAGES, IDX_LABELS))
    return train, test, files[IDX_IMAGES[0]].parent


# ---- CIFAR-10 (binary version) -----------------------------------------------------------------------

def read_cifar_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch: images [N, 3, 32, 32] uint8 (CHW as stored) and labels [N] uint8."""
    path = Path(path)
    size = path.stat().st_size if path.is_file() else 0
    raw = _read_upto(path, size)  # plain file: its size is known up front
    if len(raw) == 0 or len(raw) % CIFAR_RECORD:
        raise DatasetError(f"{_p(path)}: {len(raw)} bytes, expected a positive multiple of {CIFAR_RECORD} "
                           "(CIFAR-10 binary records: 1 label byte + 3 x 32 x 32 pixel bytes; 10000 records per "
                           "official batch)")
    rec = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    y = _labels(path, rec[:, 0].copy())
    return rec[:, 1:].reshape(-1, 3, 32, 32), y


def read_cifar_dataset(root):
    """((x_train, y_train), (x_test, y_test), directory): x [N, 3, 32, 32] uint8, y [N] uint8;
    train = data_batch_1 ... data_batch_5 in order."""
    expected = f"the CIFAR-10 binary batches {', '.join(CIFAR_FILES)}"
    root = _check_root(root, "cifar10", expected)
    bin_dir = root / CIFAR_SUBDIR
    if not (bin_dir.is_dir() or _find(root, CIFAR_TEST, gz=False)):
        for d in (root / "cifar-10-batches-py", root):  # the pickled Python version?
            if (d / "data_batch_1").is_file() and not (d / "data_batch_1.bin").is_file():
                raise DatasetError(f"dataset cifar10: {_p(d)} is the pickled Python version of CIFAR-10, which "
                                   f"wsl never unpickles; download the binary version {CIFAR_BINARY_URL} and set "
                                   f"dataset.root to the directory holding {CIFAR_SUBDIR}/")
    files = _locate(root, [bin_dir], CIFAR_FILES, "cifar10", expected, gz=False)  # the tar holds them unzipped
    parts = [read_cifar_batch(files[n]) for n in CIFAR_TRAIN]
    train = (np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]))
    return train, read_cifar_batch(files[CIFAR_TEST]), files[CIFAR_TEST].parent
