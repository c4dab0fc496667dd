"""Writing a zoo: checkpoints as safetensors, one shard per job, the merged index.

Order of writes, so that a kill at any moment loses nothing finished and shows nothing
unfinished as complete: checkpoints (temp file + rename) -> shard (temp + rename, under the zoo
lock) -> index (rebuilt from all shards under the same lock, temp + rename). A model exists for
readers only once its shard row exists, i.e. after all its checkpoints are on disk.

Checkpoints are renamed into place without an fsync each; commit() makes all of its checkpoints
durable together (one syncfs on Linux) before it writes the shard. A SIGKILL loses nothing either
way (a renamed file is the kernel's); a power loss can cost the checkpoints of models not yet
committed (training that a rerun redoes), never a committed model's.

write_checkpoint_later hands a checkpoint to one background thread (wsl.zoo.checkpoints), which
encodes and writes it while training goes on; add_model and commit wait for it first and re-raise a
failed write as an OSError naming the file, so the order above is unchanged.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as st_save

from wsl.errors import ZooFormatError
from wsl.zoo.atomic import atomic_path, sync_paths, zoo_lock
from wsl.zoo.checkpoints import BackgroundWriter, CheckpointFiles
from wsl.zoo.safe_paths import remove_temp_files
from wsl.zoo.format import (ANNOTATION_DIR, FORMAT_NAME, FORMAT_VERSION, INDEX_FILE, MODEL_DIR, SHARD_DIR,
                            STATUSES, check_id, checkpoint_relpath, sha256_bytes)
from wsl.zoo.table import (Annotation, ModelRow, ModelTable, merge_annotations, read_annotation_file, read_table,
                           write_annotation_file, write_table)

log = logging.getLogger(__name__)


def encode_checkpoint(state_dict: dict, metadata: dict) -> bytes:
    """safetensors bytes; metadata values are str (safetensors allows str->str only), dicts as JSON.

    The same checkpoint always gives the same bytes: safetensors writes its header in hash-map
    order, which changes from process to process, so the header is written with sorted keys.
    Otherwise a rerun that rewrites a committed checkpoint with identical weights would still break
    the checksum its index row holds.

    The bytes are safetensors.torch.save's with its header re-serialized that way (tested byte for byte),
    laid out here directly: save's Python checks took most of the 0.4 ms a small MLP's checkpoint cost
    to encode, on the thread that writes checkpoints while the population trains. A dtype outside
    _ST_DTYPES takes safetensors.torch.save itself.
    """
    meta = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in metadata.items()}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    if not all(t.dtype in _ST_DTYPES for t in tensors.values()):
        raw = st_save(tensors, metadata=meta)
        n = int.from_bytes(raw[:8], "little")
        return _with_header(json.loads(raw[8 : 8 + n]), [raw[8 + n :]])
    # safetensors' order: larger dtypes first (its dtype enum, descending), then by name
    names = sorted(tensors, key=lambda k: (-_ST_DTYPES[tensors[k].dtype][1], k))
    header, chunks, offset = {"__metadata__": meta}, [], 0
    for k in names:
        t = tensors[k]
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[k] = {"dtype": _ST_DTYPES[t.dtype][0], "shape": list(t.shape),
                     "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    return _with_header(header, chunks)


def _with_header(header: dict, chunks: list) -> bytes:
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # keep the tensor data 8-byte aligned, as safetensors does
    return b"".join([len(text).to_bytes(8, "little"), text, *chunks])


# torch dtype -> (safetensors name, rank in safetensors' dtype order)
_ST_DTYPES = {torch.bool: ("BOOL", 0), torch.uint8: ("U8", 1), torch.int8: ("I8", 2), torch.int16: ("I16", 3),
              torch.float16: ("F16", 5), torch.bfloat16: ("BF16", 6), torch.int32: ("I32", 7),
              torch.float32: ("F32", 9), torch.float64: ("F64", 11), torch.int64: ("I64", 12)}


class ShardWriter:
    """Collects one job's models and commits them as `shards/<job_id>.h5`.

    Rows already in that shard (a finished part of an earlier run of the same job) are kept;
    rows with the same model id are replaced.
    """

    def __init__(self, zoo_path, job_id: str, config: dict | None = None, zoo_name: str | None = None,
                 overrides: list | None = None):
        self.root = Path(zoo_path).resolve()
        self.job_id = check_id("job id", job_id)
        self.config = config or {}
        self.overrides = list(overrides or [])
        self.zoo_name = zoo_name or self.root.name
        self.rows: list[ModelRow] = []
        self._ckpts: dict[str, list] = {}
        self._unsynced: list[Path] = []  # checkpoints written since the last commit, not yet fsynced
        self._files = CheckpointFiles(self.root, self.job_id)
        self._background: BackgroundWriter | None = None

    @property
    def shard_path(self) -> Path:
        return self.root / SHARD_DIR / f"{self.job_id}.h5"

    def finished_ids(self) -> set[str]:
        """Model ids this job has already committed (resume skips them)."""
        if not self.shard_path.exists():
            return set()
        return set(read_table(self.shard_path).ids)

    def write_checkpoint(self, model_id: str, epoch: int, state_dict: dict, arch: dict,
                         extra_meta: dict | None = None) -> tuple[str, str]:
        """Encode and write one checkpoint now; returns (its path relative to the zoo, its sha256)."""
        rel, name, meta = self._checkpoint_meta(model_id, epoch, arch, extra_meta)
        return rel, self._write(model_id, epoch, rel, name, state_dict, meta)

    def write_checkpoint_later(self, model_id: str, epoch: int, state_dict: dict, arch: dict,
                               extra_meta: dict | None = None) -> None:
        """As write_checkpoint, on this writer's background thread: the caller hands `state_dict` over
        (its tensors must not change afterwards: give copies). add_model and commit wait for every
        write and re-raise the first error (an OSError naming the file); a kill before the commit loses
        only uncommitted checkpoints, as ever (each is a temp file renamed into place)."""
        rel, name, meta = self._checkpoint_meta(model_id, epoch, arch, extra_meta)
        if self._background is None:
            self._background = BackgroundWriter()
        nbytes = sum(t.numel() * t.element_size() for t in state_dict.values())
        self._background.submit(lambda: self._write(model_id, epoch, rel, name, state_dict, meta), nbytes)

    def wait(self) -> None:
        """Block until every write_checkpoint_later is on disk; re-raise the first error."""
        if self._background is not None:
            self._background.wait()

    def _checkpoint_meta(self, model_id, epoch, arch, extra_meta):
        check_id("model id", model_id)
        rel = checkpoint_relpath(self.job_id, model_id, epoch)
        meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "zoo": self.zoo_name,
                "job_id": self.job_id, "model_id": model_id, "epoch": str(int(epoch)), "arch": arch}
        meta.update(extra_meta or {})
        return rel, rel.rsplit("/", 1)[1], meta

    def _write(self, model_id, epoch, rel, name, state_dict, meta) -> str:
        data = encode_checkpoint(state_dict, meta)
        self._unsynced.append(self._files.write(model_id, name, data))
        sha = sha256_bytes(data)
        self._ckpts.setdefault(model_id, []).append((int(epoch), rel, sha))
        return sha

    def add_model(self, model_id: str, arch: dict, hparams: dict, status: str, history: dict | None = None,
                  diverged_epoch: int = -1) -> None:
        check_id("model id", model_id)
        self.wait()
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {STATUSES}")
        ckpts = self._ckpts.get(model_id, [])
        if not ckpts:
            raise ZooFormatError(f"model {model_id} has no checkpoint written; write one before add_model")
        hist = {k: [None if v is None else float(v) for v in vals] for k, vals in (history or {}).items()}
        self.rows.append(ModelRow(model_id, self.job_id, status, arch, dict(hparams), hist, sorted(ckpts),
                                  int(diverged_epoch)))

    def commit(self) -> None:
        """Make this writer's checkpoints durable, then atomically add its rows to the job's shard and
        rebuild the index."""
        self.wait()
        self._files.close()
        sync_paths(self.root, [f for f in self._unsynced if f.exists()])
        self._unsynced = []
        with zoo_lock(self.root):
            old = read_table(self.shard_path) if self.shard_path.exists() else ModelTable()
            new_ids = {r.model_id for r in self.rows}
            rows = [r for r in old.rows if r.model_id not in new_ids] + self.rows
            jobs = {self.job_id: {"config": self.config, "overrides": self.overrides}}
            table = ModelTable(rows, jobs, {"zoo_name": self.zoo_name, "config": json.dumps(self.config, sort_keys=True)})
            with atomic_path(self.shard_path, what="shard", root=self.root) as tmp:
                write_table(tmp, table)
            for r in self.rows:  # checkpoint temp files of an earlier, killed attempt at these models
                remove_temp_files(self.root, self.root / MODEL_DIR / self.job_id / r.model_id, ".*.safetensors.*.tmp")
            _merge_locked(self.root)
        log.info("committed %d models to %s", len(self.rows), self.shard_path)
        self.rows, self._ckpts = [], {}


def merge_index(zoo_path) -> Path:
    """Rebuild `index.h5` from every shard and annotation (safe while other jobs commit)."""
    root = Path(zoo_path).resolve()
    with zoo_lock(root):
        return _merge_locked(root)


def _remove_stale_temp_files(root: Path) -> None:
    """Temp files of index, shard and annotation writes exist only while their writer holds the zoo
    lock, so any the lock holder sees were left by a killed process: remove them."""
    for d in (root, root / SHARD_DIR, root / ANNOTATION_DIR):
        remove_temp_files(root, d, ".*.h5.*.tmp")  # regular files only, never through a link


def index_table(root: Path, shards: dict, annotations: list) -> ModelTable:
    """The merged index of the tables `shards` ({shard path: ModelTable}, in path order) and the
    Annotations `annotations`: what `index.h5` holds (wsl-verify rebuilds it to check the index)."""
    rows, jobs, seen = [], {}, {}
    first_attrs = None
    for s, t in shards.items():
        first_attrs = first_attrs or t.attrs
        jobs.update(t.jobs)
        for r in t.rows:
            if r.model_id in seen:
                raise ZooFormatError(f"model {r.model_id} is in both {seen[r.model_id]} and {s}")
            seen[r.model_id] = s
            rows.append(r)
    first_attrs = first_attrs or {}
    attrs = {"zoo_name": first_attrs.get("zoo_name", root.name), "config": first_attrs.get("config", "{}"),
             "n_jobs": len(jobs)}
    return ModelTable(rows, jobs, attrs, {ann.group: ann for ann in annotations})


def _merge_locked(root: Path) -> Path:
    _remove_stale_temp_files(root)
    shards = sorted((root / SHARD_DIR).glob("*.h5"))
    if not shards:
        raise ZooFormatError(f"{root}: no shards under {SHARD_DIR}/; nothing to index")
    tables = {s: read_table(s) for s in shards}
    annotations = [read_annotation_file(a) for a in sorted((root / ANNOTATION_DIR).glob("*.h5"))]
    index = root / INDEX_FILE
    with atomic_path(index, what="index", root=root) as tmp:
        write_table(tmp, index_table(root, tables, annotations))
    return index


def write_annotation(zoo_path, group: str, model_ids: list, columns: dict, attrs: dict | None = None,
                     rebuild_index: bool = True) -> None:
    """Add per-model columns (e.g. landscape metrics with their estimator settings) to a zoo.

    Rows merge with what `annotations/<group>.h5` already holds (same model id: replaced), so
    work done in chunks accumulates and a killed run keeps every committed chunk. The file is the
    commit; `rebuild_index=False` leaves `index.h5` behind it (Zoo readers see the rows after the
    next merge_index, which the caller owes, e.g. once after a batch of groups: wsl-landscape).
    """
    root = Path(zoo_path).resolve()
    check_id("annotation group", group)
    m = len(model_ids)
    cols = {}
    for name, col in columns.items():
        if isinstance(col, torch.Tensor):
            col = col.detach().cpu().numpy()
        if isinstance(col, np.ndarray) and col.dtype != object:
            if col.shape[:1] != (m,):
                raise ValueError(f"annotation column {name} has {col.shape[:1]} rows for {m} models")
            cols[name] = col
        else:
            col = list(col)
            if len(col) != m:
                raise ValueError(f"annotation column {name} has {len(col)} rows for {m} models")
            if all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in col):
                cols[name] = np.asarray(col, dtype=np.float64)
            else:
                cols[name] = ["" if v is None else str(v) for v in col]
    new = Annotation(group, [str(x) for x in model_ids], cols, dict(attrs or {}))
    path = root / ANNOTATION_DIR / f"{group}.h5"
    with zoo_lock(root):
        old = read_annotation_file(path) if path.exists() else None
        merged = merge_annotations(old, new)
        with atomic_path(path, what="annotation", root=root) as tmp:
            write_annotation_file(tmp, merged)
        if rebuild_index:
            _merge_locked(root)
