"""Benchmark: weight generators on the digits MLP zoo (issue: weight generators).

For each generator (flow matching, diffusion) trained with the project's default config on a
zoo of digits MLPs, prints:
  - training time (alignment + fit) and the final spread ratio (collapse monitor);
  - networks sampled per minute (sampler + decoding to weights; target >= 10,000 on 2 CPU cores),
    with torch's default threads and with one thread, and networks written per minute as a zoo;
  - networks evaluated per minute (test-split accuracy of every sample, vmapped forward);
  - mean ± std test accuracy of all samples (never the best) as a fraction of the training
    zoo's mean (target >= 0.95, no fine-tuning), also for fewer / more sampler steps;
  - where the samples sit against the noise baseline on the accuracy–novelty plane, from
    wsl.evaluate (weight novelty: nearest-neighbour L2 after alignment over the training-to-
    training median; the noise σ sweep interpolated at the same novelty).
Each generator is trained twice: with the default config ("default") and for longer ("long",
--long-steps): a generator trained towards convergence replays (memorizes) its training nets, the
default one is slightly less accurate but novel; both points go on the plane.

    python scripts/bench_generators.py                       # builds zoos/bench_generators_mlp_digits if absent
    python scripts/bench_generators.py --steps 800 --generators flow --n-eval 128 --long-steps 0

The zoo (256 seeds of the default digits MLP, 2,410 parameters) takes a few minutes to train once.

--net resnet (issue 14): a generator on a zoo of digits ResNet-8s with BatchNorm (net=resnet net.width=8
net.depth=1: 19,810 parameters; BatchNorm statistics are not generated). Each generator is trained,
sampled by wsl-sample's own code (every sampled net's statistics re-estimated on the TRAIN split) and
judged by wsl.evaluate (every set re-estimated on the train split, scored on test). Prints the zoo's
mean test accuracy (train-split statistics, and its own stored ones), the samples' mean accuracy, their
ratio (target >= 0.9), the memorized fraction and the novelty, and the samples' accuracy without
re-estimation (statistics 0 / 1) to show what the re-estimation does.

    python scripts/bench_generators.py --net resnet          # builds zoos/bench_generators_resnet8_digits
    python scripts/bench_generators.py --net resnet --members 64 --epochs 6 --generators flow,diffusion

--net resnet20 (issue 16): the same on a zoo of 64 digits ResNet-20s (net.width=16 net.depth=3: 272,186
parameters), built once and cached (default $WSL_CACHE/zoos/bench_generators_resnet20_digits, else
zoos/...; or --zoo). Each representation of --representations (default pca,tokens,latent) is trained with
generator=flow and judged as above, with the issue's targets: training (alignment + fit) <= 10 minutes on 2 CPU
cores, peak memory <= 4 GB (resident set size sampled every 50 ms during training, and the process's maxrss),
sampled accuracy >= 0.95 x the zoo's mean (train-split BatchNorm statistics for both), memorized <= 5%,
>= 1,000 sampled nets per minute (sampler + decoding to weights; wsl-sample's rate with BatchNorm
re-estimation and writing is printed too). Each target line says MET or NOT MET.

    python scripts/bench_generators.py --net resnet20 --representations pca --steps 2000
    python scripts/bench_generators.py --net resnet20 --quick    # 32 samples, 8 per baseline, fewer steps

--zoo-kind finetuned (with --net resnet20): the same on a shared-init zoo (default
$WSL_CACHE/zoos/bench_generators_resnet20_digits_finetuned): one base ResNet-20 trained once with the seed zoo's
recipe (cached as ..._base), then 64 full fine-tunes of it (wsl-zoo init.from=<base>:<id>; FT_LRS below: a
learning-rate grid x data orders, FT_EPOCHS epochs; the recipe is printed). Independently trained nets are mutually
orthogonal after alignment (a PCA sample is then a copy or a broken net); fine-tunes of one net share its basin, the
setting of p-diff and D2NWG. The zoo's training-to-training median distance (the memorization yardstick) and, for
pca, the leave-one-out span distance are printed for either kind. --eval-split val scores the samples on the val
split, for choosing generator settings without looking at test.

    python scripts/bench_generators.py --net resnet20 --zoo-kind finetuned --representations pca,latent \
        --rep-override pca:representation.k=63

--net pinn (issue 15): a generator on a zoo of physics-informed MLPs (tanh) for the convection equation at
one beta (--beta, default 1): experiment=phase_pinn_convection's recipe (width 32, depth 3, Adam, cosine,
50 epochs, learning rates 0.03/0.01/0.003/0.001 inside the population) with 64 members, or any zoo given by
--zoo (e.g. the phase experiment's own zoo: the generator reads the nets of --beta only, zoo.filter). The
samples are written by wsl-sample's code and judged by wsl.evaluate by their relative L2 error on the test
grid (lower is better; a net fails above 0.9, not beating u = 0 by a tenth), with the same baselines and
memorization audit. Prints the zoo's test_rel_l2 (stored by the population program, and as evaluated), the
samples' rel_l2 (mean ± std, median), failure rate, memorized fraction and novelty.

    python scripts/bench_generators.py --net pinn            # builds zoos/bench_generators_pinn_convection
    python scripts/bench_generators.py --net pinn --zoo zoos/phase_pinn_convection --beta 1 --generators flow
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

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402

from wsl.apps.common import CONF_DIR  # noqa: E402
from wsl.apps.config import stored  # noqa: E402
from wsl.apps.train_generator import typed_config  # noqa: E402
from wsl.generators.sample import sample_vectors, write_sample_zoo  # noqa: E402
from wsl.generators.train import train_generator  # noqa: E402
from wsl.nets import build_net  # noqa: E402
from wsl.population.functional import population_forward  # noqa: E402
from wsl.zoo import Zoo  # noqa: E402


def build_zoo(path: Path, members: int, epochs: int, extra: list[str] = ()) -> None:
    cmd = [sys.executable, "-m", "wsl.apps.zoo", f"zoo.path={path}", f"zoo.name={path.name}",
           f"population.size={members}", f"train.epochs={epochs}", "zoo.checkpoint_epochs=[]", "logger=none",
           "progress_refresh_rate=0", "trainer.accelerator=cpu", f"hydra.run.dir={path}-run", *extra]
    print(f"building the zoo: {' '.join(cmd[2:])}", flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env=dict(os.environ, WANDB_MODE="disabled"))


@torch.no_grad()
def accuracies(arch: dict, flat: torch.Tensor, layout, x, y, chunk: int = 256) -> torch.Tensor:
    """Test accuracy of every net in flat [M, N] (vmapped forward, chunks of nets)."""
    net = build_net(arch)
    out = []
    for i in range(0, len(flat), chunk):
        logits = population_forward(net, layout.unflatten(flat[i : i + chunk]), x)  # [P, n, C]
        out.append((logits.argmax(-1) == y).float().mean(1))
    return torch.cat(out)


def nanmean(v) -> float:
    v = np.asarray(v, dtype=float)
    return float(np.mean(v[np.isfinite(v)])) if np.isfinite(v).any() else float("nan")


def rate(n: int, seconds: float) -> float:
    return 60.0 * n / max(seconds, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", choices=("mlp", "resnet", "resnet20", "pinn"), default="mlp",
                    help="mlp: the digits MLP zoo; resnet: a digits ResNet-8 zoo with BatchNorm (issue 14); "
                         "pinn: PINNs of the convection equation (issue 15)")
    ap.add_argument("--beta", type=float, default=1.0, help="--net pinn: the convection coefficient of the nets")
    ap.add_argument("--zoo", default=None, help="zoo path (default: zoos/bench_generators_<net>_digits)")
    ap.add_argument("--members", type=int, default=None,
                    help="zoo size when the zoo must be built (mlp 256 | resnet 64 | pinn 64)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="zoo training epochs when the zoo must be built (15 | 6 | 50; --zoo-kind finetuned: "
                         "the fine-tunes' epochs, 3)")
    ap.add_argument("--width", type=int, default=8, help="--net resnet: net.width (8: 19,810 parameters)")
    ap.add_argument("--representations", default="pca,tokens,latent",
                    help="--net resnet20: representation= options to benchmark (flat | tokens | pca | latent)")
    ap.add_argument("--rep-override", action="append", default=[],
                    help="--net resnet20: NAME:OVERRIDE, an override for one representation only "
                         "(e.g. tokens:representation.chunk=4096)")
    ap.add_argument("--quick", action="store_true", help="fewer samples and baseline nets (a smoke run)")
    ap.add_argument("--zoo-override", action="append", default=[], help="extra wsl-zoo override when building")
    ap.add_argument("--generators", default="flow,diffusion")
    ap.add_argument("--steps", type=int, default=None, help="generator training steps (default: the config's)")
    ap.add_argument("--long-steps", type=int, default=2000, help="steps of the long-trained variant (0: skip it)")
    ap.add_argument("--override", action="append", default=[], help="extra train_generator override (repeatable)")
    ap.add_argument("--n-throughput", type=int, default=10_000, help="nets sampled for the throughput figure")
    ap.add_argument("--n-eval", type=int, default=None,
                    help="nets written as a zoo, scored and audited (256 | 64 | 128)")
    ap.add_argument("--baseline-n", type=int, default=None,
                    help="nets per baseline setting in the audit (64 | 16 | 32)")
    ap.add_argument("--zoo-kind", choices=("seeds", "finetuned"), default="seeds",
                    help="--net resnet20: seeds (64 independently trained nets) | finetuned (64 full fine-tunes of "
                         "one base net: init.from; recipe in FT_LRS, printed)")
    ap.add_argument("--eval-split", choices=("test", "val"), default="test",
                    help="--net resnet20: split the samples are scored on (val: for choosing generator settings; "
                         "never choose on test)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_generators"))
    args = ap.parse_args()
    args.n_eval = args.n_eval or (32 if args.quick else {"mlp": 256, "resnet": 64, "resnet20": 64, "pinn": 128}[args.net])
    args.baseline_n = args.baseline_n or (8 if args.quick else {"mlp": 64, "resnet": 16, "resnet20": 16,
                                                                 "pinn": 32}[args.net])
    if args.net == "resnet20":
        return bench_resnet20(args)
    if args.net == "resnet":
        return bench_resnet(args)
    if args.net == "pinn":
        return bench_pinn(args)

    zoo_path, out = Path(args.zoo or ROOT / "zoos" / "bench_generators_mlp_digits"), Path(args.out).resolve()
    if not (zoo_path / "index.h5").exists():
        build_zoo(zoo_path, args.members or 256, args.epochs or 15)
    ref = Zoo(zoo_path)
    ids = ref.filter(status="trained")
    task = ref.training_data(ids[0])
    x, y = task.split("test")
    w_ref, layout = ref.weights(ids)
    arch = ref.arch(ids[0])
    t = time.perf_counter()
    acc_ref = accuracies(arch, w_ref, layout, x, y)
    eval_rate_ref = rate(len(w_ref), time.perf_counter() - t)
    print(f"\nzoo {zoo_path}: {len(ids)} trained nets of {arch} ({layout.numel} parameters), dataset "
          f"{task.name}; test accuracy {acc_ref.mean():.4f} ± {acc_ref.std():.4f}")
    print(f"torch threads: {torch.get_num_threads()}, CPU cores visible: {os.cpu_count()}, "
          f"load average at start: {os.getloadavg()[0]:.1f}")

    from wsl.evaluate.baselines import AverageBaseline, GaussianFitBaseline, NoiseBaseline
    from wsl.evaluate.pipeline import evaluate_zoo
    from wsl.evaluate.schema import EvaluateConfig
    from wsl.zoo.schema import ZooPath
    from wsl.evaluate.report import compare_with_noise

    rows = []
    variants = [("default", args.steps)] + ([("long", args.long_steps)] if args.long_steps else [])
    for gen, (variant, steps) in [(g.strip(), v) for g in args.generators.split(",") if g.strip() for v in variants]:
        name = f"{gen}-{variant}"
        print(f"\n=== generator={gen} ({variant}) ===", flush=True)
        overrides = [f"zoo.path={zoo_path}", f"generator={gen}", "logger=none", "progress_refresh_rate=0",
                     "trainer.accelerator=cpu", *args.override]
        if steps:
            overrides.append(f"trainer.max_steps={steps}")
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            job = typed_config(compose(config_name="train_generator", overrides=overrides))
        run_dir = out / f"{name}-run"
        shutil.rmtree(run_dir, ignore_errors=True)
        load_train = os.getloadavg()[0]
        t = time.perf_counter()
        run = train_generator(job, run_dir, config=stored(job))
        t_train = time.perf_counter() - t
        load_train = max(load_train, os.getloadavg()[0])
        tr = run.training
        print(f"training: {tr['steps']} steps on {tr['n_train']} nets in {t_train:.1f} s (alignment "
              f"{tr['seconds_align']:.1f} s, fit {tr['seconds_fit']:.1f} s); final spread ratio {tr['spread_ratio']:.3f}; "
              f"denoiser {run.denoiser.name} with {sum(p.numel() for p in run.denoiser.parameters()):,} parameters; "
              f"load average {load_train:.1f}")

        # throughput of sampling (noise -> ODE/DDIM -> decoded weights)
        sample_weights_once = lambda n, **kw: run.representation.decode(sample_vectors(run, n, **kw))  # noqa: E731
        sample_weights_once(100, seed=99)  # warm-up
        n_tp = args.n_throughput if variant == "default" else args.n_eval
        threads = torch.get_num_threads()
        per_min = {}
        load_sample = os.getloadavg()[0]
        for th in sorted({threads, 1}, reverse=True):
            torch.set_num_threads(th)
            t = time.perf_counter()
            flat = sample_weights_once(n_tp, seed=1, batch_size=1000)
            per_min[th] = rate(n_tp, time.perf_counter() - t)
        torch.set_num_threads(threads)
        sampled_per_min = per_min[threads]
        print(f"sampling: {n_tp} nets, {run.method.steps} sampler steps ({run.method.name}): "
              + ", ".join(f"{v:,.0f} nets/minute with {k} thread(s)" for k, v in per_min.items())
              + f" (load average {os.getloadavg()[0]:.1f}; target >= 10,000)")

        # written as a zoo
        gen_zoo = out / f"{name}-samples"
        shutil.rmtree(gen_zoo, ignore_errors=True)
        sub = flat[: args.n_eval]
        t = time.perf_counter()
        write_sample_zoo(run, sub, gen_zoo, seed=1)
        t_write = time.perf_counter() - t
        print(f"writing: {len(sub)} nets as a zoo in {t_write:.2f} s = {rate(len(sub), t_write):,.0f} nets/minute")

        # accuracy of every sample, on the test split
        t = time.perf_counter()
        acc = accuracies(arch, sub, layout, x, y)
        t_eval = time.perf_counter() - t
        ratio = float(acc.mean() / acc_ref.mean())
        print(f"evaluation: {len(sub)} nets in {t_eval:.2f} s = {rate(len(sub), t_eval):,.0f} nets/minute "
              f"(training zoo: {eval_rate_ref:,.0f}/minute)")
        print(f"accuracy of all {len(sub)} samples: {acc.mean():.4f} ± {acc.std():.4f} "
              f"= {ratio:.3f} × the training zoo's {acc_ref.mean():.4f} (target >= 0.95)")
        by_steps = {}
        for k in sorted({max(1, run.method.steps // 4), max(1, run.method.steps // 2), run.method.steps * 2}):
            a = accuracies(arch, sample_weights_once(args.n_eval, seed=1, steps=k), layout, x, y)
            by_steps[k] = float(a.mean() / acc_ref.mean())
        print("accuracy ratio by sampler steps: " + ", ".join(f"{k}: {v:.3f}" for k, v in by_steps.items()))

        # the memorization audit and the baselines (wsl.evaluate)
        baselines = {"noise": NoiseBaseline(sigmas=[0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0], n=args.baseline_n),
                     "average": AverageBaseline(ks=[2, 3, 5], n=args.baseline_n),
                     "gaussian": GaussianFitBaseline(n=args.baseline_n)}
        t = time.perf_counter()
        job = EvaluateConfig(zoo=ZooPath(str(gen_zoo)), reference=str(zoo_path), out=str(out / f"{name}-report"))
        ev, report = evaluate_zoo(job, baselines)
        t_audit = time.perf_counter() - t
        print(f"wsl.evaluate: {t_audit:.1f} s for {len(sub)} samples + baselines; scored "
              f"{ev.info['nets_scored_per_minute']:,.0f} nets/minute, audited {ev.info['nets_audited_per_minute']:,.0f}/minute; "
              f"report {report}")
        print(f"{'set':28s} {'accuracy':>17s} {'weight novelty':>15s} {'memorized':>9s}")
        for s in ev.sets:
            sm = s.summary()
            nov = s.weight_novelty
            nov_m = float(np.nanmean(nov)) if np.isfinite(nov).any() else float("nan")
            print(f"{s.label:28s} {sm['acc_mean']:.4f} ± {sm['acc_std']:.4f} {nov_m:15.3f} {sm['memorized_rate']:9.2f}")
        g = ev.by_method("generated")[0]
        g_sum = g.summary()
        cmp = compare_with_noise(ev)
        for c in cmp:
            verdict = ("outside the noise sweep's novelty range" if c["noise_accuracy"] is None else
                       f"noise baseline {c['noise_accuracy']:.4f} at equal novelty -> generator "
                       f"{ {'better': 'BETTER', 'worse': 'WORSE', 'indistinguishable': 'NOT distinguishable'}[c['verdict']] } "
                       f"({c['difference']:+.4f} ± {c['stderr']:.4f}; better needs > 2 standard errors)")
            print(f"{c['axis']} novelty {c['novelty']:.3f}, accuracy {c['accuracy']:.4f}: {verdict}")
        rows.append({"generator": gen, "variant": variant, "train_s": round(t_train, 1), "steps": tr["steps"],
                     "load_average_train": round(load_train, 1), "load_average_sample": round(load_sample, 1),
                     "sampler_steps": run.method.steps,
                     "spread_ratio": round(tr["spread_ratio"], 3), "sampled_per_min": round(sampled_per_min), "sampled_per_min_1_thread": round(per_min[1]),
                     "written_per_min": round(rate(len(sub), t_write)), "evaluated_per_min": round(rate(len(sub), t_eval)),
                     "acc_mean": round(float(acc.mean()), 4), "acc_ratio": round(ratio, 4),
                     "acc_ratio_by_sampler_steps": {k: round(v, 4) for k, v in by_steps.items()},
                     "weight_novelty": round(float(np.nanmean(g.weight_novelty)), 4),
                     "memorized_rate": round(g_sum["memorized_rate"], 4), "failure_rate": round(g_sum["failure_rate"], 4),
                     "noise_comparison": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in c.items()} for c in cmp]})

    print("\nsummary:")
    print(json.dumps(rows, indent=1))
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=1))


def print_noise_verdicts(ev, note: str = "") -> list:
    """The samples against the noise baseline at equal weight and at equal behavioural novelty, one line each
    (`note`: added to the difference, e.g. what its sign means for a lower-is-better score)."""
    from wsl.evaluate.report import compare_with_noise

    cmp = compare_with_noise(ev)
    for c in cmp:
        verdict = ("outside the noise sweep's novelty range" if c["noise_score"] is None else
                   f"noise baseline {c['noise_score']:.4f} at equal novelty -> generator {c['verdict']} "
                   f"({c['difference']:+.4f} ± {c['stderr']:.4f}{note})")
        print(f"  {c['axis']} novelty {c['novelty']:.3f}: {verdict}")
    return cmp


def train_and_sample(args, zoo_path: Path, gen: str, prefix: Path, extra: list[str]):
    """Train generator `gen` on the zoo (the project's config + overrides), print its training line and sample
    args.n_eval nets with wsl-sample's own code into <prefix>-samples.
    Returns (run, run.training, training seconds, sample zoo path, sampling seconds)."""
    from wsl.apps.sample import typed_config as sample_config
    from wsl.generators.sample import sample_zoo

    overrides = [f"zoo.path={zoo_path}", *extra, f"generator={gen}", "logger=none", "progress_refresh_rate=0",
                 "trainer.accelerator=cpu", *args.override]
    if args.steps:
        overrides.append(f"trainer.max_steps={args.steps}")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        job = typed_config(compose(config_name="train_generator", overrides=overrides))
    run_dir, gen_zoo = Path(f"{prefix}-run"), Path(f"{prefix}-samples")
    for d in (run_dir, gen_zoo):
        shutil.rmtree(d, ignore_errors=True)
    t = time.perf_counter()
    run = train_generator(job, run_dir, config=stored(job))
    t_train, tr = time.perf_counter() - t, run.training
    print(f"training: {tr['steps']} steps on {tr['n_train']} nets (+{tr.get('n_val', 0)} validation) in "
          f"{t_train:.1f} s (alignment {tr['seconds_align']:.1f} s, fit {tr['seconds_fit']:.1f} s); spread ratio "
          f"{tr['spread_ratio']:.3f}; denoiser {run.denoiser.name} with "
          f"{sum(p.numel() for p in run.denoiser.parameters()):,} parameters over {run.representation.dim:,} "
          f"coordinates; align={job.representation.align}", flush=True)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        sjob = sample_config(compose(config_name="sample", overrides=[
            f"run={run_dir}", f"n={args.n_eval}", "seed=1", f"zoo.path={gen_zoo}", "logger=none"]))
    t = time.perf_counter()
    sample_zoo(sjob, config=stored(sjob))
    return run, tr, t_train, gen_zoo, time.perf_counter() - t


def bench_resnet(args) -> None:
    """Issue 14's benchmark: a generator on a ResNet-8 zoo with BatchNorm (see the module docstring)."""
    from wsl.evaluate.baselines import AverageBaseline, GaussianFitBaseline, NoiseBaseline
    from wsl.evaluate.pipeline import evaluate_zoo
    from wsl.evaluate.schema import EvaluateConfig
    from wsl.zoo.schema import ZooPath

    t_all = time.perf_counter()
    zoo_path = Path(args.zoo or ROOT / "zoos" / f"bench_generators_resnet{args.width}_digits")
    out = Path(args.out).resolve() / "resnet"
    if not (zoo_path / "index.h5").exists():
        t = time.perf_counter()
        build_zoo(zoo_path, args.members or 64, args.epochs or 6,
                  ["net=resnet", f"net.width={args.width}", "net.depth=1", "net.norm=batch", "dataset=digits",
                   "train.batch_size=64", *args.zoo_override])
        print(f"zoo built in {time.perf_counter() - t:.0f} s", flush=True)
    ref = Zoo(zoo_path)
    ids = ref.filter(status="trained")
    arch, layout = ref.arch(ids[0]), ref.layout(ids[0])
    task = ref.training_data(ids[0])
    x, y = task.split("test")
    net = build_net(arch)
    with torch.no_grad():  # the zoo with the statistics its checkpoints store (the population program's)
        own = []
        for m in ids:
            net.load_state_dict(ref.state_dict(m))
            own.append((net.eval()(x).argmax(-1) == y).float().mean().item())
    print(f"\nzoo {zoo_path}: {len(ids)} trained nets of {json.dumps(arch, sort_keys=True)} ({layout.numel:,} "
          f"parameters; BatchNorm statistics are not generated), dataset {task.name} (train {len(task.x_train)}, "
          f"test {len(y)}); test accuracy with the checkpoints' own statistics {np.mean(own):.4f} ± {np.std(own, ddof=1):.4f}")
    print(f"torch threads: {torch.get_num_threads()}, CPU cores visible: {os.cpu_count()}, "
          f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)

    rows = []
    for gen in [g.strip() for g in args.generators.split(",") if g.strip()]:
        name = f"resnet-{gen}"
        print(f"\n=== generator={gen} ===", flush=True)
        # wsl-sample's own path: every net's BatchNorm statistics re-estimated on the train split
        run, tr, t_train, gen_zoo, t_sample = train_and_sample(args, zoo_path, gen, out / name, [])
        g = Zoo(gen_zoo)
        hp = g.hparams(g.ids[0])
        bn = (f"BatchNorm statistics re-estimated on {hp['bn_split']} ({hp['bn_inputs']} inputs, {hp['bn_batches']} "
              f"batch(es) of {hp['bn_batch_size']})" if "bn_split" in hp else "no BatchNorm")
        print(f"sampling: {len(g)} nets drawn, completed and written in {t_sample:.1f} s "
              f"({rate(len(g), t_sample):,.0f} nets/minute); {bn}", flush=True)
        with torch.no_grad():  # for comparison: the same weights with fresh statistics (mean 0, var 1)
            fresh = []
            for m in g.ids:
                sd = g.state_dict(m)
                net.load_state_dict({k: v for k, v in sd.items() if k in set(layout.names)}, strict=False)
                for mod in net.modules():
                    if hasattr(mod, "reset_running_stats"):
                        mod.reset_running_stats()
                fresh.append((net.eval()(x).argmax(-1) == y).float().mean().item())

        baselines = {"noise": NoiseBaseline(sigmas=[0.01, 0.03, 0.1, 0.2, 0.3, 0.5], n=args.baseline_n),
                     "average": AverageBaseline(ks=[2, 3], n=args.baseline_n),
                     "gaussian": GaussianFitBaseline(n=args.baseline_n)}
        t = time.perf_counter()
        ev, report = evaluate_zoo(EvaluateConfig(zoo=ZooPath(str(gen_zoo)), reference=str(zoo_path),
                                                 out=str(out / f"{name}-report")), baselines)
        t_eval = time.perf_counter() - t
        print(f"wsl.evaluate: {t_eval:.1f} s (BatchNorm: every set re-estimated on {ev.info['batchnorm_text']}); "
              f"report {report}")
        print(f"{'set':28s} {'accuracy':>17s} {'failed':>7s} {'weight novelty':>15s} {'memorized':>9s}")
        for st in ev.sets:
            sm = st.summary()
            nov_m = nanmean(st.weight_novelty)
            print(f"{st.label:28s} {sm['acc_mean']:.4f} ± {sm['acc_std']:.4f} {sm['failure_rate']:7.2f} "
                  f"{nov_m:15.3f} {sm['memorized_rate']:9.2f}")
        gs, zs = ev.by_method("generated")[0], ev.by_method("training")[0]
        g_sum, z_sum = gs.summary(), zs.summary()
        ratio = g_sum["acc_mean"] / z_sum["acc_mean"]
        beh = nanmean(gs.behaviour_novelty)
        print(f"\nRESULT {gen}: zoo mean test accuracy {z_sum['acc_mean']:.4f} (train-split statistics; "
              f"{np.mean(own):.4f} with its stored ones); sampled {g_sum['acc_mean']:.4f} ± {g_sum['acc_std']:.4f} "
              f"= {ratio:.3f} x the zoo (target >= 0.9; {np.mean(fresh):.4f} without re-estimation); failure rate "
              f"{g_sum['failure_rate']:.3f}; memorized fraction {g_sum['memorized_rate']:.3f}; weight novelty "
              f"{nanmean(gs.weight_novelty):.3f}, behavioural novelty {beh:.3f}")
        print_noise_verdicts(ev)
        rows.append({"generator": gen, "zoo": str(zoo_path), "zoo_nets": len(ids), "parameters": layout.numel,
                     "train_s": round(t_train, 1), "steps": tr["steps"], "sample_s": round(t_sample, 1),
                     "evaluate_s": round(t_eval, 1), "spread_ratio": round(tr["spread_ratio"], 3),
                     "zoo_acc": round(z_sum["acc_mean"], 4), "zoo_acc_stored_stats": round(float(np.mean(own)), 4),
                     "sampled_acc": round(g_sum["acc_mean"], 4), "sampled_acc_std": round(g_sum["acc_std"], 4),
                     "ratio": round(ratio, 4), "sampled_acc_without_reestimation": round(float(np.mean(fresh)), 4),
                     "failure_rate": round(g_sum["failure_rate"], 4), "memorized_rate": round(g_sum["memorized_rate"], 4),
                     "weight_novelty": round(nanmean(gs.weight_novelty), 4), "behaviour_novelty": round(beh, 4),
                     "overrides": args.override, "batchnorm": ev.info["batchnorm_reestimation"]})
    print(f"\nsummary (whole benchmark {time.perf_counter() - t_all:.0f} s):")
    print(json.dumps(rows, indent=1))
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=1))


class PeakRSS:
    """Peak resident set size (bytes) of this process while the block runs, sampled every 50 ms."""

    def __enter__(self):
        import threading

        self.peak, self._stop = rss(), threading.Event()

        def watch():
            while not self._stop.wait(0.05):
                self.peak = max(self.peak, rss())

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def maxrss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


RESNET20 = ["net=resnet", "net.width=16", "net.depth=3", "net.norm=batch", "dataset=digits", "train.batch_size=64"]
# --zoo-kind finetuned: one base ResNet-20 trained with the seed zoo's recipe (6 epochs, sgd 0.05 cosine, batch 64),
# then `members` full fine-tunes of it (wsl-zoo init.from=<base>:<id>): FT_EPOCHS epochs each, a learning-rate grid
# (cosine from each lr: a warm restart of the converged base) x members/4 data orders (population.seed=1).
# Measured on a piece (8 fine-tunes, 3 epochs): lr 0.2 moved 8-11 from the base at accuracy 0.95-0.97 (leaving the
# basin), so the grid stops at 0.1. On the 64-net zoo: distance from the base 0.13-0.29 (lr 0.02) to 0.69-4.76
# (lr 0.1), against ~26 between aligned independent nets (base norm 34); built in 25 min at load average 3-10.
FT_LRS, FT_EPOCHS, BASE_EPOCHS = (0.02, 0.04, 0.07, 0.1), 3, 6


def finetuned_recipe(table) -> str:
    """The fine-tuned zoo's recipe as its index records it (its base read through `init_from`)."""
    import collections

    base, base_desc = str(table["init_from"].iloc[0]), "(base zoo not readable)"
    try:
        bt = Zoo(base.rsplit("@", 1)[0].rsplit(":", 1)[0]).table().iloc[0]
        base_desc = (f"{int(bt['epochs'])} epochs {bt['optimizer']} lr {float(bt['lr']):g} {bt['schedule']} batch "
                     f"{int(bt['batch_size'])}, test accuracy {float(bt['test_acc']):.4f}")
    except Exception:  # the base moved: the recipe says so, the benchmark goes on
        pass
    per_lr = collections.Counter(float(v) for v in table["lr"])
    grid = ", ".join(f"{lr:g} x {n}" for lr, n in sorted(per_lr.items()))
    return (f"base: 1 ResNet-20 (width 16, depth 3, BatchNorm), digits, {base_desc}; {len(table)} full fine-tunes: init.from={base}, {sorted(set(int(e) for e in table['epochs']))} epochs, "
            f"{table['optimizer'].iloc[0]} {table['schedule'].iloc[0]} from lr (x data orders) {grid}, batch "
            f"{int(table['batch_size'].iloc[0])}, train_fraction {sorted(set(float(f) for f in table['train_fraction']))}")


def build_finetuned_zoo(path: Path, members: int, epochs: int, extra: list[str] = ()) -> None:
    """The shared-init zoo: a base net trained once (cached beside the zoo as <zoo>_base), then `members` full
    fine-tunes of it in one population (see FT_LRS)."""
    if members % len(FT_LRS):
        sys.exit(f"--members={members} must be a multiple of the {len(FT_LRS)} fine-tuning learning rates")
    base = path.with_name(path.name.removesuffix("_finetuned") + "_base")
    if not (base / "index.h5").exists():
        t = time.perf_counter()
        build_zoo(base, 1, BASE_EPOCHS, [*RESNET20, *extra])
        print(f"base net trained in {time.perf_counter() - t:.0f} s", flush=True)
    base_id = Zoo(base).filter(status="trained")[0]
    build_zoo(path, members, epochs, [*RESNET20, f"init.from={base}:{base_id}",
                                         f"train.lr=[{','.join(str(v) for v in FT_LRS)}]", "population.seed=1",
                                         *extra])


def bench_resnet20(args) -> None:
    """Issue 16's benchmark: representations of a ResNet-20 zoo (see the module docstring)."""
    from wsl.evaluate.baselines import AverageBaseline, GaussianFitBaseline, NoiseBaseline
    from wsl.evaluate.pipeline import evaluate_zoo
    from wsl.evaluate.schema import EvaluateConfig
    from wsl.generators.sample import sample_weights
    from wsl.zoo.schema import ZooPath

    t_all = time.perf_counter()
    cache = Path(os.environ["WSL_CACHE"]) / "zoos" if os.environ.get("WSL_CACHE") else ROOT / "zoos"
    ft = args.zoo_kind == "finetuned"
    zoo_path = Path(args.zoo or cache / ("bench_generators_resnet20_digits" + ("_finetuned" if ft else "")))
    out = Path(args.out).resolve() / ("resnet20-finetuned" if ft else "resnet20")
    if not (zoo_path / "index.h5").exists():
        t = time.perf_counter()
        if ft:
            build_finetuned_zoo(zoo_path, args.members or 64, args.epochs or FT_EPOCHS, args.zoo_override)
        else:
            build_zoo(zoo_path, args.members or 64, args.epochs or 6, [*RESNET20, *args.zoo_override])
        print(f"zoo built in {time.perf_counter() - t:.0f} s", flush=True)
    ref = Zoo(zoo_path)
    ids = ref.filter(status="trained")
    arch, layout = ref.arch(ids[0]), ref.layout(ids[0])
    task = ref.training_data(ids[0])
    table = ref.table().loc[ids]
    print(f"\nzoo {zoo_path}: {len(ids)} trained nets of {json.dumps(arch, sort_keys=True)} ({layout.numel:,} "
          f"parameters; BatchNorm statistics are not generated), dataset {task.name}; stored test accuracy "
          f"{table['test_acc'].mean():.4f} ± {table['test_acc'].std():.4f}")
    if ft:
        print(f"zoo kind: finetuned (shared init). Recipe: {finetuned_recipe(table)}")
    else:
        print("zoo kind: seeds (independently trained nets, one recipe, different init and data-order seeds)")
    if args.eval_split != "test":
        print(f"scoring on the {args.eval_split} split (for choosing settings; the test split is not looked at)")
    print(f"torch threads: {torch.get_num_threads()}, CPU cores visible: {os.cpu_count()}, "
          f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    per_rep: dict = {}
    for item in args.rep_override:
        name, _, ov = item.partition(":")
        per_rep.setdefault(name, []).append(ov)

    rows = []
    for rep in [r.strip() for r in args.representations.split(",") if r.strip()]:
        name = f"resnet20-{rep}"
        print(f"\n=== representation={rep} (generator=flow) ===", flush=True)
        load0 = os.getloadavg()[0]
        with PeakRSS() as peak:
            run, tr, t_train, gen_zoo, t_sample = train_and_sample(
                args, zoo_path, "flow", out / name, [f"representation={rep}", *per_rep.get(rep, [])])
        load_train = max(load0, os.getloadavg()[0])
        n_tp = 1000 if not args.quick else 200
        sample_weights(run, 16, seed=99)  # warm-up
        t = time.perf_counter()
        flat = sample_weights(run, n_tp, seed=1, batch_size=250)
        t_tp = time.perf_counter() - t
        per_min = rate(n_tp, t_tp)
        extra, loo = "", None
        if rep == "pca":
            loo = run.representation.stage.info["loo_span_distance"]
            st = run.representation.stage
            dist = st.span_distance(run.representation.normalize(flat[:64]))
            extra = (f"; PCA k={st.dim}: explains {st.info['explained_variance']:.4f} of the aligned zoo's variance; samples "
                     f"sit {float(dist.max()):.2e} from the training span (normalized units; 0 by construction) while a "
                     f"zoo net sits {st.info['loo_span_distance']:.3f} of its distance from the others' mean outside "
                     f"their span (leave-one-out)")
        print(f"sampling: {n_tp} nets (sampler + decoding) in {t_tp:.1f} s = {per_min:,.0f} nets/minute; wsl-sample "
              f"(+ BatchNorm re-estimation on train, writing) {args.n_eval} nets in {t_sample:.1f} s = "
              f"{rate(args.n_eval, t_sample):,.0f} nets/minute{extra}", flush=True)

        baselines = {"noise": NoiseBaseline(sigmas=[0.01, 0.03, 0.1, 0.2, 0.3, 0.5], n=args.baseline_n),
                     "average": AverageBaseline(ks=[2, 3], n=args.baseline_n),
                     "gaussian": GaussianFitBaseline(n=args.baseline_n)}
        t = time.perf_counter()
        ev, report = evaluate_zoo(EvaluateConfig(zoo=ZooPath(str(gen_zoo)), reference=str(zoo_path),
                                                 out=str(out / f"{name}-report"), split=args.eval_split), baselines)
        t_eval = time.perf_counter() - t
        yd = ev.yardstick
        print(f"wsl.evaluate: {t_eval:.1f} s (BatchNorm: every set re-estimated on {ev.info['batchnorm_text']}; "
              f"scored on {args.eval_split}); report {report}")
        print(f"zoo yardstick: median training-to-training nearest-neighbour L2 after alignment {yd['l2_median']:.4g} "
              f"(cosine distance {yd['cosine_median']:.4g}; prediction agreement {yd['agreement_mean']:.4f}, "
              f"wrong-set IoU {yd['wrong_iou_mean']:.3f}); memorized: novelty < {ev.info['memorized_below']:g}"
              + ("" if loo is None else f"; leave-one-out span distance {loo:.3f}"))
        print(f"{'set':28s} {'accuracy':>17s} {'failed':>7s} {'weight nov.':>11s} {'behav. nov.':>11s} {'memorized':>9s}")
        for st_ in ev.sets:
            sm = st_.summary()
            print(f"{st_.label:28s} {sm['acc_mean']:.4f} ± {sm['acc_std']:.4f} {sm['failure_rate']:7.2f} "
                  f"{nanmean(st_.weight_novelty):11.3f} {nanmean(st_.behaviour_novelty):11.3f} {sm['memorized_rate']:9.2f}")
        gs, zs = ev.by_method("generated")[0], ev.by_method("training")[0]
        g_sum, z_sum = gs.summary(), zs.summary()
        ratio = g_sum["acc_mean"] / z_sum["acc_mean"]
        targets = [("training <= 600 s", t_train <= 600, f"{t_train:.0f} s"),
                   ("peak memory <= 4 GB", max(peak.peak, 0) <= 4e9, f"{peak.peak / 1e9:.2f} GB during training "
                    f"(process maxrss {maxrss() / 1e9:.2f} GB)"),
                   ("accuracy >= 0.95 x zoo", ratio >= 0.95, f"{ratio:.3f} x ({g_sum['acc_mean']:.4f} vs "
                    f"{z_sum['acc_mean']:.4f})"),
                   ("memorized <= 5%", g_sum["memorized_rate"] <= 0.05, f"{g_sum['memorized_rate']:.3f}"),
                   (">= 1000 nets/minute", per_min >= 1000, f"{per_min:,.0f}/minute")]
        print(f"\nRESULT representation={rep} (load average {load_train:.1f} while training, {os.getloadavg()[0]:.1f} now):")
        for what, ok, val in targets:
            print(f"  {what:26s} {'MET' if ok else 'NOT MET':8s} {val}")
        cmp = print_noise_verdicts(ev)
        rows.append({"representation": rep, "zoo": str(zoo_path), "zoo_kind": args.zoo_kind,
                     "zoo_recipe": finetuned_recipe(table) if ft else "seeds", "eval_split": args.eval_split,
                     "yardstick": {k: round(v, 5) for k, v in yd.items()},
                     "loo_span_distance": None if loo is None else round(loo, 4),
                     "zoo_nets": len(ids), "parameters": layout.numel,
                     "train_s": round(t_train, 1), "steps": tr["steps"], "peak_rss_gb": round(peak.peak / 1e9, 3),
                     "maxrss_gb": round(maxrss() / 1e9, 3), "load_average_train": round(load_train, 1),
                     "denoiser_params": sum(p.numel() for p in run.denoiser.parameters()),
                     "sampled_per_min": round(per_min), "wsl_sample_per_min": round(rate(args.n_eval, t_sample)),
                     "zoo_acc": round(z_sum["acc_mean"], 4), "sampled_acc": round(g_sum["acc_mean"], 4),
                     "ratio": round(ratio, 4), "failure_rate": round(g_sum["failure_rate"], 4),
                     "memorized_rate": round(g_sum["memorized_rate"], 4),
                     "weight_novelty": round(nanmean(gs.weight_novelty), 4),
                     "behaviour_novelty": round(nanmean(gs.behaviour_novelty), 4),
                     "targets": {w: bool(ok) for w, ok, _ in targets},
                     "stage": tr.get(rep), "overrides": args.override + per_rep.get(rep, []),
                     "noise_comparison": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in c.items()}
                                          for c in cmp]})
    print(f"\nsummary (whole benchmark {time.perf_counter() - t_all:.0f} s):")
    print(json.dumps(rows, indent=1))
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=1))


def bench_pinn(args) -> None:
    """Issue 15's benchmark: a generator on a zoo of PINNs at one beta (see the module docstring)."""
    from wsl.evaluate.baselines import AverageBaseline, GaussianFitBaseline, NoiseBaseline
    from wsl.evaluate.pipeline import evaluate_zoo
    from wsl.evaluate.schema import EvaluateConfig
    from wsl.zoo.schema import ZooPath

    t_all = time.perf_counter()
    zoo_path = Path(args.zoo or ROOT / "zoos" / "bench_generators_pinn_convection")
    out = Path(args.out).resolve() / "pinn"
    if not (zoo_path / "index.h5").exists():
        t = time.perf_counter()
        build_zoo(zoo_path, args.members or 64, args.epochs or 50,
                  ["experiment=phase_pinn_convection", f"dataset.beta={args.beta:g}", *args.zoo_override])
        print(f"zoo built in {time.perf_counter() - t:.0f} s", flush=True)
    ref = Zoo(zoo_path)
    ids = ref.filter(status="trained", beta=args.beta)
    table = ref.table().loc[ids]
    arch, layout = ref.arch(ids[0]), ref.layout(ids[0])
    task = ref.training_data(ids[0])
    stored_rel = table["test_rel_l2"].to_numpy(float)
    print(f"\nzoo {zoo_path}: {len(ids)} trained nets at beta={args.beta:g} of {json.dumps(arch, sort_keys=True)} "
          f"({layout.numel:,} parameters); test grid {task.info['test_grid']} ({len(task.split('test')[0])} points); "
          f"stored test_rel_l2 {stored_rel.mean():.4f} ± {stored_rel.std(ddof=1):.4f} "
          f"(median {np.median(stored_rel):.4f})")
    for lr, grp in table.groupby("lr"):
        v = grp["test_rel_l2"].to_numpy(float)
        print(f"  lr={lr:g}: {len(v)} nets, test_rel_l2 {v.mean():.4f} ± {v.std(ddof=1):.4f} "
              f"(median {np.median(v):.4f}, above 0.9: {(v > 0.9).mean():.2f})")
    print(f"torch threads: {torch.get_num_threads()}, CPU cores visible: {os.cpu_count()}, "
          f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)

    rows = []
    for gen in [g.strip() for g in args.generators.split(",") if g.strip()]:
        name = f"pinn-{gen}"
        print(f"\n=== generator={gen} ===", flush=True)
        run, tr, t_train, gen_zoo, t_sample = train_and_sample(args, zoo_path, gen, out / name,
                                                               [f"+zoo.filter.beta={args.beta:g}"])
        print(f"sampling: {args.n_eval} nets drawn and written in {t_sample:.1f} s "
              f"({rate(args.n_eval, t_sample):,.0f} nets/minute)", flush=True)

        baselines = {"noise": NoiseBaseline(sigmas=[0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 1.0], n=args.baseline_n),
                     "average": AverageBaseline(ks=[2, 3, 5], n=args.baseline_n),
                     "gaussian": GaussianFitBaseline(n=args.baseline_n)}
        t = time.perf_counter()
        ev, report = evaluate_zoo(EvaluateConfig(zoo=ZooPath(str(gen_zoo)), reference=str(zoo_path),
                                                 out=str(out / f"{name}-report")), baselines)
        t_eval = time.perf_counter() - t
        print(f"wsl.evaluate: {t_eval:.1f} s; a net fails when {ev.info['failure_text']}; report {report}")
        # PINNs have no behavioural novelty (one target function); the output agreement describes the samples
        print(f"{'set':28s} {'rel_l2 (lower is better)':>24s} {'median':>7s} {'failed':>7s} {'weight nov.':>11s} "
              f"{'out. agree.':>11s} {'memorized':>9s}")
        for st in ev.sets:
            sm = st.summary()
            print(f"{st.label:28s} {sm['rel_l2_mean']:11.4f} ± {sm['rel_l2_std']:.4f} "
                  f"{np.nanmedian(st.scores.score):7.4f} {sm['failure_rate']:7.2f} {nanmean(st.weight_novelty):11.3f} "
                  f"{sm['agreement_mean']:11.3f} {sm['memorized_rate']:9.2f}")
        e = ev.ensemble
        print(f"{'ensemble (mean solution)':28s} {e['rel_l2']:11.4f}")
        gs, zs = ev.by_method("generated")[0], ev.by_method("training")[0]
        g_sum, z_sum = gs.summary(), zs.summary()
        print(f"\nRESULT {gen}: zoo test_rel_l2 {z_sum['rel_l2_mean']:.4f} ± {z_sum['rel_l2_std']:.4f} (median "
              f"{np.median(zs.scores.score):.4f}; the index stores {np.mean(stored_rel):.4f}); sampled "
              f"{g_sum['rel_l2_mean']:.4f} ± {g_sum['rel_l2_std']:.4f} (median {np.nanmedian(gs.scores.score):.4f}); "
              f"failure rate {g_sum['failure_rate']:.3f} (zoo {z_sum['failure_rate']:.3f}); memorized fraction "
              f"{g_sum['memorized_rate']:.3f} (zoo's own, leave-one-out: {z_sum['memorized_rate']:.3f}); weight "
              f"novelty {nanmean(gs.weight_novelty):.3f}; output agreement with the nearest training net "
              f"{g_sum['agreement_mean']:.3f} (zoo's own: {z_sum['agreement_mean']:.3f})")
        cmp = print_noise_verdicts(ev, note=", > 0: lower error")
        rows.append({"generator": gen, "zoo": str(zoo_path), "beta": args.beta, "zoo_nets": len(ids),
                     "parameters": layout.numel, "train_s": round(t_train, 1), "steps": tr["steps"],
                     "sample_s": round(t_sample, 1), "evaluate_s": round(t_eval, 1),
                     "spread_ratio": round(tr["spread_ratio"], 3),
                     "zoo_rel_l2": round(z_sum["rel_l2_mean"], 4), "zoo_rel_l2_median": round(float(np.median(
                         zs.scores.score)), 4), "zoo_failure_rate": round(z_sum["failure_rate"], 4),
                     "sampled_rel_l2": round(g_sum["rel_l2_mean"], 4),
                     "sampled_rel_l2_std": round(g_sum["rel_l2_std"], 4),
                     "sampled_rel_l2_median": round(float(np.nanmedian(gs.scores.score)), 4),
                     "failure_rate": round(g_sum["failure_rate"], 4),
                     "memorized_rate": round(g_sum["memorized_rate"], 4),
                     "zoo_memorized_rate": round(z_sum["memorized_rate"], 4),
                     "weight_novelty": round(nanmean(gs.weight_novelty), 4),
                     "output_agreement": round(g_sum["agreement_mean"], 4), "overrides": args.override,
                     "noise_comparison": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in c.items()}
                                          for c in cmp]})
    print(f"\nsummary (whole benchmark {time.perf_counter() - t_all:.0f} s):")
    print(json.dumps(rows, indent=1))
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
