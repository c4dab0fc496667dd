"""Benchmark: every encoder on the same zoo and the same split, 3 seeds each, plus the `nfn` PyPI
package's NP layers (Zhou et al.'s own implementation) on the same data as an outside reference (MLP
zoo only: it reads chains of layers). Prints Kendall tau ± std (test split; accuracy for INR
classification), R², parameters, seconds per epoch, peak memory, and the load average.

    python scripts/bench_encoders.py                       # digits MLPs: zoos/bench_encoders_mlp (built with wsl-zoo), 3 splits
    python scripts/bench_encoders.py --train-fractions 0.1 0.25 0.5 0.75 1.0   # 270 MLPs, 90 cells (13 test cells)
    python scripts/bench_encoders.py --split-seeds 0       # one split of held-out cells (results in --out/<encoder>)
    python scripts/bench_encoders.py --net cnn --split-seeds 0 1 2 --collect   # the pooled table of runs already made
    python scripts/bench_encoders.py --net cnn             # MNIST-1D CNNs of two widths (zoo.pad=true)
    python scripts/bench_encoders.py --net inr             # INR classification: 500 SIRENs of digits
    python scripts/bench_encoders.py --net resnet          # ResNet-8 (width 4, BatchNorm): zoos/bench_encoders_resnet
    python scripts/bench_encoders.py --net resnet --override zoo.bn_stats=true   # + BatchNorm running statistics
    python scripts/bench_encoders.py --zoo dsire [--quick]  # the DSiRe table: LoRA zoo, task train_size (bench_dsire.py)
    python scripts/bench_encoders.py --net cnn --quick     # 20 epochs, one seed: a smoke run
    python scripts/bench_encoders.py --epochs 40 --encoders stats nfn nfn_reference

The zoos (one function each, zoo_<net>): digits MLPs (one hidden layer of 16 units) or ResNet-8s (width 4:
stages of 4/8/16 channels, BatchNorm, 5,142 parameters), 6 learning rates x 3 weight decays x 3 seed
replicas, trained 5 epochs, on 3 training-set fractions (one wsl-zoo job each): 162 nets; MNIST-1D CNNs
(3 convs of 8 or 16 channels, kernel 3) over 6 learning rates x 3 weight decays x 3 replicas x 3
training fractions x 2 widths, 10 epochs: 324 nets; SIRENs (experiment=inr_digits, 50 images per
digit): 500 nets, task inr_class. The test split holds out whole cells (replicas stay together). Each
encoder runs in its own process (so the peak memory is its own) with one intra-op thread (the nets
are tiny; on a shared machine extra threads only spin), all under identical settings.
Several splits (`--split-seeds`, default 0 1 2 for the MLP and ResNet zoos, whose test split holds
only 8 cells / 24 nets, and 0 for the CNN and INR zoos: 49 and 75 test nets): every encoder x seed is
trained on each split (results in --out/split<k>/<encoder>); the table shows each split's mean ± std
over the seeds and the pooled mean ± std over all split x seed runs, and says for every
permutation-aware encoder whether it beats flat and stats (pooled, and on how many splits). One split
seed keeps the single-split layout (--out/<encoder>); `--override split.seed=N` still means that.
Per-epoch seconds come from separate processes run one after another, so on a shared machine they
move with other jobs' load; the closing section measures every encoder's training step side by
side in one process (CPU time, interleaved rounds), which gives the cost ratios.
The reference needs `pip install --no-deps nfn einops`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLAIN = ["deepsets", "nfn", "graph", "transformer"]  # <name>_plain_readout: without the readout normalization
FOLD = ["graph", "transformer"]  # <name>_nofold: encoder.fold_fixed=false (before it became the default);
# <name>_fold: fold_fixed=true explicitly (the runs that measured it before it was the default)
ABLATIONS = ["nfn_linear_in", *(f"{e}_plain_readout" for e in PLAIN), *(f"{e}_{f}" for e in FOLD for f in ("nofold", "fold"))]
ENCODERS = ["flat", "stats", "deepsets", "nfn", "nfn_np", "graph", "transformer", "nfn_reference", *ABLATIONS]
OVERRIDES = {  # encoder name -> config overrides
    "nfn_np": ["encoder=nfn", "encoder.mode=np", "encoder.name=nfn_np"],
    "nfn_reference": ["encoder=nfn", "encoder.name=nfn_reference"],
    # ablations (issue 18): NFN's one-Linear input layer; the invariant embedding not standardized before the head
    "nfn_linear_in": ["encoder=nfn", "encoder.entry_mlp=false", "encoder.name=nfn_linear_in"],
    **{f"{e}_plain_readout": [f"encoder={e}", "encoder.norm_readout=false", f"encoder.name={e}_plain_readout"]
       for e in PLAIN},
    **{f"{e}_fold": [f"encoder={e}", "encoder.fold_fixed=true", f"encoder.name={e}_fold"] for e in FOLD},
    **{f"{e}_nofold": [f"encoder={e}", "encoder.fold_fixed=false", f"encoder.name={e}_nofold"] for e in FOLD},
}


# ------------------------------------------------------------------------------------------ zoos
# One function per zoo kind: it builds the zoo with wsl-zoo (unless `path` holds one already) and
# returns the wsl-train-encoder overrides every encoder gets on it. ZOOS maps --net to it.
def _wsl_zoo(path: Path, overrides: list) -> None:
    if (path / "index.h5").exists():
        print(f"zoo: reusing {path}")
        return
    cmd = [sys.executable, "-m", "wsl.apps.zoo", *overrides, f"zoo.path={path}", "progress_refresh_rate=0",
           "logger=none", f"hydra.sweep.dir={path.parent / (path.name + '-runs')}",
           f"hydra.run.dir={path.parent / (path.name + '-run')}"]
    print("zoo: building with", " ".join(cmd[2:]))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    print(f"zoo: built in {time.perf_counter() - t0:.0f}s")


TRAIN_FRACTIONS = [0.25, 0.5, 1.0]  # of the grid zoos (mlp, resnet, cnn): one wsl-zoo job each


def fractions(args) -> str:
    """The grid zoos' training-set fractions as a wsl-zoo sweep value (--train-fractions; more fractions,
    more cells: 5 give the MLP zoo 90 cells / 270 nets and a test split of 13 cells)."""
    return ",".join(map(str, args.train_fractions or TRAIN_FRACTIONS))


def zoo_mlp(path: Path, args, net: tuple = ("net=mlp", "net.width=16")) -> list:
    """162 digits MLPs (one hidden layer of 16): 6 lr x 3 weight decays x 3 replicas x 3 train fractions."""
    _wsl_zoo(path, ["-m", "dataset=digits", *net, *args.zoo_override, "population.size=54",
                    "train.lr=[0.3,0.1,0.03,0.01,0.003,0.001]", "train.weight_decay=[0,0.0003,0.003]",
                    f"train.epochs={args.zoo_epochs or 5}", f"dataset.train_fraction={fractions(args)}",
                    "zoo.name=bench_encoders"])
    return ["task=test_acc"]


def zoo_resnet(path: Path, args) -> list:
    """162 digits ResNet-8s (width 4: stages of 4/8/16 channels, BatchNorm, 5,142 parameters), the MLP zoo's grid."""
    return zoo_mlp(path, args, ("net=resnet", "net.width=4", "net.depth=1"))


def zoo_cnn(path: Path, args) -> list:
    """324 MNIST-1D CNNs (3 convs, kernel 3, stride 2, global average pool, linear head) of two widths
    (8 and 16 channels, read with zoo.pad=true): 6 learning rates x 3 weight decays x 3 replicas x 3
    train fractions, SGD, 10 epochs (wsl-zoo's default): a new user's first CNN zoo."""
    _wsl_zoo(path, ["-m", "dataset=mnist1d", "net=cnn", "net.width=8,16", *args.zoo_override, "population.size=54",
                    "train.lr=[0.3,0.2,0.1,0.05,0.03,0.01]", "train.weight_decay=[0,0.001,0.01]",
                    f"train.epochs={args.zoo_epochs or 10}", f"dataset.train_fraction={fractions(args)}",
                    "zoo.name=bench_encoders_cnn"])
    return ["task=test_acc", "zoo.pad=true"]


def zoo_inr(path: Path, args) -> list:
    """INR classification: experiment=inr_digits (SIRENs 2 x 32, w0 10, one shared init, 200 full-batch
    Adam steps) with 50 images per digit: 500 SIRENs (the recipe's 1,000 halved to run in minutes here)."""
    _wsl_zoo(path, ["experiment=inr_digits", "dataset.per_class=50", *args.zoo_override,
                    *([f"train.epochs={args.zoo_epochs}"] if args.zoo_epochs else []), "zoo.name=bench_encoders_inr"])
    return ["task=inr_class"]


ZOOS = {"mlp": zoo_mlp, "resnet": zoo_resnet, "cnn": zoo_cnn, "inr": zoo_inr}


class NFNReference:
    """Factory of the outside reference: nfn.layers.NPLinear x 3 (with io_embed), ReLU, NPPool, and
    the same MLP head as our encoders, reading the same per-layer-scaled WSBatch."""

    def __call__(self, space, out_dim):
        import torch

        from wsl.errors import ConfigError

        chain = [(e.out, e.inp) for e in space.edges] == [(m + 1, m) for m in range(len(space.edges))]
        if not chain:
            raise ConfigError("nfn_reference: the nfn package's NPLinear reads chains of layers only")
        bias = {n.name: j for j, n in enumerate(space.nodes)}
        from nfn.common import WeightSpaceFeatures, network_spec_from_wsfeat
        from nfn.layers import NPLinear, NPPool, TupleOp
        from torch import nn

        from wsl.encoders.common import mlp

        def to_wsfeat(batch):
            ws, bs = [], []
            for w, e in zip(batch.edges, space.edges):
                j = bias.get(e.name.rpartition(".")[0] + ".bias")
                bs.append((batch.nodes[j] if j is not None else w.new_zeros(w.shape[:2]))[:, None])
                w = w.reshape(*w.shape[:3], *e.kernel) if e.kernel else w[..., 0]  # [B, out, in(, h, w)]
                ws.append(w[:, None])  # one channel
            return WeightSpaceFeatures(ws, bs)

        class Reference(nn.Module):
            invariant = True

            def __init__(self, channels=32, num_layers=3, head_hidden=128):
                super().__init__()
                probe = space.to_batch({k: torch.zeros(1, *v) for k, v in space.shapes.items()})
                spec = network_spec_from_wsfeat(to_wsfeat(probe))
                layers, c = [], 1
                for _ in range(num_layers):
                    layers += [NPLinear(spec, c, channels, io_embed=True), TupleOp(nn.ReLU())]
                    c = channels
                self.layers = nn.Sequential(*layers)
                self.pool = NPPool(spec)
                self.head = mlp(NPPool.get_num_outs(spec) * channels, head_hidden, out_dim, 3)

            def forward(self, batch):
                return self.head(self.pool(self.layers(to_wsfeat(batch))).flatten(1))

        return Reference()


def run_one(name: str, zoo: Path, out: Path, epochs: int, seeds: list, extra: list) -> None:
    """One encoder, all seeds, in this process; writes <out>/results.csv."""
    import torch
    from hydra import compose, initialize_config_dir

    from wsl.apps.common import CONF_DIR
    from wsl.apps.train_encoder import typed_config
    from wsl.encoders.experiment import run_experiment

    torch.set_num_threads(1)
    overrides = OVERRIDES.get(name, [f"encoder={name}"]) + [
        f"zoo.path={zoo}", f"seeds=[{','.join(map(str, seeds))}]", f"trainer.max_epochs={epochs}",
        "logger=none", *extra]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train_encoder", overrides=overrides)
    factory = NFNReference() if name == "nfn_reference" else None
    run_experiment(typed_config(cfg), out, encoder_factory=factory)


def step_costs(zoo: Path, names: list, batch_size: int = 32, rounds: int = 5, pad: bool = False) -> dict:
    """CPU milliseconds per training step (forward + backward + Adam) of every encoder on the same
    batch of the zoo's nets, measured side by side in this one process, interleaved over `rounds`
    (median). Process CPU time, unlike wall time, is not inflated by other jobs on a shared machine."""
    import statistics

    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from wsl.apps.common import CONF_DIR
    from wsl.encoders.common import LayerScale
    from wsl.encoders.experiment import load_weights, read_space
    from wsl.zoo import Zoo

    torch.set_num_threads(1)
    z = Zoo(zoo)
    ids = z.ids[:batch_size]
    space = read_space(z, ids, pad=pad)
    params, masks = load_weights(z, ids, space)
    batch = LayerScale(space).fit(space.to_batch(params, masks))(space.to_batch(params, masks))
    encoders = {}
    for name in names:
        torch.manual_seed(0)
        if name == "nfn_reference":
            encoders[name] = NFNReference()(space, 1)
            continue
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name="train_encoder", overrides=OVERRIDES.get(name, [f"encoder={name}"]) + ["zoo.path=x"])
        enc = OmegaConf.to_container(cfg.encoder, resolve=True)
        enc.pop("name", None)
        encoders[name] = instantiate(enc, _partial_=True)(space=space, out_dim=1)  # space: a live object
    opts = {n: torch.optim.Adam(e.parameters(), lr=1e-4) for n, e in encoders.items()}
    times = {n: [] for n in encoders}
    for r in range(rounds + 1):
        for n, e in encoders.items():
            t0 = time.process_time()
            opts[n].zero_grad()
            e(batch).pow(2).mean().backward()
            opts[n].step()
            if r > 0:  # round 0 warms up
                times[n].append((time.process_time() - t0) * 1000)
    return {n: statistics.median(v) for n, v in times.items()}


def result_row(name: str, out: Path, key: str, wall_s: float = float("nan")) -> dict:
    """One encoder's line of the table from its results.csv (mean ± std over the seeds)."""
    import pandas as pd

    df = pd.read_csv(out / "results.csv")
    seeds = df[~df["seed"].isin(["mean", "std"])]
    std = lambda c: seeds[c].std(ddof=1) if len(seeds) > 1 else 0.0  # noqa: E731
    row = {"encoder": name, key: seeds[f"test/{key}"].mean(), f"{key}_std": std(f"test/{key}"),
           f"val_{key}": seeds[f"val/{key}"].mean(), "params": int(seeds["params"].iloc[0]),
           "s_per_epoch": seeds["s_per_epoch"].mean(), "peak_mb": seeds["peak_mem_mb"].max(), "wall_s": wall_s,
           "per_seed": seeds[f"test/{key}"].round(4).tolist(), "load": os.getloadavg()[0]}
    if key == "tau":
        row.update(r2=seeds["test/r2"].mean(), r2_std=std("test/r2"))
    print(f"{name:>14}: {key} {row[key]:.3f} ± {row[key + '_std']:.3f} (seeds {row['per_seed']})  "
          f"params {row['params']:,}  {row['s_per_epoch']:.3f} s/epoch  load {row['load']:.1f}", flush=True)
    return row


THREE_SPLITS = ("mlp", "resnet")  # 162 nets, 54 cells: a test split of 8 cells cannot rank encoders alone
BASELINES = ("flat", "stats")  # what every permutation-aware encoder must beat (issue 18)
OUTSIDE = ("nfn_reference",)  # an outside reference: reported, no verdict


def split_dir(out: Path, split_seeds: list, k: int) -> Path:
    """Where split seed k's results go: --out/split<k> when several splits are run, --out itself for one."""
    return out / f"split{k}" if len(split_seeds) > 1 else out


def seed_scores(results_csv: Path, key: str) -> dict:
    """{"test": [...], "val": [...]}: the per-seed scores of one encoder on one split (its results.csv)."""
    import pandas as pd

    df = pd.read_csv(results_csv)
    seeds = df[~df["seed"].astype(str).isin(["mean", "std"])]
    return {"test": seeds[f"test/{key}"].astype(float).tolist(), "val": seeds[f"val/{key}"].astype(float).tolist()}


def _mean_std(v: list) -> tuple:
    import statistics

    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def pool_splits(scores: dict) -> dict:
    """Pool one benchmark over splits. `scores`: {split seed: {encoder: {"test": [per seed], "val": [...]}}}.
    Returns {encoder: {"splits": {k: (mean, std, n)}, "mean", "std", "n", "val_mean", "val_splits": {k: mean}}}:
    per split the mean ± std over its seeds, pooled the mean ± std over every split x seed run of the
    encoder (splits where an encoder has no result are left out of its pool and named by "missing")."""
    names = list(dict.fromkeys(n for per in scores.values() for n in per))
    pooled = {}
    for n in names:
        runs = {k: per[n] for k, per in scores.items() if n in per and per[n]["test"]}
        if not runs:
            continue
        test = [v for r in runs.values() for v in r["test"]]
        val = [v for r in runs.values() for v in r["val"]]
        mean, std = _mean_std(test)
        pooled[n] = {"splits": {k: (*_mean_std(r["test"]), len(r["test"])) for k, r in runs.items()},
                     "val_splits": {k: _mean_std(r["val"])[0] for k, r in runs.items()},
                     "mean": mean, "std": std, "n": len(test), "val_mean": _mean_std(val)[0],
                     "missing": [k for k in scores if k not in runs]}
    return pooled


def verdicts(pooled: dict, key: str = "mean") -> dict:
    """For every permutation-aware encoder (all but flat, stats and the outside reference): does it beat
    flat and stats? {encoder: {"pooled": bool, "splits_won": j, "splits": m, "margin": pooled mean minus
    the better baseline's, "val_pooled": the same verdict on the validation split}}. A split counts as won
    when the encoder's mean over seeds there is above both baselines' means there. Needs both baselines."""
    if not all(b in pooled for b in BASELINES):
        return {}
    bar = max(pooled[b][key] for b in BASELINES)
    val_bar = max(pooled[b]["val_mean"] for b in BASELINES)
    common = [k for k in pooled[BASELINES[0]]["splits"] if all(k in pooled[b]["splits"] for b in BASELINES)]
    out = {}
    for n, p in pooled.items():
        if n in BASELINES or n in OUTSIDE:
            continue
        ks = [k for k in common if k in p["splits"]]
        won = sum(p["splits"][k][0] > max(pooled[b]["splits"][k][0] for b in BASELINES) for k in ks)
        out[n] = {"pooled": p[key] > bar, "margin": p[key] - bar, "splits_won": won, "splits": len(ks),
                  "val_pooled": p["val_mean"] > val_bar}
    return out


def print_pooled(args, pooled: dict, split_seeds: list) -> None:
    """Per-split columns (mean ± std over seeds), the pooled mean ± std over every split x seed run, the
    pooled validation score, and the beats-flat-and-stats verdicts."""
    key = "acc" if args.net == "inr" else "tau"
    print(f"\nzoo {args.zoo} | {' '.join(args.zoo_args)} | split 0.7/0.15/0.15 by cell, split seeds {split_seeds} | "
          f"{args.epochs} epochs | seeds {args.seeds} | 1 thread | load average {args.load}")
    head = " | ".join(f"{'split ' + str(k):>13}" for k in split_seeds)
    print(f"| {'encoder':<22} | {head} | {'pooled test ' + key:>19} | {'pooled val':>10} |")
    print("|" + "---|" * (len(split_seeds) + 3))
    for n, p in pooled.items():
        cols = " | ".join(f"{p['splits'][k][0]:.3f} ± {p['splits'][k][1]:.3f}" if k in p["splits"] else f"{'-':>13}"
                          for k in split_seeds)
        print(f"| {n:<22} | {cols} | {p['mean']:.3f} ± {p['std']:.3f} (n={p['n']}) | {p['val_mean']:10.3f} |")
    v = verdicts(pooled)
    if v:
        bar = max(pooled[b]["mean"] for b in BASELINES)
        print(f"\nbeats flat ({pooled['flat']['mean']:.3f}) and stats ({pooled['stats']['mean']:.3f}), pooled over "
              f"split x seed runs, and on how many splits (split means):")
        for n, r in v.items():
            print(f"  {n:>22}: pooled {pooled[n]['mean']:.3f} ({r['margin']:+.3f} against {bar:.3f}) "
                  f"{'beats' if r['pooled'] else 'does NOT beat'} both; splits {r['splits_won']}/{r['splits']}; "
                  f"on val: {'beats' if r['val_pooled'] else 'does NOT beat'} both")


def print_table(args, rows: list, split_seed: int = 0) -> None:
    key = "acc" if args.net == "inr" else "tau"
    print(f"\nzoo {args.zoo} | {' '.join(args.zoo_args)} | split 0.7/0.15/0.15 by cell (seed {split_seed}) | {args.epochs} "
          f"epochs | seeds {args.seeds} | 1 thread | load average {args.load}")
    if key == "tau":
        print(f"| {'encoder':<14} | {'test tau':>15} | {'test R²':>15} | {'val tau':>7} | {'params':>9} | "
              f"{'s/epoch':>7} | {'peak MB':>7} |")
    else:
        print(f"| {'encoder':<14} | {'test accuracy':>15} | {'val acc':>7} | {'params':>9} | {'s/epoch':>7} | "
              f"{'peak MB':>7} |")
    print("|" + "---|" * (7 if key == "tau" else 6))
    for r in rows:
        fit = f" {r['r2']:.3f} ± {r['r2_std']:.3f}   |" if key == "tau" else ""
        print(f"| {r['encoder']:<14} | {r[key]:.3f} ± {r[key + '_std']:.3f}   |{fit} {r['val_' + key]:7.3f} | "
              f"{r['params']:9,} | {r['s_per_epoch']:7.3f} | {r['peak_mb']:7.0f} |")
    by = {r["encoder"]: r for r in rows}
    ours = [r for r in rows if r["encoder"] not in ("nfn_reference",)]
    if ours and "nfn_reference" in by and "stats" in by:
        best = max(ours, key=lambda r: r["tau"])
        print(f"\nbest of ours: {best['encoder']} tau {best['tau']:.3f}; reference (nfn NPLinear) "
              f"{by['nfn_reference']['tau']:.3f}; stats baseline {by['stats']['tau']:.3f}")
        print(f"target (best >= reference and > stats): "
              f"{'met' if best['tau'] >= by['nfn_reference']['tau'] and best['tau'] > by['stats']['tau'] else 'NOT met'}")
    if "flat" in by and "stats" in by:  # issue 18: every permutation-aware encoder beats both baselines
        bar = max(by["flat"][key], by["stats"][key])
        for name in ("deepsets", "nfn", "graph", "transformer"):
            if name in by:
                print(f"target {name} > flat and stats ({bar:.3f}): {by[name][key]:.3f} "
                      f"{'met' if by[name][key] > bar else 'NOT met'}")


def set_split_seeds(args) -> None:
    """args.split_seeds: as given; else split.seed=N of --override (the old single-split way); else 0 1 2
    for the 54-cell grids (mlp, resnet: 8 test cells, 24 nets) and 0 for the others (cnn: 49 test nets,
    inr: 75). Both given: one-line error."""
    given = [o.split("=", 1)[1] for o in args.override if o.startswith("split.seed=")]
    args.split_seeds_given = args.split_seeds is not None
    if args.split_seeds is not None and given:
        sys.exit(f"bench_encoders: --split-seeds {' '.join(map(str, args.split_seeds))} and --override "
                 f"split.seed={given[-1]} both name the split; give one")
    if args.split_seeds is not None and len(set(args.split_seeds)) != len(args.split_seeds):
        sys.exit(f"bench_encoders: --split-seeds {' '.join(map(str, args.split_seeds))} repeats a seed")
    if args.split_seeds is None:
        args.split_seeds = [int(given[-1])] if given else ([0, 1, 2] if args.net in THREE_SPLITS else [0])


def main() -> None:
    if sys.argv[1:3] == ["--zoo", "dsire"]:  # the DSiRe table: a LoRA zoo, task=train_size (scripts/bench_dsire.py)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_dsire import main as bench_dsire

        return bench_dsire(sys.argv[3:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--net", choices=sorted(ZOOS), default="mlp", help="the zoo's kind (architecture or task)")
    ap.add_argument("--zoo", type=Path, help="default: zoos/bench_encoders_<net>")
    ap.add_argument("--zoo-epochs", type=int, default=None, help="training epochs of the zoo's nets (default: per kind)")
    ap.add_argument("--train-fractions", type=float, nargs="+",
                    help=f"training-set fractions of the grid zoos (default {TRAIN_FRACTIONS}; others: default zoo "
                         "and out paths get a _tf<n> suffix), e.g. 0.1 0.25 0.5 0.75 1.0: 90 MLP cells")
    ap.add_argument("--zoo-override", nargs="*", default=[], help="extra wsl-zoo overrides (e.g. net.norm=none)")
    ap.add_argument("--epochs", type=int, default=60, help="encoder training epochs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--split-seeds", type=int, nargs="+",
                    help="split.seed of each split of held-out cells (every encoder x seed on each; results in "
                         "--out/split<k>); default: 0 1 2 for --net mlp and resnet (8 test cells), 0 for cnn and inr; one "
                         "value: the single-split layout (--out/<encoder>)")
    ap.add_argument("--encoders", nargs="+", choices=ENCODERS, help="default: all (nfn_reference on MLPs only)")
    ap.add_argument("--out", type=Path, help="default: runs/bench_encoders_<net>")
    ap.add_argument("--override", nargs="*", default=[], help="extra config overrides for every encoder")
    ap.add_argument("--quick", action="store_true", help="20 encoder epochs, seed 0 only, the first split seed unless "
                    "--split-seeds is given (a smoke run, not a measurement)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--speed-only", action="store_true", help="only the side-by-side step costs")
    ap.add_argument("--collect", action="store_true",
                    help="no training: the table from the encoders' results already in --out (runs split over processes)")
    args = ap.parse_args()
    set_split_seeds(args)
    if args.quick:
        args.epochs, args.seeds = min(args.epochs, 20), args.seeds[:1]
        args.split_seeds = args.split_seeds if args.split_seeds_given else args.split_seeds[:1]
    if args.train_fractions and args.net == "inr":
        sys.exit("bench_encoders: --train-fractions applies to the grid zoos (mlp, resnet, cnn), not --net inr")
    tag = f"_tf{len(args.train_fractions)}" if args.train_fractions and args.train_fractions != TRAIN_FRACTIONS else ""
    args.zoo = (args.zoo or ROOT / "zoos" / f"bench_encoders_{args.net}{tag}").resolve()
    args.out = (args.out or ROOT / "runs" / f"bench_encoders_{args.net}{tag}").resolve()
    args.encoders = args.encoders or [e for e in ENCODERS if (args.net == "mlp" or e != "nfn_reference")
                                      and e not in ABLATIONS]
    if args.one:
        run_one(args.one, args.zoo, args.out, args.epochs, args.seeds, args.override)
        return

    args.zoo_args = ZOOS[args.net](args.zoo, args)  # builds the zoo unless it exists
    key = "acc" if args.net == "inr" else "tau"
    rows_by_split, scores = {}, {}
    for k in ([] if args.speed_only else args.split_seeds):
        out_k = split_dir(args.out, args.split_seeds, k)
        split = [] if any(o.startswith("split.seed=") for o in args.override) else [f"split.seed={k}"]
        if len(args.split_seeds) > 1:
            print(f"\n== split seed {k} -> {out_k}", flush=True)
        rows, scores[k] = [], {}
        for name in args.encoders:
            out = out_k / name
            if args.collect:
                if (out / "results.csv").exists():
                    rows.append(result_row(name, out, key))
                    scores[k][name] = seed_scores(out / "results.csv", key)
                continue
            cmd = [sys.executable, __file__, "--one", name, "--zoo", str(args.zoo), "--epochs",
                   str(args.epochs), "--out", str(out), "--seeds", *map(str, args.seeds),
                   "--override", *args.zoo_args, *args.override, *split]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
                               capture_output=True, text=True)
            if r.returncode != 0:
                print(f"{name}: FAILED\n{r.stderr[-3000:]}")
                continue
            rows.append(result_row(name, out, key, time.perf_counter() - t0))
            scores[k][name] = seed_scores(out / "results.csv", key)
        rows_by_split[k] = rows

    args.load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    for k, rows in rows_by_split.items():
        if rows:
            print_table(args, rows, k)
    pooled = pool_splits(scores) if len(args.split_seeds) > 1 else {}
    if pooled:
        print_pooled(args, pooled, args.split_seeds)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "pooled.json").write_text(json.dumps(
            {"split_seeds": args.split_seeds, "seeds": args.seeds, "load": args.load, "pooled": pooled,
             "verdicts": verdicts(pooled)}, indent=2))
    if args.collect:
        return
    costs = step_costs(args.zoo, args.encoders, pad="zoo.pad=true" in args.zoo_args)
    base = costs.get("nfn_reference") or costs.get("stats") or next(iter(costs.values()))
    print("\nside by side in one process (batch of 32 nets, 1 thread, median of 5 interleaved rounds, CPU time):")
    for n, ms in costs.items():
        print(f"  {n:>14}: {ms:8.1f} ms/step  ({ms / base:5.2f}x {'nfn_reference' if 'nfn_reference' in costs else 'stats'})")
    for k, rows in rows_by_split.items():
        for r in rows:
            r["cpu_ms_per_step"] = costs.get(r["encoder"])
        out_k = split_dir(args.out, args.split_seeds, k)
        out_k.mkdir(parents=True, exist_ok=True)
        (out_k / "summary.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
