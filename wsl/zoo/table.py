"""The model table: the in-memory form of a shard and of the merged index, and its HDF5 layout.

HDF5 layout (the same for `shards/<job>.h5` and `index.h5`):
  attrs: format, format_version, zoo_name, config (JSON), created_by
  /models/{model_id, job_id, status, arch (JSON), diverged_epoch}       [M]
  /models/hparams/<name>                                               [M]  int64 | float64 | str
  /metrics/epochs [E];  /metrics/<train|val|test>_<loss|acc>           [M, E]  (NaN where absent)
  /checkpoints/{epoch [M, K] int (-1 = none), path [M, K] str, sha256 [M, K] str}
  /jobs/{job_id, config (JSON), overrides (JSON)}                      [J]
  /annotations/<group>/<column> [M, ...] (+ attrs: estimator settings)  (index only)
  /integrity/{path, sha256} [D] str + root attr content_sha256           (format version >= 2)

Content checksums (format version 2): every dataset and every object's attributes have a sha256
(over dtype, shape and bytes; see `content_digests`), listed in /integrity, which the root
attribute `content_sha256` seals. Readers recompute them, so a changed value, a deleted or an added
dataset is named (file + dataset path). Annotation files carry the same. A file of format version 1
has none: it is read as before, and `checked` on what was read is False (wsl-verify warns).
These checksums detect corruption and edits by mistake, not a forger: whoever can write a file can
recompute them (`seal_file`); trusting a stranger's zoo needs a checksum of the whole from its author.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import mmap
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from wsl import __version__
from wsl.errors import ZooFormatError
from wsl.zoo.format import FORMAT_NAME, FORMAT_VERSION, METRICS

STR = h5py.string_dtype("utf-8")
# An untrusted file may declare huge datasets it never wrote (a 270 KB file can promise terabytes):
# what one file and one read session (a Zoo, a wsl-verify run) may make us hold, in elements.
# 20M elements: 10k models x 100 epochs x 20 metrics; a float64 element costs 8 bytes, a string ~60.
MAX_ELEMENTS = 20_000_000  # per file, all datasets together
MAX_SESSION_ELEMENTS = 100_000_000  # per read session, all files together
INTEGRITY_GROUP = "integrity"  # /integrity/path, /integrity/sha256: the content manifest
SEAL_ATTR = "content_sha256"  # root attribute: sha256 of the manifest
CHECKSUM_VERSION = 2  # format versions from this one on must carry content checksums
# Attributes are read whole by HDF5 (no partial reads): each is sized through the low-level API first.
# A zoo file writes a handful per object, each a scalar or one JSON string.
MAX_ATTRS = 256  # per object
MAX_ATTR_BYTES = 1 << 20  # per attribute, as stored (a variable-length string counts 16, its text aside)
# Type classes an attribute may have (numbers, text, bool as enum). A flipped bit in a string type's
# header makes it a variable-length sequence of an invalid kind, and h5py's read of that crashes the
# process (segmentation fault): such types are refused before any value is read, datasets' too.
ATTR_TYPE_CLASSES = (h5py.h5t.INTEGER, h5py.h5t.FLOAT, h5py.h5t.STRING, h5py.h5t.ENUM)


class ReadBudget:
    """Elements the reads of one session may still load (shared by every file it reads)."""

    def __init__(self, limit: int = MAX_SESSION_ELEMENTS):
        self.limit, self.used = int(limit), 0

    def charge(self, n: int, path) -> None:
        if self.used + n > self.limit:
            raise ZooFormatError(f"{path}: reading it would make {self.used + n} elements in this session "
                                 f"(limit {self.limit}); refused")
        self.used += n


@dataclass
class ModelRow:
    model_id: str
    job_id: str
    status: str
    arch: dict
    hparams: dict
    history: dict  # metric -> list of floats, index = epoch
    checkpoints: list  # [(epoch, relpath, sha256)]
    diverged_epoch: int = -1


@dataclass
class Annotation:
    """Extra per-model columns written after training (landscape metrics, alignment barriers...)."""

    group: str
    model_ids: list
    columns: dict  # name -> np.ndarray [M, ...] (numeric) or list[str]
    attrs: dict = field(default_factory=dict)
    checked: bool = True  # False: read from a file without content checksums (format version 1)


@dataclass
class ModelTable:
    rows: list = field(default_factory=list)
    jobs: dict = field(default_factory=dict)  # job_id -> {"config": dict, "overrides": list}
    attrs: dict = field(default_factory=dict)
    annotations: dict = field(default_factory=dict)  # group -> Annotation
    checked: bool = True  # False: read from a file without content checksums (format version 1)

    @property
    def ids(self) -> list[str]:
        return [r.model_id for r in self.rows]


# ---------------------------------------------------------------------------------------------
def _column(values: list):
    """A list of Python scalars -> (numpy array, dtype) for HDF5; mixed or text -> str."""
    vals = [json.dumps(v) if isinstance(v, (list, dict, tuple)) else v for v in values]
    vals = [int(v) if isinstance(v, (bool, np.bool_)) else v for v in vals]
    numeric = all(v is None or (isinstance(v, (int, float, np.integer, np.floating))) for v in vals)
    if numeric:
        if all(isinstance(v, (int, np.integer)) for v in vals):
            return np.asarray(vals, dtype=np.int64)
        return np.asarray([np.nan if v is None else float(v) for v in vals], dtype=np.float64)
    return np.asarray(["" if v is None else str(v) for v in vals], dtype=object)


def _write_strings(g, name, values):
    g.create_dataset(name, data=np.asarray(list(values), dtype=object), dtype=STR)


@contextlib.contextmanager
def _h5_create(path: Path):
    """A new HDF5 file at `path`, built in memory and written in one plain write: HDF5's own writes
    on a full disk print pages of errors and may crash the process; Python's write raises one OSError
    (ENOSPC), which the apps report as one line naming the file."""
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        yield f
    with open(path, "wb") as out:
        out.write(buf.getbuffer())


def write_table(path: Path, table: ModelTable) -> None:
    """Write `table` to an HDF5 file at `path` (callers write to a temp path and rename), sealed."""
    with _h5_create(path) as f:
        _write_table_into(f, table)
        seal(f)


def table_digests(table: ModelTable) -> dict:
    """The content digests the file `write_table(table)` would hold (built in memory, nothing written):
    what wsl-verify compares an index with, rebuilt from its shards and annotation files."""
    with h5py.File(f"wsl-in-memory-{id(table)}.h5", "w", driver="core", backing_store=False) as f:
        _write_table_into(f, table)
        return content_digests(f)


def _write_table_into(f: h5py.File, table: ModelTable) -> None:
    rows = table.rows
    m = len(rows)
    f.attrs["format"] = FORMAT_NAME
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["created_by"] = f"wsl {__version__}"
    for k, v in table.attrs.items():
        f.attrs[k] = v if isinstance(v, (int, float, str)) else json.dumps(v)
    g = f.create_group("models")
    _write_strings(g, "model_id", [r.model_id for r in rows])
    _write_strings(g, "job_id", [r.job_id for r in rows])
    _write_strings(g, "status", [r.status for r in rows])
    _write_strings(g, "arch", [json.dumps(r.arch, sort_keys=True) for r in rows])
    g.create_dataset("diverged_epoch", data=np.asarray([r.diverged_epoch for r in rows], dtype=np.int64))
    hp = g.create_group("hparams")
    names = sorted({k for r in rows for k in r.hparams})
    for name in names:
        col = _column([r.hparams.get(name) for r in rows])
        if col.dtype == object:
            _write_strings(hp, name, col)
        else:
            hp.create_dataset(name, data=col)
    mg = f.create_group("metrics")
    n_ep = max([len(v) for r in rows for v in r.history.values()] + [0])
    mg.create_dataset("epochs", data=np.arange(n_ep, dtype=np.int64))
    metric_names = sorted(set(METRICS) | {k for r in rows for k in r.history})
    for name in metric_names:
        a = np.full((m, n_ep), np.nan)
        for i, r in enumerate(rows):
            h = r.history.get(name, [])
            a[i, : len(h)] = [np.nan if v is None else float(v) for v in h]
        mg.create_dataset(name, data=a)
    cg = f.create_group("checkpoints")
    k = max([len(r.checkpoints) for r in rows] + [0])
    ep = np.full((m, k), -1, dtype=np.int64)
    paths = np.full((m, k), "", dtype=object)
    shas = np.full((m, k), "", dtype=object)
    for i, r in enumerate(rows):
        for j, (e, p, s) in enumerate(sorted(r.checkpoints)):
            ep[i, j], paths[i, j], shas[i, j] = e, p, s
    cg.create_dataset("epoch", data=ep)
    cg.create_dataset("path", data=paths, dtype=STR)
    cg.create_dataset("sha256", data=shas, dtype=STR)
    jg = f.create_group("jobs")
    jobs = sorted(table.jobs)
    _write_strings(jg, "job_id", jobs)
    _write_strings(jg, "config", [json.dumps(table.jobs[j].get("config", {}), sort_keys=True) for j in jobs])
    _write_strings(jg, "overrides", [json.dumps(table.jobs[j].get("overrides", [])) for j in jobs])
    if table.annotations:
        ag = f.create_group("annotations")
        pos = {mid: i for i, mid in enumerate(r.model_id for r in rows)}
        for name, ann in sorted(table.annotations.items()):
            _write_annotation_aligned(ag.create_group(name), ann, pos, m)


def _write_annotation_aligned(g, ann: Annotation, pos: dict, m: int) -> None:
    """Columns of an annotation, re-ordered to the index's rows (NaN / "" where a model has none)."""
    for k, v in ann.attrs.items():
        g.attrs[k] = v if isinstance(v, (int, float, str)) else json.dumps(v)
    where = [(pos[mid], j) for j, mid in enumerate(ann.model_ids) if mid in pos]
    for name, col in ann.columns.items():
        if isinstance(col, np.ndarray) and col.dtype != object:
            out = np.full((m, *col.shape[1:]), np.nan if col.dtype.kind == "f" else -1, dtype=col.dtype)
            for i, j in where:
                out[i] = col[j]
            g.create_dataset(name, data=out)
        else:
            out = np.full(m, "", dtype=object)
            for i, j in where:
                out[i] = str(col[j])
            g.create_dataset(name, data=out, dtype=STR)


def write_annotation_file(path: Path, ann: Annotation) -> None:
    with _h5_create(path) as f:
        _write_annotation_into(f, ann)
        seal(f)


def _write_annotation_into(f: h5py.File, ann: Annotation) -> None:
    f.attrs["format"] = FORMAT_NAME
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["group"] = ann.group
    for k, v in ann.attrs.items():
        f.attrs[f"attr:{k}"] = v if isinstance(v, (int, float, str)) else json.dumps(v)
    _write_strings(f, "model_id", ann.model_ids)
    cg = f.create_group("columns")
    for name, col in ann.columns.items():
        if isinstance(col, np.ndarray) and col.dtype != object:
            cg.create_dataset(name, data=col)
        else:
            _write_strings(cg, name, [str(c) for c in col])


# ---- content checksums ----------------------------------------------------------------------
def _canon(v) -> bytes:
    """Bytes that stand for an attribute value: type, dtype, shape and contents."""
    if isinstance(v, str):
        return b"s" + v.encode("utf-8", "surrogatepass")
    if isinstance(v, bytes):
        return b"b" + v
    if isinstance(v, (bool, int, float)):
        return b"p" + repr(v).encode()
    if not isinstance(v, (np.ndarray, np.generic)):  # e.g. an HDF5 object reference in a crafted file
        return b"r" + repr(v).encode("utf-8", "surrogatepass")
    a = np.asarray(v)
    if a.dtype.kind == "O":
        return b"o" + repr(a.shape).encode() + b"".join(len(c).to_bytes(8, "little") + c
                                                         for c in (_canon(x) for x in a.reshape(-1)))
    return b"a" + a.dtype.str.encode() + repr(a.shape).encode() + np.ascontiguousarray(a).tobytes()


def _dataset_digest(ds: h5py.Dataset) -> str:
    """sha256 over a dataset's dtype, shape and values (text: each value's UTF-8 bytes, length-prefixed)."""
    h = hashlib.sha256()
    if h5py.check_string_dtype(ds.dtype) is not None and ds.dtype.kind == "O":
        vals = np.asarray(ds[()], dtype=object).reshape(-1)
        h.update(b"vlen-str" + repr(ds.shape).encode())
        for x in vals:
            b = x if isinstance(x, bytes) else str(x).encode("utf-8", "surrogatepass")
            h.update(len(b).to_bytes(8, "little") + b)
    else:
        h.update(_canon(ds[()]))
    return h.hexdigest()


def _attrs_digest(obj) -> str | None:
    values = read_attrs(obj, obj.file.filename)
    names = sorted(k for k in values if not (obj.name == "/" and k == SEAL_ATTR))
    if not names:
        return None
    h = hashlib.sha256()
    for k in names:
        b = _canon(values[k])
        h.update(len(k.encode()).to_bytes(8, "little") + k.encode() + len(b).to_bytes(8, "little") + b)
    return h.hexdigest()


def content_digests(f: h5py.File, skip_root_attrs: bool = False) -> dict:
    """{"/dataset/path": sha256, "/group/path@attrs": sha256} of everything a zoo file holds, except the
    manifest itself (/integrity and the root attribute content_sha256)."""
    out = {}
    if not skip_root_attrs and (d := _attrs_digest(f)) is not None:
        out["/@attrs"] = d

    def visit(name, obj):
        if name == INTEGRITY_GROUP or name.startswith(INTEGRITY_GROUP + "/"):
            return
        if isinstance(obj, h5py.Dataset):
            out["/" + name] = _dataset_digest(obj)
        if (d := _attrs_digest(obj)) is not None:
            out[f"/{name}@attrs"] = d

    f.visititems(visit)
    return out


def _manifest_seal(paths, shas) -> str:
    return hashlib.sha256("".join(f"{s}  {p}\n" for p, s in zip(paths, shas)).encode("utf-8", "surrogatepass")
                          ).hexdigest()


def seal(f: h5py.File) -> None:
    """Write the content manifest of an open (writable) zoo file: /integrity/{path, sha256} and the
    root attribute content_sha256 over it. Called last, after everything else is written."""
    if INTEGRITY_GROUP in f:
        del f[INTEGRITY_GROUP]
    digests = content_digests(f)
    paths = sorted(digests)
    shas = [digests[p] for p in paths]
    g = f.create_group(INTEGRITY_GROUP)
    _write_strings(g, "path", paths)
    _write_strings(g, "sha256", shas)
    f.attrs[SEAL_ATTR] = _manifest_seal(paths, shas)


def seal_file(path: Path) -> None:
    """Recompute the content checksums of a zoo file after a deliberate edit with h5py (a forger can do
    the same: the checksums guard against corruption and mistakes, not against a hostile sender)."""
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = max(int(f.attrs.get("format_version", FORMAT_VERSION)), CHECKSUM_VERSION)
        seal(f)


def content_problems(f: h5py.File, path) -> list[str] | None:
    """What differs between a file's content and its manifest, each naming the dataset; None for a file
    of format version 1 (no checksums); [] when everything matches."""
    attrs = read_attrs(f, path, ("format_version", SEAL_ATTR))
    version = int(attrs.get("format_version", 0))
    has_manifest = INTEGRITY_GROUP in f or SEAL_ATTR in attrs
    if version < CHECKSUM_VERSION and not has_manifest:
        return None
    if not has_manifest:
        return [f"format version {version} carries content checksums, this file has none (/{INTEGRITY_GROUP} and "
                f"attribute {SEAL_ATTR} are missing): stripped or damaged"]
    problems = []
    try:
        g = f[INTEGRITY_GROUP]
        paths, shas = _strings(g["path"]), _strings(g["sha256"])
        if len(paths) != len(shas):
            raise ValueError("path and sha256 differ in length")
    except (KeyError, ValueError, TypeError, ZooFormatError) as e:
        return [f"/{INTEGRITY_GROUP}: the content manifest is unreadable ({_one_line(e)})"]
    stored = attrs.get(SEAL_ATTR)
    if _attr_value(stored) != _manifest_seal(paths, shas):
        problems.append(f"/{INTEGRITY_GROUP}: the content manifest does not match its seal (attribute {SEAL_ATTR}): "
                        "the manifest or its seal was changed")
    expected = dict(zip(paths, shas))
    actual = content_digests(f)
    for name in sorted(set(expected) | set(actual)):
        what = f"the attributes of {name[:-6] or '/'}" if name.endswith("@attrs") else name
        if name not in actual:
            problems.append(f"{what}: missing (the content manifest lists it): deleted after the file was written")
        elif name not in expected:
            problems.append(f"{what}: not in the content manifest: added after the file was written")
        elif actual[name] != expected[name]:
            problems.append(f"{what}: content does not match its checksum: changed after the file was written "
                            "(corruption or an edit)")
    return problems


def _check_content(f: h5py.File, path, problems: list | None) -> bool:
    """Check the content checksums; True if the file had them. With `problems` given (wsl-verify) the
    differences are appended there ("<dataset>: ..."); otherwise the first one raises ZooFormatError."""
    found = content_problems(f, path)
    if found is None:
        return False
    if found and problems is None:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise ZooFormatError(f"{path}: {found[0]}{more}; refused")
    if problems is not None:
        problems.extend(found)
    return True


# ---------------------------------------------------------------------------------------------
def read_attrs(obj, path, names=None) -> dict:
    """The attributes of `obj` (all, or those of `names` it has), each sized through the low-level API
    before its value is read: at most MAX_ATTRS per object, MAX_ATTR_BYTES each; else ZooFormatError
    naming the file, the object and the attribute. (A crafted dataspace or type would otherwise make
    h5py allocate whatever it declares.)"""
    n = h5py.h5a.get_num_attrs(obj.id)
    if n > MAX_ATTRS:
        raise ZooFormatError(f"{path}: {obj.name} has {n} attributes (limit {MAX_ATTRS}); refused")
    out = {}
    for k in list(obj.attrs) if names is None else [k for k in names if k in obj.attrs]:
        a = obj.attrs.get_id(k)
        shape = a.shape  # None: an empty dataspace (no value to read)
        elements = 0 if shape is None else math.prod(shape)
        tid = a.get_type()
        if tid.get_class() not in ATTR_TYPE_CLASSES:
            raise ZooFormatError(f"{path}: attribute {k!r} of {obj.name} has HDF5 type class {tid.get_class()} "
                                 "(zoo attributes are numbers or text); refused")
        size = elements * tid.get_size()
        if size > MAX_ATTR_BYTES:
            raise ZooFormatError(f"{path}: attribute {k!r} of {obj.name} declares {elements} elements (shape {shape}) "
                                 f"of {a.get_type().get_size()} bytes; absurd, refused")
        out[k] = obj.attrs[k]
    return out


def _check_header(f: h5py.File, path: Path) -> None:
    attrs = read_attrs(f, path, ("format", "format_version"))
    if attrs.get("format") != FORMAT_NAME:
        raise ZooFormatError(f"{path}: not a wsl zoo file (attribute format={attrs.get('format')!r})")
    v = attrs.get("format_version")
    if not isinstance(v, (int, np.integer)):
        raise ZooFormatError(f"{path}: format_version {v!r} is not an integer")
    if int(v) > FORMAT_VERSION:
        raise ZooFormatError(f"{path}: format version {int(v)} is newer than this wsl reads ({FORMAT_VERSION}); "
                             "upgrade wsl")


def _strings(ds) -> list[str]:
    if ds.dtype.kind not in ("O", "S", "U"):
        raise ZooFormatError(f"{ds.file.filename}:{ds.name} should hold text, holds {ds.dtype}")
    return [s for s in ds.asstr()[()]] if ds.ndim else [ds.asstr()[()]]


def _json(text: str, where: str):
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError, RecursionError) as e:
        raise ZooFormatError(f"{where}: not valid JSON ({e})") from e


def _attr_value(v):
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.generic):
        v = v.item()
    return v


# What h5py raises on a damaged or crafted file: OSError/KeyError/ValueError for most, RuntimeError
# from HDF5's own checks (wrong B-tree or heap signature, "Link visitation failed", ...),
# SystemError when such an error surfaces while h5py releases its lock, OverflowError for absurd
# sizes. Every read of an untrusted table turns these into a ZooFormatError naming the file.
H5_ERRORS = (KeyError, ValueError, TypeError, OSError, IndexError, AttributeError, RuntimeError, SystemError,
             OverflowError)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


def _open(path: Path) -> h5py.File:
    if not Path(path).is_file():  # a FIFO or device would block the reader
        raise ZooFormatError(f"{path}: missing or not a regular file")
    _check_global_heaps(path)
    try:
        return h5py.File(path, "r")
    except H5_ERRORS as e:
        raise ZooFormatError(f"{path}: cannot be opened as HDF5 ({_one_line(e)})") from e


# HDF5 global heap collections (where every variable-length string lives, attributes included):
# "GCOL", version 1, 3 reserved bytes (not checked by HDF5), collection size (8 bytes), then objects,
# each: index (2 bytes), reference count (2), reserved (4), size (8), data padded to 8 bytes; index 0 is
# the free space and has no header of its own to skip. HDF5 (2.0.0 and earlier) walks a collection by
# these sizes when it first reads a string from it, and trusts them: a free-space object of size 0
# never advances the walk (one flipped bit in a string's size lands the walk on zeroed free space: the
# reader spun forever at 100% CPU in H5Aread, where no signal reaches it), a size running past the
# collection reads past HDF5's buffer. So the walk is done here first, on the raw bytes.
# The sizes are "lengths" of the width the superblock declares: h5py (so wsl) writes 8 and no user block.
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_GCOL = b"GCOL\x01"  # signature and version 1: HDF5 refuses any other version itself
_GCOL_OBJ = 16  # bytes of an object header


def _global_heap_problem(raw, at: int) -> str | None:
    size = int.from_bytes(raw[at + 8 : at + 16], "little")
    end = at + size
    if end > len(raw):
        return None  # HDF5 cannot read it whole and refuses it itself
    p = at + 16
    while p < end:
        if p + _GCOL_OBJ > end:  # a tail too small for a header: free space (as HDF5 reads it)
            break
        idx = int.from_bytes(raw[p : p + 2], "little")
        obj = int.from_bytes(raw[p + 8 : p + 16], "little")
        need = obj if idx == 0 else _GCOL_OBJ + (obj + 7) // 8 * 8
        if need == 0:  # HDF5 would read this object header again and again, forever
            return f"global heap collection at byte {at}: free space of 0 bytes at byte {p} (corrupt)"
        if p + need > end:
            return (f"global heap collection at byte {at}: object {idx} at byte {p} declares {obj} bytes, past the "
                    "end of its collection (corrupt)")
        p += need
    return None


def _check_global_heaps(path: Path) -> None:
    """Refuse a file whose global heap collections HDF5 would walk forever or past their end, or whose
    superblock is not where and what h5py writes (then the walk here would not be HDF5's). Collections
    are found by signature (one is not otherwise reachable without parsing every object header); a
    stray match in data would have to hold signature, version and an inconsistent walk to be refused.
    Cost: one pass over the file's bytes (mmap) and over its strings' headers."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
            if head[:8] != _HDF5_SIGNATURE or len(head) < 16:
                raise ZooFormatError(f"{path}: cannot be opened as HDF5 (no superblock at its start, where wsl "
                                     "writes it)")
            lengths = head[14] if head[8] < 2 else head[10]  # superblock versions 0-1 | 2-3
            if lengths != 8:
                raise ZooFormatError(f"{path}: its HDF5 superblock declares {lengths}-byte lengths (wsl writes 8); "
                                     "refused")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as raw:
                at = raw.find(_GCOL)
                while at >= 0:
                    if (problem := _global_heap_problem(raw, at)) is not None:
                        raise ZooFormatError(f"{path}: {problem}; refused")
                    at = raw.find(_GCOL, at + 1)
    except (OSError, ValueError) as e:
        raise ZooFormatError(f"{path}: cannot be read ({_one_line(e)})") from e


def _check_untrusted(f: h5py.File, path: Path, budget: ReadBudget | None = None) -> None:
    """Refuse what a zoo file never holds but a crafted one could: links to other files (external
    links, external or virtual storage would read arbitrary files), datasets declaring more than
    they store (never-written chunks read as fill values: a tiny file, gigabytes of memory) and more
    elements than one file or one read session may load."""
    bad = []
    total = [0]

    def count_attrs(obj):  # what its attributes will load (sized, not read); read_attrs bounds each
        n = h5py.h5a.get_num_attrs(obj.id)
        if n > MAX_ATTRS:
            bad.append(f"{obj.name} has {n} attributes (limit {MAX_ATTRS})")
            return
        for i in range(n):
            shape = h5py.h5a.open(obj.id, index=i).shape
            total[0] += 0 if shape is None else math.prod(shape)

    def visit(name, link):
        if not isinstance(link, h5py.HardLink):
            bad.append(f"/{name} is a {type(link).__name__} (zoo files hold no links)")
            return
        obj = f.get(name)
        count_attrs(obj)
        if isinstance(obj, h5py.Dataset):
            if obj.id.get_type().get_class() == h5py.h5t.VLEN:  # text is class STRING: see ATTR_TYPE_CLASSES
                bad.append(f"/{name} holds variable-length sequences (zoo files hold numbers and text)")
            elif obj.external or obj.is_virtual:
                bad.append(f"/{name} stores its data in another file")
            elif obj.size > MAX_ELEMENTS:
                bad.append(f"/{name} declares {obj.size} elements (shape {obj.shape}); absurd")
            else:
                total[0] += obj.size
                need = obj.size * (obj.dtype.itemsize if obj.dtype.kind != "O" else 1)
                if obj.size and obj.id.get_storage_size() < need:
                    bad.append(f"/{name} declares {obj.size} elements (shape {obj.shape}) but stores only "
                               f"{obj.id.get_storage_size()} bytes (never written, or compressed: zoo files are "
                               "neither)")

    count_attrs(f)
    f.visititems_links(visit)
    if not bad and total[0] > MAX_ELEMENTS:
        bad.append(f"its datasets declare {total[0]} elements in all (limit {MAX_ELEMENTS} per file)")
    if bad:
        raise ZooFormatError(f"{path}: {bad[0]}; refused")
    if budget is not None:
        budget.charge(total[0], path)


def read_table(path: Path, budget: ReadBudget | None = None, problems: list | None = None) -> ModelTable:
    """Read a shard or index file; every structural problem raises ZooFormatError naming the file, and
    so does content that does not match its checksums, unless `problems` is given: then those are
    appended to it (each "<dataset>: ...") and the content is returned as read (wsl-verify).
    `budget` bounds what a read session loads in all."""
    f = _open(path)
    try:
        with f:
            _check_header(f, path)
            _check_untrusted(f, path, budget)
            checked = _check_content(f, path, problems)
            table = _read_table(f, path)
            table.checked = checked
            return table
    except ZooFormatError:
        raise
    except H5_ERRORS as e:
        raise ZooFormatError(f"{path}: malformed zoo table ({_one_line(e)})") from e


def _read_table(f: h5py.File, path: Path) -> ModelTable:
    g = f["models"]
    ids = _strings(g["model_id"])
    m = len(ids)
    cols = {k: _strings(g[k]) for k in ("job_id", "status", "arch")}
    div = np.asarray(g["diverged_epoch"][()])
    for k, v in cols.items():
        if len(v) != m:
            raise ZooFormatError(f"{path}: /models/{k} has {len(v)} rows, /models/model_id has {m}")
    if div.shape != (m,) or div.dtype.kind not in "iu":
        raise ZooFormatError(f"{path}: /models/diverged_epoch must be {m} integers")
    hp = {}
    for name, ds in g["hparams"].items():
        if ds.shape != (m,):
            raise ZooFormatError(f"{path}: /models/hparams/{name} has shape {ds.shape}, expected ({m},)")
        if ds.dtype.kind in ("O", "S", "U"):
            hp[name] = _strings(ds)
        elif ds.dtype.kind in "iuf":
            hp[name] = [v.item() for v in ds[()]]
        else:
            raise ZooFormatError(f"{path}: /models/hparams/{name} has unsupported type {ds.dtype}")
    mg = f["metrics"]
    metrics = {}
    for name, ds in mg.items():
        if name == "epochs":
            continue
        a = np.asarray(ds[()], dtype=np.float64) if ds.dtype.kind in "iuf" else None
        if a is None or a.ndim != 2 or a.shape[0] != m:
            raise ZooFormatError(f"{path}: /metrics/{name} must be a numeric [models, epochs] array")
        metrics[name] = a
    cg = f["checkpoints"]
    ep = np.asarray(cg["epoch"][()])
    if ep.ndim != 2 or ep.shape[0] != m or ep.dtype.kind not in "iu":
        raise ZooFormatError(f"{path}: /checkpoints/epoch must be an integer [models, K] array")
    paths = np.asarray(cg["path"].asstr()[()], dtype=object).reshape(ep.shape)
    shas = np.asarray(cg["sha256"].asstr()[()], dtype=object).reshape(ep.shape)
    rows = []
    for i, mid in enumerate(ids):
        ckpts = [(int(ep[i, j]), paths[i, j], shas[i, j]) for j in range(ep.shape[1]) if ep[i, j] >= 0]
        hist = {}
        for name, a in metrics.items():
            valid = np.where(~np.isnan(a[i]))[0]
            last = valid[-1] + 1 if len(valid) else 0
            hist[name] = [float(x) for x in a[i, :last]]
        arch = _json(cols["arch"][i], f"{path}: arch of {mid}")
        if not isinstance(arch, dict):
            raise ZooFormatError(f"{path}: arch of {mid} is not a JSON object")
        rows.append(ModelRow(mid, cols["job_id"][i], cols["status"][i], arch, {k: v[i] for k, v in hp.items()}, hist,
                             ckpts, int(div[i])))
    jobs = {}
    if "jobs" in f:
        jg = f["jobs"]
        for j, c, o in zip(_strings(jg["job_id"]), _strings(jg["config"]), _strings(jg["overrides"])):
            jobs[j] = {"config": _json(c, f"{path}: config of job {j}"), "overrides": _json(o, f"{path}: overrides")}
    attrs = {k: _attr_value(v) for k, v in read_attrs(f, path).items()}
    annotations = {}
    if "annotations" in f:
        for name, ag in f["annotations"].items():
            columns = {}
            for cname, ds in ag.items():
                if ds.shape[:1] != (m,):
                    raise ZooFormatError(f"{path}: /annotations/{name}/{cname} has {ds.shape[:1]} rows, expected {m}")
                columns[cname] = _strings(ds) if ds.dtype.kind in ("O", "S", "U") else np.asarray(ds[()])
            annotations[name] = Annotation(name, list(ids), columns, {k: _attr_value(v) for k, v in read_attrs(ag, path).items()})
    return ModelTable(rows, jobs, attrs, annotations)


def read_annotation_file(path: Path, budget: ReadBudget | None = None, problems: list | None = None) -> Annotation:
    """Read `annotations/<group>.h5`; checks as read_table does."""
    f = _open(path)
    try:
        with f:
            _check_header(f, path)
            _check_untrusted(f, path, budget)
            checked = _check_content(f, path, problems)
            ids = _strings(f["model_id"])
            columns = {}
            for name, ds in f["columns"].items():
                if ds.shape[:1] != (len(ids),):
                    raise ZooFormatError(f"{path}: column {name} has {ds.shape[:1]} rows, expected {len(ids)}")
                columns[name] = _strings(ds) if ds.dtype.kind in ("O", "S", "U") else np.asarray(ds[()])
            stored = read_attrs(f, path)
            attrs = {k[5:]: _attr_value(v) for k, v in stored.items() if k.startswith("attr:")}
            return Annotation(str(_attr_value(stored.get("group", path.stem))), ids, columns, attrs, checked)
    except ZooFormatError:
        raise
    except H5_ERRORS as e:
        raise ZooFormatError(f"{path}: malformed annotation file ({_one_line(e)})") from e


def merge_annotations(old: Annotation | None, new: Annotation) -> Annotation:
    """Rows of `new` replace rows of `old` with the same model id; columns are unioned."""
    if old is None:
        return new
    ids = list(old.model_ids) + [m for m in new.model_ids if m not in set(old.model_ids)]
    pos = {m: i for i, m in enumerate(ids)}
    cols = {}
    for name in list(old.columns) + [c for c in new.columns if c not in old.columns]:
        src = [(old, name), (new, name)]
        sample = new.columns.get(name, old.columns.get(name))
        numeric = isinstance(sample, np.ndarray) and sample.dtype != object
        if numeric:
            out = np.full((len(ids), *sample.shape[1:]), np.nan if sample.dtype.kind == "f" else -1, dtype=sample.dtype)
        else:
            out = np.full(len(ids), "", dtype=object)
        for ann, n in src:
            if n not in ann.columns:
                continue
            col = ann.columns[n]
            for j, mid in enumerate(ann.model_ids):
                try:
                    out[pos[mid]] = col[j]
                except (ValueError, TypeError):
                    out[pos[mid]] = np.nan if numeric else str(col[j])
        cols[name] = out if numeric else list(out)
    return Annotation(new.group, ids, cols, {**old.attrs, **new.attrs})


def is_finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
