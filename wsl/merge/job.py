"""wsl-merge's job: merge the nets of a zoo per group and write the merged nets as a zoo.

Order: open the zoo, group its nets (merge.by=cell: one group per hyperparameter cell, i.e. the seed
replicas of one setting; all: the whole zoo), refuse what cannot be merged (architectures that differ
inside a group, a missing or mismatched base for stock/ties/dare, held-out splits that differ) before any
work; then merge every group in memory and score it; only then write the zoo (status "merged", one
checkpoint each, epoch 0), its "merge" annotation and the comparison table and plot (<out>/merge_report/).
A bad input writes nothing.

Scoring (wsl.evaluate.domains' judges, the same definitions as wsl-evaluate and the population program):
every merged net, every ingredient and the output ensemble of each group (mean softmax) on the val and test
splits of the group's data, and the merged net also on its train split; nets with BatchNorm get their
running statistics re-estimated on the TRAIN split first (merged checkpoints store those statistics). The
best ingredient is the one with the best VALIDATION score (its test score is what the merge is compared
with); greedy soup ranks and keeps ingredients on validation scores only. Test data choose nothing.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from wsl.errors import ConfigError, printable
from wsl.merge.methods import Merged, aligned_soup, dare, greedy_soup, model_stock, ties, uniform_soup
from wsl.merge.schema import MergeConfig

log = logging.getLogger("wsl.merge")

BASE_METHODS = ("stock", "ties", "dare")
SKIP_COLUMNS = ("seed_init", "seed_data", "replica")  # hyperparameters that differ between seed replicas
DERIVED = ("n_params", "train_samples")  # hyperparameters that follow from others (left out of group labels)
REPORT_DIR = "merge_report"  # inside the output zoo (wsl-verify knows it)
GROUP = "merge"  # annotation group of the output zoo


@dataclass
class Group:
    """One set of nets merged into one."""

    index: int
    ids: list
    arch: dict
    label: str
    hparams: dict  # the hyperparameters every member shares (not seeds)
    base: dict | None = None  # {"ref": text, "sha256": hex, "state_dict": ...} for stock/ties/dare
    task: object = None  # the group's data (group_task), checked before any merge
    result: dict = field(default_factory=dict)


def _j(v) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _storage_column(k: str) -> bool:
    """Columns that say how a checkpoint is stored, not how the net was made: a merged net is a dense checkpoint
    (LoRA ingredients, finetune="lora" with lora_*, are read merged; their merge is not a LoRA fine-tune)."""
    return k == "finetune" or k.startswith("lora_")


def _shared(zoo, ids) -> dict:
    """Hyperparameters with one value over `ids` (seed columns, storage columns and earlier merges' provenance left
    out; the ingredients' `finetune` kind is kept as merge_finetune)."""
    rows = [zoo.hparams(m) for m in ids]
    keys = [k for k in rows[0] if k not in SKIP_COLUMNS and not str(k).startswith("merge_") and not _storage_column(k)]
    out = {k: rows[0][k] for k in keys if all(k in r and _j(r[k]) == _j(rows[0][k]) for r in rows)}
    kinds = sorted({str(r.get("finetune", "")) for r in rows} - {""})
    if kinds:
        out["merge_finetune"] = ",".join(kinds)
    return out


def _sortable(v):
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(v))


def plan_groups(zoo, by: str, min_members: int) -> list[Group]:
    """The groups to merge (cells, or the whole zoo), with their shared hyperparameters; diverged nets left out.
    One line and nothing done when a group holds two architectures or no group has min_members nets."""
    ids = [m for m in zoo.ids if zoo.row(m).status != "diverged"]
    if not ids:
        raise ConfigError(f"zoo.path={printable(zoo.path)} holds no usable nets (all {len(zoo.ids)} diverged)")
    if by == "all":
        archs = {_j(zoo.arch(m)): m for m in ids}
        if len(archs) > 1:
            a, b = list(archs.items())[:2]
            raise ConfigError(f"merge.by=all: zoo {printable(zoo.path)} holds nets of {len(archs)} architectures "
                              f"(e.g. {a[0]} for {a[1]}, {b[0]} for {b[1]}); nets of different architectures "
                              "cannot be merged (merge.by=cell merges each cell alone)")
        parts = [ids]
    else:
        parts = list(zoo.cells(ids).values())
    groups, skipped = [], 0
    shared = [_shared(zoo, p) for p in parts]
    varying = sorted({k for s in shared for k in s if any(_j(s.get(k)) != _j(t.get(k)) for t in shared)})
    varying = [k for k in varying if k not in DERIVED] or varying  # labels name what was set, not what follows

    def order(item):  # groups in the natural order of what varies between them (width 4 before 16)
        return tuple(_sortable(item[1].get(k)) for k in varying)

    for p, hp in sorted(zip(parts, shared), key=order):
        if len(p) < min_members:
            skipped += 1
            continue
        label = ", ".join(f"{k}={hp[k]}" for k in varying if k in hp) or ("all" if by == "all" else "cell")
        groups.append(Group(len(groups), list(p), zoo.arch(p[0]), label, hp))
    if skipped:
        log.warning("%d group(s) with fewer than merge.min_members=%d nets skipped", skipped, min_members)
    if not groups:
        raise ConfigError(f"zoo.path={printable(zoo.path)}: no group (merge.by={by}) has merge.min_members="
                          f"{min_members} usable nets or more")
    return groups


def resolve_bases(zoo, groups: list[Group], base: str | None, method: str) -> None:
    """The pretrained net of each group (stock, ties, dare): merge.base, or the members' init_from (all the
    same). Loaded and checked (sha256 against the members' init_sha256, architecture) before any work."""
    from wsl.zoo.reference import load_model_ref

    loaded: dict = {}
    for g in groups:
        if base is not None:
            ref, key = base, "merge.base"
        else:
            refs = {str(zoo.hparams(m).get("init_from") or "") for m in g.ids}
            if refs == {""}:
                raise ConfigError(f"method={method} needs the pretrained net the nets were fine-tuned from: the nets of "
                                  f"{printable(zoo.path)} record no init_from (trained from scratch?); give "
                                  "merge.base=<zoo>:<model_id>[@epoch], or use method=uniform|greedy|aligned")
            if len(refs) > 1:
                shown = ", ".join(sorted(printable(r) or "(none)" for r in refs)[:3])
                raise ConfigError(f"method={method}: the nets of group '{g.label}' were fine-tuned from {len(refs)} "
                                  f"different nets (init_from {shown}); merge.by=cell, or give merge.base=")
            ref, key = refs.pop(), "init_from"
        if ref not in loaded:
            loaded[ref] = load_model_ref(ref, key)
        sd, arch, sha = loaded[ref]
        if _j(arch) != _j(g.arch):
            raise ConfigError(f"{key}={printable(ref)} is a net of architecture {_j(arch)}, the nets of group "
                              f"'{g.label}' are {_j(g.arch)}: nets of different architectures cannot be merged")
        recorded = {str(zoo.hparams(m).get("init_sha256") or "") for m in g.ids} - {""}
        if recorded and recorded != {sha}:
            raise ConfigError(f"{key}={printable(ref)}: its checkpoint's sha256 {sha[:12]}... is not the one the nets "
                              f"of group '{g.label}' were fine-tuned from ({sorted(recorded)[0][:12]}...)")
        g.base = {"ref": ref, "sha256": sha, "state_dict": sd}


def _task_key(zoo, mid) -> str:
    cfg = dict(zoo.job_config(mid).get("dataset") or {})
    cfg.pop("root", None)
    return _j(cfg)


def group_task(zoo, g: Group, cache: dict | None = None):
    """The data of a group: the first member's (train split: BatchNorm statistics, train scores); refused when
    the members' held-out splits differ (their val and test data must be one). `cache`: {dataset record: data},
    shared by the groups (one copy of each dataset in memory)."""
    from wsl.evaluate.pipeline import _eval_fingerprint

    cache = {} if cache is None else cache

    def data(m):
        k = _task_key(zoo, m)
        if k not in cache:
            cache[k] = zoo.training_data(m)
        return cache[k]

    keys = {}
    for m in g.ids:
        keys.setdefault(_task_key(zoo, m), m)
    first = data(g.ids[0])
    for k, m in list(keys.items())[1:]:
        other = data(m)
        if _eval_fingerprint(other) != _eval_fingerprint(first):
            raise ConfigError(f"group '{g.label}': models {g.ids[0]} and {m} were trained on data whose val/test splits "
                              "differ; their merge cannot be scored on one split (merge.by=cell)")
    return first


def _scores_history(judge, sd: dict) -> tuple[dict, dict]:
    """({<split>_<column>: [value]} for train/val/test, {split: headline score})."""
    hist, head = {}, {}
    for split in ("train", "val", "test"):
        sc = judge.scores([sd], split)
        hist[f"{split}_loss"] = [float(sc.loss[0])]
        if np.isfinite(sc.accuracy[0]):
            hist[f"{split}_acc"] = [float(sc.accuracy[0])]
        if sc.metric.key != "acc":
            hist[f"{split}_{sc.metric.key}"] = [float(sc.score[0])]
        for k, v in sc.extra.items():
            hist[f"{split}_{k}"] = [float(v[0])]
        head[split] = float(sc.score[0])
    return hist, head


def _merge(method: str, sds: list, g: Group, opts, spec, keys, val_score, val_scores, higher) -> Merged:
    if method == "uniform":
        return uniform_soup(sds, keys)
    if method == "greedy":
        return greedy_soup(sds, val_score, keys, higher, scores=val_scores)
    if method == "aligned":
        return aligned_soup(sds, spec, keys, max_iter=opts.max_iter, seed=opts.seed)
    base = {k: v.float() if v.is_floating_point() else v for k, v in g.base["state_dict"].items()}
    if method == "stock":
        return model_stock(sds, base, keys)
    if method == "ties":
        return ties(sds, base, density=opts.density, scale=opts.scale, keys=keys)
    if method == "dare":
        return dare(sds, base, drop=opts.drop, scale=opts.scale, seed=opts.seed, keys=keys)
    raise ConfigError(f"method={method!r} is not allowed; valid: uniform, greedy, stock, ties, dare, aligned")


def merge_group(zoo, g: Group, job: MergeConfig) -> dict:
    """Merge one group and score the merge, its ingredients and their ensemble; returns the state dict, index
    history, provenance and the comparison row."""
    from wsl.evaluate.accuracy import BatchNormInputs, has_batchnorm, load_weights
    from wsl.evaluate.domains import judge_for
    from wsl.nets import build_net

    t0 = time.perf_counter()
    opts = job.merge
    net = build_net(g.arch)
    keys = [n for n, _ in net.named_parameters()]  # weights are merged; BatchNorm statistics re-estimated
    task = g.task if g.task is not None else group_task(zoo, g)
    bn_cfg = job.batchnorm
    bn = BatchNormInputs.of_split(task.x_train, bn_cfg.batch_size, bn_cfg.batches, bn_cfg.seed) \
        if has_batchnorm(net) else None
    judge = judge_for(task, net, bn, job.chunk)
    higher = judge.metric.higher_is_better
    sds = [{k: v.float() if v.is_floating_point() else v for k, v in zoo.state_dict(m, opts.epoch).items()}
           for m in g.ids]
    val = judge.scores(sds, "val").score
    test = judge.scores(sds, "test").score
    ens = judge.ensemble(sds, "test")
    t_merge = time.perf_counter()
    merged = _merge(job.method, sds, g, opts, net.permutation_spec(), keys,
                    lambda sd: float(judge.scores([sd], "val").score[0]), list(map(float, val)), higher)
    t_merge = time.perf_counter() - t_merge  # the method alone (greedy soup: with its validation scoring)
    sd = merged.state_dict
    if bn is not None:  # the stored statistics: re-estimated on the train split, as the scores are
        load_weights(net, sd)
        bn.apply(net)
        sd = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    history, head = _scores_history(judge, sd)
    key = lambda v: v if higher else -v  # noqa: E731
    finite = [i for i in range(len(sds)) if np.isfinite(val[i])]
    best = max(finite, key=lambda i: (key(val[i]), -i)) if finite else 0
    better = judge.metric.better
    row = {"group": g.index, "label": g.label, "method": job.method, "n_members": len(g.ids),
           "metric": judge.metric.key, "higher_is_better": higher,
           "merged_val": head["val"], "merged_test": head["test"],
           "best_ingredient": g.ids[best], "best_val": float(val[best]), "best_test": float(test[best]),
           "ingredients_test_mean": float(np.nanmean(test)), "ingredients_test_max": float(np.nanmax(test) if higher
                                                                                          else np.nanmin(test)),
           "ensemble_test": float(ens["score"]),
           "gain_vs_best": better(head["test"], float(test[best])), "gain_vs_ensemble": better(head["test"],
                                                                                              float(ens["score"])),
           "merge_seconds": t_merge, "seconds": 0.0}
    prov = {"merge_method": job.method, "merge_by": opts.by, "merge_group": g.index, "merge_label": g.label,
            "merge_members": _j(g.ids), "merge_n_members": len(g.ids), "merge_epoch": opts.epoch,
            "merge_source_zoo": str(zoo.path),
            "merge_weights": _j(merged.weights) if merged.weights is not None else ""}
    if job.method in BASE_METHODS:
        prov.update(merge_base=g.base["ref"], merge_base_sha256=g.base["sha256"])
    if job.method in ("ties", "dare"):
        prov.update(merge_scale=opts.scale)
    if job.method == "ties":
        prov.update(merge_density=opts.density)
    if job.method == "dare":
        prov.update(merge_drop=opts.drop, merge_seed=opts.seed)
    if job.method == "aligned":
        prov.update(merge_reference=g.ids[0], merge_max_iter=opts.max_iter, merge_seed=opts.seed)
    if job.method == "greedy":
        prov.update(merge_kept=_j([g.ids[i] for i in merged.info["kept"]]))
        row["n_kept"] = len(merged.info["kept"])
    if job.method == "stock":
        t = list(merged.coefficients.values())
        prov.update(merge_coefficients=_j(merged.coefficients), merge_ratio_mean=float(np.mean(t)))
        row["ratio_mean"] = float(np.mean(t))
    if bn is not None:
        d = bn.describe()
        prov.update(bn_split=d["split"], bn_inputs=d["inputs"], bn_batches=d["batches"], bn_batch_size=d["batch_size"])
    row["seconds"] = time.perf_counter() - t0
    return {"state_dict": sd, "history": history, "provenance": prov, "row": row}


def check_output(job: MergeConfig) -> Path:
    """out= is a new zoo: not the input zoo, not a file or link, not a directory holding other things."""
    from wsl.zoo.format import INDEX_FILE
    from wsl.zoo.safe_paths import check_zoo_output

    out = check_zoo_output(job.out, "wsl-merge", "out")
    src = Path(job.zoo.path).expanduser().resolve()
    if out.resolve() == src:
        raise ConfigError(f"out={printable(out)} is the zoo whose nets are merged; write the merged nets to a new zoo")
    if (out / INDEX_FILE).exists():
        raise ConfigError(f"out={printable(out)} already holds a zoo; wsl-merge writes a new zoo: choose a new directory")
    return out


def merge_zoo(job: MergeConfig, config: dict | None = None) -> tuple[Path, list[dict]]:
    """The whole of wsl-merge; returns (output zoo path, one comparison row per group)."""
    from wsl.zoo import ShardWriter, Zoo, write_annotation

    if job.threads is not None:
        torch.set_num_threads(job.threads)
    out = check_output(job)
    zoo = Zoo(job.zoo.path)
    groups = plan_groups(zoo, job.merge.by, job.merge.min_members)
    if job.method in BASE_METHODS:
        resolve_bases(zoo, groups, job.merge.base, job.method)
    tasks: dict = {}
    for g in groups:  # the data and the checkpoint epoch, checked before any merge
        g.task = group_task(zoo, g, tasks)
        if job.merge.epoch != -1:
            from wsl.zoo.epochs import check_epoch
            check_epoch(zoo, g.ids, job.merge.epoch, "merge.epoch")
    t0 = time.perf_counter()
    for i, g in enumerate(groups):
        g.result = merge_group(zoo, g, job)
        r = g.result["row"]
        log.info("merged group %d/%d (%s, %d nets): test %s %.4f, best ingredient %.4f, ensemble %.4f", i + 1,
                 len(groups), g.label, len(g.ids), r["metric"], r["merged_test"], r["best_test"], r["ensemble_test"])
    seconds = time.perf_counter() - t0
    # everything merged and scored: now write
    # one shard (job) per dataset record, so that every merged net's data (Zoo.training_data) is its group's
    writers: dict = {}
    ids = []
    for g in groups:
        ds = zoo.job_config(g.ids[0]).get("dataset")
        if _j(ds) not in writers:
            stored = {"dataset": ds, "merge": {"source_zoo": str(zoo.path), "method": job.method, **(config or {})}}
            job_id = f"merge-{job.method}-d{len(writers)}"  # d0, d1, ...: shards (and index rows) in group order
            writers[_j(ds)] = ShardWriter(out, job_id, config=stored, zoo_name=job.name or out.name)
        writer = writers[_j(ds)]
        mid = f"merge-{job.method}-g{g.index:04d}"
        res = g.result
        meta = {"provenance": _j(res["provenance"])}
        writer.write_checkpoint(mid, 0, res["state_dict"], g.arch, extra_meta=meta)
        writer.add_model(mid, g.arch, {**g.hparams, **res["provenance"]}, status="merged", history=res["history"])
        ids.append(mid)
    for writer in writers.values():
        writer.commit()
    rows = [g.result["row"] for g in groups]
    cols = {k: [r.get(k, math.nan) for r in rows] for k in ("group", "n_members", "best_ingredient", "best_val",
                                                             "best_test", "ingredients_test_mean", "ensemble_test",
                                                             "merged_val", "merged_test", "gain_vs_best",
                                                             "gain_vs_ensemble")}
    write_annotation(out, GROUP, ids, cols, attrs={"metric": rows[0]["metric"],
                                                   "higher_is_better": int(rows[0]["higher_is_better"]),
                                                   "method": job.method, "source_zoo": str(zoo.path),
                                                   "best_ingredient": "the member with the best validation score"})
    from wsl.merge.report import write_report

    write_report(out / REPORT_DIR, rows, job.method, seconds)
    return out, rows
