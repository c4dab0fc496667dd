"""Annotation groups of a zoo for jobs that add them in chunks and resume (wsl-landscape, alignment, ...).

A group is `annotations/<group>.h5`: one row per model id, its columns "<group>/<column>" in
Zoo.table(). A chunk's commit is its file write (`write_rows`); the index is rebuilt from the files
once per run (`merge_index`), so whatever decides what is done reads the files (`stored_columns`,
`done_rows`), not the index, which may lag behind them after a kill. `open_for_annotation` opens a
zoo with its index first brought up to date and every path an annotating run writes checked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsl.errors import ZooFormatError
from wsl.zoo.format import ANNOTATION_DIR, INDEX_FILE, SHARD_DIR
from wsl.zoo.reader import Zoo
from wsl.zoo.safe_paths import inside
from wsl.zoo.table import read_annotation_file
from wsl.zoo.writer import merge_index, write_annotation


def open_for_annotation(zoo_path) -> Zoo:
    """The zoo at `zoo_path`, its index first rebuilt if a killed run (or anything else) left it behind
    its shard and annotation files. Every path an annotating run writes or clears below the zoo
    (annotations/, the merge's temp-file cleanup in shards/, the index) is checked first: a planted link
    there is refused now, not by the final index rebuild after the work was done."""
    root = Path(zoo_path).expanduser()
    if not (root / INDEX_FILE).is_file() and not (root / SHARD_DIR).is_dir():
        raise ZooFormatError(f"{root}: not a zoo (no {INDEX_FILE} and no {SHARD_DIR}/)")
    try:
        zoo = Zoo(root)
        current = index_is_current(zoo)  # unchanged since the last rebuild: skip it (it reads all)
    except (ZooFormatError, OSError):
        current = False
    if not current:
        merge_index(root)
        zoo = Zoo(root)
    for sub, what in ((ANNOTATION_DIR, "write"), (SHARD_DIR, "remove files"), (INDEX_FILE, "write")):
        inside(zoo.path, sub, what)
    return zoo


def index_is_current(zoo: Zoo) -> bool:
    """True if `index.h5` already holds every shard and annotation file: each is older than the index,
    the index lists exactly their jobs and groups, and no temp file of a killed write is left over."""
    root = zoo.path
    t = (root / INDEX_FILE).stat().st_mtime_ns
    found = {}
    for d in (SHARD_DIR, ANNOTATION_DIR):
        files = list((root / d).glob("*.h5"))
        if any(f.stat().st_mtime_ns >= t for f in files):  # equal: same clock tick, cannot tell: rebuild
            return False
        found[d] = {f.stem for f in files}
    if any(any(d.glob(".*.h5.*.tmp")) for d in (root, root / SHARD_DIR, root / ANNOTATION_DIR)):
        return False
    return found[SHARD_DIR] == set(zoo._table.jobs) and found[ANNOTATION_DIR] == set(zoo._table.annotations)


def stored_columns(zoo: Zoo, group: str) -> dict | None:
    """Columns of `annotations/<group>.h5` as committed, aligned to zoo.ids (NaN / -1 / "" where a model
    has no row); None if the group has no file."""
    path = zoo.path / ANNOTATION_DIR / f"{group}.h5"
    if not path.is_file():
        return None
    ann = read_annotation_file(path)
    pos = {m: j for j, m in enumerate(ann.model_ids)}
    src = {i: pos[m] for i, m in enumerate(zoo.ids) if m in pos}  # row of zoo.ids[i] in the file
    n, out = len(zoo.ids), {}
    for name, col in ann.columns.items():
        if isinstance(col, np.ndarray) and col.dtype != object:
            out[name] = np.full((n, *col.shape[1:]), np.nan if col.dtype.kind == "f" else -1, dtype=col.dtype)
            out[name][list(src)] = col[list(src.values())]
        else:
            out[name] = [str(col[src[i]]) if i in src else "" for i in range(n)]
    return out


def done_rows(zoo: Zoo, group: str, columns=("settings",)) -> dict[str, tuple]:
    """{model_id: the stored values of `columns` as text} of the group's committed rows (every model of
    the zoo; "" where it has none): a job compares them with what it would write (e.g. its settings)."""
    ann = stored_columns(zoo, group)
    if ann is None or any(c not in ann for c in columns):
        return {}
    return {mid: tuple(str(ann[c][i]) for c in columns) for i, mid in enumerate(zoo.ids)}


def write_rows(zoo_path, group: str, rows: dict[str, dict], attrs: dict | None = None, int_columns=("epoch",),
               rebuild_index: bool = False) -> None:
    """Commit rows {model_id: {column: value}} to the group (write_annotation; same model id: replaced).
    A column whose values are all numbers (or None) is numeric: int64 for `int_columns` (None: -1),
    else float64 (None: NaN); any other column is text (None: ""). The index is left behind the file
    unless `rebuild_index`: rebuild it once when the run is done (merge_index)."""
    cols = {}
    for c in dict.fromkeys(c for r in rows.values() for c in r):  # every column, in order of appearance
        vals = [r.get(c) for r in rows.values()]
        if all(v is None or isinstance(v, (int, float, np.integer, np.floating)) for v in vals):
            ints = c in int_columns
            cols[c] = np.asarray([(-1 if ints else np.nan) if v is None else v for v in vals],
                                 dtype=np.int64 if ints else np.float64)
        else:
            cols[c] = ["" if v is None else str(v) for v in vals]
    write_annotation(zoo_path, group, list(rows), cols, attrs, rebuild_index=rebuild_index)
