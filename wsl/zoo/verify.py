"""Checking a whole zoo at once and reporting every problem found (the engine of wsl-verify).

The reader (`Zoo`) stops at the first problem it meets, which is right for loading. Verifying is
for a zoo received from another lab or left behind by a crashed job: it walks every file and
reports all problems together, each naming its file, at one of two levels:

- error: the zoo is corrupted, inconsistent or untrusted: a checksum that fails, a truncated or
  missing checkpoint, a checkpoint nobody committed sitting beside committed ones, an index
  behind its shards, a file from a newer format, a pickle, a path or link leaving the zoo,
  absurd shapes or non-numeric values in a checkpoint header.
- warning: leftovers that are harmless and expected after a kill: checkpoints of a job killed
  before it committed (the same command, rerun, overwrites them), temp files of an interrupted
  write, files that are not part of the format (readers ignore them).

Verification only reads: file headers and bytes. It never unpickles, never loads tensors, never
opens anything that is not a regular file inside the zoo, and builds nets on the meta device only.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from wsl.errors import ConfigError, ZooFormatError
from wsl.zoo.format import (ANNOTATION_DIR, FORMAT_NAME, FORMAT_VERSION, INDEX_FILE, LOCK_FILE, MODEL_DIR, SHARD_DIR,
                            STATUSES, check_arch_limits, check_id, resolve_inside, sha256_file)
from wsl.zoo.table import ModelRow, ModelTable, read_annotation_file, read_table

ERROR, WARNING = "error", "warning"
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".joblib")
KNOWN_EXTRAS = ("plots", "report")  # what wsl-plot and wsl-evaluate write into a zoo directory
MAX_HEADER = 100_000_000  # bytes of safetensors JSON header a checkpoint may have
MAX_DIMENSION = 1 << 40  # larger tensor dimensions are absurd, whatever the offsets say
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
               "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}
_CKPT_NAME = re.compile(r"^epoch_(\d{4,})\.safetensors$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_INT = re.compile(r"^-?\d{1,18}$")


@dataclass(frozen=True)
class Problem:
    level: str  # "error" | "warning"
    path: str  # the file (or directory) concerned
    message: str

    def __str__(self) -> str:
        return f"{self.level.upper():7s} {self.path}: {self.message}"


@dataclass
class Verification:
    """Everything verify_zoo found, with what it looked at."""

    zoo: Path
    problems: list = field(default_factory=list)
    models: int = 0  # models committed (index or shards)
    checkpoints: int = 0  # checkpoint files checked
    files: int = 0  # regular files seen in the zoo
    checksums: bool = True

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == WARNING]

    def summary(self) -> str:
        hashed = "checksums verified" if self.checksums else "checksums not verified (checksums=false)"
        return (f"{self.zoo}: {self.models} models, {self.checkpoints} checkpoints, {self.files} files; {hashed}; "
                f"{len(self.errors)} errors, {len(self.warnings)} warnings")


def verify_zoo(path, checksums: bool = True) -> list[Problem]:
    """Every problem of the zoo at `path` (errors and warnings, each naming its file); [] if none."""
    return check_zoo(path, checksums).problems


def check_zoo(path, checksums: bool = True) -> Verification:
    """Like verify_zoo, with the counts of what was checked (for the report of wsl-verify)."""
    root = Path(path).expanduser().resolve()
    v = Verification(root, checksums=checksums)
    _Checker(root, v).run()
    return v


def _strip(msg: str, path: Path) -> str:
    """ZooFormatError messages start with their file; the Problem names it already."""
    return msg[len(str(path)) + 2 :] if msg.startswith(f"{path}: ") else msg


def _is_pickle(head: bytes) -> bool:
    """Pickle protocols 2-5 start with PROTO (0x80, version); 4 and 5 then open a FRAME (0x95).
    A safetensors file may start with 0x80 0x02 (a 640-byte header) but has '{' at byte 8."""
    if len(head) < 3 or head[0] != 0x80 or head[1] not in (2, 3, 4, 5):
        return False
    if head[1] >= 4 and head[2] != 0x95:
        return False
    return head[8:9] != b"{"


def _zip_holds_pickle(path: Path) -> bool:
    """torch.save writes a zip archive whose data.pkl is a pickle; listing the names runs nothing."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith((".pkl", ".pickle")) for n in z.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


class _Checker:
    def __init__(self, root: Path, v: Verification):
        self.root, self.v = root, v
        self._skeletons: dict[str, dict | str] = {}

    def error(self, path, msg: str) -> None:
        self.v.problems.append(Problem(ERROR, str(path), msg))

    def warn(self, path, msg: str) -> None:
        self.v.problems.append(Problem(WARNING, str(path), msg))

    # ------------------------------------------------------------------------------------------
    def run(self) -> None:
        root = self.root
        if not root.is_dir():
            self.error(root, "not a directory, so not a zoo")
            return
        files = self._walk()
        index = self._read_index()
        shards = self._read_all(SHARD_DIR, read_table)
        annotations = self._read_all(ANNOTATION_DIR, read_annotation_file)
        committed = self._committed(index, shards)
        if index is not None:
            self._compare_index(index, shards, annotations)
        referenced = self._check_models(committed)
        self._orphans(files, referenced, committed)

    # ---- every file, once: pickles, links, special files, temp files --------------------------
    def _walk(self) -> list[Path]:
        """Regular files in the zoo; everything else is reported here and never opened."""
        files = []

        def unlistable(e: OSError) -> None:
            self.error(e.filename, f"cannot be listed ({e.strerror}); its files were not checked")

        for dirpath, dirnames, filenames in os.walk(self.root, onerror=unlistable, followlinks=False):
            d = Path(dirpath)
            for name in list(dirnames):
                if (d / name).is_symlink():
                    self._link(d / name)
                    dirnames.remove(name)
            for name in filenames:
                p = d / name
                st = p.lstat()
                if stat.S_ISLNK(st.st_mode):
                    self._link(p)
                elif not stat.S_ISREG(st.st_mode):
                    self.error(p, "not a regular file (a FIFO, socket or device would block or mislead readers); "
                                  "refused")
                else:
                    files.append(p)
                    self._sniff(p)
        self.v.files = len(files)
        return files

    def _link(self, p: Path) -> None:
        try:
            target = os.readlink(p)
            full = (p.parent / target).resolve()
        except (OSError, RuntimeError) as e:  # a loop of links
            self.error(p, f"symbolic link that cannot be resolved ({e}); refused")
            return
        if not full.is_relative_to(self.root):
            self.error(p, f"symbolic link to {target!r}, outside the zoo; refused (an untrusted zoo must not "
                          "make wsl read or write elsewhere)")
        else:
            self.warn(p, f"symbolic link to {target!r} (the zoo format makes none; readers follow it only "
                         "inside the zoo)")

    def _sniff(self, p: Path) -> None:
        try:
            with open(p, "rb") as f:
                head = f.read(16)
        except OSError as e:
            self.error(p, f"cannot be read ({e.strerror})")
            return
        why = None
        if p.suffix.lower() in PICKLE_SUFFIXES:
            why = f"a {p.suffix} file (pickle-based format)"
        elif _is_pickle(head):
            why = "a pickle (starts with the pickle protocol header)"
        elif head.startswith(b"PK\x03\x04") and _zip_holds_pickle(p):
            why = "a zip archive holding a pickle (torch.save format)"
        if why:
            self.error(p, f"{why}: loading a pickle can execute arbitrary code, and no zoo file is one; "
                          "wsl never loads it; remove it")
        elif p.name.startswith(".") and p.name.endswith(".tmp"):
            self.warn(p, "temp file of an interrupted write: never read, nothing refers to it; safe to delete")

    # ---- tables -------------------------------------------------------------------------------
    def _read_index(self) -> ModelTable | None:
        index = self.root / INDEX_FILE
        shards = sorted((self.root / SHARD_DIR).glob("*.h5")) if (self.root / SHARD_DIR).is_dir() else []
        if not index.exists():
            if shards:
                self.error(index, f"missing although {len(shards)} shard(s) exist: the index was never merged "
                                  "(a job killed before its first merge?); rebuild it with "
                                  "`wsl-verify zoo.path=... repair=true` or by rerunning the same command")
            else:
                self.error(self.root, f"not a zoo: no {INDEX_FILE} and no {SHARD_DIR}/")
            return None
        if not index.is_file():
            return None  # reported by the walk
        try:
            return read_table(index)
        except ZooFormatError as e:
            self.error(index, _strip(str(e), index))
            return None

    def _read_all(self, sub: str, read) -> dict:
        """`read(path)` of every `<sub>/*.h5`; a file that cannot be read is reported and left out."""
        out = {}
        d = self.root / sub
        if not d.is_dir():
            return out
        for p in sorted(d.glob("*.h5")):
            if not p.is_file():
                continue
            try:
                out[p] = read(p)
            except ZooFormatError as e:
                self.error(p, _strip(str(e), p))
        return out

    def _committed(self, index: ModelTable | None, shards: dict) -> dict[str, tuple[Path, ModelRow]]:
        """Every committed model (index rows, then shard rows the index lacks) -> (where, row)."""
        out: dict = {}
        if index is not None:
            for r in index.rows:
                if r.model_id in out:
                    self.error(self.root / INDEX_FILE, f"model {r.model_id!r} is listed twice")
                out[r.model_id] = (self.root / INDEX_FILE, r)
        seen: dict = {}
        for path, t in shards.items():
            if t.jobs and path.stem not in t.jobs:
                self.error(path, f"shard of job {path.stem!r} records the job(s) {sorted(t.jobs)}")
            for r in t.rows:
                if r.model_id in seen:
                    self.error(path, f"model {r.model_id!r} is also committed in {seen[r.model_id]}: duplicated")
                    continue
                seen[r.model_id] = path
                if r.job_id != path.stem:
                    self.error(path, f"model {r.model_id!r} says job {r.job_id!r}, but this is the shard of "
                                     f"job {path.stem!r}")
                out.setdefault(r.model_id, (path, r))
        self.v.models = len(out)
        return out

    def _compare_index(self, index: ModelTable, shards: dict, annotations: dict) -> None:
        """The index is derived from the shards and annotation files; every difference is an error."""
        ipath = self.root / INDEX_FILE
        irows = {r.model_id: r for r in index.rows}
        in_shards = set()
        for path, t in shards.items():
            behind = []
            for r in t.rows:
                in_shards.add(r.model_id)
                ir = irows.get(r.model_id)
                if ir is None or _row_key(ir) != _row_key(r):
                    behind.append(r.model_id)
            if behind:
                self.error(path, f"{len(behind)} committed model(s) are missing from or stale in {INDEX_FILE} "
                                 f"(e.g. {behind[0]!r}): the merge after this commit was interrupted; rebuild "
                                 "the index with `wsl-verify zoo.path=... repair=true` or rerun the same command")
        orphaned = [m for m in irows if m not in in_shards]
        if not shards and not (self.root / SHARD_DIR).is_dir():
            self.warn(self.root / SHARD_DIR, f"missing: {INDEX_FILE} alone is readable, but it can no longer be "
                                             "rebuilt or extended")
        elif orphaned:
            self.error(ipath, f"{len(orphaned)} model(s) are in no shard (e.g. {orphaned[0]!r}): their shard was "
                              f"deleted or never written; the next merge drops them")
        ids = set(irows)
        for path, ann in annotations.items():
            group = index.annotations.get(ann.group)
            if group is None:
                self.error(path, f"annotation group {ann.group!r} is not in {INDEX_FILE}: not merged; rebuild the "
                                 "index with `wsl-verify zoo.path=... repair=true`")
                continue
            missing_cols = sorted(set(ann.columns) - set(group.columns))
            if missing_cols:
                self.error(path, f"column(s) {missing_cols} are not in {INDEX_FILE}: not merged")
            stray = [m for m in ann.model_ids if m not in ids]
            if stray:
                self.warn(path, f"annotates {len(stray)} model(s) that are not in the zoo (e.g. {stray[0]!r}); "
                                "readers ignore those rows")
        have = {ann.group for ann in annotations.values()}
        for g in sorted(set(index.annotations) - have):
            self.error(ipath, f"annotation group {g!r} has no file {ANNOTATION_DIR}/{g}.h5: the next merge "
                              "drops it")

    # ---- models and their checkpoints ---------------------------------------------------------
    def _check_models(self, committed: dict) -> set[Path]:
        referenced: set[Path] = set()
        for mid, (where, r) in committed.items():
            try:
                check_id("model id", mid)
                check_id("job id", r.job_id)
            except ZooFormatError as e:
                self.error(where, str(e))
                continue
            if r.status not in STATUSES:
                self.error(where, f"model {mid}: status {r.status!r} is not one of {', '.join(STATUSES)}")
            expected = self._expected_shapes(where, mid, r.arch)
            if not r.checkpoints:
                self.error(where, f"model {mid} lists no checkpoints")
            epochs = [e for e, _, _ in r.checkpoints]
            if len(set(epochs)) != len(epochs):
                self.error(where, f"model {mid} lists epoch(s) twice: {sorted(epochs)}")
            for epoch, rel, sha in r.checkpoints:
                try:
                    path = resolve_inside(self.root, rel)
                except ZooFormatError as e:
                    self.error(where, f"model {mid}: {_strip(str(e), self.root / INDEX_FILE)}")
                    continue
                referenced.add(path)
                if not _SHA.match(str(sha)):
                    self.error(where, f"model {mid} epoch {epoch}: recorded sha256 {str(sha)[:80]!r} is not a "
                                      "sha256 hex digest")
                if not path.exists() and not path.is_symlink():
                    self.error(path, f"listed in {where.name} (model {mid}, epoch {epoch}) but missing")
                    continue
                if not path.is_file():
                    continue  # a link or special file: reported by the walk, never opened
                self.v.checkpoints += 1
                try:
                    self._check_checkpoint(path, r, epoch, str(sha), expected)
                except OSError as e:
                    self.error(path, f"cannot be read ({e.strerror})")
        return referenced

    def _expected_shapes(self, where: Path, mid: str, arch) -> dict | None:
        """{tensor name: shape} of the architecture (built on the meta device), or None if unusable."""
        key = json.dumps(arch, sort_keys=True, default=str)
        if key not in self._skeletons:
            self._skeletons[key] = _skeleton_shapes(arch, f"model {mid}")
        got = self._skeletons[key]
        if isinstance(got, str):
            self.error(where, got)
            return None
        return got

    def _check_checkpoint(self, path: Path, row: ModelRow, epoch: int, sha: str, expected: dict | None) -> None:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                self.error(path, f"truncated: {size} bytes, not even a safetensors header length")
                return
            n = int.from_bytes(head, "little")
            if n < 2 or n > MAX_HEADER:
                what = "a pickle, not safetensors" if _is_pickle(head + f.read(8)) else "not a safetensors file"
                self.error(path, f"header length {n} is impossible: {what}")
                return
            if 8 + n > size:
                self.error(path, f"truncated: the header needs {8 + n} bytes, the file has {size}")
                return
            raw = f.read(n)
        try:
            header = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            self.error(path, f"header is not valid JSON ({e}): corrupted")
            return
        if not isinstance(header, dict):
            self.error(path, "header is not a JSON object: not a safetensors file")
            return
        meta = header.pop("__metadata__", None)
        truncated = self._check_tensors(path, header, size - 8 - n, expected)
        if self.v.checksums and not truncated and sha256_file(path) != sha:
            self.error(path, "sha256 does not match the index: the file was modified or corrupted (a bit flip?) "
                             "after it was committed")
        self._check_metadata(path, meta, row, epoch)

    def _check_tensors(self, path: Path, header: dict, data_len: int, expected: dict | None) -> bool:
        """Shapes, dtypes and byte ranges of the header's tensors; True if the file is truncated."""
        spans, shapes = [], {}
        for name, info in header.items():
            if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
                self.error(path, f"tensor {name!r}: entry must have exactly dtype, shape, data_offsets")
                return False
            dtype, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
            if dtype not in DTYPE_BYTES:
                self.error(path, f"tensor {name!r}: unknown dtype {str(dtype)[:40]!r}")
                return False
            if not isinstance(shape, list) or len(shape) > 8 or not all(
                    isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_DIMENSION for s in shape):
                self.error(path, f"tensor {name!r}: absurd shape {str(shape)[:80]}")
                return False
            if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) and not isinstance(o, bool)
                                                                      for o in offs) and 0 <= offs[0] <= offs[1]):
                self.error(path, f"tensor {name!r}: bad data_offsets {str(offs)[:80]}")
                return False
            nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
            if offs[1] - offs[0] != nbytes:
                self.error(path, f"tensor {name!r}: shape {shape} of {dtype} needs {nbytes} bytes, its offsets "
                                 f"span {offs[1] - offs[0]}")
                return False
            spans.append((offs[0], offs[1], name))
            shapes[name] = tuple(shape)
        end = max([b for _, b, _ in spans] + [0])
        if end > data_len:
            self.error(path, f"truncated: its tensors need {end} data bytes, the file holds {data_len}")
            return True
        pos = 0
        for a, b, name in sorted(spans):
            if a != pos:
                self.error(path, f"tensor {name!r} starts at byte {a}, expected {pos} (overlap or gap)")
                return False
            pos = b
        if data_len > end:
            self.error(path, f"{data_len - end} bytes after the last tensor (appended data)")
        if expected is not None and shapes != expected:
            diff = sorted(set(shapes) ^ set(expected)) or [k for k in expected if shapes[k] != expected[k]]
            self.error(path, f"tensors do not match the architecture (first difference: {diff[0]!r}: "
                             f"{shapes.get(diff[0])} vs {expected.get(diff[0])})")
        return False

    def _check_metadata(self, path: Path, meta, row: ModelRow, epoch: int) -> None:
        if meta is None:
            self.error(path, "no __metadata__: not written by wsl")
            return
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in meta.items()):
            self.error(path, "__metadata__ is not a str->str map")
            return
        if meta.get("format") != FORMAT_NAME:
            self.error(path, f"metadata format={meta.get('format')!r}, expected {FORMAT_NAME!r}")
        for key in ("format_version", "epoch"):
            if not _INT.match(meta.get(key, "")):
                self.error(path, f"metadata {key}={meta.get(key, '')[:40]!r} is not an integer")
        fv = meta.get("format_version", "")
        if _INT.match(fv) and int(fv) > FORMAT_VERSION:
            self.error(path, f"format version {int(fv)} is newer than this wsl reads ({FORMAT_VERSION}); upgrade wsl")
        if _INT.match(meta.get("epoch", "")) and int(meta["epoch"]) != epoch:
            self.error(path, f"metadata says epoch {meta['epoch']}, the index says {epoch}")
        if meta.get("model_id") != row.model_id:
            self.error(path, f"metadata says model {meta.get('model_id', '')[:80]!r}, the index says {row.model_id!r}")
        if meta.get("job_id") != row.job_id:
            self.error(path, f"metadata says job {meta.get('job_id', '')[:80]!r}, the index says {row.job_id!r}")
        try:
            arch = json.loads(meta.get("arch", ""))
        except (json.JSONDecodeError, TypeError, RecursionError):
            self.error(path, "metadata arch is not valid JSON")
            return
        if arch != row.arch:
            self.error(path, "metadata arch differs from the architecture the index records")

    # ---- files nobody refers to ---------------------------------------------------------------
    def _orphans(self, files: list[Path], referenced: set[Path], committed: dict) -> None:
        uncommitted: dict[Path, int] = {}
        for p in files:
            if p.name.startswith(".") and p.name.endswith(".tmp"):
                continue  # reported by the walk
            rel = p.relative_to(self.root).parts
            top = rel[0]
            if len(rel) == 1 and top in (INDEX_FILE, LOCK_FILE):
                continue
            if top in (SHARD_DIR, ANNOTATION_DIR) and len(rel) == 2 and p.suffix == ".h5":
                continue
            if top in KNOWN_EXTRAS:
                continue
            if top == MODEL_DIR and len(rel) == 4 and _CKPT_NAME.match(rel[3]):
                if p in referenced:
                    continue
                model = rel[2]
                if model in committed:
                    self.error(p, f"checkpoint of committed model {model!r} that the index does not list: "
                                  "not written by the job that committed it (planted or left by an older run)")
                else:
                    uncommitted[p.parent] = uncommitted.get(p.parent, 0) + 1
                continue
            self.warn(p, "not part of the zoo format (readers ignore it)")
        for d, n in sorted(uncommitted.items()):
            self.warn(d, f"{n} checkpoint file(s) not in the index: a job killed before it committed leaves these "
                         "behind; rerunning the same command finishes the job and overwrites them (or delete them)")


def _row_key(r: ModelRow):
    return r.job_id, r.status, sorted((int(e), str(p), str(s)) for e, p, s in r.checkpoints)


def _skeleton_shapes(arch, what: str) -> dict | str:
    """{name: shape} of `arch` built on the meta device, or an error message."""
    import torch

    from wsl.nets import build_net

    try:
        check_arch_limits(arch, what)
        with torch.device("meta"):
            net = build_net(arch)
    except ZooFormatError as e:
        return str(e)
    except (ConfigError, TypeError, ValueError, RuntimeError) as e:
        return f"{what}: unusable architecture {str(arch)[:200]} ({e})"
    return {k: tuple(t.shape) for k, t in net.state_dict().items()}


def repair_index(path) -> Path:
    """Rebuild index.h5 from the shards and annotation files (the only file derived from others)."""
    from wsl.zoo.writer import merge_index

    return merge_index(path)
