"""Evaluate a zoo of generated nets against the zoo they were learned from (what wsl-evaluate runs).

Order: open both zoos and refuse a mismatch (architecture, dataset) before any work; load the
checkpoints; score every net on the evaluation split (nets with BatchNorm: every set, generated,
training, baselines, ensemble, after its statistics were re-estimated on the train split as
`job.batchnorm` says; the statistics stored in the checkpoints are never used); align and audit against the training
checkpoints; build, score and audit every baseline setting; compare landscape phases when both
zoos carry them; write the report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from wsl.errors import ConfigError, ZooFormatError, printable
from wsl.evaluate.accuracy import BatchNormInputs, has_batchnorm, mean_std
from wsl.evaluate.baselines import build_baselines, check_baselines, generate_baselines
from wsl.evaluate.domains import JUDGES, check_kind, judge_for
from wsl.evaluate.novelty import AlignedReference, audit, training_yardstick
from wsl.evaluate.phases import compare_phases
from wsl.evaluate.report import report_dir, write_report
from wsl.evaluate.results import Evaluation, SetResult
from wsl.evaluate.schema import EvaluateConfig
from wsl.evaluate.screening import plan_screening, screen
from wsl.nets import build_net
from wsl.zoo import Zoo
from wsl.zoo.epochs import check_epoch
from wsl.zoo.finite import all_finite, some_ids

log = logging.getLogger("wsl.evaluate")


def _arch_key(arch: dict) -> str:
    return json.dumps(arch, sort_keys=True)


def _eval_fingerprint(task) -> str:
    """sha256 of the val and test splits: what evaluation reads. (The train split may legitimately
    differ between members of a zoo, e.g. a train-fraction sweep; the held-out splits may not.)"""
    h = hashlib.sha256(task.name.encode())
    for s in ("val", "test"):
        x, y = task.split(s)
        h.update(x.contiguous().numpy().tobytes())
        h.update(y.contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class EvaluationPlan:
    """What the compatibility check found: everything needed to start, nothing computed yet."""

    gen: Zoo
    ref: Zoo
    gen_ids: list
    ref_ids: list
    arch: dict
    task: object
    reference_epoch: int = -1
    reference_source: str = ""  # how ref_ids were chosen (for the report)


def _source(gen: Zoo, gen_ids: list, ref: Zoo) -> dict:
    """What the generated nets record about the zoo they were learned from (wsl-sample writes
    `source_zoo` into its job config), when it is this reference zoo; {} otherwise."""
    src = gen.job_config(gen_ids[0]).get("source_zoo") or {}
    path = src.get("path")
    if not path:
        return {}
    try:
        same = Path(path).expanduser().resolve() == ref.path
    except (OSError, RuntimeError):
        same = False
    return src if same else {}


def plan_evaluation(job: EvaluateConfig) -> EvaluationPlan:
    """Open both zoos and check they can be compared; raises before any model is loaded."""
    gen, ref = Zoo(job.zoo.path), Zoo(job.reference)
    if gen.path == ref.path:
        raise ConfigError(f"zoo.path and reference are the same zoo ({gen.path}); evaluate a generated zoo "
                          "against the zoo it was learned from")
    gen_ids = [m for m in gen.ids if gen.row(m).status != "diverged"]
    if not gen_ids:
        raise ZooFormatError(f"{gen.path}: holds no usable nets (all {len(gen.ids)} are marked diverged)")
    if job.max_nets is not None:
        gen_ids = gen_ids[: job.max_nets]
    gen_archs = {_arch_key(gen.arch(m)) for m in gen_ids}
    if len(gen_archs) > 1:
        raise ZooFormatError(f"{gen.path}: holds {len(gen_archs)} architectures ({sorted(gen_archs)}); "
                             "wsl-evaluate compares one architecture at a time")
    arch_key = gen_archs.pop()
    arch = json.loads(arch_key)
    src = _source(gen, gen_ids, ref)
    recorded = src.get("train_ids") if isinstance(src.get("train_ids"), list) else None
    if job.reference_ids is not None:
        unknown = [m for m in job.reference_ids if m not in ref.ids]
        if unknown:
            raise ConfigError(f"reference_ids: {unknown[:5]} are not models of {ref.path}")
        candidates, how = list(job.reference_ids), "reference_ids as given"
    elif recorded and all(m in ref.ids for m in recorded):
        candidates, how = list(recorded), "the generator's training nets (recorded by wsl-sample)"
    else:
        candidates = [m for m in ref.ids if ref.row(m).status == "trained"]
        how = "every trained net of the reference zoo with this architecture"
    ref_epoch = job.reference_epoch
    if ref_epoch is None:
        ref_epoch = int(src["epoch"]) if isinstance(src.get("epoch"), int) else -1
    ref_ids = [m for m in candidates if _arch_key(ref.arch(m)) == arch_key]
    if not ref_ids:
        have = sorted({_arch_key(ref.arch(m)) for m in candidates}) or ["(no trained models)"]
        raise ConfigError(f"architecture mismatch: the generated zoo {gen.path} holds {arch_key}, the reference "
                          f"zoo {ref.path} holds {'; '.join(have)}")
    if len(ref_ids) < 2:
        raise ConfigError(f"reference zoo {ref.path} has {len(ref_ids)} trained checkpoint(s) of architecture "
                          f"{arch_key}; the audit needs at least 2")
    gen_task, ref_task = gen.training_data(gen_ids[0]), ref.training_data(ref_ids[0])
    check_kind(ref_task, job.failure)  # a domain wsl-evaluate scores, with the failure threshold of that domain
    if _eval_fingerprint(gen_task) != _eval_fingerprint(ref_task):
        raise ConfigError(f"dataset mismatch: the generated zoo {gen.path} was made for dataset {gen_task.name!r} "
                          f"({_ds(gen_task)}), the reference zoo {ref.path} for {ref_task.name!r} ({_ds(ref_task)}); "
                          "their held-out splits differ")
    if not 0 <= job.novelty.anchor < len(ref_ids):
        raise ConfigError(f"novelty.anchor={job.novelty.anchor} is out of range for {len(ref_ids)} training checkpoints")
    check_epoch(gen, gen_ids, job.epoch, "epoch")
    check_epoch(ref, ref_ids, ref_epoch, "reference_epoch" if job.reference_epoch is not None else
                "reference_epoch (the generator's training epoch, as wsl-sample recorded it)")
    return EvaluationPlan(gen, ref, gen_ids, ref_ids, arch, ref_task, ref_epoch, how)


def _exclude_nonfinite(p: EvaluationPlan, ref_sds: list, anchor: int) -> list:
    """Training checkpoints with non-finite weights are no yardstick (a verify ERROR; weight matching cannot
    align them): dropped from `p.ref_ids` and `ref_sds` with one warning naming them; refused when fewer than
    two are left. (Generated nets with non-finite weights stay: they count as failures.)"""
    ok = [all_finite(sd) for sd in ref_sds]
    if all(ok):
        return ref_sds
    bad = [m for m, f in zip(p.ref_ids, ok) if not f]
    shown = some_ids(bad)
    if sum(ok) < 2:
        raise ConfigError(f"reference zoo {printable(p.ref.path)}: {len(bad)} of {len(ok)} training checkpoints have "
                          f"non-finite weights at epoch {p.reference_epoch} ({shown}); the audit needs at least 2 "
                          "finite ones (check the zoo with wsl-verify)")
    log.warning("excluding %d of %d training checkpoints of %s with non-finite weights at epoch %d: %s", len(bad),
                len(ok), printable(p.ref.path), p.reference_epoch, shown)
    p.ref_ids = [m for m, f in zip(p.ref_ids, ok) if f]
    if not 0 <= anchor < len(p.ref_ids):
        raise ConfigError(f"novelty.anchor={anchor} is out of range for the {len(p.ref_ids)} finite training "
                          "checkpoints")
    return [sd for sd, f in zip(ref_sds, ok) if f]


def _ds(task) -> str:
    keys = ("split_seed", "val_fraction", "test_fraction", "n_val", "n_test", "generator_seed", "num_samples")
    return ", ".join(f"{k}={task.info[k]}" for k in keys if k in task.info)


def _load(zoo: Zoo, ids: list, epoch: int) -> list[dict]:
    return [{k: v.float() if v.is_floating_point() else v for k, v in zoo.state_dict(m, epoch).items()} for m in ids]


def _provenance(zoo: Zoo, ids: list, limit: int = 5) -> dict:
    """Hyperparameters recorded with the generated nets, with their distinct values (a few)."""
    values: dict = {}
    for m in ids:
        for k, v in zoo.hparams(m).items():
            values.setdefault(k, {}).setdefault(json.dumps(v, default=str), v)
    out = {}
    for k, vs in sorted(values.items()):
        vals = list(vs.values())
        out[k] = vals if len(vals) <= limit else vals[:limit] + [f"... ({len(vals)} distinct)"]
    return out


def _annotation_columns(zoo: Zoo, ids: list) -> dict:
    """Annotation columns ("<group>/<column>") of the given models, as arrays in `ids` order."""
    table = zoo.table()
    return {c: np.asarray(table.loc[ids, c].tolist()) for c in table.columns if "/" in str(c)}


def evaluate_zoo(job: EvaluateConfig, baselines: dict | None = None) -> tuple[Evaluation, Path]:
    """Run the whole evaluation and write the report (`job.out`, default <zoo>/report). `baselines`: name ->
    baseline object (default: those `job.baselines` configures). Returns (evaluation, report.md)."""
    s, nov, fail = job, job.novelty, job.failure
    baselines = build_baselines(job.baselines) if baselines is None else baselines
    p = plan_evaluation(job)
    out_dir = report_dir(job.out, p.gen.path)  # before any work: out= may only be this app's own earlier report
    check_baselines(baselines, len(p.ref_ids))
    screening = plan_screening(job, p.gen, p.gen_ids, JUDGES[check_kind(p.task, fail)].metric.key)
    timings: dict = {}
    t0 = time.perf_counter()
    net = build_net(p.arch)
    spec = net.permutation_spec()
    gen_sds = _load(p.gen, p.gen_ids, s.epoch)
    ref_sds = _exclude_nonfinite(p, _load(p.ref, p.ref_ids, p.reference_epoch), nov.anchor)
    check_baselines(baselines, len(p.ref_ids))  # again: fewer training checkpoints may be left
    timings["load checkpoints"] = time.perf_counter() - t0

    bn = _bn_inputs(p.task, s.batchnorm) if has_batchnorm(net) else None  # train split only
    judge = judge_for(p.task, net, bn, s.chunk, fail, s.device)  # the domain's score, failure rule, ensemble, behaviour
    score = partial(judge.scores, split=s.split)
    t = time.perf_counter()
    gen_scores = score(gen_sds)
    timings["score generated nets"] = time.perf_counter() - t
    if screening is not None:  # predicted from the weights alone, against the score just measured
        t = time.perf_counter()
        screening = screen(screening, gen_sds, gen_scores.score, p.gen_ids, s.chunk)
        timings["screening (encoder)"] = time.perf_counter() - t
    ref_scores = score(ref_sds)
    ens = judge.ensemble(ref_sds, s.split, finite=ref_scores.finite)

    t = time.perf_counter()
    align = partial(_align, spec=spec, max_iter=nov.max_iter) if nov.align else None
    ref = AlignedReference(ref_sds, p.ref.layout(p.ref_ids[0]).flatten, align, anchor=nov.anchor, top_k=nov.top_k)
    overlap = partial(judge.overlap, split=s.split)
    yard = training_yardstick(ref, ref_scores.predictions, overlap=overlap)
    timings["align training zoo + yardstick"] = time.perf_counter() - t
    t = time.perf_counter()
    run_audit = partial(audit, ref, yard, ref_pred=ref_scores.predictions, memorized_below=nov.memorized_below,
                        overlap=overlap, behavioural=judge.behavioural_novelty)
    gen_audit = run_audit(gen_sds, pred=gen_scores.predictions)
    timings["audit generated nets"] = time.perf_counter() - t

    sets = [SetResult("generated", "", None, gen_scores, gen_audit, list(p.gen_ids)),
            SetResult("training", "leave-one-out", None, ref_scores,
                      yard.as_audit(nov.memorized_below, judge.behavioural_novelty), list(p.ref_ids))]

    t = time.perf_counter()
    for b in generate_baselines(baselines, ref, align, s.seed):
        sc = score(b.state_dicts)
        sets.append(SetResult(b.method, b.setting, b.value, sc, run_audit(b.state_dicts, pred=sc.predictions)))
    timings["baselines"] = time.perf_counter() - t

    if ens["predictions"] is not None:
        ov = overlap(ens["predictions"][None], ref_scores.predictions)
        ens.update(agreement=float(ov.agreement[0]), wrong_iou=float(ov.wrong_iou[0]))

    phases = []
    ref_cols = _annotation_columns(p.ref, p.ref_ids)
    if ref_cols:  # the training zoo carries landscape metrics: place the generated nets in its phases
        t = time.perf_counter()
        ref_loss, gen_loss = _train_losses(net, p, ref_sds, gen_sds, gen_audit.nearest, s.chunk, s.batchnorm,
                                           s.device)
        cells = np.array([p.ref.cell_key(m) for m in p.ref_ids], dtype=object)
        phases = compare_phases(_annotation_columns(p.gen, p.gen_ids), ref_cols, gen_audit.nearest, cells,
                                gen_loss, ref_loss, s.phases)
        timings["phases"] = time.perf_counter() - t

    conditions = _conditions(p, gen_sds, gen_scores, judge)
    timings["total"] = time.perf_counter() - t0
    info = {"zoo": str(p.gen.path), "reference": str(p.ref.path), "zoo_name": p.gen.attrs.get("zoo_name", p.gen.path.name),
            "reference_name": p.ref.attrs.get("zoo_name", p.ref.path.name), "arch": p.arch,
            "n_parameters": p.ref.layout(p.ref_ids[0]).numel,  # weights: BatchNorm statistics are not counted
            "dataset": p.task.name, "kind": judge.kind, "metric": judge.metric.key, "metric_name": judge.metric.name,
            "higher_is_better": judge.metric.higher_is_better, "behaviour": list(judge.behaviour),
            "behavioural_novelty": judge.behavioural_novelty,
            "behaviour_text": judge.behaviour_text, "novelty_axis": judge.novelty_axis,
            "failure_text": judge.failure_text(gen_scores.threshold), "threshold": gen_scores.threshold,
            "device": str(s.device), "split": s.split, "n_inputs": judge.n_predictions(s.split),
            "inputs_text": judge.describe_inputs(s.split),
            "epoch": s.epoch,
            "reference_epoch": p.reference_epoch, "reference_source": p.reference_source, "n_generated": len(gen_sds), "n_reference": len(ref_sds),
            "batchnorm": has_batchnorm(net), "batchnorm_reestimation": None if bn is None else bn.describe(),
            "batchnorm_text": None if bn is None else bn.text(), "min_accuracy": gen_scores.min_accuracy, "min_gain": fail.min_gain,
            "memorized_below": nov.memorized_below,
            "alignment": (f"anchor = training checkpoint {p.ref_ids[nov.anchor]}, top-{nov.top_k} candidates re-aligned "
                          f"pairwise, at most {nov.max_iter} passes") if nov.align else "off: raw weights",
            "provenance": _provenance(p.gen, p.gen_ids), "conditions": conditions, "timings": timings,
            "nets_scored_per_minute": 60.0 * len(gen_sds) / max(timings["score generated nets"], 1e-9),
            "nets_audited_per_minute": 60.0 * len(gen_sds) / max(timings["audit generated nets"], 1e-9)}
    if screening is not None:
        info["screening"] = screening
    yd = {"l2_median": yard.l2_median, "cosine_median": yard.cosine_median,
          "agreement_mean": float(np.mean(yard.agreement)), "wrong_iou_mean": float(np.mean(yard.wrong_iou))}
    ev = Evaluation(sets=sets, ensemble=ens, yardstick=yd, phases=phases, info=info)
    try:
        path = write_report(ev, out_dir)
    except OSError as e:
        raise ConfigError(f"cannot write the report to {out_dir} ({e}); choose another directory with out=<dir>") from e
    return ev, path


_METRIC = re.compile(r"^(train|val|test)_(acc|loss|bpc|rel_l2|residual|ic|bc)$")


def _conditions(p: EvaluationPlan, gen_sds: list, gen_scores, judge) -> list[dict]:
    """For conditionally sampled nets (wsl-sample records each condition as hparam "cond_<key>"):
    per condition value, how many nets, and what they reach — the conditioned metric itself when it
    is one of the domain's train/val/test metrics (acc, loss; bpc; rel_l2, residual, ic, bc; measured
    here on that split), and the evaluation score (the domain's headline metric)."""
    values: dict = {}
    for i, m in enumerate(p.gen_ids):
        for k, v in p.gen.hparams(m).items():
            if k.startswith("cond_") and isinstance(v, (int, float)) and not isinstance(v, bool):
                values.setdefault(k, {}).setdefault(float(v), []).append(i)
    rows, measured = [], {}
    for key, groups in sorted(values.items()):
        metric = key[len("cond_"):]
        mt = _METRIC.match(metric)
        if mt and gen_scores.column(mt.group(2)) is None:
            mt = None  # not a metric of this domain (e.g. accuracy of a PINN)
        if mt and mt.group(1) not in measured:
            measured[mt.group(1)] = judge.scores(gen_sds, mt.group(1))
        for target, idx in sorted(groups.items()):
            sc_mean, sc_std = mean_std(gen_scores.score[idx])
            row = {"condition": key, "target": target, "n": len(idx), "eval_score_mean": sc_mean,
                   "eval_score_std": sc_std}
            if gen_scores.metric.key == "acc":
                row.update(eval_acc_mean=sc_mean, eval_acc_std=sc_std)
            if mt:
                achieved_mean, achieved_std = mean_std(measured[mt.group(1)].column(mt.group(2))[idx])
                row.update(metric=metric, achieved_mean=achieved_mean, achieved_std=achieved_std)
            rows.append(row)
    return rows


def _bn_inputs(task, settings) -> BatchNormInputs:
    """The train inputs of `task` BatchNorm statistics are re-estimated on (settings: a BatchNormConfig)."""
    return BatchNormInputs.of_split(task.x_train, settings.batch_size, settings.batches, settings.seed)


def _train_losses(net, p: EvaluationPlan, ref_sds: list, gen_sds: list, nearest: np.ndarray, chunk: int,
                  batchnorm, device="cpu"):
    """Train loss of each training checkpoint on its own train split, and of each generated net on
    the train split of its nearest training checkpoint (cells of a train-fraction sweep differ); BatchNorm
    statistics re-estimated on that same train split."""
    def key(mid):
        cfg = dict(p.ref.job_config(mid).get("dataset") or {})
        cfg.pop("root", None)  # where the files live does not change the data
        return json.dumps(cfg, sort_keys=True, default=str)

    keys = [key(m) for m in p.ref_ids]
    tasks: dict = {}
    ref_loss, gen_loss = np.full(len(ref_sds), np.nan), np.full(len(gen_sds), np.nan)
    for k in dict.fromkeys(keys):
        task = tasks.setdefault(k, p.ref.training_data(p.ref_ids[keys.index(k)]))
        for sds, idx, out in ((ref_sds, [i for i, kk in enumerate(keys) if kk == k], ref_loss),
                              (gen_sds, [i for i, n in enumerate(nearest) if n >= 0 and keys[n] == k], gen_loss)):
            if idx:
                bn = _bn_inputs(task, batchnorm) if has_batchnorm(net) else None
                out[idx] = judge_for(task, net, bn, chunk, device=device).scores([sds[i] for i in idx], "train").loss
    return ref_loss, gen_loss


def _align(sd_ref: dict, sd: dict, spec, max_iter: int) -> dict:
    from wsl.symmetry import align

    out = align(sd_ref, sd, spec, max_iter=max_iter)
    return {k: v.to(sd[k].dtype) for k, v in out.items()}
