"""Constants and small checks of the zoo format (a contract: readable with h5py + safetensors alone)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath

from wsl.errors import ZooFormatError

FORMAT_NAME = "wsl-zoo"
FORMAT_VERSION = 1
INDEX_FILE = "index.h5"
SHARD_DIR = "shards"
ANNOTATION_DIR = "annotations"
MODEL_DIR = "models"
LOCK_FILE = ".lock"
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
STATUSES = ("trained", "diverged", "sampled", "aligned")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,199}$")


def checkpoint_relpath(job_id: str, model_id: str, epoch: int) -> str:
    return f"{MODEL_DIR}/{job_id}/{model_id}/epoch_{int(epoch):04d}.safetensors"


def check_id(kind: str, value: str) -> str:
    """Ids become path components: allow letters, digits and . _ = - only."""
    if not isinstance(value, str) or not _SAFE_ID.match(value) or ".." in value:
        raise ZooFormatError(f"{kind} {value!r} is not a valid id (letters, digits, '.', '_', '=', '-'; no '..')")
    return value


def resolve_inside(root: Path, relpath: str, what: str = "checkpoint path") -> Path:
    """The file `relpath` names inside the zoo `root`; refuses absolute paths and escapes (untrusted index)."""
    if not isinstance(relpath, str) or not relpath:
        raise ZooFormatError(f"{root / INDEX_FILE}: empty {what}")
    pp = PurePosixPath(relpath)
    if pp.is_absolute() or "\\" in relpath or any(part in ("..", "") for part in pp.parts) or relpath.startswith("~"):
        raise ZooFormatError(f"{root / INDEX_FILE}: {what} {relpath!r} escapes the zoo directory; refused")
    full = (root / pp).resolve()
    if not full.is_relative_to(root.resolve()):
        raise ZooFormatError(f"{root / INDEX_FILE}: {what} {relpath!r} resolves outside the zoo (symlink?); refused")
    return full


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
