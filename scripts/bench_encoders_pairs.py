"""Which test pairs an encoder orders wrong: Kendall tau of the saved encoders of a `bench_encoders.py`
run, over all test pairs and over the pairs whose measured accuracies differ by at least --delta.

    python scripts/bench_encoders_pairs.py runs/bench_encoders_mlp [--delta 0.02]

For every split (--out/split<k>, or --out itself for a single-split run) and every encoder found
there, each seed's saved encoder (encoders/seed<k>.safetensors) predicts the test nets of the split it
was trained on (the split is redrawn from the run's config.json: zoo, fractions, seed, by), then:
- tau: Kendall tau-b over all test pairs (what bench_encoders.py reports; checked against results.csv);
- tau>=delta: over the pairs whose test accuracies differ by >= delta (default 0.02: 7 of the digits
  test set's 359 images; one binomial standard error of an accuracy near 0.95 is 0.011);
- tied: the fraction of test pairs closer than delta.
Pairs closer than a few test images are ordered by which images a net happens to get right, which
no summary of its weights predicts well; a split whose test set holds many such pairs (a cluster of
well-trained nets) ranks encoders by how they order that cluster.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import numpy as np


def kendall(pred: np.ndarray, y: np.ndarray, delta: float) -> float:
    """Kendall tau over the pairs (i < j) with |y_i - y_j| >= delta > 0: concordant minus discordant over
    their number (no tied targets among them; a tied prediction counts 0)."""
    i, j = np.triu_indices(len(y), 1)
    dy, dp = y[i] - y[j], pred[i] - pred[j]
    keep = (np.abs(dy) >= delta) & (dy != 0)
    if not keep.any():
        return math.nan
    return float((np.sign(dy[keep]) * np.sign(dp[keep])).mean())


def split_rows(run_dir: Path, delta: float) -> list:
    """One row per seed of the encoder run `run_dir`: tau over all test pairs and over the resolvable ones."""
    import pandas as pd

    from wsl.encoders.embed import encode_zoo
    from wsl.encoders.encoder_run import load_run
    from wsl.encoders.tasks import kendall_tau
    from wsl.zoo import Zoo

    cfg = json.loads((run_dir / "config.json").read_text())
    zoo = Zoo(cfg["zoo"]["path"])
    sp = cfg["split"]
    if sp.get("by", "cell") != "cell":
        raise SystemExit(f"{run_dir}: split.by={sp['by']}; this analysis redraws cell splits only")
    test = zoo.split(tuple(sp["fractions"]), seed=sp["seed"])["test"]
    table = zoo.table().set_index("model_id")
    col = cfg["task"]["columns"][0]
    y = table.loc[test, col].to_numpy(float)
    encs = load_run(run_dir)
    enc = encode_zoo(encs, zoo, test, cfg["zoo"].get("epoch", -1))
    res = pd.read_csv(run_dir / "results.csv")
    reported = {str(s): float(t) for s, t in zip(res["seed"], res["test/tau"])}
    rows = []
    for seed, pred in zip(enc.seeds, enc.preds):
        p = pred[:, 0].numpy()
        rows.append({"seed": seed, "tau": kendall_tau(p, y), "tau_resolvable": kendall(p, y, delta)})
        if abs(rows[-1]["tau"] - reported.get(str(seed), math.nan)) > 1e-3 or math.isnan(reported.get(str(seed), math.nan)):
            print(f"warning: {run_dir} seed {seed}: tau {rows[-1]['tau']:.4f} here, {reported.get(str(seed))} in "
                  "results.csv (another zoo state or an unfinished run?)")
    i, j = np.triu_indices(len(y), 1)
    tied = float((np.abs(y[i] - y[j]) < delta).mean())
    for r in rows:
        r["tied"] = tied
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="a bench_encoders.py --out directory")
    ap.add_argument("--delta", type=float, default=0.02, help="smallest accuracy difference of a resolvable pair")
    args = ap.parse_args(argv)
    splits = sorted(args.out.glob("split*")) or [args.out]
    table: dict = {}
    for sdir in splits:
        for run_dir in sorted(p for p in sdir.iterdir() if (p / "encoders").is_dir()):
            rows = split_rows(run_dir, args.delta)
            table.setdefault(run_dir.name, {})[sdir.name] = rows
            print(f"{sdir.name:>7} {run_dir.name:>18}: tau {statistics.fmean(r['tau'] for r in rows):.3f}, "
                  f"tau>={args.delta} {statistics.fmean(r['tau_resolvable'] for r in rows):.3f} "
                  f"(test pairs closer than {args.delta}: {rows[0]['tied']:.0%})", flush=True)
    names = list(table)
    split_names = [s.name for s in splits]
    print(f"\nKendall tau over test pairs |acc_i - acc_j| >= {args.delta} (mean over seeds; pooled: mean ± std over "
          "split x seed runs); in brackets: over all pairs")
    print("| encoder | " + " | ".join(split_names) + " | pooled | pooled, all pairs |")
    print("|" + "---|" * (len(split_names) + 3))
    for n in names:
        cells, res, alls = [], [], []
        for s in split_names:
            rows = table[n].get(s)
            if not rows:
                cells.append("-")
                continue
            cells.append(f"{statistics.fmean(r['tau_resolvable'] for r in rows):.3f} "
                         f"({statistics.fmean(r['tau'] for r in rows):.3f})")
            res += [r["tau_resolvable"] for r in rows]
            alls += [r["tau"] for r in rows]
        sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
        print(f"| {n} | " + " | ".join(cells) + f" | {statistics.fmean(res):.3f} ± {sd(res):.3f} | "
              f"{statistics.fmean(alls):.3f} ± {sd(alls):.3f} |")
    tied = {s: next(iter(table[n][s]))["tied"] for n in names for s in split_names if s in table[n]}
    print("test pairs closer than delta, per split: " + ", ".join(f"{s} {t:.0%}" for s, t in tied.items()))


if __name__ == "__main__":
    main()
