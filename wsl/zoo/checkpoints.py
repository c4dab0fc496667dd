"""Checkpoint files of one job, written fast and, on request, off the training thread.

`CheckpointFiles` writes `models/<job>/<model>/<name>` as the zoo always did (a new temp file opened
O_EXCL | O_NOFOLLOW, its bytes, a rename over the name: a kill leaves the old file or the new one,
never a torn one), but through directory file descriptors: the job directory and each model
directory are checked once (wsl.zoo.safe_paths.make_dirs refuses a link on the way, with its usual
message), and every later write opens the model directory relative to the job directory's
descriptor with O_NOFOLLOW. A link planted at a model directory later is refused too, and no path
is resolved again per write: the path checks were more than half of a checkpoint's cost (about
0.8 of 1.2 ms for a 1,642-parameter MLP).

`BackgroundWriter` runs such writes on one thread, with a bound on the bytes waiting, so a
population's checkpoints are encoded and written while training goes on; `wait()` returns when
every submitted write is on disk (renamed into place) and re-raises the first error, an OSError
naming the file (so that apps print their usual one line, e.g. "...safetensors: cannot write: no
space left").
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from wsl.zoo.atomic import fault_point, tmp_name
from wsl.zoo.format import MODEL_DIR
from wsl.zoo.safe_paths import make_dirs

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
# directory descriptors: openat, renameat and unlinkat (Linux, the BSDs, macOS); elsewhere paths
HAVE_DIR_FD = os.open in os.supports_dir_fd and os.rename in os.supports_dir_fd and os.unlink in os.supports_dir_fd


class CheckpointFiles:
    """Atomic writes of files below `root/models/<job_id>/<model_id>/` (see the module docstring)."""

    def __init__(self, root: Path, job_id: str):
        self.root, self.job_id = Path(root), job_id
        self._job_fd: int | None = None
        self._checked: set[str] = set()  # model directories made and checked through this descriptor

    def path(self, model_id: str, name: str) -> Path:
        return self.root / MODEL_DIR / self.job_id / model_id / name

    def write(self, model_id: str, name: str, data: bytes) -> Path:
        """`data` to models/<job>/<model_id>/<name>, atomically; returns the file's path."""
        path = self.path(model_id, name)
        if not HAVE_DIR_FD:
            from wsl.zoo.atomic import write_bytes_atomic

            return write_bytes_atomic(path, data, what="checkpoint", root=self.root, durable=False)
        job_fd = self._job()
        if model_id not in self._checked:
            make_dirs(self.root, path.parent)  # mkdir -p, refusing a link on the way (once per model)
            self._checked.add(model_id)
        try:
            dir_fd = os.open(model_id, _DIR_FLAGS, dir_fd=job_fd)
        except OSError:
            make_dirs(self.root, path.parent)  # replaced meanwhile (a link: refused by name), or gone: made again
            dir_fd = os.open(model_id, _DIR_FLAGS, dir_fd=job_fd)
        tmp = tmp_name(Path(name)).name  # the temp-file name every atomic write of the zoo uses
        try:
            try:
                fd = os.open(tmp, _NEW_FLAGS, 0o644, dir_fd=dir_fd)
            except FileExistsError:  # a killed process of the same pid left it (a link: unlink removes the link)
                os.unlink(tmp, dir_fd=dir_fd)
                fd = os.open(tmp, _NEW_FLAGS, 0o644, dir_fd=dir_fd)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            fault_point("checkpoint")
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as e:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
            if e.filename is None or isinstance(e.filename, str) and not os.path.isabs(e.filename):
                raise OSError(e.errno, e.strerror, str(path)) from e  # name the file (apps print one line)
            raise
        finally:
            os.close(dir_fd)
        return path

    def _job(self) -> int:
        if self._job_fd is None:
            self.root.mkdir(parents=True, exist_ok=True)  # the zoo itself: the caller's
            job_dir = make_dirs(self.root, self.root / MODEL_DIR / self.job_id)
            self._job_fd = os.open(job_dir, _DIR_FLAGS)
        return self._job_fd

    def close(self) -> None:
        """Let go of the job directory (the next write checks it again)."""
        if self._job_fd is not None:
            os.close(self._job_fd)
            self._job_fd = None
        self._checked.clear()

    def __del__(self):
        try:
            self.close()
        except OSError:
            pass


class BackgroundWriter:
    """One thread that runs submitted jobs (callables) in order, at most `max_bytes` of them waiting
    (submit blocks beyond that; one job is always accepted). `wait()` blocks until all have run and
    re-raises the first error (later jobs are skipped after an error)."""

    def __init__(self, max_bytes: int = 256 * 2**20):
        self.max_bytes = max_bytes
        self._cond = threading.Condition()
        self._jobs: list = []
        self._pending = 0  # bytes of submitted jobs not finished
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def submit(self, fn, nbytes: int = 0) -> None:
        with self._cond:
            if self._error is not None:
                self._raise()
            while self._pending and self._pending + nbytes > self.max_bytes and self._error is None:
                self._cond.wait()
            self._jobs.append((fn, nbytes))
            self._pending += nbytes
            self._cond.notify_all()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="wsl-checkpoints", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    if not self._cond.wait(timeout=5.0) and not self._jobs:
                        self._thread = None  # idle: the next submit starts another
                        return
                fn, nbytes = self._jobs[0]
            try:
                if self._error is None:
                    fn()
            except BaseException as e:  # noqa: BLE001 (handed to the waiting thread)
                with self._cond:
                    self._error = self._error or e
            with self._cond:
                self._jobs.pop(0)
                self._pending -= nbytes
                self._cond.notify_all()

    def busy(self) -> bool:
        with self._cond:
            return bool(self._jobs)

    def wait(self) -> None:
        """Block until every submitted job has run; re-raise the first error (and forget it)."""
        with self._cond:
            while self._jobs:
                self._cond.wait()
            if self._error is not None:
                self._raise()

    def _raise(self):
        e, self._error = self._error, None
        raise e
