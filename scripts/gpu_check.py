"""GPU check: every stage on the CPU and on CUDA, results compared, timings printed (issue 17).

    python scripts/gpu_check.py                 # all stages, small settings (a few minutes on one GPU)
    python scripts/gpu_check.py --stages zoo,landscape --members 64 --width 128
    python scripts/gpu_check.py --stages zoo,evaluate --net cnn   # stride-2 CNNs on MNIST-1D (wsl.population.stacked_cnn)

Stages (each run twice, `cpu` then `cuda`, on the same inputs):
  zoo        (always: the other stages read its zoo) wsl-zoo's job (run_zoo_job): a population of MLPs on digits (--net cnn: CNNs on MNIST-1D), trainer.accelerator=cpu vs gpu;
             then on the GPU with TF32 matmuls (torch.set_float32_matmul_precision("high")) and with
             trainer.precision=bf16-mixed. Compared: every member's final weights (max |difference|)
             and its final test accuracy (max |difference|).
  landscape  annotate_zoo on copies of the CPU zoo: landscape.device=cpu vs cuda (hessian_eig,
             hessian_trace, barrier, cka). Compared: every stored value (max relative difference).
  encoder    wsl-train-encoder (deepsets, task test_acc) with trainer.accelerator=cpu vs gpu: test Kendall tau.
  generator  wsl-train-generator (flow) with trainer.accelerator=cpu vs gpu: the final loss in generator.json;
  sample     then the CPU-trained generator sampled with device=cpu vs cuda (same noise seed): max |difference|
             of the sampled weights.
  evaluate   wsl-evaluate's judge (wsl.evaluate.domains.judge_for) with device=cpu vs cuda: test accuracy and loss of
             every net of the CPU zoo, and of 8 random digits ResNet-8s with BatchNorm (statistics re-estimated on
             the train split on each device). Compared: max |accuracy difference| and max relative loss difference.

Before the stages, one line per device: a training step of the population's nets (--net, --width, --members) by
the batched-matmul path PopulationModule takes for MLPs and stride-2 1-D CNNs (wsl.population.stacked, stacked_cnn)
against the vmapped path, timed side by side (on the CPU the batched path was measured faster; if the vmapped one
is faster on the GPU, the batched paths should be taken on the CPU only).

Each line: stage, CPU seconds, CUDA seconds, the difference and the tolerance it is held to
("ok" / "DIFF"). Float32 on the two devices differs by summation order (cuBLAS vs MKL/OpenBLAS), so
training runs drift apart slowly; the tolerances are those of float32 over a few hundred steps. TF32
and bf16 are reported, not held to a tolerance: their effect is what this measures. Without a CUDA
GPU the script stops with one line, before any work.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("zoo", "landscape", "encoder", "generator", "sample", "evaluate")


def line(stage: str, t_cpu: float, t_gpu: float, what: str, diff: float, tol: float | None) -> None:
    verdict = "" if tol is None else ("ok" if diff <= tol else "DIFF")
    tol_s = "" if tol is None else f" (tolerance {tol:g})"
    print(f"{stage:<22} cpu {t_cpu:7.2f} s  cuda {t_gpu:7.2f} s  speed-up {t_cpu / max(t_gpu, 1e-9):5.1f}x  "
          f"{what} {diff:.3g}{tol_s} {verdict}", flush=True)


def zoo_job(path: Path, args, accelerator: str, extra=()):
    from hydra import compose, initialize_config_dir

    from wsl.apps.common import CONF_DIR
    from wsl.apps.zoo import typed_config
    from wsl.apps.zoo_job import run_zoo_job

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        # CNNs on MNIST-1D: the 1-D CNNs that PopulationModule computes by wsl.population.stacked_cnn
        dataset = "mnist1d" if args.net == "cnn" else "digits"
        cfg = compose("zoo", [f"zoo.path={path}", f"dataset={dataset}", f"net={args.net}", f"net.width={args.width}",
                              "net.depth=2", f"population.size={args.members}", f"train.epochs={args.epochs}",
                              "train.lr=[0.1,0.03]", "train.schedule=cosine", "logger=none", "progress_refresh_rate=0",
                              f"trainer.accelerator={accelerator}", *extra])
    t = time.perf_counter()
    run_zoo_job(typed_config(cfg))
    return time.perf_counter() - t


def final_weights_and_acc(path: Path):
    from wsl.zoo import Zoo

    zoo = Zoo(path)
    ids = sorted(zoo.filter())
    w, _ = zoo.weights(ids)
    acc = np.array([zoo.history(m)["test_acc"][-1] for m in ids])
    return w.double(), acc


def stage_zoo(tmp: Path, args) -> Path:
    t_cpu = zoo_job(tmp / "zoo_cpu", args, "cpu")
    t_gpu = zoo_job(tmp / "zoo_gpu", args, "gpu")
    (wc, ac), (wg, ag) = final_weights_and_acc(tmp / "zoo_cpu"), final_weights_and_acc(tmp / "zoo_gpu")
    line("zoo fp32", t_cpu, t_gpu, "max |weight diff|", float((wc - wg).abs().max()), 1e-3)
    line("zoo fp32", t_cpu, t_gpu, "max |test acc diff|", float(np.abs(ac - ag).max()), 0.02)
    torch.set_float32_matmul_precision("high")
    try:
        t_tf32 = zoo_job(tmp / "zoo_tf32", args, "gpu")
    finally:
        torch.set_float32_matmul_precision("highest")
    w, a = final_weights_and_acc(tmp / "zoo_tf32")
    line("zoo tf32 vs cpu fp32", t_cpu, t_tf32, "max |weight diff|", float((wc - w).abs().max()), None)
    line("zoo tf32 vs cpu fp32", t_cpu, t_tf32, "max |test acc diff|", float(np.abs(ac - a).max()), None)
    t_bf16 = zoo_job(tmp / "zoo_bf16", args, "gpu", ["+trainer.precision=bf16-mixed"])
    w, a = final_weights_and_acc(tmp / "zoo_bf16")
    line("zoo bf16 vs cpu fp32", t_cpu, t_bf16, "max |weight diff|", float((wc - w).abs().max()), None)
    line("zoo bf16 vs cpu fp32", t_cpu, t_bf16, "max |test acc diff|", float(np.abs(ac - a).max()), None)
    return tmp / "zoo_cpu"


def path_step_times(args, device: str, steps: int = 20) -> tuple[float, float]:
    """Seconds per training step (forward, cross-entropy, backward) of `args.members` nets of `args.net` (width
    args.width, depth 2, batch 128) on `device`: (the batched-matmul path PopulationModule
    takes, the vmapped path). On a CPU the first was measured faster; this tells whether it is on the GPU too."""
    import torch.nn.functional as F

    from wsl.nets import CNN, MLP
    from wsl.population import stacked, stacked_cnn
    from wsl.population.functional import population_forward, skeleton, stack_state_dicts

    # MNIST-1D-sized signals for CNNs (the batched path takes 1-D CNNs), digits-sized inputs for MLPs
    shape = (1, 40) if args.net == "cnn" else (1, 8, 8)
    net = (CNN if args.net == "cnn" else MLP)(shape, 10, width=args.width, depth=2)
    forward = stacked_cnn.cnn_forward if args.net == "cnn" else stacked.mlp_forward
    meta = skeleton(net)
    params = {k: v.to(device).requires_grad_() for k, v in stack_state_dicts([net.state_dict()] * args.members).items()}
    x = torch.randn(args.members, 128, *shape, device=device)
    y = torch.randint(0, 10, (args.members * 128,), device=device)
    out = []
    for fn in (lambda: forward(meta, params, x, False), lambda: population_forward(meta, params, x, shared_input=False)):
        for i in range(steps + 3):
            if i == 3:  # after warm-up
                _sync(device)
                t = time.perf_counter()
            F.cross_entropy(fn().reshape(-1, 10), y).backward()
        _sync(device)
        out.append((time.perf_counter() - t) / steps)
    return out[0], out[1]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def stage_paths(args) -> None:
    for dev in ("cpu", "cuda"):
        batched, vmapped = path_step_times(args, dev)
        print(f"training step of {args.members} {args.net}s of width {args.width} on {dev}: batched-matmul path "
              f"{batched * 1e3:.2f} ms, vmapped {vmapped * 1e3:.2f} ms ({vmapped / batched:.2f}x)", flush=True)


def stage_landscape(tmp: Path, zoo: Path) -> None:
    from wsl.landscape import annotate_zoo
    from wsl.landscape.schema import LandscapeConfig
    from wsl.zoo import Zoo

    metrics = ["hessian_eig", "hessian_trace", "barrier", "cka"]
    times, values = {}, {}
    for dev in ("cpu", "cuda"):
        root = tmp / f"land_{dev}"
        shutil.copytree(zoo, root)
        cfg = LandscapeConfig(metrics=metrics, num_samples=512, device=dev)
        t = time.perf_counter()
        annotate_zoo(root, cfg)
        times[dev] = time.perf_counter() - t
        z = Zoo(root)
        values[dev] = {g: {c: np.asarray(v, dtype=float) for c, v in z.annotation(g)["columns"].items()
                           if np.asarray(v).dtype.kind == "f"} for g in metrics}
    worst = 0.0
    for g in metrics:
        for c, v in values["cpu"][g].items():
            u = values["cuda"][g][c]
            ok = np.isfinite(v) & np.isfinite(u)
            if ok.any():
                rel = np.abs(v[ok] - u[ok]) / np.maximum(np.abs(v[ok]), 1e-3)
                worst = max(worst, float(rel.max()))
                print(f"  landscape {g}/{c}: max relative difference {rel.max():.3g}")
    line("landscape", times["cpu"], times["cuda"], "max relative diff", worst, 5e-2)


def cli(module: str, *overrides: str) -> float:
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONPATH=str(ROOT))
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", f"wsl.apps.{module}", *overrides], capture_output=True, text=True,
                       cwd=ROOT, env=env)
    if p.returncode:
        raise SystemExit(f"gpu_check: {module} {' '.join(overrides)} failed:\n{p.stderr[-3000:]}")
    return time.perf_counter() - t


def stage_encoder(tmp: Path, zoo: Path) -> None:
    import pandas as pd

    res, times = {}, {}
    for acc in ("cpu", "gpu"):
        run = tmp / f"enc_{acc}"
        times[acc] = cli("train_encoder", f"zoo.path={zoo}", "encoder=deepsets", "task=test_acc", "seeds=[0]",
                         "trainer.max_epochs=20", f"trainer.accelerator={acc}", "logger=none",
                         f"hydra.run.dir={run}")
        df = pd.read_csv(run / "results.csv")
        res[acc] = float(df[df["seed"] == "0"]["test/tau"].iloc[0])
    print(f"  encoder test tau: cpu {res['cpu']:.4f}  cuda {res['gpu']:.4f}")
    line("encoder", times["cpu"], times["gpu"], "|test tau diff|", abs(res["cpu"] - res["gpu"]), 0.05)


def stage_generator(tmp: Path, zoo: Path) -> Path:
    losses, times = {}, {}
    for acc in ("cpu", "gpu"):
        run = tmp / f"gen_{acc}"
        times[acc] = cli("train_generator", f"zoo.path={zoo}", "generator=flow", "trainer.max_steps=300",
                         f"trainer.accelerator={acc}", "logger=none", "progress_refresh_rate=0",
                         f"hydra.run.dir={run}")
        metrics = json.loads((run / "generator.json").read_text())["training"]["metrics"]
        losses[acc] = float(metrics.get("val_loss", metrics.get("train_loss", float("nan"))))
    print(f"  generator final loss (val_loss, else train_loss): cpu {losses['cpu']:.4g}  cuda {losses['gpu']:.4g}")
    rel = abs(losses["cpu"] - losses["gpu"]) / max(abs(losses["cpu"]), 1e-6)
    line("generator", times["cpu"], times["gpu"], "relative diff", rel, 0.2)
    return tmp / "gen_cpu"


def stage_sample(run_dir: Path) -> None:
    from wsl.generators.generator_run import load_run
    from wsl.generators.sample import sample_weights

    run = load_run(run_dir)
    out, times = {}, {}
    for dev in ("cpu", "cuda"):
        t = time.perf_counter()
        out[dev] = sample_weights(run, 256, seed=0, device=dev).double().cpu()
        times[dev] = time.perf_counter() - t
    scale = float(out["cpu"].abs().max())
    line("sample", times["cpu"], times["cuda"], "max |weight diff| / max |weight|",
         float((out["cpu"] - out["cuda"]).abs().max()) / max(scale, 1e-12), 1e-3)


def stage_evaluate(zoo_path: Path, devices=("cpu", "cuda")) -> None:
    from wsl.data import load_dataset
    from wsl.evaluate.accuracy import BatchNormInputs
    from wsl.evaluate.domains import judge_for
    from wsl.nets import build_net
    from wsl.zoo import Zoo

    zoo = Zoo(zoo_path)
    ids = sorted(zoo.filter())
    task = zoo.training_data(ids[0])
    sets = {f"{zoo.arch(ids[0])['name']} zoo": (zoo.arch(ids[0]), [zoo.state_dict(m, -1) for m in ids], None)}
    digits = load_dataset("digits")
    resnet = build_net({"name": "resnet", "in_shape": list(digits.input_shape), "num_classes": 10, "width": 8,
                        "depth": 1, "stages": 3, "norm": "batch", "activation": "relu", "init": "default"})
    nets = []
    for k in range(8):
        torch.manual_seed(k)
        for m in resnet.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        nets.append({n: v.detach().clone() for n, v in resnet.state_dict().items()})
    sets["resnet8 + BatchNorm"] = (resnet.arch, nets, BatchNormInputs.of_split(digits.x_train, 256))
    for name, (arch, sds, bn) in sets.items():
        data = task if bn is None else digits
        res, times = {}, {}
        for dev in devices:
            t = time.perf_counter()
            sc = judge_for(data, build_net(arch), bn, 256, device=dev).scores(sds, "test")
            times[dev] = time.perf_counter() - t
            res[dev] = sc
        a, b = (res[d] for d in devices)
        acc = float(np.abs(a.accuracy - b.accuracy).max())
        loss = float((np.abs(a.loss - b.loss) / np.abs(a.loss).clip(1e-6)).max())
        print(f"  evaluate {name}: {len(sds)} nets, max |acc diff| {acc:.3g}, max relative loss diff {loss:.3g}")
        line(f"evaluate ({name})", *(times[d] for d in devices), "max relative loss diff", loss, 1e-3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, from {', '.join(STAGES)}")
    ap.add_argument("--members", type=int, default=32)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--net", default="mlp", choices=("mlp", "cnn"), help="the zoo stage's net (width x depth 2)")
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise SystemExit(f"gpu_check: --stages: unknown stage(s) {bad}; valid: {', '.join(STAGES)}")
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: this machine has no CUDA GPU (torch.cuda.is_available() is False)")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_float32_matmul_precision("highest")
    print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; CPU threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        stage_paths(args)
        zoo = stage_zoo(tmp, args)  # every other stage reads this zoo
        if "landscape" in stages:
            stage_landscape(tmp, zoo)
        if "encoder" in stages:
            stage_encoder(tmp, zoo)
        if "generator" in stages or "sample" in stages:
            run = stage_generator(tmp, zoo)
            if "sample" in stages:
                stage_sample(run)
        if "evaluate" in stages:
            stage_evaluate(zoo)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
