"""Benchmark: wsl-merge's methods (issue 19) on a fine-tuned digits zoo and on a phase zoo.

Per zoo and method: the merged nets' test accuracy (mean ± std over groups, one merge per hyperparameter
cell, merge.by=cell) against the best single net of each group (the one with the best VALIDATION accuracy;
its test accuracy) and the ensemble of the group (mean softmax), the mean gain over the best net, how many
groups the merge beats it in, and wall time (the method alone, and the whole group: loading, scoring,
merging). Every number is on the digits test split; test data choose nothing.

- fine-tuned zoo: a base MLP trained on a quarter of the digits train split (--base-epochs), then
  `wsl-zoo init.from=<base>:<id>` full fine-tunes on the whole train split, learning rates --lrs inside
  one population (--members nets, the seeds of the data order differ): one group per learning rate.
  Methods: uniform, greedy, stock, ties (density 0.2 and 0.5), dare (drop 0.5 and 0.1), aligned (the base
  comes from the init_from column; scale 1).
- LoRA zoo: fine-tunes of the same base with `finetune=lora finetune.rank=--rank` (read merged, base + BA),
  learning rates --lora-lrs.
- phase zoo: MLPs trained from scratch, widths --widths (one job each) x learning rates --phase-lrs, 4
  seeds per cell (experiment=phase_mlp_digits' recipe, shorter). Methods: uniform, greedy, aligned (stock,
  ties and dare need a pretrained net the members share: these have none).

    OMP_NUM_THREADS=1 python scripts/bench_merge.py            # builds its zoos under --work (default zoos/bench_merge)
    OMP_NUM_THREADS=1 python scripts/bench_merge.py --quick    # smaller zoos, fewer epochs (about a minute or two)
    OMP_NUM_THREADS=1 python scripts/bench_merge.py --skip finetuned --plot docs/img/merge_phase   # + the phase plot
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from wsl.apps.common import CONF_DIR  # noqa: E402

COMMON = ["logger=none", "progress_refresh_rate=0", "trainer.accelerator=cpu", "train.batch_size=64"]


def _zoo(path: Path, overrides: list[str]) -> Path:
    from wsl.apps.zoo import typed_config
    from wsl.apps.zoo_job import run_zoo_job

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="zoo", overrides=[f"zoo.path={path}", f"zoo.name={path.name}", *COMMON, *overrides])
    return run_zoo_job(typed_config(cfg))


def _merge(zoo: Path, method: str, out: Path, extra: list[str] = ()) -> tuple[list, float]:
    from wsl.apps.merge import typed_config
    from wsl.merge.job import merge_zoo

    shutil.rmtree(out, ignore_errors=True)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="merge", overrides=[f"zoo.path={zoo}", f"method={method}", f"out={out}", "logger=none",
                                                          *extra])
    t = time.perf_counter()
    _, rows = merge_zoo(typed_config(cfg))
    return rows, time.perf_counter() - t


def build_finetuned(work: Path, a) -> Path:
    from wsl.zoo import Zoo

    base, ft = work / "base", work / "finetuned"
    if not (base / "index.h5").exists():
        _zoo(base, [f"net.width={a.width}", "population.size=1", f"train.epochs={a.base_epochs}",
                    f"dataset.train_fraction={a.base_fraction}", "train.lr=0.05"])
    if not (ft / "index.h5").exists():
        mid = Zoo(base).ids[0]
        _zoo(ft, [f"init.from={base}:{mid}", f"net.width={a.width}", f"population.size={a.members}",
                  f"train.epochs={a.ft_epochs}", f"train.lr=[{','.join(map(str, a.lrs))}]"])
    return ft


def build_lora(work: Path, a) -> Path:
    from wsl.zoo import Zoo

    base, lz = work / "base", work / "lora"
    if not (lz / "index.h5").exists():
        mid = Zoo(base).ids[0]
        _zoo(lz, [f"init.from={base}:{mid}", "finetune=lora", f"finetune.rank={a.rank}", f"net.width={a.width}",
                  f"population.size={a.members}", f"train.epochs={a.ft_epochs}",
                  f"train.lr=[{','.join(map(str, a.lora_lrs))}]"])
    return lz


def build_phase(work: Path, a) -> Path:
    ph = work / "phase"
    if not (ph / "index.h5").exists():
        for w in a.widths:
            _zoo(ph, [f"net.width={w}", f"population.size={4 * len(a.phase_lrs)}", f"train.epochs={a.phase_epochs}",
                      f"train.lr=[{','.join(map(str, a.phase_lrs))}]"])
    return ph


def _ms(v) -> str:
    v = np.asarray(v, dtype=float)
    return f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.4f}"


def bench(zoo: Path, methods: list[str], work: Path, name: str) -> list[dict]:
    from wsl.zoo import Zoo

    z = Zoo(zoo)
    div = sum(z.row(m).status == "diverged" for m in z.ids)
    print(f"\n== {name}: {zoo} ({len(z)} nets, {div} diverged, {len(z.cells())} cells; groups: cells with 2+ "
          "usable nets) ==")
    print(f"{'method':>16}  {'merged test acc':>17}  {'best single (val)':>17}  {'ensemble':>17}  {'gain vs best':>12}"
          f"  {'wins':>5}  {'method s':>8}  {'total s':>8}")
    out = []
    for label in methods:
        m, *extra = label.split()
        rows, total = _merge(zoo, m, work / f"{name}-{m}", extra)
        merged = [r["merged_test"] for r in rows]
        best = [r["best_test"] for r in rows]
        ens = [r["ensemble_test"] for r in rows]
        gain = [r["gain_vs_best"] for r in rows]
        msec = sum(r["merge_seconds"] for r in rows)
        wins = sum(g > 0 for g in gain)
        print(f"{label.replace('merge.', ''):>16}  {_ms(merged):>17}  {_ms(best):>17}  {_ms(ens):>17}  {np.mean(gain):+12.4f}  "
              f"{wins:>2}/{len(rows):<2}  {msec:8.2f}  {total:8.2f}", flush=True)
        out.append({"zoo": name, "method": label, "groups": len(rows), "merged": merged, "best": best, "ensemble": ens,
                    "gain_vs_best": gain, "method_seconds": msec, "total_seconds": total,
                    **({"greedy_kept": [r["n_kept"] for r in rows]} if m == "greedy" else {}),
                    **({"stock_ratio_mean": [r["ratio_mean"] for r in rows]} if m == "stock" else {})})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("zoos/bench_merge"))
    p.add_argument("--quick", action="store_true", help="smaller zoos and fewer epochs")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--base-epochs", type=int, default=5)
    p.add_argument("--base-fraction", type=float, default=0.1, help="of the train split the base is trained on")
    p.add_argument("--ft-epochs", type=int, default=10)
    p.add_argument("--members", type=int, default=32, help="fine-tunes (divided among --lrs)")
    p.add_argument("--lrs", type=float, nargs="+", default=[0.03, 0.1, 0.3, 0.6])
    p.add_argument("--rank", type=int, default=4, help="LoRA fine-tunes of the same base (0: none)")
    p.add_argument("--lora-lrs", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2])
    p.add_argument("--widths", type=int, nargs="+", default=[4, 8, 16, 32])
    p.add_argument("--phase-lrs", type=float, nargs="+", default=[0.02, 0.05, 0.2])
    p.add_argument("--phase-epochs", type=int, default=15)
    p.add_argument("--skip", choices=["finetuned", "phase"], default=None)
    p.add_argument("--plot", type=Path, default=None, help="also annotate the phase zoo (mode connectivity, CKA) and "
                   "draw the aligned merge's gain per cell next to its phase map into this (new) directory")
    a = p.parse_args()
    if a.quick:
        a.work = a.work.with_name(a.work.name + "_quick") if a.work == Path("zoos/bench_merge") else a.work
        a.base_epochs, a.ft_epochs, a.members, a.lrs, a.lora_lrs = 3, 3, 12, [0.1, 0.3, 0.6], [0.05, 0.1, 0.2]
        a.widths, a.phase_lrs, a.phase_epochs = [8, 16], [0.05, 0.2], 5
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    a.work.mkdir(parents=True, exist_ok=True)
    print(f"threads {torch.get_num_threads()}, load average at start {os.getloadavg()}")
    results = []
    t = time.perf_counter()
    if a.skip != "finetuned":
        ft = build_finetuned(a.work, a)
        print(f"fine-tuned zoo ready ({time.perf_counter() - t:.0f} s)")
        results += bench(ft, ["uniform", "greedy", "stock", "ties merge.density=0.2", "ties merge.density=0.5",
                              "dare merge.drop=0.5", "dare merge.drop=0.1", "aligned"], a.work, "finetuned")
    if a.skip != "finetuned" and a.rank:
        t = time.perf_counter()
        lz = build_lora(a.work, a)
        print(f"LoRA zoo ready ({time.perf_counter() - t:.0f} s)")
        results += bench(lz, ["uniform", "greedy", "stock", "ties merge.density=0.5", "dare merge.drop=0.1"], a.work,
                         "lora")
    if a.skip != "phase":
        t = time.perf_counter()
        ph = build_phase(a.work, a)
        print(f"phase zoo ready ({time.perf_counter() - t:.0f} s)")
        results += bench(ph, ["uniform", "greedy", "aligned"], a.work, "phase")
        if a.plot is not None:
            t = time.perf_counter()
            env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
            subprocess.run([sys.executable, "-m", "wsl.apps.landscape", f"zoo.path={ph}", "landscape=full",
                            "landscape.metrics=[mode_connectivity,cka]", "logger=none"], check=True, env=env,
                           capture_output=True)
            subprocess.run([sys.executable, "-m", "wsl.apps.plot", f"zoo.path={a.work / 'phase-aligned'}",
                            f"plot.out_dir={a.plot}", "logger=none"], check=True, env=env, capture_output=True)
            print(f"phase labels (mode connectivity, CKA) and plots in {a.plot} ({time.perf_counter() - t:.0f} s)")
    print(f"\nload average at end {os.getloadavg()}")
    (a.work / "bench_merge.json").write_text(json.dumps(results, indent=1))
    print(f"results: {a.work / 'bench_merge.json'}")


if __name__ == "__main__":
    main()
