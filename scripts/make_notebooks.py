"""Write the notebooks in notebooks/ from the cells below (outputs stripped), so that they are reviewed
as plain Python here and never drift: `python scripts/make_notebooks.py --check` fails when a
notebook differs from what this script writes (the test suite runs that check and executes them).

    python scripts/make_notebooks.py           # (re)write notebooks/*.ipynb
    python scripts/make_notebooks.py --check   # exit 1 if any notebook is stale or hand-edited

Every notebook runs on a small zoo it trains itself (a few CPU-minutes), or on the zoo named by
the environment variables WSL_NB_ZOO (the phase zoo) / WSL_NB_GRID_ZOO (the encoders' lr grid); it
writes under WSL_NB_WORK (default: runs/notebooks/). Paths are relative to the repository root.
WSL_NB_QUICK=1 shrinks zoos and trainings to seconds (fewer replicas and epochs, shorter runs, fewer
samples): the default test run executes all three notebooks that way (tests/test_scaleout_notebooks.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OUT = Path(__file__).resolve().parent.parent / "notebooks"

SETUP = '''\
import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from IPython.display import Image, display

from wsl.apps.common import CONF_DIR

# paths relative to the repository root when Jupyter runs from notebooks/ (zoos/ and runs/ are git-ignored)
BASE = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
# WSL_NB_QUICK=1 (the test suite sets it) shrinks every zoo and training below to seconds: it checks
# that each cell runs, its numbers mean little. Unset, the notebook runs at the sizes its text describes.
QUICK = os.environ.get("WSL_NB_QUICK", "0") not in ("", "0")
QUICK_SUFFIX = "_quick" if QUICK else ""  # tiny zoos never sit where the full-size run looks for its zoos
# the phase zoo: trained below unless it exists
ZOO = Path(os.environ.get("WSL_NB_ZOO", BASE / "zoos" / f"notebook_phase{QUICK_SUFFIX}"))
WORK = Path(os.environ.get("WSL_NB_WORK", BASE / "runs" / "notebooks"))  # everything this notebook writes
WORK.mkdir(parents=True, exist_ok=True)
pd.set_option("display.width", 160)


def config(app: str, *overrides: str):
    """The app's real config, composed exactly as `wsl-<app> <overrides>` would compose it."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=app, overrides=list(overrides))'''

BUILD_ZOO = '''\
from wsl.apps.zoo import typed_config
from wsl.apps.zoo_job import run_zoo_job

# A small phase-diagram zoo on the embedded digits data: width (load axis) x batch size
# (temperature axis), two learning rates inside every population, 4 seed replicas per cell (QUICK: 2, 1 epoch).
# The same as:  wsl-zoo -m net.width=8,16 train.batch_size=32,128 'train.lr=[0.1,0.03]' \\
#                   population.size=8 train.epochs=4 zoo.path=zoos/notebook_phase
REPLICAS, EPOCHS = (2, 1) if QUICK else (4, 4)
if not (ZOO / "index.h5").exists():
    for width in (8, 16):
        for batch_size in (32, 128):
            run_zoo_job(typed_config(config(
                "zoo", f"zoo.path={ZOO}", "zoo.name=notebook_phase", f"net.width={width}",
                f"train.batch_size={batch_size}", "train.lr=[0.1,0.03]", f"population.size={2 * REPLICAS}",
                f"train.epochs={EPOCHS}", "logger=none", "progress_refresh_rate=0")))
print(ZOO)'''


BUILD_GRID_ZOO = '''\
from wsl.apps.zoo import typed_config
from wsl.apps.zoo_job import run_zoo_job

# 48 digits MLPs in one vmapped population: 6 learning rates x 2 weight decays (12 cells) x 4 seed
# replicas (QUICK: 2), 2 epochs, so that test accuracies spread from chance to ~0.9: something to predict.
# The same as:  wsl-zoo net.width=8 population.size=48 'train.lr=[0.3,0.1,0.03,0.01,0.003,0.001]' \\
#                   'train.weight_decay=[0,0.001]' train.epochs=2 zoo.path=zoos/notebook_lr_grid
GRID = Path(os.environ.get("WSL_NB_GRID_ZOO", BASE / "zoos" / f"notebook_lr_grid{QUICK_SUFFIX}"))
REPLICAS = 2 if QUICK else 4
if not (GRID / "index.h5").exists():
    run_zoo_job(typed_config(config(
        "zoo", f"zoo.path={GRID}", "zoo.name=notebook_lr_grid", "net.width=8", f"population.size={12 * REPLICAS}",
        "train.lr=[0.3,0.1,0.03,0.01,0.003,0.001]", "train.weight_decay=[0,0.001]", "train.epochs=2", "logger=none",
        "progress_refresh_rate=0")))
print(GRID)'''


def zoo_tour() -> list:
    return [
        new_markdown_cell("""\
# A tour of a model zoo

A **zoo** is a directory of trained networks: one `.safetensors` checkpoint per model and epoch,
and an HDF5 index with one row per model (seeds, every hyperparameter, status, per-epoch metrics,
checksums, landscape annotations). It is readable with `h5py` + `safetensors` alone; `wsl.zoo.Zoo`
adds checks and conveniences. This notebook loads a zoo, filters it, checks a stored number
against a recomputed one, computes loss-landscape metrics and draws the phase diagram."""),
        new_code_cell(SETUP),
        new_code_cell(BUILD_ZOO),
        new_markdown_cell("## Load\nThe table has one row per model; seed replicas of a hyperparameter cell share everything but their seeds."),
        new_code_cell('''\
from wsl.zoo import Zoo

zoo = Zoo(ZOO)
table = zoo.table()
print(f"{len(zoo.ids)} models, {table['status'].value_counts().to_dict()}")
table[["width", "batch_size", "lr", "replica", "seed_init", "status", "train_loss", "test_acc"]].head(8)'''),
        new_markdown_cell("## On disk\nA checkpoint is a plain safetensors file: tensor names are the net's `state_dict` keys, the header says how to rebuild it."),
        new_code_cell('''\
import json

from safetensors import safe_open

for p in sorted(ZOO.iterdir()):
    print(p.name + ("/" if p.is_dir() else ""))
path = zoo.checkpoint_path(zoo.ids[0])
with safe_open(str(path), framework="pt") as f:
    meta = f.metadata()
    print(path.relative_to(ZOO), {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
print({k: (json.loads(v) if v.startswith("{") else v) for k, v in meta.items() if k != "arch"})'''),
        new_markdown_cell("## Filter\nEqualities on any hyperparameter; `cells` groups seed replicas."),
        new_code_cell('''\
wide = zoo.filter(width=16, batch_size=32)
cells = zoo.cells(wide)
print(f"{len(wide)} models of width 16 and batch size 32 in {len(cells)} cells")
summary = (table[table.status == "trained"].groupby(["width", "batch_size", "lr"])[["train_loss", "test_acc"]]
           .agg(["mean", "std"]).round(3))
summary'''),
        new_code_cell('''\
fig, ax = plt.subplots(1, 2, figsize=(9, 3))
for mid in wide:
    h = zoo.history(mid)
    lr = zoo.hparams(mid)["lr"]
    ax[0].plot(h["train_loss"], color="C0" if lr == 0.1 else "C1", alpha=0.7)
    ax[1].plot(h["test_acc"], color="C0" if lr == 0.1 else "C1", alpha=0.7)
ax[0].set(xlabel="epoch", ylabel="train loss", title="width 16, batch 32 (blue: lr 0.1, orange: 0.03)")
ax[1].set(xlabel="epoch", ylabel="test accuracy")
plt.tight_layout()'''),
        new_markdown_cell("## Stored numbers are real\nRebuild a net from its checkpoint (checksum verified) and recompute its test accuracy on the exact split it was evaluated on."),
        new_code_cell('''\
mid = wide[0]
net = zoo.load_model(mid)
data = zoo.training_data(mid)
x, y = data.split("test")
with torch.no_grad():
    acc = (net(x).argmax(1) == y).float().mean().item()
print(f"{mid}: recomputed test accuracy {acc:.4f}, stored {table.loc[mid, 'test_acc']:.4f}")
assert abs(acc - table.loc[mid, "test_acc"]) < 1e-4'''),
        new_markdown_cell("""\
## Loss-landscape metrics and the phase diagram
`annotate_zoo` is what `wsl-landscape` runs: Hessian top eigenvalue (power iteration on
Hessian-vector products), linear barrier between seed replicas, CKA of replicas' logits. The
values and their estimator settings go into the zoo's index (reruns skip what is stored).
The phase of a cell follows Yang et al. 2021 (train loss, mode connectivity, CKA)."""),
        new_code_cell('''\
from wsl.apps.landscape import typed_config as landscape_config
from wsl.landscape import annotate_zoo

lcfg = config("landscape", f"zoo.path={ZOO}", "landscape.metrics=[hessian_eig,barrier,cka]",
              f"landscape.num_samples={128 if QUICK else 512}", f"landscape.hessian_eig.max_iters={5 if QUICK else 30}")
print(annotate_zoo(ZOO, landscape_config(lcfg).landscape))
zoo = Zoo(ZOO)
cols = ["hessian_eig/train", "barrier/value", "cka/value"]  # the values; their settings sit beside them
zoo.table().groupby(["width", "batch_size", "lr"])[cols].mean().round(3)'''),
        new_code_cell('''\
from wsl.landscape.plots import plot_zoo

files = plot_zoo(ZOO, x="width", y="batch_size", out_dir=WORK / "plots")
cells = pd.read_csv(next(f for f in files if f.suffix == ".csv"))
display(cells)
for f in files:
    if f.name.startswith("phase__"):
        display(Image(filename=str(f)))
print("plots:", *[str(f) for f in files], sep="\\n  ")'''),
    ]


def encoders() -> list:
    return [
        new_markdown_cell("""\
# Weight-space encoders: predict a net's test accuracy from its weights

Each encoder reads the weights of a net and predicts a property (here: its test accuracy).
Hidden units can be permuted without changing the function, so encoders that respect that
symmetry (DeepSets, NFN, ...) should need fewer examples than a plain MLP on flattened weights.
This is what `wsl-train-encoder` runs; the split keeps the seed replicas of a hyperparameter cell
together, the model of every seed is chosen on validation loss, results are mean ± std over seeds."""),
        new_code_cell(SETUP),
        new_code_cell(BUILD_GRID_ZOO),
        new_markdown_cell("## Permutation symmetry, checked\nPermute the hidden units of a net: its function is unchanged; an invariant encoder's output is unchanged, the flat MLP's is not."),
        new_code_cell('''\
from wsl.encoders import ENCODERS, WeightSpace
from wsl.symmetry import permute, random_permutations
from wsl.zoo import Zoo

zoo = Zoo(GRID)
mid = zoo.ids[0]
net, spec, sd = zoo.load_model(mid), zoo.permutation_spec(mid), zoo.state_dict(mid)
psd = permute(sd, spec, random_permutations(spec, torch.Generator().manual_seed(0)))
twin = zoo.load_model(mid)
twin.load_state_dict(psd)  # the same net, hidden units re-ordered
x, _ = zoo.training_data(mid).split("test")
with torch.no_grad():
    print("same function after permuting:", torch.allclose(net(x), twin(x), atol=1e-5))
space = WeightSpace.from_spec(spec, {k: tuple(v.shape) for k, v in sd.items()})
batch = lambda s: space.to_batch({k: v[None] for k, v in s.items()})  # noqa: E731
torch.manual_seed(0)
for name in ("flat", "deepsets", "nfn"):
    enc = ENCODERS[name](space=space, out_dim=1).eval()
    with torch.no_grad():
        a, b = enc(batch(sd)).item(), enc(batch(psd)).item()
    print(f"{name:9s} invariant={enc.invariant!s:5s} output {a:+.5f} -> permuted {b:+.5f}")'''),
        new_markdown_cell("## Train and compare\nTwo seeds per encoder, 25 epochs each (QUICK: 3); half of the cells train, a quarter validates, a quarter tests."),
        new_code_cell('''\
from wsl.apps.train_encoder import typed_config
from wsl.encoders.experiment import run_experiment

rows = []
for name in ("flat", "stats", "deepsets", "nfn"):
    cfg = config("train_encoder", f"zoo.path={GRID}", f"encoder={name}", "task=test_acc", "seeds=[0,1]",
                 "split.fractions=[0.5,0.25,0.25]", f"trainer.max_epochs={3 if QUICK else 25}", "logger=none",
                 "trainer.accelerator=cpu")
    df = run_experiment(typed_config(cfg), WORK / "encoders" / name)
    per_seed = df[~df["seed"].isin(["mean", "std"])]
    rows.append({"encoder": name, "params": int(per_seed["params"].iloc[0]),
                 "tau": per_seed["test/tau"].mean(), "tau_std": per_seed["test/tau"].std(ddof=1),
                 "r2": per_seed["test/r2"].mean(), "s/epoch": per_seed["s_per_epoch"].mean()})
results = pd.DataFrame(rows).set_index("encoder")
results.round(3)'''),
        new_code_cell('''\
ax = results["tau"].plot.bar(yerr=results["tau_std"], capsize=4, figsize=(5, 3), rot=0)
ax.set(ylabel="Kendall τ (test nets)", title="predicting test accuracy from weights")
ax.axhline(0, color="gray", lw=0.5)
plt.tight_layout()
print("tables:", *sorted(str(p) for p in (WORK / "encoders").glob("*/results.md")), sep="\\n  ")'''),
    ]


def generate_and_evaluate() -> list:
    return [
        new_markdown_cell("""\
# Generate networks, then judge them: accuracy vs novelty

A flow-matching generator learns the distribution of (permutation-aligned) weights of the zoo's
nets; sampled nets are written as a zoo, and `wsl-evaluate` compares them with the training
nets and with plain baselines (training checkpoints + noise, averages of aligned checkpoints, a
per-coordinate Gaussian). A generator is only interesting where it is both accurate and novel."""),
        new_code_cell(SETUP),
        new_code_cell(BUILD_ZOO),
        new_markdown_cell("## Train a generator (`wsl-train-generator`)\nOne architecture: the width-16 nets."),
        new_code_cell('''\
from wsl.apps.train_generator import typed_config
from wsl.generators.train import train_generator

job = typed_config(config("train_generator", f"zoo.path={ZOO}", "+zoo.filter.width=16", "generator=flow",
                          f"trainer.max_steps={30 if QUICK else 300}", "batch_size=16", "logger=none",
                          "progress_refresh_rate=0", "trainer.accelerator=cpu"))
run = train_generator(job, run_dir=WORK / "generator")
print(f"{run.training['n_train']} training nets, {run.training['steps']} steps, "
      f"spread ratio {run.training['spread_ratio']:.3f}")'''),
        new_markdown_cell("## Sample nets into a zoo (`wsl-sample`)"),
        new_code_cell('''\
import shutil

from wsl.apps.sample import typed_config as typed_sample
from wsl.generators.sample import sample_zoo

shutil.rmtree(WORK / "generated", ignore_errors=True)
N = 8 if QUICK else 32  # nets sampled; each baseline draws half as many
generated = sample_zoo(typed_sample(config("sample", f"run={WORK / 'generator'}", f"n={N}",
                                           f"zoo.path={WORK / 'generated'}")))
print(generated)'''),
        new_markdown_cell("## Evaluate (`wsl-evaluate`)\nEvery baseline setting is evaluated and reported; nothing is selected on the test split."),
        new_code_cell('''\
from wsl.apps.evaluate import typed_config
from wsl.evaluate import evaluate_zoo

job = typed_config(config("evaluate", f"zoo.path={generated}", f"reference={ZOO}", f"out={WORK / 'report'}",
                          f"baselines.noise.n={N // 2}", "baselines.noise.sigmas=[0.03,0.3]",
                          f"baselines.average.n={N // 2}", "baselines.average.ks=[2]", f"baselines.gaussian.n={N // 2}",
                          "novelty.top_k=3"))
ev, report = evaluate_zoo(job)  # the typed config (wsl.evaluate.EvaluateConfig) names the baselines too
summary = pd.DataFrame([s.summary() for s in ev.sets])
# accuracy (mean ± std over all nets), novelty in weights (NN distance / training-to-training NN
# distance, after alignment) and in behaviour (IoU of wrong-prediction sets with the nearest net)
summary[["method", "setting", "n", "failure_rate", "acc_mean", "acc_std", "l2_ratio_mean", "wrong_iou_mean",
         "memorized_rate"]].round(3)'''),
        new_code_cell('''\
for png in sorted(Path(report).parent.glob("*.png")):
    display(Image(filename=str(png)))
gen = ev.by_method("generated")[0]
print(f"generated: accuracy {gen.scores.accuracy.mean():.3f} ± {gen.scores.accuracy.std():.3f}, "
      f"failure rate {gen.scores.failed.mean():.2f}")
print("report:", report)'''),
    ]


NOTEBOOKS = {"zoo_tour.ipynb": zoo_tour, "encoders.ipynb": encoders,
             "generate_and_evaluate.ipynb": generate_and_evaluate}


def build(cells: list) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"}})
    for i, c in enumerate(nb.cells):  # stable ids: regenerating gives identical files
        c["id"] = f"cell-{i:02d}"
    nbformat.validate(nb)
    return nb


def render(nb) -> str:
    return nbformat.writes(nb) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if notebooks/ differs from what would be written")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    stale = []
    for name, make in NOTEBOOKS.items():
        text, path = render(build(make())), args.out / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
        print(path)
    if stale:
        print(f"stale notebooks (run python scripts/make_notebooks.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
