"""The quickstart: the whole pipeline on embedded data (digits), each stage a real console script.

    python scripts/quickstart.py            # (what `make quickstart` runs)

Prints a summary at the end and the paths of the plots it wrote.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "zoos" / "quickstart"

ENC_RUN = ROOT / "runs" / "quickstart" / "encoder"
GEN_RUN = ROOT / "runs" / "quickstart" / "generator"
GEN_ZOO = ROOT / "zoos" / "quickstart-gen"

STAGES = [
    # 32 MLPs on digits: 8 learning rates x 4 seeds, every epoch checkpointed
    ("train a zoo", "zoo", [f"zoo.path={ZOO}", "population.size=32",
                            "train.lr=[0.3,0.2,0.1,0.05,0.02,0.01,0.005,0.002]",
                            "progress_refresh_rate=0"]),
    ("loss-landscape metrics", "landscape", [f"zoo.path={ZOO}", "landscape=basic"]),
    ("phase diagrams", "plot", [f"zoo.path={ZOO}"]),
    ("encoder: predict test accuracy from weights", "train_encoder",
     [f"zoo.path={ZOO}", "encoder=nfn", "task=test_acc", "seeds=[0]", "trainer.max_epochs=40",
      "split.fractions=[0.5,0.25,0.25]", f"hydra.run.dir={ENC_RUN}"]),
    ("generator: flow matching on aligned weights", "train_generator",
     [f"zoo.path={ZOO}", "generator=flow", "trainer.max_steps=800", "progress_refresh_rate=0",
      f"hydra.run.dir={GEN_RUN}"]),
    ("sample 200 nets into a zoo", "sample", [f"run={GEN_RUN}", "n=200", f"zoo.path={GEN_ZOO}"]),
    ("evaluate the samples", "evaluate", [f"zoo.path={GEN_ZOO}", f"reference={ZOO}", f"encoder_run={ENC_RUN}"]),
]


def run(title: str, module: str, args: list[str]) -> float:
    print(f"\n=== {title}: wsl-{module.replace('_', '-')} {' '.join(args)}", flush=True)
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", f"wsl.apps.{module}", *args], cwd=ROOT)
    if p.returncode != 0:
        sys.exit(f"quickstart: stage '{title}' failed (exit {p.returncode})")
    return time.perf_counter() - t


def summary() -> None:
    from wsl.zoo import Zoo

    z = Zoo(ZOO)
    t = z.table()
    print("\n=== summary")
    print(f"zoo {z.path}: {len(z)} models, {int((t.status == 'trained').sum())} trained, "
          f"{int((t.status == 'diverged').sum())} diverged")
    print(f"test accuracy: mean {t.test_acc.mean():.3f} ± {t.test_acc.std():.3f} "
          f"(min {t.test_acc.min():.3f}, max {t.test_acc.max():.3f})")
    if "phase/label" in t.columns:
        labels = t["phase/label"].astype(str).value_counts()
        print("phase labels: " + ", ".join(f"{k} {v}" for k, v in labels.items()))
    enc = ENC_RUN / "results.csv"
    if enc.exists():
        import pandas as pd

        r = pd.read_csv(enc)
        r = r[r.seed.astype(str) == "mean"].iloc[0]
        print(f"encoder {r.encoder}: Kendall tau {r['test/tau']:.3f}, R2 {r['test/r2']:.3f} on held-out cells "
              f"(predicting test accuracy from weights; {enc})")
    report = GEN_ZOO / "report" / "report.md"
    if report.exists():
        import json

        s = json.loads((GEN_ZOO / "report" / "summary.json").read_text())
        gen = next(x for x in s["sets"] if x["method"] == "generated")
        print(f"generated nets: accuracy {gen['acc_mean']:.3f} ± {gen['acc_std']:.3f} "
              f"({gen['acc_mean'] / t.test_acc.mean():.2f} of the zoo's mean), failure rate {gen['failure_rate']:.2f}, "
              f"memorized {gen['memorized_rate']:.2f}")
        for c in s["against_noise"]:
            if c.get("noise_accuracy") is not None:
                print(f"  vs noise baseline at equal {c['axis']} novelty ({c['novelty']:.2f}): "
                      f"{c['noise_accuracy']:.3f} -> generator {'better' if c['better'] else 'not better'}")
        sc = s["info"].get("screening")
        if sc:
            print(f"data-free screening: the encoder's predicted test accuracy of the {sc['n']} generated nets "
                  f"against their measured one: Kendall tau {sc['tau']:.3f}")
        print(f"generated-net report: {report}")
    plots = sorted(ZOO.rglob("*.png")) + sorted(GEN_ZOO.rglob("*.png"))
    for p in plots:
        print(f"plot: {p}")


def main() -> None:
    times = {}
    for title, module, args in STAGES:
        if module == "train_generator" and (GEN_RUN / "generator.safetensors").exists():
            # a rerun keeps the generator of the first run: wsl-sample adds only to a zoo of that
            # run's own samples (a new generator would have to write to a new zoo.path)
            print(f"\n=== {title}: reusing {GEN_RUN} (delete runs/quickstart and zoos/quickstart-gen to retrain)")
            continue
        times[title] = run(title, module, args)
    summary()
    print("stage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()))


if __name__ == "__main__":
    main()
