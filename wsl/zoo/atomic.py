"""Crash-safe writes and the zoo-wide lock. A file is either absent, old or complete: never torn."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from wsl.zoo.format import LOCK_FILE


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yields a temporary path to write; renamed over `path` only if the block finishes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def zoo_lock(zoo_root: Path):
    """Exclusive lock over index-changing steps (shard commit, annotation, merge) of one zoo.

    flock is released by the kernel when the holder dies, so a killed job never leaves it held.
    """
    zoo_root.mkdir(parents=True, exist_ok=True)
    fd = os.open(zoo_root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
