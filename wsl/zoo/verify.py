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
  write, files that are not part of the format (readers ignore them); tables written by an older
  wsl (format version 1) that carry no content checksums.

Content: every table and annotation file of format version 2 carries checksums of its datasets
(see wsl/zoo/table.py); a value changed, deleted or added is an error naming file and dataset. The
index is also rebuilt in memory from its shards and annotation files and compared dataset by
dataset. Checkpoints: sha256, header layout, tensor names, shapes and dtypes against the
architecture, and finite values (NaN/inf weights in a trained net are an error).

Verification only reads: file headers and bytes. It never unpickles, never builds tensors from a
file's bytes other than as plain numbers, never opens anything that is not a regular file inside
the zoo, and builds nets on the meta device only. All it reads together is bounded (ReadBudget).
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import re
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsl.errors import ConfigError, ZooFormatError, printable
from wsl.zoo.format import (ANNOTATION_DIR, FORMAT_NAME, FORMAT_VERSION, INDEX_FILE, LOCK_FILE, MAX_HEADER, MODEL_DIR,
                            SHARD_DIR, STATUSES, TORCH_DTYPES, check_arch_limits, check_id, resolve_inside,
                            sha256_file, spec_mismatch, tensor_layout)
from wsl.zoo.table import ModelRow, ModelTable, ReadBudget, read_annotation_file, read_table, table_digests

ERROR, WARNING = "error", "warning"
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".joblib")
KNOWN_EXTRAS = ("plots", "report", "merge_report")  # what wsl-plot, wsl-evaluate and wsl-merge write into a zoo
PICKLE_SCAN_BYTES = 1 << 20  # how much of a file the opcode scan for protocol 0/1 pickles reads at most
# dtypes whose values can be NaN or inf, as numpy reads their bytes (BF16: the top half of a float32)
FLOAT_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "BF16": None}
_CKPT_NAME = re.compile(r"^epoch_(\d{4,})\.safetensors$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_INT = re.compile(r"^-?\d{1,18}$")


@dataclass(frozen=True)
class Problem:
    level: str  # "error" | "warning"
    path: str  # the file (or directory) concerned
    message: str

    def __str__(self) -> str:  # file names and values come from an untrusted zoo: escaped, one line
        return printable(f"{self.level.upper():7s} {self.path}: {self.message}")


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
        return printable(f"{self.zoo}: {self.models} models, {self.checkpoints} checkpoints, {self.files} files; "
                         f"{hashed}; {len(self.errors)} errors, {len(self.warnings)} warnings")


def verify_zoo(path, checksums: bool = True) -> list[Problem]:
    """Every problem of the zoo at `path` (errors and warnings, each naming its file); [] if none."""
    return check_zoo(path, checksums).problems


def check_zoo(path, checksums: bool = True) -> Verification:
    """Like verify_zoo, with the counts of what was checked (for the report of wsl-verify)."""
    root = Path(path).expanduser().resolve()
    v = Verification(root, checksums=checksums)
    _Checker(root, v).check()
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


def _parses_as_pickle(f) -> bool:
    """Protocols 0 and 1 have no PROTO header: a file is one if its bytes decode as pickle opcodes
    ending in STOP with a consistent stack (pickletools.genops and dis decode opcodes and arguments
    and simulate the stack; they never build an object or import anything). Text and binary files
    fail within a few bytes, most bytes being no opcode. A file whose first PICKLE_SCAN_BYTES are all
    valid opcodes (at least 64), with no STOP yet, counts as a pickle too."""
    data = f.read(4096)
    while True:
        n, stop, short = 0, None, False
        try:
            for op, _, pos in pickletools.genops(io.BytesIO(data)):
                n += 1
                if op.name == "STOP":
                    stop = pos
                    break
        except Exception as e:  # noqa: BLE001 (whatever bytes make the decoder raise: no pickle, or read on)
            # the data ran out inside an opcode's argument, or before STOP: read on; anything else is no pickle
            short = any(w in str(e) for w in ("no newline found", "but only", "exhausted", "not enough data"))
            if not short:
                return False
        if stop is not None:
            try:
                pickletools.dis(data[: stop + 1], out=io.StringIO())
            except Exception:  # noqa: BLE001 (an inconsistent stack or memo: not a pickle)
                return False
            return n >= 2
        if len(data) >= PICKLE_SCAN_BYTES:
            return n >= 64
        more = f.read(PICKLE_SCAN_BYTES - len(data))
        if not more:
            return False
        data += more


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
        self.budget = ReadBudget()  # every table this run reads, together

    def error(self, path, msg: str) -> None:
        self.v.problems.append(Problem(ERROR, str(path), msg))

    def warn(self, path, msg: str) -> None:
        self.v.problems.append(Problem(WARNING, str(path), msg))

    # ------------------------------------------------------------------------------------------
    def check(self) -> None:
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
            if not isinstance(e, FileNotFoundError):  # (a directory that vanished since its parent was listed)
                self.error(e.filename, f"cannot be listed ({e.strerror}); its files were not checked")

        for dirpath, dirnames, filenames in os.walk(self.root, onerror=unlistable, followlinks=False):
            d = Path(dirpath)
            for name in list(dirnames):
                if (d / name).is_symlink():
                    self._link(d / name)
                    dirnames.remove(name)
            for name in filenames:
                p = d / name
                try:
                    st = p.lstat()
                except FileNotFoundError:
                    continue  # vanished since the listing: a running job's temp file, renamed or removed
                if stat.S_ISLNK(st.st_mode):
                    self._link(p)
                elif not stat.S_ISREG(st.st_mode):
                    self.error(p, "not a regular file (a FIFO, socket or device would block or mislead readers); "
                                  "refused")
                elif self._sniff(p):
                    files.append(p)
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
        why = None
        try:
            with open(p, "rb") as f:
                head = f.read(16)
                if p.suffix.lower() in PICKLE_SUFFIXES:
                    why = f"a {p.suffix} file (pickle-based format)"
                elif _is_pickle(head):
                    why = "a pickle (starts with the pickle protocol header)"
                elif head.startswith(b"PK\x03\x04") and _zip_holds_pickle(p):
                    why = "a zip archive holding a pickle (torch.save format)"
                elif f.seek(0) == 0 and _parses_as_pickle(f):
                    why = "a pickle (protocol 0 or 1: its bytes are pickle opcodes ending in STOP)"
        except FileNotFoundError:
            return False  # vanished since the listing (a running job's temp file)
        except OSError as e:
            self.error(p, f"cannot be read ({e.strerror})")
            return True
        if why:
            self.error(p, f"{why}: loading a pickle can execute arbitrary code, and no zoo file is one; "
                          "wsl never loads it; remove it")
        elif p.name.startswith(".") and p.name.endswith(".tmp"):
            self.warn(p, "temp file of an interrupted write: never read, nothing refers to it; safe to delete")
        return True

    # ---- tables -------------------------------------------------------------------------------
    def _read_index(self) -> ModelTable | None:
        index = self.root / INDEX_FILE
        shards = sorted((self.root / SHARD_DIR).glob("*.h5")) if (self.root / SHARD_DIR).is_dir() else []
        if index.is_symlink():
            self.error(index, f"a symbolic link (to {os.readlink(index)!r}); the writer never makes one and the "
                              "reader refuses it")
            return None
        if not index.exists():
            if shards:
                self.error(index, f"missing although {len(shards)} shard(s) exist: the index was never merged "
                                  "(a job killed before its first merge?); rebuild it with "
                                  "`wsl-verify zoo.path=... repair=true` or by rerunning the same command")
            else:
                self.error(self.root, f"not a zoo: no {INDEX_FILE} and no {SHARD_DIR}/")
            return None
        if index.is_dir():
            self.error(index, "a directory, not the index file; refused")
            return None
        if not index.is_file():
            return None  # a FIFO or device: reported by the walk
        return self._read(index, read_table)

    def _read(self, p: Path, read):
        """`read(p)` with this run's budget; content that does not match its checksums is reported (one
        error per dataset) and the file still read, so that the rest of the zoo is checked against it."""
        content: list[str] = []
        try:
            out = read(p, self.budget, content)
        except ZooFormatError as e:
            self.error(p, _strip(str(e), p))
            return None
        for msg in content:
            self.error(p, msg)
        if not out.checked:
            how = ("`wsl-verify zoo.path=... repair=true` rebuilds it with them" if p.name == INDEX_FILE else
                   "it gets them when its job (or annotation group) is written again")
            self.warn(p, "written by an older wsl (format version 1): it carries no content checksums, so a changed "
                         f"value cannot be detected in it; {how}")
        return out

    def _read_all(self, sub: str, read) -> dict:
        """`read(path)` of every `<sub>/*.h5`; a file that cannot be read is reported and left out."""
        out = {}
        d = self.root / sub
        if not d.is_dir():
            return out
        for p in sorted(d.glob("*.h5")):
            if p.is_symlink() and not p.resolve().is_relative_to(self.root):
                continue  # reported by the walk, never read
            if p.is_dir():
                self.error(p, "a directory, not a zoo file; refused")
                continue
            if not p.is_file():
                continue
            got = self._read(p, read)
            if got is not None:
                out[p] = got
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
        errors_before = len(self.v.errors)
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
        if len(self.v.errors) == errors_before and shards and self._all_read(shards, annotations):
            self._compare_index_content(index, shards, annotations)

    def _all_read(self, shards: dict, annotations: dict) -> bool:
        def n_files(sub):
            d = self.root / sub
            return len([p for p in d.glob("*.h5") if p.is_file()]) if d.is_dir() else 0
        return n_files(SHARD_DIR) == len(shards) and n_files(ANNOTATION_DIR) == len(annotations)

    def _compare_index_content(self, index: ModelTable, shards: dict, annotations: dict) -> None:
        """Every dataset of the index against the index the merge makes of the shards and annotation
        files (rebuilt in memory): a value edited in the index alone, and resealed, is found here."""
        from wsl.zoo.table import H5_ERRORS, _open, content_digests
        from wsl.zoo.writer import index_table

        ipath = self.root / INDEX_FILE
        try:
            rebuilt = index_table(self.root, shards, [annotations[p] for p in sorted(annotations)])
            want = table_digests(rebuilt)
        except ZooFormatError as e:
            self.error(ipath, f"cannot be rebuilt from its sources to compare: {e}")
            return
        except H5_ERRORS as e:
            self.error(ipath, f"cannot be compared with its sources ({type(e).__name__}: {e})")
            return
        try:  # opened as the reader opens it (its global heaps checked before HDF5 walks them)
            with _open(ipath) as f:
                have = content_digests(f)
        except ZooFormatError as e:
            self.error(ipath, f"cannot be compared with its sources ({e})")
            return
        except H5_ERRORS as e:
            self.error(ipath, f"cannot be compared with its sources ({type(e).__name__}: {e})")
            return
        report = self.error if index.checked else self.warn
        old = "" if index.checked else " (an index of format version 1: an older wsl may have merged it differently)"
        diff = [k for k in sorted(set(want) | set(have)) if k != "/@attrs" and want.get(k) != have.get(k)]
        for k in diff:
            what = f"the attributes of {k[:-6]}" if k.endswith("@attrs") else k
            how = "missing" if k not in have else "not made by a merge" if k not in want else "differs"
            report(ipath, f"{what}: {how} from what {SHARD_DIR}/ and {ANNOTATION_DIR}/ give{old}: the index was "
                          "changed after its merge; rebuild it with `wsl-verify zoo.path=... repair=true`")
        for k in ("zoo_name", "config", "n_jobs"):
            if not _same(index.attrs.get(k), rebuilt.attrs.get(k)):
                report(ipath, f"root attribute {k!r} differs from what {SHARD_DIR}/ gives{old}; rebuild the index "
                              "with `wsl-verify zoo.path=... repair=true`")

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
            expected = self._expected_specs(where, mid, r.arch)
            if expected is not None and r.hparams.get("finetune") == "lora":  # adapters and buffers
                expected = self._lora_specs(where, r)
            if not r.checkpoints:
                self.error(where, f"model {mid} lists no checkpoints")
            epochs = [e for e, _, _ in r.checkpoints]
            if len(set(epochs)) != len(epochs):
                self.error(where, f"model {mid} lists epoch(s) twice: {sorted(epochs)}")
            nonfinite = []  # (epoch, count)
            for epoch, rel, sha in r.checkpoints:
                try:
                    path = resolve_inside(self.root, rel)  # the name the index gives, a link not followed
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
                if path.is_dir():
                    self.error(path, f"a directory, not the checkpoint file of model {mid}, epoch {epoch}; refused")
                    continue
                if not path.is_file():
                    continue  # a link leaving the zoo or a special file: reported by the walk, never opened
                self.v.checkpoints += 1
                try:
                    bad = self._check_checkpoint(path, r, epoch, str(sha), expected)
                except OSError as e:
                    self.error(path, f"cannot be read ({e.strerror})")
                    continue
                if bad:
                    nonfinite.append((epoch, bad))
            if nonfinite:
                self._report_nonfinite(where, r, nonfinite)
        return referenced

    def _report_nonfinite(self, where: Path, r: ModelRow, nonfinite: list) -> None:
        """NaN/inf weights: an error in a net the zoo calls trained (consumers would learn from, or
        evaluate, garbage); expected in a diverged net, a counted warning in a sampled one (generated
        zoos count them as failed samples)."""
        eps = ", ".join(f"epoch {e} ({n})" for e, n in nonfinite)
        msg = f"model {r.model_id} (status {r.status}): non-finite weights (NaN or inf; count per checkpoint): {eps}"
        if r.status == "diverged":
            return
        if r.status == "sampled":
            self.warn(where, f"{msg}; a failed sample: consumers skip it")
        else:
            self.error(where, f"{msg}: a {r.status} net must hold finite weights")

    def _expected_specs(self, where: Path, mid: str, arch) -> dict | None:
        """{tensor name: (dtype, shape)} of the architecture (built on the meta device), or None if unusable."""
        key = json.dumps(arch, sort_keys=True, default=str)
        if key not in self._skeletons:
            self._skeletons[key] = _skeleton_specs(arch, f"model {mid}")
        got = self._skeletons[key]
        if isinstance(got, str):
            self.error(where, got)
            return None
        return got

    def _lora_specs(self, where: Path, r: ModelRow) -> dict | None:
        """{name: (dtype, shape)} of a LoRA fine-tune's checkpoints (wsl.nets.lora), or None if its
        lora_* hyperparameters are unusable."""
        import torch

        from wsl.nets import build_net
        from wsl.nets.lora import checkpoint_tensors, spec_from_hparams

        try:
            with torch.device("meta"):
                net = build_net(r.arch)
            return {k: (TORCH_DTYPES.get(str(d), str(d)), s)
                    for k, (d, s) in checkpoint_tensors(net, spec_from_hparams(net, r.hparams)).items()}
        except (ConfigError, KeyError, TypeError, ValueError, RuntimeError) as e:
            self.error(where, f"LoRA model {r.model_id}: unusable lora_* hyperparameters ({e})")
            return None

    def _check_checkpoint(self, path: Path, row: ModelRow, epoch: int, sha: str, expected: dict | None) -> int:
        """Every check of one checkpoint file; returns how many of its float values are not finite."""
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                self.error(path, f"truncated: {size} bytes, not even a safetensors header length")
                return 0
            n = int.from_bytes(head, "little")
            if n < 2 or n > MAX_HEADER:
                what = "a pickle, not safetensors" if _is_pickle(head + f.read(8)) else "not a safetensors file"
                self.error(path, f"header length {n} is impossible: {what}")
                return 0
            if 8 + n > size:
                self.error(path, f"truncated: the header needs {8 + n} bytes, the file has {size}")
                return 0
            raw = f.read(n)
        try:
            header = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            self.error(path, f"header is not valid JSON ({e}): corrupted")
            return 0
        if not isinstance(header, dict):
            self.error(path, "header is not a JSON object: not a safetensors file")
            return 0
        meta = header.pop("__metadata__", None)
        problems, truncated, specs = tensor_layout(header, size - 8 - n)
        for msg in problems:
            self.error(path, msg)
        appended = bool(problems) and problems[0].endswith("(appended data)")
        fits = (not problems or appended) and expected is not None
        if fits and (why := spec_mismatch(specs, expected)) is not None:
            self.error(path, why)
            fits = False
        if self.v.checksums and not truncated and sha256_file(path) != sha:
            self.error(path, "sha256 does not match the index: the file was modified or corrupted (a bit flip?) "
                             "after it was committed")
        # the values, read tensor by tensor: only of tensors the architecture declares (bounded by it)
        bad = _count_nonfinite(path, header, 8 + n) if fits else 0
        self._check_metadata(path, meta, row, epoch)
        return bad

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


def _same(a, b) -> bool:
    """Equal values of attributes read from a file (an array from a crafted file has no plain truth value)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b))
    return bool(a == b)


def _row_key(r: ModelRow):
    return r.job_id, r.status, sorted((int(e), str(p), str(s)) for e, p, s in r.checkpoints)


def _skeleton_specs(arch, what: str) -> dict | str:
    """{name: (safetensors dtype, shape)} of `arch` built on the meta device, or an error message."""
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
    return {k: (TORCH_DTYPES.get(str(t.dtype), str(t.dtype)), tuple(t.shape)) for k, t in net.state_dict().items()}


def _count_nonfinite(path: Path, header: dict, start: int) -> int:
    """NaN and inf values among the float tensors of a checkpoint (data from byte `start`), read from
    its bytes as plain numbers, one tensor at a time."""
    bad = 0
    with open(path, "rb") as f:
        for info in header.values():
            dtype = info["dtype"]
            if dtype not in FLOAT_DTYPES:
                continue
            a, b = info["data_offsets"]
            f.seek(start + a)
            raw = f.read(b - a)
            if dtype == "BF16":  # bfloat16 is the top half of a float32
                vals = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                vals = np.frombuffer(raw, dtype=np.dtype(FLOAT_DTYPES[dtype]).newbyteorder("<"))
            bad += int(vals.size - np.count_nonzero(np.isfinite(vals)))
    return bad


def repair_index(path) -> Path:
    """Rebuild index.h5 from the shards and annotation files (the only file derived from others)."""
    from wsl.zoo.writer import merge_index

    return merge_index(path)
