"""Benchmark: one population program vs one Lightning Trainer per model (issue: zoo generation).

Trains the same zoo (64 MLPs on MNIST-1D, same steps, checkpoints written every epoch) two ways
in one run and prints models per minute for both, their ratio, and the population run's
achieved GFLOP/s as a fraction of this machine's measured float32 matmul peak.

    python scripts/bench_zoo.py [--members 64] [--solo-models 16] [--width 128] [--depth 2] ...
    python scripts/bench_zoo.py --net resnet      # ResNet-8 (BatchNorm) on digits 8x8, width 8
    python scripts/bench_zoo.py --net transformer # a small ViT on digits 8x8 (2x2 patches, width 16, 2 heads)

`--net resnet` trains CIFAR-style ResNets with BatchNorm (running statistics stacked per member
in the population, stored in every checkpoint both ways) on digits; its defaults (width 8,
depth 1, 32 members, 8 solo models, 3 epochs) take a few minutes on a 2-core laptop.

`--net transformer` trains pre-LayerNorm ViTs (wsl.nets.Transformer: 16 tokens of 2x2 patches, `--heads`
heads, attention written out so that the population runs it under vmap) on digits, both ways with the
same SGD recipe; FLOPs are counted by torch's FlopCounterMode (attention's batched matmuls included).
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from wsl.data import load_dataset
from wsl.nets import MLP
from wsl.nets.resnet import ResNet
from wsl.nets.transformer import Transformer

# per --net: dataset and defaults (width, depth, members, solo models, epochs)
NETS = {"mlp": dict(dataset="mnist1d", width=128, depth=2, members=64, solo_models=16, epochs=5),
        "resnet": dict(dataset="digits", width=8, depth=1, members=32, solo_models=8, epochs=3),
        "transformer": dict(dataset="digits", width=16, depth=2, members=32, solo_models=8, epochs=3)}
from wsl.zoo import ShardWriter


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


def run_population(args, zoo: Path) -> float:
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", choices=sorted(NETS), default="mlp",
                    help="mlp (MNIST-1D), resnet (ResNet-8 with BatchNorm, digits 8x8) or transformer (a ViT on "
                         "digits 8x8); sets the defaults below")
    ap.add_argument("--members", type=int, default=None)
    ap.add_argument("--solo-models", type=int, default=None, help="models trained one Trainer each (rate is per model)")
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--depth", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--heads", type=int, default=2, help="--net transformer: attention heads")
    ap.add_argument("--patch", type=int, default=2, help="--net transformer: patch side")
    ap.add_argument("--lr", type=float, default=0.05)
    args = ap.parse_args()
    for k, v in NETS[args.net].items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_float32_matmul_precision("highest")
    data = load_dataset(args.dataset)
    n_train = data.x_train.shape[0]
    steps = math.ceil(n_train / args.batch_size) * args.epochs
    tmp = Path(tempfile.mkdtemp(prefix="bench_zoo_"))
    try:
        peak = matmul_peak_gflops()
        t_pop = run_population(args, tmp / "pop")
        t_solo = run_solo(args, tmp / "solo", data)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.net == "mlp":
        fwd = lambda n: mlp_forward_flops(40, args.width, args.depth, 10, n)
        what = f"MLP 40-{'-'.join([str(args.width)] * args.depth)}-10"
    else:
        net = make_net(args, data)
        fwd = lambda n: counted_forward_flops(net, data.input_shape, n)
        kind = ("ResNet (BatchNorm)" if args.net == "resnet" else
                f"ViT ({args.heads} heads, {args.patch}x{args.patch} patches)")
        what = (f"{kind} width {args.width} depth {args.depth} ({sum(p.numel() for p in net.parameters())} "
                f"parameters) on {args.dataset} {'x'.join(map(str, data.input_shape))}")
    n_eval = n_train + data.x_val.shape[0] + data.x_test.shape[0]
    flops = args.members * (3 * fwd(n_train) * args.epochs + fwd(n_eval) * (args.epochs + 1))
    pop_rate = args.members / t_pop * 60
    solo_rate = args.solo_models / t_solo * 60
    achieved = flops / t_pop / 1e9
    print(f"threads={torch.get_num_threads()}  {what}, "
          f"{args.epochs} epochs x {math.ceil(n_train / args.batch_size)} steps (batch {args.batch_size}), "
          f"checkpoint every epoch; total optimizer steps per model: {steps}")
    print(f"population program : {args.members} models in {t_pop:7.1f} s  -> {pop_rate:8.1f} models/min")
    print(f"one Trainer / model: {args.solo_models} models in {t_solo:7.1f} s  -> {solo_rate:8.1f} models/min")
    mlp = args.net == "mlp"  # the targets are those of the MLP zoo's issue
    print(f"speed-up (models/min ratio): {pop_rate / solo_rate:.1f}x" + ("   (target >= 15x)" if mlp else ""))
    print(f"population achieved {achieved:.1f} GFLOP/s of a measured {peak:.1f} GFLOP/s fp32 matmul peak "
          f"= {100 * achieved / peak:.0f}%" + (" (target >= 40%)" if mlp else ""))


if __name__ == "__main__":
    main()
