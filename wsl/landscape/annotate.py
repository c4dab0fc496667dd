"""Compute the configured landscape metrics of a zoo's models and store them in its index.

Each metric is one annotation group (`<zoo>/annotations/<metric>.h5`, columns "<metric>/<column>"
in Zoo.table(); at an explicit checkpoint epoch E the group is "<metric>_epoch<E>"). Every row carries the
estimator settings that produced it (column `settings`, JSON, including the keys of the data sample sets whose
indices are group attributes `samples:<key>`), the checkpoint epoch used (`epoch`) and a `note` saying why a
value is missing.
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
from dataclasses import asdict

import numpy as np
import torch

from wsl.errors import ConfigError
from wsl.landscape.batchnorm import has_batchnorm
from wsl.landscape.cka import replica_pairs
from wsl.landscape.losses import task_loss
from wsl.landscape.metrics import METRICS, refusal
from wsl.landscape.phases import annotate_phases, checkpoint_epoch
from wsl.landscape.sampling import make_sample_set
from wsl.landscape.schema import LandscapeConfig, group_name
from wsl.population.functional import split_state, stack_state_dicts
from wsl.zoo.annotations import done_rows, open_for_annotation, write_rows
from wsl.zoo.finite import all_finite
from wsl.zoo.writer import merge_index

log = logging.getLogger("wsl.landscape")
STATE_CACHE_BYTES = 512 * 2**20  # checkpoints kept in memory between the metrics of one epoch


def _on(t, device):
    return t.to(device) if isinstance(t, torch.Tensor) else t


class _Context:
    """Per-run caches: task data per dataset config, sample sets, nets per architecture, checkpoints."""

    def __init__(self, zoo, epoch: int, device: str = "cpu"):
        self.zoo, self.epoch, self.device = zoo, epoch, torch.device(device)  # where the metrics compute
        self._data, self._fp, self._samples, self._nets = {}, {}, {}, {}
        self._states, self._state_bytes = {}, 0  # checkpoints read once for every metric, up to STATE_CACHE_BYTES

    def arch_key(self, mid: str) -> str:
        return json.dumps(self.zoo.arch(mid), sort_keys=True)

    def data_key(self, mid: str) -> str:  # where files live (dataset.root) does not change the data
        cfg = {k: v for k, v in (self.zoo.job_config(mid).get("dataset") or {}).items() if k != "root"}
        return json.dumps(cfg, sort_keys=True, default=str)

    def data(self, mid: str):
        k = self.data_key(mid)
        if k not in self._data:
            self._data[k] = self.zoo.training_data(mid)
            self._fp[k] = self._data[k].fingerprint()
        return self._data[k]

    def sample_sets(self, mid: str, specs) -> dict:
        """{split: SampleSet} for (split, num_samples, seed) specs, on the data `mid` was trained on."""
        data, k = self.data(mid), self.data_key(mid)
        for split, n, seed in specs:
            if (k, split, n, seed) not in self._samples:
                self._samples[(k, split, n, seed)] = make_sample_set(data, split, n, seed, self._fp[k])
        return {split: self._samples[(k, split, n, seed)] for split, n, seed in specs}

    def metric_data(self, mid: str, samples: dict) -> dict:
        """{split: (x, y, loss)}: a metric's samples of the data `mid` was trained on, with that data's training
        loss on the split (wsl.landscape.losses.task_loss: cross-entropy, or a PINN's residual + initial +
        boundary terms on the split's initial and boundary points)."""
        data = self.data(mid)
        return {sp: (*(_on(t, self.device) for t in ss.tensors(data)), task_loss(data, sp)) for sp, ss in samples.items()}

    def stacked(self, states: list[dict]) -> dict:
        """The members' state dicts stacked [P, ...], on the metrics' device."""
        return {k: v.to(self.device) for k, v in stack_state_dicts(states).items()}

    def loss_name(self, mid: str, metric) -> str:
        """The training loss a metric that reads one evaluates on `mid`'s data, when not the cross-entropy
        (a PINN's: "pinn"); '' otherwise."""
        if not metric.needs_loss or self.skip_reason(mid):
            return ""
        loss = task_loss(self.data(mid), "train")
        return "" if loss is None or loss.name == "cross_entropy" else loss.name

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
        return checkpoint_epoch(self.zoo, mid, self.epoch)

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


def _settings_json(metric, s: dict, epoch: int, samples: dict, loss: str = "") -> str:
    """What defines a stored value; `loss` names a training loss other than the cross-entropy (a PINN's),
    so that values of one loss are never taken for another's (and notes stored before a loss was supported
    are recomputed)."""
    extra = {"loss": loss} if loss else {}
    return json.dumps({"metric": metric.name, "epoch": epoch, **{k: s[k] for k in metric.identity},
                       "samples": {sp: ss.key for sp, ss in sorted(samples.items())}, **extra}, sort_keys=True)


def _attrs(metric, s: dict, samples_used: dict) -> dict:
    """A group's attributes: the metric, its full settings, the sample sets its rows name."""
    return {"metric": metric.name, "scope": metric.scope, "settings": json.dumps(s, sort_keys=True),
            "description": type(metric).__doc__ or "",
            **{f"samples:{ss.key}": ss.describe() for ss in samples_used.values()}}


# ---- model-scope metrics ----------------------------------------------------------------------
def _annotate_models(ctx: _Context, chunk_size: int, group: str, metric, s: dict, ids: list[str]) -> int:
    have = done_rows(ctx.zoo, group)
    want = {}
    for mid in ids:
        samples = ctx.sample_sets(mid, metric.samples(s)) if not ctx.skip_reason(mid) else {}
        want[mid] = (_settings_json(metric, s, ctx.epoch, samples, ctx.loss_name(mid, metric)), samples)
    todo = [m for m in ids if have.get(m, ("",))[0] != want[m][0]]
    todo.sort(key=lambda m: (ctx.arch_key(m), ctx.data_key(m)))  # chunks of one architecture stack well
    log.info("%s: %d of %d models to compute (the rest are stored with these settings)", group, len(todo), len(ids))
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start:start + chunk_size]
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
            used.update({ss.key: ss for ss in samples.values()})  # the settings name them, computed or not
            net = ctx.net(members[0])
            why = refusal(metric, net, s, states[members[0]], ctx.data(members[0]).kind)
            if why:  # the same for every later run with these settings: stored, not retried
                log.warning("%s not computed for %d %s models: %s", metric.name, len(members), type(net).__name__, why)
                for m in members:
                    rows[m] = {"epoch": ctx.epoch_of(m), "settings": want[m][0], "note": f"not computed: {why}"}
                continue
            data = ctx.metric_data(members[0], samples)
            params, buffers = split_state(net, ctx.stacked([states[m] for m in members]))
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
        write_rows(ctx.zoo.path, group, {m: rows[m] for m in chunk}, _attrs(metric, s, used))
        log.info("%s: %d/%d models (%.1fs for this chunk)", group, start + len(chunk), len(todo),
                 time.perf_counter() - t0)
    return len(todo)


# ---- cell-scope metrics -----------------------------------------------------------------------
def _annotate_cells(ctx: _Context, chunk_size: int, group: str, metric, s: dict, ids: list[str]) -> int:
    wanted = set(ids)
    cells = [sorted(c) for c in ctx.zoo.cells().values() if wanted.intersection(c)]
    have = done_rows(ctx.zoo, group, ("settings", "members"))
    todo = []  # (cell members, usable members, pairs, settings json, members string, samples)
    for cell in cells:
        usable = [m for m in cell if not ctx.skip_reason(m)]
        pairs = replica_pairs(len(usable), s["max_pairs"])
        samples = ctx.sample_sets(usable[0], metric.samples(s)) if usable else {}
        sj = _settings_json(metric, s, ctx.epoch, samples, ctx.loss_name(usable[0], metric) if usable else "")
        mstr = ",".join(sorted({usable[i] for p in pairs for i in p}))  # the members the pairs use
        if any(have.get(m) != (sj, mstr) for m in cell):
            todo.append((cell, usable, pairs, sj, mstr, samples))
    todo.sort(key=lambda p: (ctx.arch_key(p[0][0]), ctx.data_key(p[0][0])))
    log.info("%s: %d of %d cells to compute (the rest are stored with these settings)", group, len(todo), len(cells))
    i = 0
    while i < len(todo):
        chunk, n = [], 0
        while i < len(todo) and (not chunk or n + len(todo[i][0]) <= chunk_size):
            chunk.append(todo[i])
            n += len(todo[i][0])
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
        write_rows(ctx.zoo.path, group, rows, _attrs(metric, s, used), int_columns=("epoch", "pairs"))
        log.info("%s: %d/%d cells (%.1fs for this chunk)", group, i, len(todo), time.perf_counter() - t0)
    return sum(len(p[0]) for p in todo)


def _compute_cells(ctx: _Context, metric, s: dict, group: list, rows: dict, used: dict) -> None:
    """Stack every pair of every cell in `group` (one architecture and data) and compute them at once."""
    states = {m: ctx.state(m) for _, usable, *_ in group for m in usable}
    bad = {m for m, sd in states.items() if not all_finite(sd)}
    # every pair (usable[i], usable[j]) of every cell k, side by side
    a_ids, b_ids, owner = zip(*[(usable[i], usable[j], k) for k, (_, usable, pairs, *_) in enumerate(group)
                                for i, j in pairs])
    first = group[0][1][0]
    net, samples = ctx.net(first), group[0][5]
    result, error = None, ""
    refused = refusal(metric, net, s, states[first], ctx.data(first).kind)
    if refused:  # the same for every later run with these settings: stored, not retried
        log.warning("%s not computed for %d %s pairs: %s", metric.name, len(a_ids), type(net).__name__, refused)
        refused = f"not computed: {refused}"
    used.update({ss.key: ss for ss in samples.values()})  # the settings name them, computed or not
    data = {} if refused else ctx.metric_data(first, samples)
    if not bad and not refused:
        try:
            a = ctx.stacked([states[m] for m in a_ids])
            b = ctx.stacked([states[m] for m in b_ids])
            result = metric.compute_pairs(net, a, b, data, s)
        except (RuntimeError, ValueError) as e:  # recorded and retried next run, never fatal
            log.warning("%s failed on %d pairs: %s", metric.name, len(a_ids), e, exc_info=True)
            error = f"failed: {e}"
    owner = np.asarray(owner)
    for k, (cell, usable, pairs, sj, mstr, _) in enumerate(group):
        common = {"pairs": len(pairs), "members": mstr, "settings": sj}
        if result is None:
            note = refused or error or f"non-finite weights in {sorted(bad & set(usable))}; not analyzed"
            for m in usable:
                rows[m] = {**common, "epoch": ctx.epoch_of(m), "note": note, "settings": "" if error else sj}
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
def annotate_zoo(zoo_path, landscape: LandscapeConfig | None, model_ids=None) -> dict[str, int]:
    """Compute the metrics `landscape` lists (a LandscapeConfig; None: nothing) for `model_ids` (default: all) of a zoo.

    Returns {group: rows (re)computed}; a group is the metric's name at the final checkpoint and
    '<metric>_epoch<E>' at an explicit epoch E. After the metrics, the group `phase` (`phase_epoch<E>`)
    gets every analyzed cell's taxonomy label (phases.annotate_phases; thresholds `landscape.phase`,
    None: skipped). The config is checked before the zoo is even opened;
    a metric that does not apply to a model or cell records why in its `note` column. A metric that does not
    apply to an architecture (Metric.refusal, or BatchNorm statistics missing from checkpoints it evaluates
    the net with) is logged once per chunk and its rows say "not computed: <why>" (kept with the settings:
    not retried until they change); an error while computing is recorded as "failed: ..." and retried.
    """
    if landscape is None or not landscape.metrics:
        return {}
    # a run killed after committing annotations and before rebuilding the index leaves the index
    # behind its files: brought up to date first (what is done is read from the files themselves)
    zoo = open_for_annotation(zoo_path)
    ids = list(zoo.ids) if model_ids is None else [str(m) for m in model_ids]
    missing = [m for m in ids if m not in set(zoo.ids)]
    if missing:
        raise ConfigError(f"model id(s) not in {zoo.path}: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    out = {}
    try:
        for epoch in landscape.epochs:
            ctx = _Context(zoo, epoch, landscape.device)
            for name in landscape.metrics:
                metric = METRICS[name]
                annotate = _annotate_models if metric.scope == "model" else _annotate_cells
                group = group_name(name, epoch)
                out[group] = annotate(ctx, landscape.chunk_size, group, metric, asdict(getattr(landscape, name)), ids)
            if landscape.phase is not None:  # the taxonomy label of every cell, from the committed annotations
                out[group_name("phase", epoch)] = annotate_phases(zoo, landscape.phase, epoch, ids, rebuild_index=False)
    except BaseException:
        with contextlib.suppress(Exception):  # what was committed before the error: in the index now
            merge_index(zoo.path)
        raise
    if any(out.values()):  # every annotation file is committed: one index rebuild for all of them
        merge_index(zoo.path)
    return out
