"""Benchmark: one population program vs one Lightning Trainer per model (issue: zoo generation).

Trains the same zoo (64 MLPs on MNIST-1D, same steps, checkpoints written every epoch) two ways
in one run and prints models per minute for both, their ratio, and the population run's
achieved GFLOP/s as a fraction of this machine's measured float32 matmul peak. It also prints the
solo side's achieved GFLOP/s and the ratio bound it implies (peak / solo GFLOP/s: the speed-up of a
population running at the full peak); a ratio target above that bound cannot be met by batching.

    python scripts/bench_zoo.py [--members 64] [--solo-models 16] [--width 128] [--depth 2] ...
    python scripts/bench_zoo.py --widths 32,128x2,512x2     # issue 17's table: one row per width x depth
    python scripts/bench_zoo.py --net cnn --widths 16x2,64x2,128x2 --threads 2
    python scripts/bench_zoo.py --quick                      # 16 members, 4 solo models, 2 epochs
    python scripts/bench_zoo.py --widths 32 --repeat 5       # each side's fastest of 5 alternated runs
    python scripts/bench_zoo.py --net resnet      # ResNet-8 (BatchNorm) on digits 8x8, width 8
    python scripts/bench_zoo.py --net transformer # a small ViT on digits 8x8 (2x2 patches, width 16, 2 heads)

Both ways run with `--threads` torch threads (default 1, torch.set_num_threads, set before any
timing). `--chunk auto|N` is the population's `population.chunk` (nets trained together);
`--chunk 64,auto` runs the population once per value, side by side. `--retain-memory false` leaves
glibc malloc at its defaults (population.retain_memory; once the warm-up's population job sets it, it
holds for the whole process, the solo side included). The load average is printed
with every row (a loaded machine lowers every figure; the ratios are measured in the same run).

`--net resnet` trains CIFAR-style ResNets with BatchNorm (running statistics stacked per member
in the population, stored in every checkpoint both ways) on digits; its defaults (width 8,
depth 1, 32 members, 8 solo models, 3 epochs) take a few minutes on a 2-core laptop.

`--net transformer` trains pre-LayerNorm ViTs (wsl.nets.Transformer: 16 tokens of 2x2 patches, `--heads`
heads, attention written out so that the population runs it under vmap) on digits, both ways with the
same SGD recipe; FLOPs are counted by torch's FlopCounterMode (attention's batched matmuls included).
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import sys
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from wsl.data import load_dataset
from wsl.nets import CNN, MLP
from wsl.nets.resnet import ResNet
from wsl.nets.transformer import Transformer
from wsl.zoo import ShardWriter

# per --net: dataset and defaults (width, depth, members, solo models, epochs)
NETS = {"mlp": dict(dataset="mnist1d", width=128, depth=2, members=64, solo_models=16, epochs=5),
        "cnn": dict(dataset="mnist1d", width=32, depth=2, members=64, solo_models=16, epochs=5),
        "resnet": dict(dataset="digits", width=8, depth=1, members=32, solo_models=8, epochs=3),
        "transformer": dict(dataset="digits", width=16, depth=2, members=32, solo_models=8, epochs=3)}


def matmul_peak_gflops(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
    return best


def peak_in_child(threads: int) -> float:
    """matmul_peak_gflops in a child process with `threads` torch threads. Its 16 MiB matrices, freed in this
    process, would raise glibc's dynamic mmap and trim thresholds and so spare both timed sides the page faults
    that a wsl-zoo process pays (population.retain_memory=false measured 5.1-5.4 s against 4.1-4.5 s per
    population of 64 MLPs 40-128-128-10 in a fresh process, equal after the peak had run in the same process)."""
    code = (f"import time, torch\n{inspect.getsource(matmul_peak_gflops)}\n"  # torch only: no wsl, no Lightning
            f"torch.set_num_threads({int(threads)})\nprint(matmul_peak_gflops())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def mlp_forward_flops(in_dim: int, width: int, depth: int, classes: int, n: int) -> float:
    dims = [in_dim] + [width] * depth + [classes]
    return 2.0 * n * sum(a * b for a, b in zip(dims[:-1], dims[1:]))


def counted_forward_flops(net: torch.nn.Module, in_shape, n: int) -> float:
    """Forward FLOPs of `net` on n samples, as torch's FlopCounterMode counts them (convs, matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net.eval()(torch.zeros(1, *in_shape))
    return float(counter.get_total_flops()) * n


def make_net(args, data):
    if args.net == "resnet":
        return ResNet(data.input_shape, data.num_classes, width=args.width, depth=args.depth)
    if args.net == "transformer":
        return Transformer(data.input_shape, data.num_classes, width=args.width, depth=args.depth, heads=args.heads,
                           patch=args.patch)
    if args.net == "cnn":
        return CNN(data.input_shape, data.num_classes, width=args.width, depth=args.depth)
    return MLP(data.input_shape, data.num_classes, width=args.width, depth=args.depth)


class SoloModule(L.LightningModule):
    """The conventional way: one LightningModule, one optimizer, one Trainer per model."""

    def __init__(self, net, lr):
        super().__init__()
        self.net, self.lr = net, lr

    def training_step(self, batch, _):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class SoloRecorder(L.Callback):
    """Same per-epoch work as the population run: eval on all splits + a safetensors checkpoint."""

    def __init__(self, data, writer, model_id, arch):
        self.data, self.writer, self.model_id, self.arch = data, writer, model_id, arch

    def _record(self, module, epoch):
        with torch.no_grad():
            module.net.eval()
            for s in ("train", "val", "test"):
                x, y = self.data.split(s)
                out = module.net(x)
                F.cross_entropy(out, y).item(), (out.argmax(1) == y).float().mean().item()
            module.net.train()
        self.writer.write_checkpoint(self.model_id, epoch, module.net.state_dict(), self.arch)

    def on_train_start(self, trainer, module):
        self._record(module, 0)

    def on_train_epoch_end(self, trainer, module):
        self._record(module, trainer.current_epoch + 1)


def run_population(args, zoo: Path, chunk="auto") -> float:
    from hydra import compose, initialize_config_dir

    from wsl.apps.common import CONF_DIR
    from wsl.apps.zoo import typed_config
    from wsl.apps.zoo_job import run_zoo_job

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("zoo", [f"zoo.path={zoo}", f"dataset={args.dataset}", f"net={args.net}", f"net.width={args.width}",
                              f"net.depth={args.depth}", f"population.size={args.members}",
                              f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}",
                              f"train.lr={args.lr}", "train.schedule=constant", "logger=none",
                              "progress_refresh_rate=0", "trainer.accelerator=cpu",
                              f"population.chunk={chunk}", f"population.retain_memory={args.retain_memory}",
                              *([f"net.heads={args.heads}", f"net.patch={args.patch}"] if args.net == "transformer"
                                else [])])
    t = time.perf_counter()
    run_zoo_job(typed_config(cfg))
    return time.perf_counter() - t


def run_solo(args, zoo: Path, data) -> float:
    writer = ShardWriter(zoo, "solo", zoo_name="solo")
    loader_data = TensorDataset(data.x_train, data.y_train)
    t = time.perf_counter()
    for k in range(args.solo_models):
        torch.manual_seed(k)
        net = make_net(args, data)
        mid = f"solo-{k}"
        trainer = L.Trainer(max_epochs=args.epochs, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                            callbacks=[SoloRecorder(data, writer, mid, net.arch)])
        dl = DataLoader(loader_data, batch_size=args.batch_size, shuffle=True)
        trainer.fit(SoloModule(net, args.lr), dl)
        writer.add_model(mid, net.arch, {"k": k}, "trained", {})
    writer.commit()
    return time.perf_counter() - t


def warm_up(args) -> None:
    """One tiny population job and one tiny solo fit before any timing: imports, Hydra's config
    composition and first-call costs are then paid by neither timed run (the first timed run paid them
    before, which made whichever ran first look slower)."""
    import copy

    tiny = copy.copy(args)
    tiny.members, tiny.solo_models, tiny.epochs, tiny.width, tiny.depth = 2, 1, 1, 4, 1
    tmp = Path(tempfile.mkdtemp(prefix="bench_zoo_warm_"))
    try:
        run_population(tiny, tmp / "pop")
        run_solo(tiny, tmp / "solo", load_dataset(args.dataset))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def parse_widths(spec: str) -> list[tuple[int, int]]:
    """"32,128x2,512x2" -> [(32, 1), (128, 2), (512, 2)] (width x depth; depth 1 when left out)."""
    out = []
    for item in spec.split(","):
        w, _, d = item.strip().partition("x")
        out.append((int(w), int(d or 1)))
    return out


def bench_row(args, data, peak: float, chunks: list[str]) -> None:
    n_train = data.x_train.shape[0]
    steps = math.ceil(n_train / args.batch_size) * args.epochs
    tmp = Path(tempfile.mkdtemp(prefix="bench_zoo_"))
    load0 = os.getloadavg()[0]
    t_pops, t_solo = {}, math.inf
    try:  # --repeat: the sides alternate, each keeps its fastest run (interference on a shared machine only adds)
        for r in range(args.repeat):
            for i, c in enumerate(chunks):
                t_pops[c] = min(t_pops.get(c, math.inf), run_population(args, tmp / f"pop{i}-{r}", c))
            t_solo = min(t_solo, run_solo(args, tmp / f"solo-{r}", data))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load1 = os.getloadavg()[0]
    if args.net == "mlp":
        fwd = lambda n: mlp_forward_flops(40, args.width, args.depth, 10, n)
        what = f"MLP 40-{'-'.join([str(args.width)] * args.depth)}-10"
    else:
        net = make_net(args, data)
        fwd = lambda n: counted_forward_flops(net, data.input_shape, n)
        kind = {"resnet": "ResNet (BatchNorm)", "cnn": "CNN",
                "transformer": f"ViT ({args.heads} heads, {args.patch}x{args.patch} patches)"}[args.net]
        what = (f"{kind} width {args.width} depth {args.depth} ({sum(p.numel() for p in net.parameters())} "
                f"parameters) on {args.dataset} {'x'.join(map(str, data.input_shape))}")
    n_eval = n_train + data.x_val.shape[0] + data.x_test.shape[0]
    per_model = 3 * fwd(n_train) * args.epochs + fwd(n_eval) * (args.epochs + 1)  # training + every evaluation
    flops = args.members * per_model
    solo_rate = args.solo_models / t_solo * 60
    solo_gflops = args.solo_models * per_model / t_solo / 1e9
    bound = peak / solo_gflops  # the speed-up of a population that ran at the full measured peak
    print(f"threads={torch.get_num_threads()}  {what}, "
          f"{args.epochs} epochs x {math.ceil(n_train / args.batch_size)} steps (batch {args.batch_size}), "
          f"checkpoint every epoch; total optimizer steps per model: {steps}; load average {load0:.1f} -> {load1:.1f}"
          f"{f'; best of {args.repeat} alternated runs per side' if args.repeat > 1 else ''}")
    print(f"one Trainer / model: {args.solo_models} models in {t_solo:7.1f} s  -> {solo_rate:8.1f} models/min  "
          f"{solo_gflops:.1f} GFLOP/s = {100 * solo_gflops / peak:.0f}% of peak")
    targets = {1: 15, 2: 5}.get(args.depth if args.width <= 128 else 3, 1.5) if args.net == "mlp" else 1
    print(f"ratio bound: peak / solo GFLOP/s = {peak:.1f} / {solo_gflops:.1f} = {bound:.1f}x (no batching of the same "
          f"FLOPs can beat it); target {targets}x {'is above it: not reachable by batching alone' if targets > bound else 'is below it'}")
    for c, t_pop in t_pops.items():
        pop_rate = args.members / t_pop * 60
        achieved = flops / t_pop / 1e9
        print(f"population chunk={c:<5}: {args.members} models in {t_pop:7.1f} s  -> {pop_rate:8.1f} models/min  "
              f"speed-up {pop_rate / solo_rate:5.1f}x (target >= {targets}x, bound {bound:.1f}x)  {achieved:.1f} GFLOP/s of a measured "
              f"{peak:.1f} GFLOP/s fp32 matmul peak = {100 * achieved / peak:.0f}%")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", choices=sorted(NETS), default="mlp",
                    help="mlp or cnn (MNIST-1D), resnet (ResNet-8 with BatchNorm, digits 8x8) or transformer (a ViT "
                         "on digits 8x8); sets the defaults below")
    ap.add_argument("--members", type=int, default=None)
    ap.add_argument("--solo-models", type=int, default=None, help="models trained one Trainer each (rate is per model)")
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--depth", type=int, default=None)
    ap.add_argument("--widths", default=None, help="several rows, e.g. 32,128x2,512x2 (width x depth)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--heads", type=int, default=2, help="--net transformer: attention heads")
    ap.add_argument("--patch", type=int, default=2, help="--net transformer: patch side")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=1, help="torch threads, both ways (default 1)")
    ap.add_argument("--chunk", default="auto", help="population.chunk: auto or N; a list (64,auto) runs each")
    ap.add_argument("--repeat", type=int, default=1, help="runs per side, alternated; each side's fastest is kept")
    ap.add_argument("--retain-memory", choices=["true", "false"], default="true",
                    help="population.retain_memory (glibc malloc keeps freed memory; once set, for the solo runs too)")
    ap.add_argument("--quick", action="store_true", help="16 members, 4 solo models, 2 epochs (unless given)")
    args = ap.parse_args()
    if args.quick:
        for k, v in dict(members=16, solo_models=4, epochs=2).items():
            if getattr(args, k) is None:
                setattr(args, k, v)
    for k, v in NETS[args.net].items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    if args.repeat < 1:
        ap.error(f"--repeat must be >= 1, got {args.repeat}")
    torch.set_num_threads(args.threads)
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("wsl").setLevel(logging.WARNING)
    torch.set_float32_matmul_precision("highest")
    data = load_dataset(args.dataset)
    warm_up(args)
    peak = peak_in_child(args.threads)
    print(f"measured fp32 matmul peak: {peak:.1f} GFLOP/s with {torch.get_num_threads()} thread(s); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    from wsl.population import allocator

    print(f"population.retain_memory={args.retain_memory}: freed memory "
          f"{'kept in the process (glibc mallopt), both ways' if allocator.retained() else 'given back (malloc defaults)'}")
    rows = parse_widths(args.widths) if args.widths else [(args.width, args.depth)]
    for args.width, args.depth in rows:
        bench_row(args, data, peak, [c.strip() for c in str(args.chunk).split(",")])


if __name__ == "__main__":
    main()
