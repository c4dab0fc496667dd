"""The evaluation report: markdown with the tables and plots, per-net and summary CSVs, JSON.

The report directory is written as a whole into a temporary sibling and swapped into place, so a
killed run never leaves a report that looks complete. It replaces only this app's own earlier report
(marked by a `.wsl-output` file): never a zoo, a user's directory or a file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

from wsl.errors import ConfigError
from wsl.evaluate.accuracy import mean_std
from wsl.evaluate.plots import accuracy_novelty_plot, distance_histogram, figure_bytes
from wsl.evaluate.results import Evaluation
from wsl.evaluate.screening import screening_plot
from wsl.zoo.atomic import fault_point, replace_dir
from wsl.zoo.safe_paths import MARKER, claim_output_dir, inside

REPORT_FILE = "report.md"


def _f(v, digits: int = 4) -> str:
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, (float, np.floating)) and not math.isfinite(v)):
        return "–"
    return str(int(v)) if isinstance(v, (int, np.integer)) else f"{float(v):.{digits}f}"


def _pm(m, s, digits: int = 4) -> str:
    if m is None or not math.isfinite(m):
        return "–"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if s is not None and math.isfinite(s) else f"{m:.{digits}f}"


def _counts(d: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(d.items())) or "–"


def _table(header: list, rows: list) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _sem(values: np.ndarray) -> float:
    """Standard error of the mean (0 for fewer than 2 values)."""
    v = np.asarray(values, dtype=float)
    return float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0


def _score_mean(scores) -> float:
    """Mean score over all nets of a set; a net without a finite score (non-finite outputs: accuracy 0, but
    bpc or rel_l2 nan) counts as failed and is left out of a lower-is-better mean (its failure is counted
    in the failure rate)."""
    return mean_std(scores.score)[0]


def _score_sem(scores) -> float:
    return _sem(scores.score[np.isfinite(scores.score)])


def noise_at_equal_novelty(ev: Evaluation, novelty: float, attr: str = "weight_novelty",
                           with_error: bool = False):
    """Mean score (accuracy, or the domain's headline score) of the noise baseline interpolated (linearly
    in its σ sweep) at a given mean novelty; None outside the swept range. A comparison of curves, not a
    selection: every σ stays in the tables. with_error: (score, its standard error interpolated alike) or None."""
    pts = sorted((mean_std(getattr(s, attr))[0], _score_mean(s.scores), _score_sem(s.scores))
                 for s in ev.by_method("noise") if np.isfinite(getattr(s, attr)).any()
                 and math.isfinite(_score_mean(s.scores)))
    if len(pts) < 2 or not math.isfinite(novelty):
        return None
    xs, ys, es = np.array(pts).T
    if not xs[0] <= novelty <= xs[-1]:
        return None
    acc = float(np.interp(novelty, xs, ys))
    return (acc, float(np.interp(novelty, xs, es))) if with_error else acc


def compare_with_noise(ev: Evaluation) -> list[dict]:
    """Where the generated nets sit against the noise baseline, on both novelty axes.

    `better` (strictly better) needs the score difference, taken in the better direction of the domain's
    score (higher accuracy; lower bits per character or relative L2 error), to exceed twice its standard
    error (the two sets' standard errors of the mean, combined); `verdict` is "better", "worse" or
    "indistinguishable" (within two standard errors), None outside the noise sweep's novelty range.
    `score`/`noise_score` (also `accuracy`/`noise_accuracy` for classification) are the two means.
    """
    if not ev.by_method("generated"):
        return []
    g, out = ev.by_method("generated")[0], []
    metric = g.scores.metric
    acc, acc_se = _score_mean(g.scores), _score_sem(g.scores)
    axes = [("weight", "weight_novelty"), ("behavioural", "behaviour_novelty")]
    if not ev.info.get("behavioural_novelty", True):  # a domain without one (PINNs): the weight axis only
        axes = axes[:1]
    for axis, attr in axes:
        nov = mean_std(getattr(g, attr))[0]
        hit = noise_at_equal_novelty(ev, nov, attr, with_error=True)
        ref, ref_se = hit if hit is not None else (None, None)
        sweep = [mean_std(getattr(n, attr))[0] for n in ev.by_method("noise") if np.isfinite(getattr(n, attr)).any()]
        diff = None if ref is None else metric.better(acc, ref)  # > 0: the generator is better
        se = None if ref is None else math.sqrt(acc_se**2 + ref_se**2)
        verdict = None if ref is None else ("better" if diff > 2 * se else "worse" if diff < -2 * se
                                            else "indistinguishable")
        row = {"axis": axis, "novelty": nov, "metric": metric.key, "score": acc, "noise_score": ref,
               "sweep_min": min(sweep) if sweep else None, "sweep_max": max(sweep) if sweep else None,
               "difference": diff, "stderr": se, "verdict": verdict,
               "better": None if ref is None else verdict == "better"}
        if metric.key == "acc":
            row.update(accuracy=acc, noise_accuracy=ref)
        out.append(row)
    return out


def _metric(info: dict) -> tuple[str, str, bool]:
    """(key, name, higher is better) of the evaluation's headline score (classification: accuracy)."""
    return info.get("metric", "acc"), info.get("metric_name", "accuracy"), info.get("higher_is_better", True)


def markdown(ev: Evaluation, plots: dict) -> str:
    info = ev.info
    key, name, higher = _metric(info)
    direction = "higher is better" if higher else "lower is better"
    failure = info.get("failure_text") or (
        f"its accuracy is below {info['min_accuracy']:.4f} (a constant predictor's accuracy plus "
        f"{info['min_gain']:g} of the gap to 1, unless set)")
    lines = [f"# Evaluation of `{info['zoo']}`", "",
             f"Reference (training) zoo: `{info['reference']}` — {info['n_reference']} checkpoints "
             f"(epoch {info['reference_epoch']}; {info.get('reference_source', '')}) of architecture "
             f"`{json.dumps(info['arch'], sort_keys=True)}` ({info.get('n_parameters')} parameters).",
             f"Generated nets: {info['n_generated']} (epoch {info['epoch']}); data `{info['dataset']}`, "
             f"scored by their **{name}** ({direction}) on the **{info['split']}** split "
             f"({info.get('inputs_text') or str(info['n_inputs']) + ' inputs'}). "
             + (f"BatchNorm: the running statistics of every net scored (generated, training zoo, baselines, "
              f"ensemble members) were re-estimated on {info['batchnorm_text']}; the statistics stored in "
              "checkpoints are not used, and the val and test splits never feed them."
              if info.get("batchnorm") else "The nets have no BatchNorm."),
             "",
             "Every number is a mean ± std over *all* nets of a set (never its best net); nothing is selected on "
             "the test split: every σ and k of the baselines is listed. A net fails when its outputs are not "
             f"finite or {failure}.", ""]
    if info.get("provenance"):
        lines += ["## Provenance of the generated nets", "",
                  _table(["key", "values"], [[k, f"`{v}`"] for k, v in info["provenance"].items()]), ""]

    if info.get("conditions"):
        lines += ["## Conditions", "", "Nets sampled with a condition, grouped by its value (all of them, none picked).", "",
                  _table(["condition", "target", "nets", "achieved (that metric, measured here)",
                          f"{info['split']} {name}"],
                         [[r["condition"], _f(r["target"]), r["n"],
                           (f"{r['metric']}: " + _pm(r["achieved_mean"], r["achieved_std"])) if "metric" in r else "–",
                           _pm(r["eval_score_mean"], r["eval_score_std"])] for r in info["conditions"]]), ""]

    lines += [f"## {name[0].upper() + name[1:]} and loss", ""]
    if key == "bpc":
        lines += ["Bits per character: the mean cross-entropy over every position of every window, in bits; "
                  "accuracy: of the next-character predictions; loss: the cross-entropy in nats per character.", ""]
    elif key == "rel_l2":
        lines += ["Relative L2 error ‖u − u_exact‖ / ‖u_exact‖ over the split's points; loss: the "
                  "physics-informed loss (mean squared PDE residual + initial-condition MSE + periodic-boundary "
                  "MSE) on that split; "
                  "PINNs have no accuracy. The ensemble is the mean solution of the training nets.", ""]
    extra = [k for k in ("acc",) if key == "bpc"]
    rows = []
    for s in ev.sets:
        m = s.scores.summary()
        rows.append([s.label, m["n"], _f(m["failure_rate"], 3), _pm(m["score_mean"], m["score_std"]),
                     _pm(m["score_ok_mean"], m["score_ok_std"]), *(_pm(m[f"{c}_mean"], m[f"{c}_std"]) for c in extra),
                     _pm(m["loss_mean"], m["loss_std"])])
    e = ev.ensemble
    rows.append([f"ensemble of the training zoo ({e.get('n_members', 0)} members)", 1, "–",
                 _f(e.get("score", e.get("accuracy"))), "–", *(_f(e.get("accuracy")) for _ in extra),
                 _f(e.get("loss"))])
    lines += [_table(["set", "nets", "failure rate", f"{name} ({direction})", f"{name} (not failed)",
                      *(["next-character accuracy"] if extra else []), "loss"], rows), ""]

    sc = info.get("screening")
    if sc:
        lines += ["## Data-free screening", "",
                  f"Encoder run `{sc['run']}` ({sc['encoder']}, task {sc['task']}, seeds {sc['seeds']}: the mean of "
                  f"their predictions) predicts each generated net's `{sc['column']}` from its weights alone; "
                  f"against the {info['split']} {name} measured here on the data:", "",
                  _table(["nets", "Kendall tau", "Spearman rho", "mean absolute error",
                          "encoder's test tau on its own zoo"],
                         [[sc["n"], _f(sc["tau"], 3), _f(sc["spearman"], 3), _f(sc["mae"]),
                           _f(sc["encoder_test_tau"], 3) if sc.get("encoder_test_tau") is not None else "–"]]), "",
                  f"![screening]({plots['screening']})", ""]

    y = ev.yardstick
    agree_col, iou_col = info.get("behaviour") or ("max agreement", "max wrong-set IoU")
    lines += ["## Memorization audit", "",
              f"Distances are taken after weight matching ({info['alignment']}). Yardstick: each training "
              f"checkpoint's nearest *other* training checkpoint — median L2 {_f(y['l2_median'])}, median cosine "
              f"distance {_f(y['cosine_median'])}, mean {agree_col} {_f(y['agreement_mean'])}, "
              f"mean {iou_col} {_f(y['wrong_iou_mean'])}. Novelty = NN distance / that median "
              f"(0: a copy, ≈1: as new as an independently trained net); memorized: novelty < "
              f"{info['memorized_below']:g}. Columns are over the nets that did not fail (a broken net is trivially "
              "far from the zoo; its failure is counted above). Behaviour: "
              + (info.get("behaviour_text") or "prediction agreement and IoU of the sets of inputs got wrong")
              + (f" with the closest training checkpoint; behavioural novelty = 1 − {iou_col}."
                 if info.get("behavioural_novelty", True) else "."), ""]
    rows = []
    for s in ev.sets:
        a = s.audit.summary()
        rows.append([s.label, a["n_audited"], _pm(a["l2_mean"], a["l2_std"]), _pm(a["l2_ratio_mean"], a["l2_ratio_std"], 3),
                     _pm(a["cosine_mean"], a["cosine_std"]), _pm(a["cosine_ratio_mean"], a["cosine_ratio_std"], 3),
                     _pm(a["agreement_mean"], a["agreement_std"], 3), _pm(a["wrong_iou_mean"], a["wrong_iou_std"], 3),
                     _f(a["memorized_rate"], 3)])
    if e.get("agreement") is not None:
        rows.append(["ensemble of the training zoo", 1, "–", "–", "–", "–", _f(e["agreement"], 3),
                     _f(e.get("wrong_iou"), 3), "–"])
    lines += [_table(["set", "nets audited", "NN L2", "L2 novelty", "NN cosine dist.", "cosine novelty", agree_col,
                      iou_col, "memorized"], rows), ""]
    prov = info.get("provenance") or {}
    if prov.get("pca_k"):  # representation=pca (wsl.generators.representations.pca): samples cannot leave the span
        k, ev_, loo = (prov.get(c, [None])[0] for c in ("pca_k", "pca_explained_variance", "pca_zoo_loo_span_distance"))
        lines += [f"**PCA samples.** The generator ran on {k} principal-component codes of the aligned training nets "
                  f"(explaining {_f(ev_, 3)} of their variance): every sample lies in the training nets' affine span "
                  f"(distance 0, by construction). An independently trained net does not: each training net sits "
                  f"{_f(loo, 3)} of its distance from the others' mean outside the span of the others (leave-one-out). "
                  "The novelty above is therefore all *within* the span (new combinations of the zoo's directions); "
                  "novelty along directions no training net has is out of reach of this representation.", ""]

    if ev.by_method("generated") and ev.by_method("noise"):
        lines += ["**Against the noise baseline at equal novelty** (its σ sweep interpolated; a comparison of "
                  "curves, no σ is picked):", ""]
        for c in compare_with_noise(ev):
            if c["noise_score"] is not None:
                words = {"better": "strictly better", "worse": "worse",
                         "indistinguishable": "not distinguishable from it"}[c["verdict"]]
                verdict = (f"noise baseline {c['noise_score']:.4f} → the generator is {words} "
                           f"({c['difference']:+.4f} ± {c['stderr']:.4f}, difference ± its standard error; "
                           "strictly better needs more than 2 standard errors)")
            else:
                verdict = (f"outside the novelty range the noise sweep covers ({_f(c['sweep_min'], 3)} to "
                           f"{_f(c['sweep_max'], 3)}); extend baselines.noise.sigmas to compare")
            lines.append(f"- {c['axis']} novelty {_f(c['novelty'], 3)}, generated {name} {_f(c['score'])}: "
                         f"{verdict}")
        lines.append("")

    if plots:
        lines += [f"## {name[0].upper() + name[1:]} vs novelty", ""]
        lines += [f"![{name}]({p})" for name, p in plots.items()] + [""]

    lines += ["## Phases (landscape annotations)", ""]
    if not ev.phases:
        lines += ["No landscape annotation is present in both zoos (compute them on both with `wsl-landscape` "
                  "to see whether the generated nets land in the phase of their training cell).", ""]
    else:
        lines += ["A generated net's training cell is the hyperparameter cell of its nearest training checkpoint.", ""]
        num = [r for r in ev.phases if r["kind"] == "numeric"]
        lab = [r for r in ev.phases if r["kind"] == "label"]
        if lab:
            th = lab[0].get("thresholds", {})
            lines += [f"Phase labels by the taxonomy rule of `wsl.landscape.phases` (train loss > {th.get('loss')} is "
                      f"high, |mode connectivity| ≤ {th.get('mc_tolerance')} is ≈ 0, CKA ≥ {th.get('cka')} is large; "
                      "train loss measured here on the train split). A net without connectivity metrics gets a "
                      "coarse label; consistent = the phases both labels allow overlap.", "",
                      _table(["nets", "consistent with its cell", "generated nets' labels", "training cells' labels"],
                             [[r["n"], _f(r["same_as_cell"], 3), _counts(r["generated"]), _counts(r["training"])]
                              for r in lab]), ""]
        if num:
            lines += [_table(["column", "nets", "generated", "training", "inside its cell's range", "median distance to cell mean (cell stds)"],
                             [[r["column"], r["n"], _pm(r["generated_mean"], r["generated_std"]),
                               _pm(r["training_mean"], r["training_std"]), _f(r["inside_cell_range"], 3),
                               _f(r["median_cell_z"], 2)] for r in num]), ""]

    t = info.get("timings", {})
    if t:
        lines += ["## Timings", "", _table(["step", "seconds"], [[k, f"{v:.2f}"] for k, v in t.items()]), ""]
    lines += ["## Files", "", "- `sets.csv`: one row per set (the tables above)",
              f"- `nets.csv`: one row per net ({name}, loss, failed, distances, agreement, nearest checkpoint)",
              "- `summary.json`: everything above, machine-readable", ""]
    return "\n".join(lines)


def _nets_rows(ev: Evaluation) -> list[dict]:
    rows = []
    for s in ev.sets:
        for i in range(len(s.scores)):
            rows.append({"method": s.method, "setting": s.setting, "model_id": s.ids[i] if i < len(s.ids) else "",
                         **({} if s.scores.metric.key == "rel_l2" else {"accuracy": s.scores.accuracy[i]}),
                         **({} if s.scores.metric.key == "acc" else {s.scores.metric.key: s.scores.score[i]}),
                         "loss": s.scores.loss[i], **{k: v[i] for k, v in s.scores.extra.items()},
                         "failed": int(s.scores.failed[i]),
                         "nn_l2": s.audit.l2[i], "l2_novelty": s.audit.l2_ratio[i], "nn_cosine": s.audit.cosine[i],
                         "max_agreement": s.audit.agreement[i], "max_wrong_iou": s.audit.wrong_iou[i],
                         "nearest": s.audit.nearest[i], "memorized": int(s.audit.memorized[i])})
    return rows


def _csv_bytes(rows: list[dict]) -> bytes:
    f = io.StringIO(newline="")
    if rows:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, (float, np.floating)) else v) for k, v in r.items()})
    return f.getvalue().encode()


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, (np.floating, float)):
        return float(o) if math.isfinite(o) else None
    if isinstance(o, np.integer):
        return int(o)
    return o


APP = "wsl-evaluate"
ALWAYS_WRITTEN = (REPORT_FILE, "sets.csv", "nets.csv", "summary.json", "accuracy_novelty.png", "nn_distances.png")
REPORT_FILES = ALWAYS_WRITTEN + ("screening.png",)  # screening.png: only with encoder_run


def report_dir(out, zoo_path) -> Path:
    """Where the report goes (`out`, default <zoo>/report), checked before any work: a new directory, or
    this app's own earlier report (its marker file, or only report files: written before the marker).
    Never a zoo, a file, a link or a directory holding anything else (ConfigError naming `out`)."""
    if out is None:
        zoo = Path(zoo_path).expanduser()
        d = inside(zoo, zoo / "report", "write the report")  # a `report` link planted in the zoo: refused
    else:
        d = Path(out)
    return claim_output_dir(d, APP, "out", REPORT_FILES, legacy=ALWAYS_WRITTEN)


def _temp_dirs(out_dir: Path) -> list[Path]:
    """Report directories of earlier runs of this app killed before they finished or cleaned up (their
    process is gone): `.<name>.<pid>.<random>.tmp` real directories holding only report files."""
    found = []
    for e in os.scandir(out_dir.parent):
        parts = e.name.split(".")
        if not (e.name.startswith(f".{out_dir.name}.") and e.name.endswith(".tmp") and len(parts) >= 5
                and parts[-3].isdigit() and e.is_dir(follow_symlinks=False)):
            continue
        pid = int(parts[-3])
        if pid == os.getpid() or _alive(pid):
            continue
        try:
            claim_output_dir(Path(e.path), APP, "out", REPORT_FILES, legacy=True)  # partial: killed while writing
        except ConfigError:
            continue  # not recognisably ours: left alone
        found.append(Path(e.path))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_report(ev: Evaluation, out_dir: str | Path) -> Path:
    """Write the report into `out_dir`, replacing this app's earlier report there as a whole; returns
    report.md's path. The new report is written into a temporary sibling and swapped into place in one
    atomic step (renameat2 RENAME_EXCHANGE where the file system has it), so `out_dir` is at every moment
    the old complete report or the new complete one. A directory that is not this app's own earlier
    report is refused (ConfigError) and left untouched."""
    out_dir = claim_output_dir(out_dir, APP, "out", REPORT_FILES, legacy=ALWAYS_WRITTEN)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in _temp_dirs(out_dir):
        shutil.rmtree(stale, ignore_errors=True)
    plots = {"accuracy vs novelty": "accuracy_novelty.png", "nearest-neighbour distances": "nn_distances.png",
             "screening": "screening.png"}
    summary = {"info": ev.info, "sets": [s.summary() for s in ev.sets],
               "ensemble": {k: v for k, v in ev.ensemble.items() if k != "predictions"},
               "yardstick": ev.yardstick, "phases": ev.phases, "against_noise": compare_with_noise(ev)}
    files = {plots["accuracy vs novelty"]: figure_bytes(accuracy_novelty_plot(ev)),
             plots["nearest-neighbour distances"]: figure_bytes(distance_histogram(ev)),
             "sets.csv": _csv_bytes([s.summary() for s in ev.sets]), "nets.csv": _csv_bytes(_nets_rows(ev)),
             "summary.json": json.dumps(_jsonable(summary), indent=2, sort_keys=True).encode(),
             REPORT_FILE: markdown(ev, plots).encode(), MARKER: f"{APP}\n".encode()}  # the marker last
    if ev.info.get("screening"):
        files = {plots["screening"]: figure_bytes(screening_plot(ev.info["screening"], _metric(ev.info)[1],
                                                                 ev.info.get("split", "test"))), **files}

    def last_check():
        fault_point("report")
        claim_output_dir(out_dir, APP, "out", REPORT_FILES, legacy=ALWAYS_WRITTEN)  # again: the work took a while

    replace_dir(out_dir, files, before_swap=last_check)
    return out_dir / REPORT_FILE
