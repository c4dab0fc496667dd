"""Fine-tuning as a test of generated nets (D2NWG): are sampled nets a better start than random
initialization, and than the nearest net of the training zoo, after 0, 10, 100 ... steps on their task?

    wsl-evaluate zoo.path=zoos/tasks-gen reference=zoos/tasks finetune_steps=[0,10,100]

The generated zoo holds nets of ONE task (e.g. a class-pair task held out of the generator's training,
drawn with `wsl-sample condition={task:3v8}`); their data (dataset.task recorded by wsl-sample) give the
train split the steps are taken on and the split (`split`, default test) they are scored on. Sets, each
fine-tuned with the same optimizer, learning rate and minibatches (one seeded order for every net):

- generated:        the sampled nets;
- random init:      as many fresh nets of the architecture (its own initializer, seeds seed, seed+1, ...);
- nearest zoo net:  for each sampled net, the generator's training net nearest to it in weight space
                    (weight matching to one anchor, then L2; wsl.evaluate.novelty): what a generator
                    that only retrieved training nets would give;
- best zoo nets:    the 4 training nets most accurate on the task's TRAIN split (retrieval with the task's
                    labelled examples, which the set encoder reads too);
- zoo nets of this task: nets of the reference zoo trained on this very task that the generator never saw
                    (held out with zoo.exclude), if there are any: the ceiling, not a baseline.

Real optimizer steps (torch.optim Adam or SGD, cross-entropy on minibatches of the train split); nothing is
selected on the scored split. The report (report.md, finetune.csv, finetune_nets.csv, finetune.png,
summary.json) goes to `out` (default <zoo>/finetune).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wsl.errors import ConfigError, ZooFormatError
from wsl.zoo import Zoo
from wsl.zoo.safe_paths import MARKER, claim_output_dir, inside
from wsl.zoo.atomic import replace_dir

APP = "wsl-evaluate"
FINETUNE_FILES = ("report.md", "finetune.csv", "finetune_nets.csv", "finetune.png", "summary.json")
SETS = ("generated", "random init", "nearest zoo net", "best zoo nets", "zoo nets of this task")
STYLE = {"generated": ("tab:red", "*"), "random init": ("tab:gray", "o"), "nearest zoo net": ("tab:blue", "s"),
         "best zoo nets": ("tab:green", "^"), "zoo nets of this task": ("black", "D")}
BEST_K = 4  # "best zoo nets": the training nets most accurate on the task's train split


def finetune_dir(out, zoo_path) -> Path:
    """Where the fine-tuning report goes (default <zoo>/finetune), checked before any work."""
    d = Path(out) if out is not None else inside(Path(zoo_path).expanduser(),
                                                  Path(zoo_path).expanduser() / "finetune", "write the report")
    return claim_output_dir(d, APP, "out", FINETUNE_FILES)


def _dataset(zoo: Zoo, m) -> dict:
    return {k: v for k, v in (zoo.job_config(m).get("dataset") or {}).items() if k != "root"}


def finetune_steps_run(net: nn.Module, state: dict, data, steps: list[int], batches: list[torch.Tensor],
                       optimizer: str, lr: float, split: str, device: "torch.device | str" = "cpu"
                       ) -> list[tuple[int, float, float]]:
    """Load `state` into `net`, take max(steps) optimizer steps on the train split (minibatch b of step b:
    `batches[b]`, indices into it), score on `split` after each step count in `steps` (0: before any).
    The steps run on `device` (net and data moved there; `state` and the minibatch order stay as given).
    Returns [(steps, accuracy, loss)]."""
    from wsl.evaluate.accuracy import load_weights

    device = torch.device(device)
    load_weights(net.to(device), {k: v.clone() for k, v in state.items()})
    xt, yt = data.x_train.to(device), data.y_train.to(device)
    xs, ys = (t.to(device) for t in data.split(split))
    opt = (torch.optim.Adam(net.parameters(), lr=lr) if optimizer == "adam"
           else torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9))
    out, want = [], set(steps)

    def score(k):
        net.eval()
        with torch.no_grad():
            logits = net(xs)
            out.append((k, float((logits.argmax(-1) == ys).float().mean()),
                        float(nn.functional.cross_entropy(logits, ys))))
        net.train()

    if 0 in want:
        score(0)
    net.train()
    for k in range(1, max(steps) + 1):
        idx = batches[k - 1].to(device)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
        opt.step()
        if k in want:
            score(k)
    return out


def finetune_zoo(job) -> tuple[dict, Path]:
    """The whole fine-tuning comparison of wsl-evaluate (job: EvaluateConfig with finetune_steps)."""
    from wsl.evaluate.accuracy import load_weights
    from wsl.evaluate.novelty import AlignedReference
    from wsl.evaluate.pipeline import _align
    from wsl.nets import build_net

    out_dir = finetune_dir(job.out, job.zoo.path)
    gen, ref = Zoo(job.zoo.path), Zoo(job.reference)
    if gen.path == ref.path:
        raise ConfigError(f"zoo.path and reference are the same zoo ({gen.path}); fine-tune a generated zoo "
                          "against the zoo it was learned from")
    gen_ids = [m for m in gen.ids if gen.row(m).status != "diverged"][: job.max_nets]
    if not gen_ids:
        raise ZooFormatError(f"{gen.path}: holds no usable nets")
    archs = {json.dumps(gen.arch(m), sort_keys=True) for m in gen_ids}
    if len(archs) > 1:
        raise ZooFormatError(f"{gen.path}: holds {len(archs)} architectures; fine-tuning compares one at a time")
    arch_key = archs.pop()
    arch = json.loads(arch_key)
    ds = _dataset(gen, gen_ids[0])
    other = next((m for m in gen_ids if _dataset(gen, m) != ds), None)
    if other is not None:
        raise ConfigError(f"zoo.path={gen.path} mixes tasks ({ds.get('task')!r}, {_dataset(gen, other).get('task')!r}); "
                          "fine-tune the samples of one task at a time (one wsl-sample condition per zoo)")
    data = gen.training_data(gen_ids[0])
    if getattr(data, "kind", "classification") != "classification" or getattr(data, "vocab_size", None):
        raise ConfigError(f"finetune_steps: fine-tuning is implemented for classification zoos of float inputs; "
                          f"{gen.path} holds {getattr(data, 'kind', '?')} nets")
    src = gen.job_config(gen_ids[0]).get("source_zoo") or {}
    recorded = src.get("train_ids") if isinstance(src.get("train_ids"), list) else None
    same_arch = [m for m in ref.ids if ref.row(m).status == "trained"
                 and json.dumps(ref.arch(m), sort_keys=True) == arch_key]
    train_ids = [m for m in recorded if m in set(same_arch)] if recorded else same_arch
    if len(train_ids) < 1:
        raise ConfigError(f"architecture mismatch: reference zoo {ref.path} has no trained net of {arch_key}")
    task_ids = [m for m in same_arch if m not in set(train_ids) and _dataset(ref, m) == ds]
    ref_epoch = job.reference_epoch if job.reference_epoch is not None else (
        int(src["epoch"]) if isinstance(src.get("epoch"), int) else -1)
    gen_sds = [gen.state_dict(m, job.epoch) for m in gen_ids]
    train_sds = [ref.state_dict(m, ref_epoch) for m in train_ids]
    spec, layout = ref.permutation_spec(train_ids[0]), ref.layout(train_ids[0])
    align = (lambda a, b: _align(a, b, spec, job.novelty.max_iter)) if job.novelty.align else None
    anchor = min(job.novelty.anchor, len(train_sds) - 1)
    near = AlignedReference(train_sds, layout.flatten, align, anchor, job.novelty.top_k).nearest(gen_sds)
    f = job.finetune
    sets: dict[str, list[tuple[str, dict]]] = {"generated": list(zip(gen_ids, gen_sds))}
    inits = []
    for i in range(len(gen_ids)):
        torch.manual_seed(f.seed + i)
        inits.append((f"init-seed{f.seed + i}", {k: v.detach().clone() for k, v in build_net(arch).state_dict().items()}))
    sets["random init"] = inits
    sets["nearest zoo net"] = [(train_ids[int(j)], train_sds[int(j)]) for j in near.l2_index if j >= 0]
    xt, yt = data.x_train, data.y_train
    probe = build_net(arch).eval()
    train_acc = []
    with torch.no_grad():
        for sd in train_sds:
            load_weights(probe, sd)
            train_acc.append(float((probe(xt).argmax(-1) == yt).float().mean()))
    best = np.argsort(-np.array(train_acc), kind="stable")[:BEST_K]
    sets["best zoo nets"] = [(train_ids[int(j)], train_sds[int(j)]) for j in best]
    if task_ids:
        sets["zoo nets of this task"] = [(m, ref.state_dict(m, -1)) for m in task_ids]
    steps = sorted(set(job.finetune_steps))
    g = torch.Generator().manual_seed(f.seed)
    n_train = len(data.y_train)
    bs = min(f.batch_size, n_train)
    batches = [torch.randint(0, n_train, (bs,), generator=g) for _ in range(max(steps))]  # one order for every net
    net = build_net(arch)
    rows = []
    from tqdm.auto import tqdm

    total = sum(len(v) for v in sets.values())
    with tqdm(total=total, desc="fine-tuning", disable=None, leave=False) as bar:
        for name, members in sets.items():
            for i, (source, sd) in enumerate(members):
                for k, acc, loss in finetune_steps_run(net, sd, data, steps, batches, f.optimizer, f.lr, job.split,
                                                       job.device):
                    rows.append({"set": name, "net": i, "source": source, "steps": k, f"{job.split}_acc": acc,
                                 f"{job.split}_loss": loss})
                bar.update(1)
    summary = _summarize(rows, steps, job.split)
    table = ref.table()
    nearest_tasks = {}
    if "task" in table.columns:  # a multi-task reference: which training tasks the samples sit next to
        for source, _ in sets["nearest zoo net"]:
            tk = str(table.loc[source, "task"])
            nearest_tasks[tk] = nearest_tasks.get(tk, 0) + 1
    info = {"generated_zoo": str(gen.path), "reference_zoo": str(ref.path), "task": ds.get("task"),
            "device": str(job.device),
            "dataset": ds.get("name"), "split": job.split, "steps": steps, "optimizer": f.optimizer, "lr": f.lr,
            "batch_size": bs, "seed": f.seed, "n_generated": len(gen_ids), "n_training_nets": len(train_ids),
            "n_task_nets": len(task_ids), "nearest_l2_mean": float(np.nanmean(near.l2)) if len(near.l2) else None,
            "aligned": bool(job.novelty.align), "n_train_examples": n_train,
            "nearest_tasks": dict(sorted(nearest_tasks.items(), key=lambda kv: -kv[1]))}
    path = write_finetune_report(out_dir, info, summary, rows)
    return {"info": info, "summary": summary}, path


def _summarize(rows: list[dict], steps: list[int], split: str) -> list[dict]:
    out = []
    for name in SETS:
        for k in steps:
            v = np.array([r[f"{split}_acc"] for r in rows if r["set"] == name and r["steps"] == k])
            if len(v):
                out.append({"set": name, "steps": k, "n": len(v), "acc_mean": float(v.mean()),
                            "acc_std": float(v.std()), "acc_sem": float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1
                            else 0.0, "acc_min": float(v.min()), "acc_max": float(v.max())})
    return out


def finetune_plot(summary: list[dict], info: dict):
    """Mean score ± std of every set after each step count (x: steps, 0 drawn at the left end)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    steps = info["steps"]
    pos = {k: i for i, k in enumerate(steps)}
    for name in SETS:
        pts = [s for s in summary if s["set"] == name]
        if not pts:
            continue
        colour, marker = STYLE[name]
        xs = [pos[s["steps"]] + (SETS.index(name) - 2) * 0.04 for s in pts]
        ax.errorbar(xs, [s["acc_mean"] for s in pts], yerr=[s["acc_std"] for s in pts], color=colour, marker=marker,
                    capsize=3, label=f"{name} (n={pts[0]['n']})", linestyle="-" if name != "zoo nets of this task" else ":")
    ax.set_xticks(range(len(steps)), [str(k) for k in steps])
    ax.set_xlabel(f"fine-tuning steps ({info['optimizer']}, lr {info['lr']:g}, batch {info['batch_size']}) on the train split")
    ax.set_ylabel(f"{info['split']} accuracy (mean ± std)")
    ax.set_title(f"task {info['task']}: sampled nets vs random init vs nearest zoo net", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def _markdown(info: dict, summary: list[dict]) -> str:
    split, steps = info["split"], info["steps"]
    lines = [f"# Fine-tuning: {info['generated_zoo']}", "",
             f"Task `{info['task']}` of `{info['dataset']}`; {info['n_generated']} sampled nets against as many random "
             f"initializations and, per sampled net, the nearest of the generator's {info['n_training_nets']} training "
             f"nets ({'after weight matching' if info['aligned'] else 'raw weights'}; mean NN L2 "
             f"{info['nearest_l2_mean']:.3g}). Every net takes the same {info['optimizer']} steps (lr {info['lr']:g}, "
             f"minibatches of {info['batch_size']} of the {info['n_train_examples']} train examples, one seeded order); "
             f"{split} accuracy, mean ± std over nets.", "",
             "| set | " + " | ".join(f"{k} steps" for k in steps) + " |", "|---" * (len(steps) + 1) + "|"]
    for name in SETS:
        cells = {s["steps"]: f"{s['acc_mean']:.4f} ± {s['acc_std']:.4f}" for s in summary if s["set"] == name}
        if cells:
            lines.append(f"| {name} | " + " | ".join(cells.get(k, "") for k in steps) + " |")
    if info.get("nearest_tasks"):
        lines += ["", "Tasks of the nearest training nets (how many sampled nets sit next to a net of each): "
                  + ", ".join(f"`{k}` {v}" for k, v in info["nearest_tasks"].items()) + "."]
    lines += ["", f"`best zoo nets`: the {BEST_K} training nets most accurate on this task's train split (retrieval "
              "with the task's labelled examples)."]
    if info["n_task_nets"]:
        lines += ["", f"`zoo nets of this task`: {info['n_task_nets']} nets of the reference zoo trained on this task, "
                  "which the generator never saw: the ceiling, not a baseline."]
    lines += ["", "![fine-tuning](finetune.png)", "", "Per-net rows: finetune_nets.csv; per set and step: finetune.csv.", ""]
    return "\n".join(lines)


def _csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue().encode()


def write_finetune_report(out_dir: Path, info: dict, summary: list[dict], rows: list[dict]) -> Path:
    """Write the report into `out_dir` as a whole (a temporary sibling swapped into place), replacing only
    this app's own earlier fine-tuning report; returns report.md's path."""
    from wsl.evaluate.plots import figure_bytes

    out_dir = claim_output_dir(out_dir, APP, "out", FINETUNE_FILES)
    files = {"finetune.png": figure_bytes(finetune_plot(summary, info)), "finetune.csv": _csv(summary),
             "finetune_nets.csv": _csv(rows),
             "summary.json": json.dumps({"info": info, "sets": summary}, indent=2, sort_keys=True).encode(),
             "report.md": _markdown(info, summary).encode(), MARKER: f"{APP}\n".encode()}  # the marker last
    replace_dir(out_dir, files, before_swap=lambda: claim_output_dir(out_dir, APP, "out", FINETUNE_FILES))
    return out_dir / "report.md"

