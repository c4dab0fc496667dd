"""Benchmark: does conditioning work? (issue 16, items 4-5)

Three parts, each on a small digits MLP zoo built here once (or given), each printing a table and writing a plot:

numeric   A flow generator conditioned on val_acc, on the quickstart zoo (32 MLPs, 8 learning rates x 4 seeds,
          which is what spreads val_acc) trained as the quickstart trains it (800 steps). Targets (0.70 / 0.85 /
          0.96, the issue's data point, and the zoo's 10/50/90% quantiles) x guidance scales (0: unconditional, the
          reference; 1, 2, 4); n samples each. Reached = the sampled nets' measured val_acc (and test_acc). Per
          guidance: Spearman rho between target and reached over every sample, mean absolute error |reached -
          target|, and the same for the unconditional samples (what ignoring the condition gives).
categorical  A flow generator conditioned on the optimizer (a text column: a category), on a zoo mixing SGD and
          Adam nets (same net, same data). The optimizer is measured on each sampled net by a classifier of
          permutation-invariant weight statistics (per tensor: mean, std, mean |w|, max |w|; logistic
          regression) fitted on the zoo's nets, its cross-validated accuracy on the zoo printed with it. Per
          requested optimizer and guidance: the fraction of samples classified as that optimizer (the
          unconditional samples give the base rate).
tasks     Task-conditioned generation (D2NWG): the experiment=tasks_digits zoo (45 class-pair tasks of the
          digits x 4 MLPs), a flow conditioned on `task` (set encoder over each task's labelled train examples)
          with --holdout tasks left out (zoo.exclude); for each held-out task, n samples drawn from that task's
          examples, then wsl-evaluate's fine-tuning comparison (finetune_steps 0/10/100, Adam, on the task's
          train split, scored on test) against random initialization, the nearest training net and the 4 training
          nets most accurate on the task's train split.

    OMP_NUM_THREADS=1 python scripts/bench_conditioning.py                 # all three; zoos under zoos/bench_conditioning_*
    OMP_NUM_THREADS=1 python scripts/bench_conditioning.py --quick         # fewer samples, steps and tasks (a few minutes)
    OMP_NUM_THREADS=1 python scripts/bench_conditioning.py --parts tasks --tasks-zoo zoos/tasks

The load average (os.getloadavg) is printed with the figures: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
QUIET = ["logger=none", "progress_refresh_rate=0"]
IMG = ROOT / "docs" / "img"


def compose(app: str, overrides: list[str]):
    """The app's typed config, composed from the real Hydra config as its console script does."""
    import importlib

    from hydra import compose as hcompose, initialize_config_dir

    from wsl.apps.common import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hcompose(config_name=app, overrides=overrides)
    return importlib.import_module(f"wsl.apps.{'zoo' if app == 'zoo' else app}").typed_config(cfg)


def build_zoo(path: Path, overrides: list[str]) -> None:
    from wsl.apps.zoo_job import run_zoo_job

    run_zoo_job(compose("zoo", [f"zoo.path={path}", *QUIET, *overrides]))


def train(zoo: Path, run_dir: Path, overrides: list[str]):
    from wsl.generators.train import train_generator

    if run_dir.exists():
        shutil.rmtree(run_dir)
    t = time.perf_counter()
    run = train_generator(compose("train_generator", [f"zoo.path={zoo}", *QUIET, *overrides]), run_dir=run_dir)
    return run, time.perf_counter() - t


def accuracies(run, flat: torch.Tensor, data, split: str) -> np.ndarray:
    from wsl.evaluate.accuracy import load_weights
    from wsl.nets import build_net

    net = build_net(run.arch).eval()
    x, y = data.split(split)
    out = []
    with torch.no_grad():
        for sd in run.representation.state_dicts(flat):
            load_weights(net, sd)
            out.append(float((net(x).argmax(-1) == y).float().mean()))
    return np.array(out)


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def load() -> str:
    return f"load average {os.getloadavg()[0]:.1f}"


# ------------------------------------------------------------------------------------------ numeric
def part_numeric(args) -> dict:
    from wsl.generators.sample import sample_weights
    from wsl.zoo import Zoo

    zoo = ROOT / "zoos" / "bench_conditioning_quickstart"
    if not any(zoo.glob("*")):
        print(f"building the quickstart zoo {zoo} ...", flush=True)
        build_zoo(zoo, ["population.size=32", "train.lr=[0.3,0.2,0.1,0.05,0.02,0.01,0.005,0.002]"])
    z = Zoo(zoo)
    t = z.table()
    t = t[t.status == "trained"]
    print(f"\n== numeric: zoo {zoo.name}: {len(t)} nets, val_acc {t.val_acc.min():.3f}..{t.val_acc.max():.3f} "
          f"(mean {t.val_acc.mean():.3f}), test_acc mean {t.test_acc.mean():.3f}; {load()}", flush=True)
    run, secs = train(zoo, ROOT / "runs" / "bench_conditioning" / "numeric",
                      ["generator=flow", "condition.columns=[val_acc]", f"trainer.max_steps={args.steps}"])
    print(f"generator: flow conditioned on val_acc, {args.steps} steps in {secs:.0f} s; {load()}", flush=True)
    data = z.training_data()
    q = [round(float(v), 2) for v in np.quantile(t.val_acc, [0.1, 0.5, 0.9])]
    targets = sorted(set([0.70, 0.85, 0.96] + q))
    rows, per = [], {}
    uncond = sample_weights(run, args.n, seed=99)
    u_val, u_test = accuracies(run, uncond, data, "val"), accuracies(run, uncond, data, "test")
    for g in args.guidance:
        for j, tg in enumerate(targets):  # a seed per target: the unconditional reference draws fresh samples too
            flat = sample_weights(run, args.n, seed=1 + j, condition={"val_acc": tg}, guidance=g)
            val, test = accuracies(run, flat, data, "val"), accuracies(run, flat, data, "test")
            per[(g, tg)] = (val, test)
            rows.append({"guidance": g, "target": tg, "val_mean": val.mean(), "val_std": val.std(),
                         "test_mean": test.mean(), "test_std": test.std(), "val_mae": np.abs(val - tg).mean()})
    print(f"\nreached val_acc (mean ± std over {args.n} samples) per target; unconditional samples: val "
          f"{u_val.mean():.3f} ± {u_val.std():.3f}, test {u_test.mean():.3f} ± {u_test.std():.3f}")
    print("guidance | " + " | ".join(f"t={tg:.3f}" for tg in targets) + " | Spearman rho | MAE | MAE (test acc)")
    summary = {}
    for g in args.guidance:
        val = np.concatenate([per[(g, tg)][0] for tg in targets])
        test = np.concatenate([per[(g, tg)][1] for tg in targets])
        tgt = np.concatenate([[tg] * args.n for tg in targets])
        rho, mae, mae_t = spearman(tgt, val), float(np.abs(val - tgt).mean()), float(np.abs(test - tgt).mean())
        summary[g] = {"rho": rho, "mae": mae, "mae_test": mae_t}
        cells = " | ".join(f"{per[(g, tg)][0].mean():.3f}±{per[(g, tg)][0].std():.3f}" for tg in targets)
        print(f"{g:8g} | {cells} | {rho:+.3f} | {mae:.3f} | {mae_t:.3f}")
    tgt = np.concatenate([[tg] * args.n for tg in targets])
    u_rep = np.concatenate([u_val] * len(targets))
    print("uncond.  | " + " | ".join(f"{u_val.mean():.3f}" for _ in targets)
          + f" | {'n/a':>6} | {float(np.abs(u_rep - tgt).mean()):.3f} | "
          f"{float(np.abs(np.concatenate([u_test] * len(targets)) - tgt).mean()):.3f}   (reference)")
    print("the issue's data point (guidance 2, test acc): targets 0.70/0.85/0.96 -> 0.74/0.89/0.95; here (test acc): "
          + "; ".join(f"guidance {g:g} " + "/".join(f"{per[(g, tg)][1].mean():.2f}" for tg in (0.70, 0.85, 0.96))
                      for g in args.guidance if all((g, tg) in per for tg in (0.70, 0.85, 0.96))))
    _plot_numeric(per, targets, args, u_val, t.val_acc.to_numpy())
    return {"rows": rows, "summary": summary, "unconditional_val": float(u_val.mean())}


def _plot_numeric(per, targets, args, u_val, zoo_val) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.6))
    ax = fig.add_subplot(1, 1, 1)
    lo, hi = min(min(targets), zoo_val.min()) - 0.03, 1.0
    ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls="--", label="reached = target")
    colours = ["tab:gray", "tab:blue", "tab:red", "tab:purple", "tab:green"]
    for i, g in enumerate(args.guidance):
        m = [per[(g, tg)][0].mean() for tg in targets]
        s = [per[(g, tg)][0].std() for tg in targets]
        ax.errorbar(np.array(targets) + (i - 1.5) * 0.002, m, yerr=s, marker="o", capsize=3,
                    color=colours[i % len(colours)], label=f"guidance {g:g}" + (" (unconditional)" if g == 0 else ""))
    ax.axhline(u_val.mean(), color="tab:orange", lw=1, ls=":", label="unconditional samples (mean)")
    ax.scatter(zoo_val, np.full_like(zoo_val, 0.02), marker="|", s=80, color="black", alpha=0.6,
               transform=ax.get_xaxis_transform(), label="zoo nets' val_acc (rug)")
    ax.set_xlabel("target val_acc (condition)")
    ax.set_ylabel(f"reached val_acc (mean ± std of {args.n} samples)")
    ax.set_title("flow conditioned on val_acc, quickstart digits MLP zoo", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 0.08))
    fig.tight_layout()
    IMG.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG / "conditioning_val_acc.png", dpi=110)
    print(f"plot: {IMG / 'conditioning_val_acc.png'}")


# ------------------------------------------------------------------------------------------ categorical
def weight_features(sds: list[dict]) -> np.ndarray:
    """Permutation-invariant statistics of every tensor: mean, std, mean |w|, max |w|."""
    rows = []
    for sd in sds:
        f = []
        for k in sorted(sd):
            w = sd[k].double().flatten()
            f += [w.mean(), w.std(), w.abs().mean(), w.abs().max()]
        rows.append([float(v) for v in f])
    return np.array(rows)


def part_categorical(args) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from wsl.generators.sample import sample_weights
    from wsl.zoo import Zoo

    zoo = ROOT / "zoos" / "bench_conditioning_optimizers"
    if not any(zoo.glob("*")):
        print(f"building the two-optimizer zoo {zoo} ...", flush=True)
        for opt, lr in (("sgd", "[0.1,0.03]"), ("adam", "[0.003,0.001]")):
            build_zoo(zoo, [f"train.optimizer={opt}", f"train.lr={lr}", f"population.size={args.members}"])
    z = Zoo(zoo)
    ids = z.filter(status="trained")
    t = z.table().loc[ids]
    sds = [z.state_dict(m) for m in ids]
    feats, labels = weight_features(sds), t.optimizer.to_numpy()
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = cross_val_score(clf, feats, labels, cv=5).mean()
    clf.fit(feats, labels)
    print(f"\n== categorical: zoo {zoo.name}: {len(ids)} nets ({ {k: int(v) for k, v in t.optimizer.value_counts().items()} }); test_acc "
          + ", ".join(f"{o} {t[t.optimizer == o].test_acc.mean():.3f}" for o in sorted(set(labels)))
          + f"; optimizer classifier on weight statistics: 5-fold accuracy {cv:.3f} on the zoo; {load()}", flush=True)
    run, secs = train(zoo, ROOT / "runs" / "bench_conditioning" / "categorical",
                      ["generator=flow", "condition.columns=[optimizer]", f"trainer.max_steps={args.steps}"])
    print(f"generator: flow conditioned on optimizer (vocabulary {run.conditions.spec.vocab['optimizer']}), "
          f"{args.steps} steps in {secs:.0f} s")
    data = z.training_data()
    u = run.representation.state_dicts(sample_weights(run, args.n, seed=99))
    base = {o: float((clf.predict(weight_features(u)) == o).mean()) for o in sorted(set(labels))}
    out = {"cv": cv, "unconditional": base, "rows": []}
    print("requested | guidance | classified as requested | test acc (mean ± std) ; unconditional samples: "
          + ", ".join(f"{o} {v:.2f}" for o, v in base.items()))
    for o in sorted(set(labels)):
        for g in args.guidance:
            if g == 0:
                continue
            flat = sample_weights(run, args.n, seed=1, condition={"optimizer": o}, guidance=g)
            pred = clf.predict(weight_features(run.representation.state_dicts(flat)))
            acc = accuracies(run, flat, data, "test")
            frac = float((pred == o).mean())
            out["rows"].append({"optimizer": o, "guidance": g, "match": frac, "test_mean": float(acc.mean())})
            print(f"{o:9s} | {g:8g} | {frac:.3f} (unconditional {base[o]:.2f}) | {acc.mean():.3f} ± {acc.std():.3f}")
    return out


# ------------------------------------------------------------------------------------------ tasks
def part_tasks(args) -> dict:
    from wsl.data.tasks import all_pairs
    from wsl.evaluate.finetune import finetune_zoo
    from wsl.generators.sample import sample_zoo
    from wsl.zoo import Zoo
    from wsl.zoo.format import INDEX_FILE

    zoo = Path(args.tasks_zoo) if args.tasks_zoo else ROOT / "zoos" / "bench_conditioning_tasks"
    tasks = all_pairs(10)[:: 2] if args.quick else all_pairs(10)
    tasks = sorted(set(tasks) | set(args.holdout))
    if not args.tasks_zoo:
        have = set(Zoo(zoo).table().task) if (zoo / INDEX_FILE).exists() else set()
        todo = [tk for tk in tasks if tk not in have]
        if todo:
            print(f"building the multi-task zoo {zoo}: {len(todo)} tasks ...", flush=True)
        for tk in todo:
            build_zoo(zoo, ["experiment=tasks_digits", f"dataset.task={tk}"])
    z = Zoo(zoo)
    t = z.table()
    t = t[t.status == "trained"]
    print(f"\n== tasks: zoo {zoo.name}: {len(t)} nets of {t.task.nunique()} tasks; test_acc mean {t.test_acc.mean():.3f} "
          f"(min task {t.groupby('task').test_acc.mean().min():.3f}); held out: {args.holdout}; {load()}", flush=True)
    run_dir = ROOT / "runs" / "bench_conditioning" / "tasks"
    run, secs = train(zoo, run_dir, ["generator=flow", "condition.columns=[task]",
                                     f"zoo.exclude={{task:[{','.join(args.holdout)}]}}",
                                     f"trainer.max_steps={args.task_steps}"])
    print(f"generator: flow conditioned on task (set encoder), {len(run.zoo['train_ids'])} training nets of "
          f"{len(run.conditions.spec.vocab['task'])} tasks, {args.task_steps} steps in {secs:.0f} s; {load()}", flush=True)
    results = {}
    seen = next(tk for tk in run.conditions.spec.vocab["task"])
    from wsl.data import load_dataset
    from wsl.generators.sample import sample_weights

    print(f"\nguidance sweep, before any fine-tuning: test accuracy of {args.n_task * 2} samples per task")
    print("task | " + " | ".join(f"guidance {g:g}" for g in args.guidance))
    for tk in [*args.holdout, seen]:
        data = load_dataset("digits", task=tk)
        accs = [accuracies(run, sample_weights(run, args.n_task * 2, seed=5, condition={"task": tk}, guidance=g), data,
                           "test").mean() for g in args.guidance]
        print(f"{tk} ({'held out' if tk in args.holdout else 'seen'}) | " + " | ".join(f"{a:.3f}" for a in accs))
    for tk in [*args.holdout, seen]:
        gen = ROOT / "zoos" / f"bench_conditioning_tasks-gen-{tk}"
        if gen.exists():
            shutil.rmtree(gen)
        sample_zoo(compose("sample", [f"run={run_dir}", f"n={args.n_task}", f"zoo.path={gen}",
                                      f"condition={{task:{tk}}}", f"guidance={args.task_guidance}", "logger=none"]))
        out = ROOT / "runs" / "bench_conditioning" / f"finetune-{tk}"
        if out.exists():
            shutil.rmtree(out)
        ev = compose("evaluate", [f"zoo.path={gen}", f"reference={zoo}", "finetune_steps=[0,10,100]", f"out={out}",
                                  "logger=none"])
        res, report = finetune_zoo(ev)
        results[tk] = res
        s = {(r["set"], r["steps"]): r for r in res["summary"]}
        print(f"\ntask {tk} ({'held out' if tk in args.holdout else 'seen in training'}): test accuracy, mean ± std "
              f"({report.parent})")
        print("set | 0 steps | 10 steps | 100 steps")
        for name in ("generated", "random init", "nearest zoo net", "best zoo nets", "zoo nets of this task"):
            if (name, 0) in s:
                print(f"{name} (n={s[(name, 0)]['n']}) | " + " | ".join(
                    f"{s[(name, k)]['acc_mean']:.3f} ± {s[(name, k)]['acc_std']:.3f}" for k in (0, 10, 100)))
        print("tasks of the nearest training nets:", res["info"]["nearest_tasks"])
        if tk in args.holdout:
            IMG.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(report.parent / "finetune.png", IMG / f"conditioning_tasks_finetune_{tk}.png")
            print(f"plot: {IMG / f'conditioning_tasks_finetune_{tk}.png'}")
    return {k: v["summary"] for k, v in results.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="numeric,categorical,tasks")
    ap.add_argument("--quick", action="store_true", help="fewer samples, steps and tasks")
    ap.add_argument("--n", type=int, default=None, help="samples per (target, guidance) (default 64; quick 24)")
    ap.add_argument("--steps", type=int, default=800, help="generator steps, numeric and categorical parts")
    ap.add_argument("--guidance", default="0,1,2,4")
    ap.add_argument("--members", type=int, default=48, help="nets per optimizer (categorical part)")
    ap.add_argument("--tasks-zoo", default=None, help="an experiment=tasks_digits zoo (default: built here)")
    ap.add_argument("--holdout", default="3v8,1v7,4v9", help="tasks left out of the generator's training")
    ap.add_argument("--task-steps", type=int, default=2000)
    ap.add_argument("--task-guidance", type=float, default=1.0)
    ap.add_argument("--n-task", type=int, default=16, help="samples per task")
    args = ap.parse_args()
    args.guidance = [float(g) for g in args.guidance.split(",")]
    args.holdout = args.holdout.split(",")
    args.n = args.n or (24 if args.quick else 64)
    if args.quick:
        args.steps, args.members, args.task_steps = min(args.steps, 400), min(args.members, 24), min(args.task_steps, 600)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print(f"bench_conditioning: torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{os.cpu_count()} CPUs; {load()} at start", flush=True)
    t0, out = time.perf_counter(), {}
    for part in args.parts.split(","):
        out[part] = {"numeric": part_numeric, "categorical": part_categorical, "tasks": part_tasks}[part](args)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; {load()} at the end")
    (ROOT / "runs" / "bench_conditioning").mkdir(parents=True, exist_ok=True)
    (ROOT / "runs" / "bench_conditioning" / "results.json").write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
