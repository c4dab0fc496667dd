"""wsl-align's job: a canonicalized copy of a zoo, every net weight-matched to a reference, written in
the same format (a zoo-to-zoo job over wsl.symmetry's permutation math and wsl.landscape's barrier).

Reference choice (`reference`, see wsl.align.schema.AlignConfig):
- "cell": the first model (index order) of each hyperparameter cell; its seed replicas are
  aligned to it. Replicas become directly comparable coordinate by coordinate.
- "global": one reference per architecture (the first model of that architecture, or the model
  named by `reference_id`, which then every model must share the architecture of).

The permutations are found on one checkpoint (`epoch`) and applied to every checkpoint written
(`epochs="all"`) so a training trajectory stays one consistent net; permutations preserve the
function, so histories (loss, accuracy) and hyperparameters are copied unchanged, and so is
each model's status. Diverged nets and nets with non-finite weights are copied as they are.
Matching reads the weights only; BatchNorm running statistics ride along with their channels
(wsl.symmetry.permute), so every aligned checkpoint computes what it computed, in eval mode too.

Recorded per model in the annotation group "alignment" of the new zoo: the reference, the linear
loss and accuracy barriers to it before and after alignment (wsl.landscape.connectivity.linear_barrier
on the chosen data split; for nets with BatchNorm the running statistics are recomputed on train
inputs at every point of the line unless barrier.bn_reset=false), the L2 distance of the weights
before and after, and the coordinate-descent passes. The record's attributes say how BatchNorm was
handled (bn_reset, and the train examples, batch size and number of batches of the reset), as does
the "align" entry of every shard's job config. The permutation applied is in each checkpoint's
metadata ("alignment"), so the original can be recovered. Annotation groups of the source (e.g.
landscape metrics) are copied with a note that they were computed on the source nets.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsl.align.schema import AlignConfig
from wsl.apps.config import stored
from wsl.errors import ConfigError, ZooFormatError
from wsl.symmetry.matching import match
from wsl.symmetry.permute import permute
from wsl.zoo.finite import all_finite

log = logging.getLogger("wsl.align")

GROUP = "alignment"
# checkpoint metadata keys the writer sets itself
_OWN_META = {"format", "format_version", "zoo", "job_id", "model_id", "epoch", "arch"}


def _l2(a: dict, b: dict, spec) -> float:
    """L2 distance between two nets' weights (BatchNorm statistics describe data: left out)."""
    return math.sqrt(sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in spec.parameters().axes))


def _check_output(src_path: Path, out: Path) -> None:
    if out == src_path:
        raise ConfigError(f"out={out} is the source zoo itself; choose a new directory")
    if src_path in out.parents:
        raise ConfigError(f"out={out} lies inside the source zoo {src_path}; choose a directory outside it")
    if (out / "index.h5").exists() or (out / "shards").exists():
        raise ConfigError(f"out={out} already holds a zoo; remove it or choose another directory")


def _references(zoo, ids: list[str], job: AlignConfig, alignable: dict) -> dict:
    """model id -> its reference's id (a reference maps to itself); None for nets that cannot be aligned."""
    ref_of = {m: None for m in ids}
    if job.reference == "cell":
        groups = zoo.cells(ids).values()
    else:
        by_arch: dict = {}
        for m in ids:
            by_arch.setdefault(json.dumps(zoo.arch(m), sort_keys=True), []).append(m)
        groups = list(by_arch.values())
        if job.reference_id is not None:
            rid = job.reference_id
            if rid not in ids:
                raise ConfigError(f"reference_id={rid!r} is not a model of {zoo.path}")
            if not alignable[rid]:
                raise ConfigError(f"reference_id={rid!r} diverged or has non-finite weights at the matched epoch")
            if len(groups) > 1:
                other = next(g[0] for g in groups if rid not in g)
                raise ConfigError(f"reference_id={rid!r}: model {other} has another architecture "
                                  f"({zoo.arch(other)} vs {zoo.arch(rid)}); use reference=cell or "
                                  "reference=global without reference_id (one reference per architecture)")
            groups = [[rid] + [m for m in ids if m != rid]]
    for group in groups:
        candidates = [m for m in group if alignable[m]]
        if not candidates:
            continue
        ref = candidates[0]
        for m in candidates:
            ref_of[m] = ref
    return ref_of


def _barriers(zoo, plan: "AlignmentPlan", b) -> tuple[dict, list]:
    """Per aligned model {"before", "after", "acc_before", "acc_after"}: the linear loss and accuracy barriers
    to its reference, in vmapped chunks; and the BatchNorm records of the evaluations (one per
    architecture and data, for nets with BatchNorm: whether the statistics were reset on train data, on
    how many examples, in how many batches of what size)."""
    from wsl.landscape.batchnorm import has_batchnorm
    from wsl.landscape.connectivity import linear_barrier
    from wsl.population.functional import stack_state_dicts

    groups: dict = {}  # pairs sharing architecture and data are evaluated together
    for m in plan.results:
        data = json.dumps(zoo.job_config(m).get("dataset"), sort_keys=True, default=str)
        groups.setdefault((json.dumps(zoo.arch(m), sort_keys=True), data), []).append((m, plan.ref_of[m]))
    tasks, out, records = {}, {}, []  # barrier data per dataset config (a train-fraction sweep has several)
    for (arch, data), members in groups.items():
        if data not in tasks:
            task = zoo.training_data(members[0][0])
            x, y = task.split(b.split)
            n = x.shape[0] if b.samples is None else min(b.samples, x.shape[0])
            n_bn = task.x_train.shape[0] if b.bn_samples is None else min(b.bn_samples, task.x_train.shape[0])
            tasks[data] = (x[:n], y[:n], task.x_train[:n_bn])  # train inputs reset BatchNorm statistics
        x, y, bn_x = tasks[data]
        net = zoo.skeleton(members[0][0])
        kw = dict(points=b.points, bn_x=bn_x if has_batchnorm(net) else None, batch_size=b.batch_size,
                  bn_reset=b.bn_reset, bn_batch_size=b.bn_batch_size)
        bn = None
        for i in range(0, len(members), b.chunk):
            chunk = members[i:i + b.chunk]
            refs = stack_state_dicts([plan.matched[r] for _, r in chunk])
            before = linear_barrier(net, refs, stack_state_dicts([plan.matched[m] for m, _ in chunk]), x, y, **kw)
            after = linear_barrier(net, refs, stack_state_dicts([plan.aligned[m] for m, _ in chunk]), x, y, **kw)
            bn = after.bn
            for j, (m, _) in enumerate(chunk):
                out[m] = {"before": float(before.barrier[j]), "after": float(after.barrier[j]),
                          "acc_before": float(before.acc_barrier[j]), "acc_after": float(after.acc_barrier[j])}
        if bn is not None:
            records.append({"arch": json.loads(arch).get("name"), "models": len(members), **bn,
                            **({"split": "train"} if bn.get("reset") else {})})
    return out, records


@dataclass
class AlignmentPlan:
    """What aligning one zoo decided, model by model (all dicts keyed by model id)."""

    ids: list
    specs: dict  # PermutationSpec
    epoch_of: dict  # the matched checkpoint's epoch
    matched: dict  # state dict at that epoch
    ref_of: dict  # reference model id, or None (copied unaligned)
    results: dict  # MatchResult, for aligned non-reference models only
    aligned: dict  # matched state dict after the permutation


def _load(src, job: AlignConfig) -> AlignmentPlan:
    """Matched checkpoint and spec of every model (nets that declare no symmetry fail here); diverged
    nets and nets with non-finite weights are marked to be copied as they are."""
    ids = list(src.ids)
    if not ids:
        raise ZooFormatError(f"{src.path}: the zoo holds no models; nothing to align")
    specs, matched, alignable, epoch_of = {}, {}, {}, {}
    for m in ids:
        epochs = src.checkpoint_epochs(m)
        diverged = src.row(m).status == "diverged"
        e = epochs[-1] if job.epoch == -1 else job.epoch
        if e not in epochs:
            if not diverged:
                raise ConfigError(f"epoch={job.epoch}: model {m} has no checkpoint there; it has {epochs}")
            e = epochs[-1]
        net = src.skeleton(m)
        if not hasattr(net, "permutation_spec"):
            raise ConfigError(f"model {m}: architecture {src.arch(m).get('name')!r} declares no permutation spec")
        specs[m], epoch_of[m] = net.permutation_spec(), e
        matched[m] = src.state_dict(m, e)
        alignable[m] = not diverged and all_finite(matched[m])
    ref_of = _references(src, ids, job, alignable)
    return AlignmentPlan(ids, specs, epoch_of, matched, ref_of, {}, {})


def _match_all(plan: AlignmentPlan, job: AlignConfig) -> None:
    started = time.perf_counter()
    for i, m in enumerate(plan.ids):
        r = plan.ref_of[m]
        if r is None or r == m:
            plan.aligned[m] = plan.matched[m]
            continue
        try:
            res = match(plan.matched[r], plan.matched[m], plan.specs[m], max_iter=job.matching.max_iter,
                        seed=job.matching.seed, restarts=job.matching.restarts)
        except ConfigError as e:
            raise ConfigError(f"model {m} (reference {r}): {e}") from e
        plan.results[m] = res
        plan.aligned[m] = permute(plan.matched[m], plan.specs[m], res.perms)
        if (i + 1) % 100 == 0:
            log.info("aligned %d/%d models", i + 1, len(plan.ids))
    log.info("weight matching: %d models in %.1fs", len(plan.results), time.perf_counter() - started)


def _write_copy(src, out: Path, plan: AlignmentPlan, job: AlignConfig, batchnorm: list) -> None:
    """One shard per source job, so each job's config (hence its dataset) travels with its models, with
    the align job's config and the BatchNorm records of its barriers."""
    from wsl.zoo import ShardWriter

    name = job.name or f"{src.attrs.get('zoo_name', src.path.name)}-aligned"
    record = {"source": str(src.path), **stored(job), "batchnorm": batchnorm}
    by_job: dict = {}
    for m in plan.ids:
        by_job.setdefault(src.row(m).job_id, []).append(m)
    for job_id, members in by_job.items():
        job_config = {**src.job_config(members[0]), "align": record}
        writer = ShardWriter(out, job_id, config=job_config, zoo_name=name)
        for m in members:
            row, arch = src.row(m), src.arch(m)
            perms = plan.results[m].perms if m in plan.results else None
            wanted = src.checkpoint_epochs(m) if job.epochs == "all" else [plan.epoch_of[m]]
            for e in wanted:
                sd = plan.matched[m] if e == plan.epoch_of[m] else src.state_dict(m, e)
                if perms is not None:
                    sd = permute(sd, plan.specs[m], perms)
                meta = _source_meta(src, m, e)
                meta[GROUP] = {"reference": plan.ref_of[m] or "", "matched_epoch": plan.epoch_of[m],
                               "source_zoo": str(src.path),
                               "permutation": {p: v.tolist() for p, v in perms.items()} if perms else None}
                writer.write_checkpoint(m, e, sd, arch, extra_meta=meta)
            writer.add_model(m, arch, dict(row.hparams), row.status, row.history, row.diverged_epoch)
        writer.commit()


def _copy_annotations(src, out: Path, ids: list) -> None:
    from wsl.zoo import write_annotation

    for path in sorted((src.path / "annotations").glob("*.h5")):
        group = path.stem
        if group == GROUP:
            continue  # re-aligning an aligned zoo: the new record replaces the old one
        ann = src.annotation(group)
        attrs = {**ann["attrs"], "copied_from": str(src.path), "copied_note": "computed on the source nets before alignment"}
        write_annotation(out, group, ids, ann["columns"], attrs)


def _record(plan: AlignmentPlan, barriers: dict) -> dict:
    """The "alignment" columns, one row per model."""
    nan = float("nan")
    ids, ref_of, res = plan.ids, plan.ref_of, plan.results

    def barrier(m, k):  # a reference's barrier to itself is 0 by definition; unaligned nets: NaN
        return barriers[m][k] if m in barriers else (0.0 if ref_of[m] == m else nan)

    return {
        "reference": [ref_of[m] or "" for m in ids],
        "is_reference": np.asarray([float(ref_of[m] == m) for m in ids]),
        "matched_epoch": np.asarray([float(plan.epoch_of[m]) for m in ids]),
        "barrier_before": np.asarray([barrier(m, "before") for m in ids]),
        "barrier_after": np.asarray([barrier(m, "after") for m in ids]),
        "acc_barrier_before": np.asarray([barrier(m, "acc_before") for m in ids]),
        "acc_barrier_after": np.asarray([barrier(m, "acc_after") for m in ids]),
        "l2_before": np.asarray([_l2(plan.matched[ref_of[m]], plan.matched[m], plan.specs[m]) if ref_of[m] else nan
                                 for m in ids]),
        "l2_after": np.asarray([_l2(plan.matched[ref_of[m]], plan.aligned[m], plan.specs[m]) if ref_of[m] else nan
                                for m in ids]),
        "passes": np.asarray([float(res[m].passes) if m in res else nan for m in ids]),
        "objective": np.asarray([res[m].objective if m in res else nan for m in ids]),
    }


def align_zoo(job: AlignConfig) -> Path:
    """Write a canonicalized copy of the zoo `job.zoo.path` to `job.out` (None: "<zoo.path>-aligned");
    returns the copy's path. Everything is computed before the first write; the alignment record is
    written last."""
    from wsl.zoo import Zoo, write_annotation

    started = time.perf_counter()
    src = Zoo(job.zoo.path)
    out = src.path.with_name(f"{src.path.name}-aligned") if job.out is None else Path(job.out).expanduser().resolve()
    _check_output(src.path, out)
    plan = _load(src, job)
    _match_all(plan, job)
    b = job.barrier
    barriers, batchnorm = _barriers(src, plan, b)

    _write_copy(src, out, plan, job, batchnorm)
    if job.annotations == "copy":
        _copy_annotations(src, out, plan.ids)
    cols = _record(plan, barriers)
    attrs = {"method": "weight matching (Git Re-Basin coordinate descent, scipy linear_sum_assignment) on the "
                       "weights; BatchNorm running statistics permuted with their channels, never matched",
             "barrier": "max_alpha L((1-a) ref + a net) - ((1-a) L(ref) + a L(net)), cross-entropy",
             "acc_barrier": "max_alpha ((1-a) acc(ref) + a acc(net)) - acc((1-a) ref + a net)",
             "barrier_points": b.points, "barrier_split": b.split,
             "barrier_samples": -1 if b.samples is None else b.samples,
             **_batchnorm_attrs(b, batchnorm),
             "reference_mode": job.reference, "epochs_written": job.epochs,
             "max_iter": job.matching.max_iter, "seed": job.matching.seed, "restarts": job.matching.restarts,
             "source_zoo": str(src.path), "seconds": round(time.perf_counter() - started, 3)}
    write_annotation(out, GROUP, plan.ids, cols, attrs)
    if barriers:
        means = {k: float(np.mean([v[k] for v in barriers.values()])) for k in ("before", "after", "acc_before",
                                                                                  "acc_after")}
        log.info("barrier to reference (mean over %d nets): loss %.4f before, %.4f after; accuracy %.4f before, "
                 "%.4f after; %s", len(barriers), means["before"], means["after"], means["acc_before"],
                 means["acc_after"], attrs["bn_reset_note"])
    return out


def _batchnorm_attrs(b, records: list) -> dict:
    """How BatchNorm statistics were set along the paths: `bn_reset` 1 (reset on train data at every point),
    0 (the interpolated stored statistics) or -1 (no net with BatchNorm); with a reset, the train
    examples, batch size and number of batches (one value, or a list when the data differ by job), and a
    sentence for the log."""
    if not records:
        return {"bn_reset": -1, "bn_reset_note": "no BatchNorm"}
    if not b.bn_reset:
        return {"bn_reset": 0, "bn_reset_note": "BatchNorm: interpolated stored statistics, no reset"}
    out = {"bn_reset": 1, "bn_reset_split": "train"}
    for k in ("samples", "batch_size", "batches"):
        values = sorted({r[k] for r in records})
        out[f"bn_reset_{k}"] = values[0] if len(values) == 1 else values
    out["bn_reset_note"] = (f"BatchNorm statistics reset at every point on {out['bn_reset_samples']} train examples "
                            f"in {out['bn_reset_batches']} batches of {out['bn_reset_batch_size']}")
    return out


def _source_meta(src, model_id: str, epoch: int) -> dict:
    """The source checkpoint's metadata, without the keys the writer sets itself."""
    from wsl.zoo import read_checkpoint_metadata

    path = src.checkpoint_path(model_id, epoch)
    try:
        return {k: v for k, v in read_checkpoint_metadata(path).items() if k not in _OWN_META}
    except OSError as e:
        raise ZooFormatError(f"{path}: unreadable ({e})") from e
