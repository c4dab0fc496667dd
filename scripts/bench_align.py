"""Benchmark of wsl-align on a ResNet zoo (issue 14: alignment with BatchNorm).

Trains (or reuses) a zoo of 32 ResNet-8 nets on sklearn digits with the real `wsl-zoo` console
script (one hyperparameter cell: every net a seed replica of the first), then runs the real
`wsl-align` console script twice on it: with the BatchNorm statistics reset on train data at every
point of the straight line (barrier.bn_reset=true, the default) and without (the interpolated
stored statistics). It prints the mean linear barrier (loss and accuracy) of the 31 replicas to
their reference before and after alignment, for both, and checks the target: the loss barrier
with the reset at least halved by alignment.

    python scripts/bench_align.py                       # trains zoos/bench-align-resnet (minutes)
    python scripts/bench_align.py --zoo zoos/x          # reuse a zoo (any zoo wsl-align takes)
    python scripts/bench_align.py --width 8 --epochs 10 --restarts 3

The barrier is measured on the first `--samples` train examples; the reset uses the first
`--bn-samples` train examples in batches of `--bn-batch-size` (recorded by wsl-align in the
alignment record's attributes, printed below the table).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str]) -> float:
    """Run a console script as a user does (its progress goes to the terminal); returns its wall seconds."""
    env = dict(os.environ, WANDB_MODE="disabled")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    print("$ " + " ".join(cmd), flush=True)
    started = time.perf_counter()
    p = subprocess.run(cmd, env=env)
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed with exit status {p.returncode}")
    return time.perf_counter() - started


def _script(name: str) -> str:
    """The console script next to this Python (the venv's), else the one on PATH."""
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else name


def train_zoo(path: Path, args) -> float:
    return _run([_script("wsl-zoo"), "net=resnet", "dataset=digits", f"net.width={args.width}", "net.depth=1",
                 f"net.norm={args.norm}", f"population.size={args.size}", f"population.seed={args.seed}",
                 f"train.epochs={args.epochs}", f"train.lr={args.lr}", f"train.optimizer={args.optimizer}",
                 f"train.batch_size={args.batch_size}", f"zoo.path={path}", f"zoo.checkpoint_epochs=[0,{args.epochs}]",
                 "logger=none", "trainer.accelerator=cpu", f"hydra.run.dir={path}.run"])


def align(src: Path, out: Path, bn_reset: bool, args) -> tuple[float, dict, dict]:
    from wsl.zoo import Zoo

    seconds = _run([_script("wsl-align"), f"zoo.path={src}", f"out={out}", f"barrier.bn_reset={str(bn_reset).lower()}",
                    f"barrier.samples={args.samples}", f"barrier.points={args.points}",
                    f"barrier.bn_samples={args.bn_samples}", f"barrier.bn_batch_size={args.bn_batch_size}",
                    f"matching.restarts={args.restarts}", "logger=none", f"hydra.run.dir={out}.run"])
    ann = Zoo(out).annotation("alignment")
    cols = {k: np.asarray(v) for k, v in ann["columns"].items() if k != "reference"}
    aligned = cols["is_reference"] == 0
    aligned &= np.isfinite(cols["barrier_before"])
    return seconds, {k: v[aligned] for k, v in cols.items()}, ann["attrs"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=None, help="reuse this zoo (trained if it does not exist)")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--norm", default="batch", choices=("batch", "none"))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--optimizer", default="sgd")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--restarts", type=int, default=1, help="weight-matching restarts")
    ap.add_argument("--samples", type=int, default=2000, help="train examples of the barrier")
    ap.add_argument("--points", type=int, default=11)
    ap.add_argument("--bn-samples", type=int, default=2000)
    ap.add_argument("--bn-batch-size", type=int, default=500)
    ap.add_argument("--keep", action="store_true", help="keep the aligned zoos (printed paths)")
    args = ap.parse_args()

    zoo = args.zoo or ROOT / "zoos" / f"bench-align-resnet-w{args.width}-e{args.epochs}-{args.norm}"
    train_s = None
    if not (zoo / "index.h5").exists():
        train_s = train_zoo(zoo, args)
    work = Path(tempfile.mkdtemp(prefix="bench-align-"))
    try:
        runs = {True: align(zoo, work / "aligned-reset", True, args)}
        if runs[True][2]["bn_reset"] != -1:  # nets with BatchNorm: the same without the reset
            runs[False] = align(zoo, work / "aligned-stale", False, args)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    from wsl.zoo import Zoo

    src = Zoo(zoo)
    arch = src.arch(src.ids[0])
    acc = src.table()["test_acc"].to_numpy(dtype=float)
    n = len(next(iter(runs.values()))[1]["barrier_before"])
    print(f"\nzoo {zoo}: {len(src.ids)} nets, {arch['name']} width {arch['width']} depth {arch['depth']} "
          f"norm {arch['norm']}, {sum(p.numel() for p in src.skeleton(src.ids[0]).parameters())} parameters, "
          f"test accuracy {np.nanmean(acc):.3f} +- {np.nanstd(acc):.3f}"
          + (f", trained in {train_s:.0f} s" if train_s is not None else ""))
    print(f"mean linear barrier of {n} replicas to their reference ({args.points} points, first {args.samples} "
          f"train examples; matching restarts {args.restarts})\n")
    head = f"{'BatchNorm statistics':<26} {'loss before':>11} {'loss after':>10} {'after/before':>12} " \
           f"{'acc before':>10} {'acc after':>9} {'after/before':>12} {'align s':>8}"
    print(head)
    print("-" * len(head))
    for flag, (seconds, c, attrs) in runs.items():
        label = "reset on train data" if flag else "stored, interpolated"
        if attrs["bn_reset"] == -1:
            label = "(no BatchNorm)"
        lb, la = c["barrier_before"].mean(), c["barrier_after"].mean()
        ab, aa = c["acc_barrier_before"].mean(), c["acc_barrier_after"].mean()
        print(f"{label:<26} {lb:>11.4f} {la:>10.4f} {la / lb:>12.3f} {ab:>10.4f} {aa:>9.4f} "
              f"{aa / ab if ab else float('nan'):>12.3f} {seconds:>8.1f}")
    seconds, c, attrs = runs[True]
    if attrs["bn_reset"] == 1:
        print(f"\nreset: {attrs['bn_reset_samples']} train examples in {attrs['bn_reset_batches']} batches of "
              f"{attrs['bn_reset_batch_size']} at every point ({attrs['bn_reset_note']})")
    ratio = c["barrier_after"].mean() / c["barrier_before"].mean()
    verdict = "met" if ratio <= 0.5 else f"MISSED by {ratio / 0.5:.2f}x"
    print(f"target (loss barrier with the reset at least halved by alignment): after/before = {ratio:.3f}: {verdict}")
    print(f"replicas whose barrier alignment halved: {(c['barrier_after'] <= 0.5 * c['barrier_before']).mean():.2f}; "
          f"median after/before {np.median(c['barrier_after'] / c['barrier_before']):.3f}")


if __name__ == "__main__":
    main()
