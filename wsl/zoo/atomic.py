"""Crash-safe writes and the zoo-wide lock. A file is either absent, old or complete: never torn.

Every write names its `root` (the zoo or the output directory it belongs to): the path is checked by
wsl.zoo.safe_paths.inside first, so a symbolic link planted inside an untrusted zoo cannot redirect it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from pathlib import Path

from wsl.zoo.format import LOCK_FILE
from wsl.zoo.safe_paths import MARKER, UnsafePathError, exchange, inside, make_dirs, open_new, read_marker

FAULT_DELAY_ENV = "WSL_FAULT_DELAY"  # e.g. "index=0.5,checkpoint=0.05": pause there (seconds)
FAULT_LOG_ENV = "WSL_FAULT_LOG"  # a file that gets one line per fault point passed ("<kind> <pid>")


def fault_point(kind: str) -> None:
    """A hook for scripts/fault_drill.py, a no-op unless its environment variables are set.

    Called just before a finished temp file is renamed into place (kinds: checkpoint, shard, index,
    annotation, plot; report: before the finished report directory replaces the old one) and before the
    zoo lock is requested (lock-request). The drill sets WSL_FAULT_LOG to see where a job is and
    WSL_FAULT_DELAY to hold that window open, so that its SIGKILL lands inside the rename window it aims at.
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
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(out_dir: Path, files: dict[str, bytes], before_swap=None) -> None:
    """`out_dir` replaced as a whole by a directory of `files` (name -> bytes, written in this order: put a
    marker last): they are written into a new temporary sibling `.<name>.<pid>.<random>.tmp`, each file and
    then the directory fsynced; `before_swap()` (the caller's last check) runs; the sibling is swapped into
    place in one atomic step (renameat2 RENAME_EXCHANGE where the file system has it, else old aside, new in:
    a short gap). `out_dir` is at every moment the old complete directory or the new complete one; the old
    one (or the temporary directory, on an error) is removed, never followed if it became a link."""
    import secrets
    import shutil

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    os.mkdir(tmp)  # new (fails if anything has that name), with the usual permissions
    try:
        for name, blob in files.items():
            with os.fdopen(open_new(tmp / name), "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
        fsync_dir(tmp)
        if before_swap is not None:
            before_swap()
        if not os.path.lexists(out_dir):
            os.rename(tmp, out_dir)  # fails on a directory that appeared meanwhile with files in it
        elif not exchange(tmp, out_dir):  # (exchanged: tmp now holds the old directory, removed below)
            old = tmp.with_name(tmp.name[: -len(".tmp")] + "old.tmp")
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            tmp = old
        fsync_dir(out_dir.parent)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp)


def tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _target(path: Path, root) -> Path:
    """The checked destination: under `root` with no link on the way (root None: the file's own directory,
    i.e. only the file itself may not be a link)."""
    path = Path(path)
    return inside(path.parent if root is None else root, path)


def _prepare(path: Path, root) -> Path:
    """The checked destination, its directories made (below `root` one at a time, never through a link)."""
    path = Path(path)
    base = Path(path.parent if root is None else root)
    base.mkdir(parents=True, exist_ok=True)  # the root itself: the caller's (a zoo, an output directory)
    path = _target(path, base)
    make_dirs(base, path.parent)
    return path


def write_bytes_atomic(path: Path, data: bytes, what: str = "file", root=None, durable: bool = True) -> Path:
    """`data` to `path` by a temp file and a rename: a kill (SIGKILL included) leaves the old file or the
    new one, never a torn one. `durable`: the file and its directory are fsynced before this returns;
    without it they reach the disk when the kernel writes them back or when the caller syncs them
    (sync_paths), which the zoo writer does for one commit's checkpoints together. Returns the path."""
    path = _prepare(path, root)
    tmp = tmp_name(path)
    fd = open_new(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        fault_point(what)
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    if durable:
        fsync_dir(path.parent)
    return path


def _syncfs(path: Path) -> bool:
    """One syncfs(2) of the file system holding `path` (Linux): every dirty page and inode there reaches
    the disk. False where the call is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            return libc.syncfs(fd) == 0
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        return False


def sync_paths(root: Path, files) -> None:
    """Make files written with durable=False durable, with their directories: one syncfs of `root`'s
    file system on Linux, else an fsync of every file and of every directory holding one."""
    files = [Path(f) for f in files]
    if not files or _syncfs(Path(root)):
        return
    for f in files:
        fd = os.open(f, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for d in sorted({f.parent for f in files}):
        fsync_dir(d)


@contextlib.contextmanager
def atomic_path(path: Path, what: str = "file", root=None):
    """Yields a temporary path to write; renamed over `path` only if the block finishes. The temp file
    exists (new, empty, a regular file) when the block starts: a link planted at its name is gone."""
    path = _prepare(path, root)
    tmp = tmp_name(path)
    os.close(open_new(tmp))
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fault_point(what)
        _target(path, root)  # checked again: the block may have taken long
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def zoo_lock(zoo_root: Path):
    """Exclusive lock over index-changing steps (shard commit, annotation, merge) of one zoo.

    flock is released by the kernel when the holder dies, so a killed job never leaves it held.
    The lock file is never a link (O_NOFOLLOW): a planted `.lock -> elsewhere` creates nothing there.
    """
    zoo_root = Path(zoo_root)
    zoo_root.mkdir(parents=True, exist_ok=True)
    lock = inside(zoo_root, LOCK_FILE, "lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as e:
        if os.path.islink(lock):
            raise UnsafePathError(f"{lock} is a symbolic link; refusing to lock through it: remove the link") from e
        raise
    try:
        fault_point("lock-request")
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def write_marker(d: Path, app: str) -> None:
    """Mark `d` as `app`'s output (written into a directory the app created or claimed)."""
    if read_marker(d) != app:
        write_bytes_atomic(d / MARKER, f"{app}\n".encode(), what="marker", root=d)
