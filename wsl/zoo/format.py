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
MAX_DIM = 1 << 20  # largest size an architecture of an untrusted zoo may name (width, channels, input side)
MAX_LAYERS = 1024  # largest depth: building the net's skeleton must stay quick


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


def check_arch_limits(arch, where: str) -> dict:
    """Refuse an absurd architecture read from a file before anything is built from it.

    `arch` is data from an untrusted zoo: a depth of 10^9 would hang the reader while it builds
    the skeleton, a width of 10^12 would exhaust memory. Returns `arch` when it is plausible.
    """
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str):
        raise ZooFormatError(f"{where}: architecture must be a JSON object with a 'name', got {str(arch)[:80]!r}")

    def check(key: str, v, level: int) -> None:
        if level > 3:
            raise ZooFormatError(f"{where}: architecture field {key!r} is nested too deeply")
        if v is None or isinstance(v, bool):
            return
        if isinstance(v, int):
            limit = MAX_LAYERS if "depth" in key or "layers" in key else MAX_DIM
            if not -limit <= v <= limit:
                raise ZooFormatError(f"{where}: architecture field {key}={v} is absurd (limit {limit}); refused")
        elif isinstance(v, float):
            if v != v or abs(v) > 1e30:
                raise ZooFormatError(f"{where}: architecture field {key}={v} is not a usable number")
        elif isinstance(v, str):
            if len(v) > 200:
                raise ZooFormatError(f"{where}: architecture field {key!r} is a {len(v)}-character string; refused")
        elif isinstance(v, list):
            if len(v) > 16:
                raise ZooFormatError(f"{where}: architecture field {key!r} lists {len(v)} values; refused")
            for x in v:
                check(key, x, level + 1)
        elif isinstance(v, dict):
            for k, x in v.items():
                check(str(k), x, level + 1)
        else:
            raise ZooFormatError(f"{where}: architecture field {key!r} has unsupported type {type(v).__name__}")

    for k, v in arch.items():
        check(str(k), v, 0)
    return arch
