"""Writes and removals that stay where they belong.

A zoo may come from a stranger, and apps write next to a user's own files. Two rules:

- Inside a root (a zoo, an app's output directory) every write and every removal goes to a path whose
  components below the root are real directories and files: a planted `report -> ..` or
  `plots -> /elsewhere` link is refused by name (`inside`, `make_dirs`, `remove_temp_files`), never followed.
- An app's output directory that already exists is reused only if it holds nothing but that app's own
  earlier output, recognised by the marker file the app writes there (`claim_output_dir`); never a zoo,
  never a file, never a directory with anything else in it. An app deletes only what it created.

The check resolves before the write; temp files are also opened with O_NOFOLLOW | O_EXCL, so a link
planted at a temp name is not followed either.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from pathlib import Path

from wsl.errors import ConfigError, ZooFormatError, printable

MARKER = ".wsl-output"  # names the app whose output a directory holds (one line: the app's name)
ZOO_ENTRIES = ("index.h5", "shards", "models")  # any of these: the directory is a zoo


class UnsafePathError(ZooFormatError):
    """A write or removal would go through a symbolic link or leave its root."""


def _abs(path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))  # absolute, '..' collapsed, links not followed


def _link_error(p: Path, root: Path, action: str) -> UnsafePathError:
    try:
        target = os.readlink(p)
    except OSError:
        target = "?"
    return UnsafePathError(f"{printable(p)} is a symbolic link (to {printable(target)}); refusing to {action} "
                           f"through it inside {printable(root)}: remove the link")


def inside(root, path, action: str = "write") -> Path:
    """`path` (absolute, or relative to `root`) as a path under the resolved `root`, after checking that
    no existing component between the root and the path's end is a symbolic link and that it does not
    lie outside the root. Use the returned path for the write (it is what was checked)."""
    root_abs = _abs(root)
    root_real = root_abs.resolve()
    p = Path(path)
    p = _abs(root_abs / p) if not p.is_absolute() else _abs(p)
    rel = None
    for base in (root_abs, root_real):
        try:
            rel = p.relative_to(base)
            break
        except ValueError:
            continue
    if rel is None:
        raise UnsafePathError(f"{printable(p)} lies outside {printable(root_real)}; refusing to {action} there")
    cur = root_real
    for part in rel.parts:
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            break  # nothing below a missing component exists yet
        if stat.S_ISLNK(st.st_mode):
            raise _link_error(cur, root_real, action)
    return root_real / rel


def make_dirs(root, path) -> Path:
    """mkdir -p of `path` under `root`, one component at a time, never through a link; returns it."""
    full = inside(root, path, "create a directory")
    root_real = _abs(root).resolve()
    cur = root_real
    for part in full.relative_to(root_real).parts:
        cur = cur / part
        try:
            os.mkdir(cur)
        except FileExistsError:
            pass
        st = os.lstat(cur)  # again after the mkdir: a link swapped in meanwhile is refused too
        if stat.S_ISLNK(st.st_mode):
            raise _link_error(cur, root_real, "create a directory")
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafePathError(f"{printable(cur)} is not a directory; cannot write below it")
    return full


def open_new(path: Path, mode: int = 0o644) -> int:
    """A new regular file for writing (O_EXCL | O_NOFOLLOW: never a planted link or an old file);
    an old file of that temp name (a killed process of the same pid) is removed first."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags, mode)
    except FileExistsError:
        os.unlink(path)  # unlink removes a link itself, never its target
        return os.open(path, flags, mode)


def _pid_alive(name: str) -> bool:
    """Whether the process a temp name `.<file>.<pid>.tmp` names is running (a name without one: False)."""
    parts = name.split(".")
    if len(parts) < 3 or not parts[-2].isdigit():
        return False
    pid = int(parts[-2])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_temp_files(root, directory, pattern: str, dead_only: bool = False) -> int:
    """Remove the regular files named like `pattern` in `directory` (under `root`): temp files of killed
    writes (dead_only: only those whose writer's pid is gone). A link (even one named like a temp file) or
    a directory is left alone. Returns the count."""
    d = inside(root, directory, "remove files")
    n = 0
    try:
        entries = list(os.scandir(d))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for e in entries:
        if (fnmatch.fnmatchcase(e.name, pattern) and e.is_file(follow_symlinks=False)
                and not (dead_only and _pid_alive(e.name))):
            try:
                os.unlink(e.path)
                n += 1
            except FileNotFoundError:
                pass
    return n


# ---- output directories ------------------------------------------------------------------------------
def read_marker(d: Path) -> str | None:
    m = d / MARKER
    try:
        if not stat.S_ISREG(os.lstat(m).st_mode):
            return None
        with open(m, "rb") as f:
            return f.read(200).decode("utf-8", "replace").strip()
    except OSError:
        return None


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def claim_output_dir(path, app: str, key: str, own_files=(), legacy=False) -> Path:
    """Check that `path` may take `app`'s output; returns it (absolute, links not followed).

    Fine: a path that does not exist yet, an empty directory, or a directory holding the marker that names
    `app` and otherwise only regular files named like `own_files` (fnmatch patterns). `legacy`: also a
    directory without the marker that holds only such files (written by a version before the marker);
    a collection of names: and every one of them (what such a version always wrote).
    Anything else raises a ConfigError naming `key`, the path and why; nothing is touched."""
    p = _abs(path)
    where = f"{key}={printable(p)}"
    _not_in_zoo_parts(p, where)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return p
    except OSError as e:
        raise ConfigError(f"{where}: cannot be used as the output directory ({e.strerror})") from e
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(f"{where} is a symbolic link (to {printable(os.readlink(p))}); {app} writes only into a "
                          "real directory: give the directory itself or a new one")
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{where} is a file, not a directory; choose a new directory")
    names = sorted(os.listdir(p))
    if any(n in names for n in ZOO_ENTRIES):
        raise ConfigError(f"{where} holds a zoo; {app} never writes its output over one: choose a new directory")
    if not names:
        return p
    marker = read_marker(p)
    if marker is not None and marker != app:
        raise ConfigError(f"{where} holds the output of {printable(marker)}, not of {app}; choose another directory")
    foreign = [n for n in names if n != MARKER and not (_matches(n, own_files)
                                                        and stat.S_ISREG(os.lstat(p / n).st_mode))]
    if marker is None and not isinstance(legacy, bool) and not set(legacy) <= set(names):
        legacy = False  # not all of what an earlier version always wrote: not recognisably its output
    if foreign or (marker is None and not legacy):
        shown = ", ".join(printable(n) for n in foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        why = f"holds files {app} did not write ({shown})" if foreign else f"is not empty and has no {MARKER} of {app}"
        raise ConfigError(f"{where} {why}; {app} replaces only its own earlier output: choose a new or empty directory")
    return p


def _not_in_zoo_parts(p: Path, where: str) -> None:
    """An output directory may sit in a zoo (<zoo>/report), never among its models, shards or annotations."""
    for a in p.parents:
        if (a / "index.h5").is_file() or (a / "shards").is_dir():
            part = p.relative_to(a).parts[0]
            if part in ("models", "shards", "annotations", "index.h5"):
                raise ConfigError(f"{where} lies inside the zoo {printable(a)} (its {part}); choose a directory "
                                  "outside the zoo's data")
            return


def check_zoo_output(path, app: str, key: str) -> Path:
    """An output that is a new zoo (wsl-align out=): not a file or a link; an existing directory may hold
    only the parts of a zoo an earlier, killed run of the app wrote (a complete zoo: the app refuses)."""
    p = _abs(path)
    where = f"{key}={printable(p)}"
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return p
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(f"{where} is a symbolic link (to {printable(os.readlink(p))}); give a real directory")
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{where} is a file, not a directory; choose a new directory")
    own = ("index.h5", "shards", "models", "annotations", ".lock", ".*.tmp")
    foreign = [n for n in sorted(os.listdir(p)) if not _matches(n, own)]
    if foreign:
        shown = ", ".join(printable(n) for n in foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise ConfigError(f"{where} holds files that are not part of a zoo ({shown}); {app} writes a new zoo: "
                          "choose a new or empty directory")
    return p


# ---- replacing a directory as a whole ----------------------------------------------------------------
def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directory entries (renameat2 RENAME_EXCHANGE). False where the system or the
    file system cannot (the caller falls back to two renames)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    import errno

    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))
