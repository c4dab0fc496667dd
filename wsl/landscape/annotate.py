"""Compute the configured landscape metrics of a zoo's models and store them in its index.

Each metric is one annotation group (`<zoo>/annotations/<metric>.h5`, columns "<metric>/<column>"
in Zoo.table(); at an explicit checkpoint epoch E the group is "<metric>_epoch<E>"). Every row carries the estimator settings that produced it (column `settings`,
JSON, including the keys of the data sample sets whose indices are group attributes
`samples:<key>`), the checkpoint epoch used (`epoch`) and a `note` saying why a value is missing.
Work is committed in chunks; a rerun skips rows whose stored settings equal the current ones,
so a killed run resumes where it stopped and a changed setting recomputes only what it changes.
A chunk's commit is its annotation file: what is done is read from `annotations/`, and `index.h5`
is rebuilt from them once per run, at the end (and at start-up if a killed run left it behind).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections import defaultdict

import numpy as np
import torch

from wsl.errors import ConfigError
from wsl.landscape.batchnorm import has_batchnorm
from wsl.landscape.cka import replica_pairs
from wsl.landscape.functional import split_state, stack_states
from wsl.landscape.plan import Plan, group_name, make_plan
from wsl.landscape.sampling import make_sample_set
from wsl.zoo.finite import all_finite

log = logging.getLogger("wsl.landscape")
STATE_CACHE_BYTES = 512 * 2**20  # checkpoints kept in memory between the metrics of one epoch


class _Context:
    """Per-run caches: task data per dataset config, sample sets, nets per architecture, checkpoints."""

    def __init__(self, zoo, epoch: int):
        self.zoo, self.epoch = zoo, epoch
        self._data, self._fp, self._samples, self._nets = {}, {}, {}, {}
        self._states, self._state_bytes = {}, 0  # checkpoints read once for every metric, up to STATE_CACHE_BYTES

    def arch_key(self, mid: str) -> str:
        return json.dumps(self.zoo.arch(mid), sort_keys=True)

    def data_key(self, mid: str) -> str:
        cfg = dict(self.zoo.job_config(mid).get("dataset") or {})
        cfg.pop("root", None)  # where files live does not change the data
        return json.dumps(cfg, sort_keys=True, default=str)

    def data(self, mid: str):
        k = self.data_key(mid)
        if k not in self._data:
            self._data[k] = self.zoo.task_data(mid)
            self._fp[k] = self._data[k].fingerprint()
        return self._data[k]

    def sample_sets(self, mid: str, specs) -> dict:
        """{split: SampleSet} for (split, num_samples, seed) specs, on the data `mid` was trained on."""
        data, k = self.data(mid), self.data_key(mid)
        out = {}
        for split, n, seed in specs:
            key = (k, split, n, seed)
            if key not in self._samples:
                self._samples[key] = make_sample_set(data, split, n, seed, self._fp[k])
            out[split] = self._samples[key]
        return out

    def net(self, mid: str) -> torch.nn.Module:
        k = self.arch_key(mid)
        if k not in self._nets:
            net = self.zoo.skeleton(mid)  # checks the architecture; meta device, no memory
            if has_batchnorm(net):  # BN resets run the real module
                from wsl.nets import build_net

                net = build_net(self.zoo.arch(mid))
            self._nets[k] = net.eval()
        return self._nets[k]

    def epoch_of(self, mid: str) -> int | None:
        eps = self.zoo.checkpoint_epochs(mid)
        if self.epoch == -1:
            return eps[-1] if eps else None
        return self.epoch if self.epoch in eps else None

    def skip_reason(self, mid: str) -> str:
        """Why a model cannot be analyzed at the chosen epoch ('' if it can)."""
        row = self.zoo.row(mid)
        if row.status == "diverged":
            return f"diverged during training (epoch {row.diverged_epoch}); not analyzed"
        if self.epoch_of(mid) is None:
            return f"no checkpoint at epoch {self.epoch}; has {self.zoo.checkpoint_epochs(mid)}"
        return ""

    def state(self, mid: str) -> dict:
        if mid in self._states:
            return self._states[mid]
        sd = self.zoo.state_dict(mid, self.epoch_of(mid))
        size = sum(v.numel() * v.element_size() for v in sd.values())
        if self._state_bytes + size <= STATE_CACHE_BYTES:
            self._states[mid] = sd
            self._state_bytes += size
        return sd


def _settings_json(metric, s: dict, epoch: int, samples: dict) -> str:
    ident = {k: s[k] for k in metric.identity}
    return json.dumps({"metric": metric.name, "epoch": epoch, **ident,
                       "samples": {sp: ss.key for sp, ss in sorted(samples.items())}}, sort_keys=True)


def stored_columns(zoo, group: str) -> dict | None:
    """Columns of `annotations/<group>.h5` as committed, aligned to zoo.ids (NaN / -1 / "" where a model
    has no row); None if the group has no file. The index may lag behind these files (it is rebuilt
    once per run), so whatever decides what is done reads them, not the index."""
    from wsl.zoo.format import ANNOTATION_DIR
    from wsl.zoo.table import read_annotation_file

    path = zoo.path / ANNOTATION_DIR / f"{group}.h5"
    if not path.is_file():
        return None
    ann = read_annotation_file(path)
    pos = {m: j for j, m in enumerate(ann.model_ids)}
    where = [(i, pos[m]) for i, m in enumerate(zoo.ids) if m in pos]
    out = {}
    for name, col in ann.columns.items():
        if isinstance(col, np.ndarray) and col.dtype != object:
            a = np.full((len(zoo.ids), *col.shape[1:]), np.nan if col.dtype.kind == "f" else -1, dtype=col.dtype)
            for i, j in where:
                a[i] = col[j]
        else:
            a = [""] * len(zoo.ids)
            for i, j in where:
                a[i] = str(col[j])
        out[name] = a
    return out


def _existing(zoo, group: str, columns=("settings",)) -> dict:
    """{model_id: tuple of the stored values of `columns`} for rows this group already has."""
    ann = stored_columns(zoo, group)
    if ann is None or any(c not in ann for c in columns):
        return {}
    return {mid: tuple(str(ann[c][i]) for c in columns) for i, mid in enumerate(zoo.ids)}


def _write(zoo_path, group: str, metric, s: dict, rows: dict, samples_used: dict) -> None:
    """rows {model_id: {column: value}} -> one write_annotation call (missing numbers NaN, text '')."""
    from wsl.zoo import write_annotation

    ids = list(rows)
    names = []
    for r in rows.values():
        names += [c for c in r if c not in names]
    cols = {}
    for c in names:
        vals = [r.get(c) for r in rows.values()]
        if all(v is None or isinstance(v, (int, float, np.integer, np.floating)) for v in vals):
            ints = c == "epoch" or c == "pairs"
            cols[c] = np.asarray([(-1 if ints else np.nan) if v is None else v for v in vals],
                                 dtype=np.int64 if ints else np.float64)
        else:
            cols[c] = ["" if v is None else str(v) for v in vals]
    attrs = {"metric": metric.name, "scope": metric.scope, "settings": json.dumps(s, sort_keys=True),
             "description": type(metric).__doc__ or ""}
    attrs.update({f"samples:{ss.key}": ss.describe() for ss in samples_used.values()})
    write_annotation(zoo_path, group, ids, cols, attrs, rebuild_index=False)  # the index: once, at the end



# ---- model-scope metrics ----------------------------------------------------------------------
def _run_model_metric(ctx: _Context, plan: Plan, group: str, metric, s: dict, ids: list[str]) -> int:
    zoo = ctx.zoo
    have = _existing(zoo, group)
    want = {}
    for mid in ids:
        samples = ctx.sample_sets(mid, metric.samples(s)) if not ctx.skip_reason(mid) else {}
        want[mid] = (_settings_json(metric, s, ctx.epoch, samples), samples)
    todo = [m for m in ids if have.get(m, ("",))[0] != want[m][0]]
    todo.sort(key=lambda m: (ctx.arch_key(m), ctx.data_key(m)))  # chunks of one architecture stack well
    log.info("%s: %d of %d models to compute (the rest are stored with these settings)", group, len(todo), len(ids))
    done = 0
    for start in range(0, len(todo), plan.chunk_size):
        chunk = todo[start:start + plan.chunk_size]
        t0 = time.perf_counter()
        rows, used = {}, {}
        groups = defaultdict(list)
        for mid in chunk:
            reason = ctx.skip_reason(mid)
            if reason:
                rows[mid] = {"epoch": None, "settings": want[mid][0], "note": reason}
            else:
                groups[(ctx.arch_key(mid), ctx.data_key(mid))].append(mid)
        for members in groups.values():
            states = {m: ctx.state(m) for m in members}
            bad = [m for m in members if not all_finite(states[m])]
            for m in bad:
                rows[m] = {"epoch": ctx.epoch_of(m), "settings": want[m][0], "note": "non-finite weights; not analyzed"}
            members = [m for m in members if m not in bad]
            if not members:
                continue
            samples = want[members[0]][1]
            used.update({ss.key: ss for ss in samples.values()})
            data = {sp: ss.tensors(ctx.data(members[0])) for sp, ss in samples.items()}
            net = ctx.net(members[0])
            params, buffers = split_state(net, stack_states([states[m] for m in members]))
            try:
                cols, notes = metric.compute(net, params, buffers, data, s)
            except (RuntimeError, ValueError) as e:  # recorded and retried next run, never fatal
                log.warning("%s failed on %d models: %s", metric.name, len(members), e, exc_info=True)
                for m in members:
                    rows[m] = {"epoch": ctx.epoch_of(m), "settings": "", "note": f"failed: {e}"}
                continue
            for i, m in enumerate(members):
                rows[m] = {**{c: float(v[i]) for c, v in cols.items()}, "epoch": ctx.epoch_of(m),
                           "settings": want[m][0], "note": notes[i]}
        _write(zoo.path, group, metric, s, {m: rows[m] for m in chunk}, used)
        done += len(chunk)
        log.info("%s: %d/%d models (%.1fs for this chunk)", group, done, len(todo), time.perf_counter() - t0)
    return len(todo)


# ---- cell-scope metrics -----------------------------------------------------------------------
def _run_cell_metric(ctx: _Context, plan: Plan, group: str, metric, s: dict, ids: list[str]) -> int:
    zoo = ctx.zoo
    wanted = set(ids)
    cells = [sorted(c) for c in zoo.cells().values() if wanted.intersection(c)]
    have = _existing(zoo, group, ("settings", "members"))
    plans = []  # (cell members, usable members, pairs, settings json, members string, samples)
    for cell in cells:
        usable = [m for m in cell if not ctx.skip_reason(m)]
        pairs = replica_pairs(len(usable), s["max_pairs"])
        used_members = sorted({usable[i] for p in pairs for i in p})
        samples = ctx.sample_sets(usable[0], metric.samples(s)) if usable else {}
        sj = _settings_json(metric, s, ctx.epoch, samples)
        mstr = ",".join(used_members)
        if any(have.get(m) != (sj, mstr) for m in cell):
            plans.append((cell, usable, pairs, sj, mstr, samples))
    plans.sort(key=lambda p: (ctx.arch_key(p[0][0]), ctx.data_key(p[0][0])))
    log.info("%s: %d of %d cells to compute (the rest are stored with these settings)", group, len(plans), len(cells))
    done = 0
    i = 0
    while i < len(plans):
        chunk, n = [], 0
        while i < len(plans) and (not chunk or n + len(plans[i][0]) <= plan.chunk_size):
            chunk.append(plans[i])
            n += len(plans[i][0])
            i += 1
        t0 = time.perf_counter()
        rows, used = {}, {}
        groups = defaultdict(list)
        for cp in chunk:
            cell, usable, pairs, sj, mstr, samples = cp
            for m in cell:
                if m not in usable:
                    rows[m] = {"pairs": 0, "members": mstr, "epoch": None, "settings": sj, "note": ctx.skip_reason(m)}
            if not pairs:
                for m in usable:
                    rows[m] = {"pairs": 0, "members": mstr, "epoch": ctx.epoch_of(m), "settings": sj,
                               "note": f"cell has {len(usable)} usable seed replica(s); {metric.name} needs >= 2"}
                continue
            groups[(ctx.arch_key(cell[0]), ctx.data_key(cell[0]))].append(cp)
        for same_arch in groups.values():
            _compute_cells(ctx, metric, s, same_arch, rows, used)
        _write(zoo.path, group, metric, s, rows, used)
        done += len(chunk)
        log.info("%s: %d/%d cells (%.1fs for this chunk)", group, done, len(plans), time.perf_counter() - t0)
    return sum(len(p[0]) for p in plans)


def _compute_cells(ctx: _Context, metric, s: dict, group: list, rows: dict, used: dict) -> None:
    """Stack every pair of every cell in `group` (one architecture and data) and compute them at once."""
    states, bad = {}, set()
    for cell, usable, *_ in group:
        for m in usable:
            states[m] = ctx.state(m)
            if not all_finite(states[m]):
                bad.add(m)
    a_ids, b_ids, owner = [], [], []
    for k, (cell, usable, pairs, sj, mstr, samples) in enumerate(group):
        for i, j in pairs:
            a_ids.append(usable[i])
            b_ids.append(usable[j])
            owner.append(k)
    first = group[0][1][0]
    net, samples = ctx.net(first), group[0][5]
    used.update({ss.key: ss for ss in samples.values()})
    data = {sp: ss.tensors(ctx.data(first)) for sp, ss in samples.items()}
    result, error = None, ""
    if not bad:
        try:
            a = stack_states([states[m] for m in a_ids])
            b = stack_states([states[m] for m in b_ids])
            result = metric.compute_pairs(net, a, b, data, s)
        except (RuntimeError, ValueError) as e:  # recorded and retried next run, never fatal
            log.warning("%s failed on %d pairs: %s", metric.name, len(a_ids), e, exc_info=True)
            error = f"failed: {e}"
    owner = np.asarray(owner)
    for k, (cell, usable, pairs, sj, mstr, _) in enumerate(group):
        common = {"pairs": len(pairs), "members": mstr, "settings": sj}
        if result is None:
            note = error or f"non-finite weights in {sorted(bad & set(usable))}; not analyzed"
            for m in usable:
                rows[m] = {**common, "epoch": ctx.epoch_of(m), "note": note,
                           "settings": "" if error else sj}
            continue
        sel = owner == k
        agg = {}
        for c, v in result.items():
            vals = v[sel]
            agg[c] = float(np.mean(vals))
            if c == "value":
                agg.update(std=float(np.std(vals)), min=float(np.min(vals)), max=float(np.max(vals)))
        note = "" if all(math.isfinite(x) for x in agg.values()) else "non-finite value on some pair"
        for m in usable:
            rows[m] = {**agg, **common, "epoch": ctx.epoch_of(m), "note": note}


# ---- entry point ------------------------------------------------------------------------------
def _existing_zoo_dir(zoo_path):
    from pathlib import Path

    from wsl.errors import ZooFormatError

    p = Path(zoo_path).expanduser()
    if not (p / "index.h5").is_file() and not (p / "shards").is_dir():
        raise ZooFormatError(f"{p}: not a zoo (no index.h5 and no shards/)")
    return p


def _index_current(root, zoo) -> bool:
    """True if `index.h5` already holds every shard and annotation file: each is older than the index,
    the index lists exactly their jobs and groups, and no temp file of a killed write is left over."""
    from wsl.zoo.format import ANNOTATION_DIR, INDEX_FILE, SHARD_DIR

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


def _open_current(zoo_path):
    """The zoo, its index first rebuilt if a killed run (or anything else) left it behind its files."""
    from wsl.errors import ZooFormatError
    from wsl.zoo import Zoo, merge_index

    root = _existing_zoo_dir(zoo_path)
    try:
        zoo = Zoo(root)
        if _index_current(zoo.path, zoo):
            return zoo  # nothing changed since the last rebuild: skip it (it reads every file)
    except (ZooFormatError, OSError):
        pass
    merge_index(root)
    return Zoo(root)


def _check_write_paths(root) -> None:
    """Every path a run writes or clears below the zoo (annotation files, the merge's temp-file cleanup in
    shards/ and annotations/, the index), checked before any work: a planted link there is otherwise only
    refused by the final index rebuild, after the annotations were computed and committed."""
    from wsl.zoo.format import ANNOTATION_DIR, INDEX_FILE, SHARD_DIR
    from wsl.zoo.safe_paths import inside

    inside(root, ANNOTATION_DIR, "write")
    inside(root, SHARD_DIR, "remove files")
    inside(root, INDEX_FILE, "write")


def annotate_zoo(zoo_path, cfg, model_ids=None) -> dict[str, int]:
    """Compute the metrics `cfg` (a `landscape:` node) lists for `model_ids` (default: all) of a zoo.

    Returns {group: rows (re)computed}; a group is the metric's name at the final checkpoint and
    '<metric>_epoch<E>' at an explicit epoch E. After the metrics, the group `phase` (`phase_epoch<E>`)
    gets every analyzed cell's taxonomy label (phases.annotate_phases; thresholds `landscape.phase`,
    null: skipped). The config is checked before the zoo is even opened;
    a metric that does not apply to a model or cell records why in its `note` column.
    """
    plan = make_plan(cfg)
    if not plan.metrics:
        return {}
    from wsl.zoo import merge_index

    # a run killed after committing annotations and before rebuilding the index leaves the index
    # behind its files: bring it up to date first (what is done is read from the files themselves)
    zoo = _open_current(zoo_path)
    _check_write_paths(zoo.path)
    ids = list(zoo.ids) if model_ids is None else [str(m) for m in model_ids]
    missing = [m for m in ids if m not in set(zoo.ids)]
    if missing:
        raise ConfigError(f"model id(s) not in {zoo.path}: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    out = {}
    try:
        for epoch in plan.epochs:
            ctx = _Context(zoo, epoch)
            for metric, s in plan.metrics:
                run = _run_model_metric if metric.scope == "model" else _run_cell_metric
                group = group_name(metric.name, epoch)
                out[group] = run(ctx, plan, group, metric, s, ids)
            if plan.phase is not None:  # the taxonomy label of every cell, from the committed annotations
                from wsl.landscape.phases import annotate_phases

                out[group_name("phase", epoch)] = annotate_phases(zoo, plan.phase, epoch, ids,
                                                                  rebuild_index=False)
    except BaseException:
        with contextlib.suppress(Exception):  # what was committed before the error: in the index now
            merge_index(zoo.path)
        raise
    if any(out.values()):  # every annotation file is committed: one index rebuild for all of them
        merge_index(zoo.path)
    return out
