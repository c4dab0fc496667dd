"""Crash-safe writes and the zoo-wide lock. A file is either absent, old or complete: never torn."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from pathlib import Path

from wsl.zoo.format import LOCK_FILE


FAULT_DELAY_ENV = "WSL_FAULT_DELAY"  # e.g. "index=0.5,checkpoint=0.05": pause there (seconds)
FAULT_LOG_ENV = "WSL_FAULT_LOG"  # a file that gets one line per fault point passed ("<kind> <pid>")


def fault_point(kind: str) -> None:
    """A hook for scripts/fault_drill.py, a no-op unless its environment variables are set.

    Called just before a finished temp file is renamed into place (kinds: checkpoint, shard,
    index, annotation) and before the zoo lock is requested (lock-request). The drill sets WSL_FAULT_LOG to see where a job is and WSL_FAULT_DELAY to
    hold that window open, so that its SIGKILL lands inside the rename window it aims at.
    """
    log_path, spec = os.environ.get(FAULT_LOG_ENV), os.environ.get(FAULT_DELAY_ENV)
    if not log_path and not spec:
        return
    if log_path:
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{kind} {os.getpid()}\n".encode())  # one write: lines of parallel jobs never mix
        finally:
            os.close(fd)
    delays = dict(item.split("=", 1) for item in (spec or "").split(",") if "=" in item)
    if kind in delays:
        try:
            delay = float(delays[kind])
        except ValueError:
            print(f"wsl: ignoring {FAULT_DELAY_ENV} entry {kind}={delays[kind]!r} (not a number)", file=sys.stderr)
            return
        time.sleep(delay)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_bytes_atomic(path: Path, data: bytes, what: str = "file") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    fault_point(what)
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: Path, what: str = "file"):
    """Yields a temporary path to write; renamed over `path` only if the block finishes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        fault_point(what)
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
        fault_point("lock-request")
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
