"""Benchmark: dataset-size recovery (DSiRe, Salama et al. 2024) on a LoRA zoo of digits MLPs: the DSiRe
baseline (encoder=lora_spectrum: per-layer singular values and norms of B A, per-layer nearest neighbours,
a vote) against every weight-space encoder (reading the merged nets), task=train_size. Prints the test
accuracy (exact size) and the mean absolute error in samples, mean ± std over encoder seeds.

    python scripts/bench_encoders.py --zoo dsire [--quick]     (the same as python scripts/bench_dsire.py)
    python scripts/bench_dsire.py --encoders lora_spectrum stats --epochs 40

The zoo (experiment=dsire_base, then experiment=dsire_digits, in this process): one base MLP (64-32-10)
trained 5 epochs on half of the digits train split; LoRA fine-tunes (rank 4 on both layers, 10 full-batch
SGD steps) on train sets of 11, 22, 43, 86 and 173 samples x 8 data subsets x 4 seeds = 160 nets
(--quick: 11, 43, 173 samples x 4 subsets x 4 seeds = 48 nets). The split keeps the seed replicas of one
(size, subset) together, so every test net was fine-tuned on a subset no training net saw.
One intra-op thread; the load average of the shared machine is printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENCODERS = ["lora_spectrum", "lora_spectrum_1nn_raw", "flat", "stats", "deepsets", "nfn", "graph", "transformer"]
OVERRIDES = {  # DSiRe's own setting: one nearest neighbour per layer on the raw singular values and norm
    "lora_spectrum_1nn_raw": ["encoder=lora_spectrum", "encoder.k=1", "encoder.log=false",
                              "encoder.name=lora_spectrum_1nn_raw"]}
FRACTIONS, QUICK_FRACTIONS = [0.01, 0.02, 0.04, 0.08, 0.16], [0.01, 0.04, 0.16]
SPLIT = [0.5, 0.25, 0.25]


def compose(config: str, overrides: list):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from wsl.apps.common import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name=config, overrides=overrides)


def build(root: Path, quick: bool) -> Path:
    """The base zoo and the LoRA zoo under `root` (reused when present); returns the LoRA zoo."""
    from tqdm import tqdm

    from wsl.apps.zoo import typed_config
    from wsl.apps.zoo_job import run_zoo_job

    common = ["logger=none", "progress_refresh_rate=0", "trainer.accelerator=cpu"]
    base, zoo = root / "dsire_base", root / ("dsire_digits_quick" if quick else "dsire_digits")
    if not (base / "index.h5").exists():
        run_zoo_job(typed_config(compose("zoo", ["experiment=dsire_base", f"zoo.path={base}", *common])))
    if (zoo / "index.h5").exists():
        print(f"zoo: reusing {zoo}")
        return zoo
    jobs = [(f, s) for f in (QUICK_FRACTIONS if quick else FRACTIONS) for s in range(4 if quick else 8)]
    t0 = time.perf_counter()
    for f, s in tqdm(jobs, desc="LoRA fine-tune jobs", file=sys.stdout):
        run_zoo_job(typed_config(compose("zoo", ["experiment=dsire_digits", f"init.from={base}", f"zoo.path={zoo}",
                                                 f"dataset.train_fraction={f}", f"dataset.subset_seed={s}", *common])))
    print(f"zoo: {len(jobs)} jobs x 4 nets built in {time.perf_counter() - t0:.0f}s -> {zoo}")
    return zoo


def balanced_split_seed(zoo, table, tries: int = 100) -> int:
    """The first split seed whose cell split puts every train size into train (two cells or more), val and
    test: a random split of 40 cells can leave a size out of a split, which no encoder can then learn or
    be scored on."""
    ids = [m for m in zoo.ids if table.loc[m, "status"] == "trained"]
    sizes = set(table.loc[ids, "train_samples"])
    for seed in range(tries):
        parts = zoo.split(tuple(SPLIT), seed=seed, ids=ids)
        per = {p: table.loc[v, "train_samples"] for p, v in parts.items()}
        if all(set(per[p]) == sizes for p in parts) and all(
                len({zoo.cell_key(m) for m in parts["train"] if table.loc[m, "train_samples"] == n}) >= 2 for n in sizes):
            return seed
    return 0


def run_encoder(name: str, zoo: Path, out: Path, epochs: int, seeds: list, split_seed: int = 0):
    from wsl.apps.train_encoder import typed_config
    from wsl.encoders.experiment import run_experiment

    cfg = compose("train_encoder", [*OVERRIDES.get(name, [f"encoder={name}"]), f"zoo.path={zoo}", "task=train_size", "logger=none",
                                    f"seeds=[{','.join(map(str, seeds))}]", f"trainer.max_epochs={epochs}",
                                    f"split.fractions=[{','.join(map(str, SPLIT))}]", f"split.seed={split_seed}"])
    return run_experiment(typed_config(cfg), out)


def plot_norms(zoo, table, path: Path) -> None:
    """Per adapted layer: the Frobenius norm of (alpha / rank) B A of every net against its train-set size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from wsl.encoders.lora_spectrum import spectrum_features

    x, layers = spectrum_features(zoo, zoo.ids)
    n = table.loc[zoo.ids, "train_samples"].to_numpy()
    fig, axes = plt.subplots(1, len(layers), figsize=(4 * len(layers), 3.4), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, j, w in zip(axes[0], range(len(layers)), layers):
        ax.scatter(n * np.exp(rng.normal(0, 0.05, len(n))), x[:, j, -1], s=8, alpha=0.5)
        sizes = sorted(set(n))
        ax.plot(sizes, [np.median(x[n == s, j, -1]) for s in sizes], "k-o", ms=4, label="median")
        ax.set(xscale="log", yscale="log", xlabel="train samples", ylabel="||(alpha/rank) B A||_F", title=w)
        ax.legend(frameon=False)
    fig.suptitle(f"{zoo.path.name}: LoRA update norms vs train-set size ({len(n)} nets)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot: {path}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="48 nets, lora_spectrum/stats/flat, 30 epochs")
    ap.add_argument("--root", type=Path, default=ROOT / "zoos", help="where the zoos are built (default zoos/)")
    ap.add_argument("--encoders", nargs="+", choices=ENCODERS, help="default: all (--quick: lora_spectrum stats flat)")
    ap.add_argument("--epochs", type=int, help="encoder training epochs (default 60, --quick 30)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_dsire")
    ap.add_argument("--plot", type=Path, help="norms of B A against the train-set size (default: <out>/dsire_norms.png)")
    args = ap.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    import torch

    torch.set_num_threads(1)
    encoders = args.encoders or (["lora_spectrum", "stats", "flat"] if args.quick else ENCODERS)
    epochs = args.epochs or (30 if args.quick else 60)
    print(f"load average before: {os.getloadavg()}")
    zoo = build(args.root.resolve(), args.quick)
    from wsl.zoo import Zoo

    t = Zoo(zoo).table()
    sizes = sorted(t["train_samples"].unique().tolist())
    print(f"zoo {zoo}: {len(t)} LoRA nets, train sizes {sizes}, test acc of the nets "
          f"{t['test_acc'].min():.3f}..{t['test_acc'].max():.3f}")
    z = Zoo(zoo)
    plot_norms(z, t, args.plot or args.out / "dsire_norms.png")
    split_seed = balanced_split_seed(z, t)
    parts = z.split(tuple(SPLIT), seed=split_seed, ids=[m for m in z.ids if t.loc[m, "status"] == "trained"])
    print(f"split seed {split_seed} (the first with every size in every split):")
    for part, ids in parts.items():
        print(f"  {part:>5}: {len(ids)} nets, per size {t.loc[ids, 'train_samples'].value_counts().sort_index().to_dict()}")
    rows = []
    for name in encoders:
        t0 = time.perf_counter()
        df = run_encoder(name, zoo, args.out / name, epochs, args.seeds, split_seed)
        per = df[~df["seed"].astype(str).isin(["mean", "std"])]
        rows.append({"encoder": name, "acc": per["test/acc"].mean(), "acc_std": per["test/acc"].std(ddof=1),
                     "mae": per["test/mae"].mean(), "mae_std": per["test/mae"].std(ddof=1),
                     "val_acc": per["val/acc"].mean(), "params": int(per["params"].iloc[0]),
                     "wall_s": time.perf_counter() - t0})
        r = rows[-1]
        print(f"{name:>14}: test acc {r['acc']:.3f} ± {r['acc_std']:.3f}  MAE {r['mae']:.1f} ± {r['mae_std']:.1f} "
              f"samples  ({r['wall_s']:.0f}s)", flush=True)
    chance = 1 / len(sizes)
    print(f"\nDSiRe table: zoo {zoo.name} ({len(t)} nets, {len(sizes)} sizes, chance acc {chance:.3f}) | task train_size "
          f"| split {SPLIT} by (size, subset) cell, seed {split_seed} | {epochs} encoder epochs | seeds {args.seeds} | 1 thread")
    print(f"| {'encoder':<21} | {'test acc':>15} | {'test MAE (samples)':>18} | {'val acc':>7} | {'params':>8} | "
          f"{'wall s':>6} |")
    print("|" + "---|" * 6)
    for r in rows:
        print(f"| {r['encoder']:<21} | {r['acc']:.3f} ± {r['acc_std']:.3f}   | {r['mae']:8.1f} ± {r['mae_std']:<7.1f} | "
              f"{r['val_acc']:7.3f} | {r['params']:8,} | {r['wall_s']:6.0f} |")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
