"""How fast a saved encoder embeds a zoo (wsl-embed's work), per encoder, on CPU with one thread.

    OMP_NUM_THREADS=1 python scripts/bench_embed.py            # 1,000 digits MLPs (width 32)
    OMP_NUM_THREADS=1 python scripts/bench_embed.py --quick    # 200

For each encoder of the registry (default sizes, random weights: the speed does not depend on training) a
saved encoder is written and reloaded (wsl.encoders.encoder_run), then the nets of one zoo are embedded:
`load` = reading every checkpoint from the zoo (verified safetensors), `encode` = padding + the encoder's
forward passes (wsl.encoders.embed.encode_state_dicts, batch 256), `file` = the saved encoder's size and
its load time. Prints nets per second and the load average of the (shared) machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200 nets instead of 1,000")
    ap.add_argument("--nets", type=int, default=None)
    ap.add_argument("--width", type=int, default=32)
    args = ap.parse_args()
    n = args.nets or (200 if args.quick else 1000)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    from wsl.encoders import ENCODERS
    from wsl.encoders.embed import encode_state_dicts
    from wsl.encoders.encoder_run import describe, load_encoder, save_encoder
    from wsl.encoders.experiment import read_space
    from wsl.encoders.module import PropertyPredictor, WeightSet
    from wsl.encoders.schema import ENCODER_SCHEMAS
    from wsl.encoders.tasks import Targets, Task
    from wsl.nets import build_net
    from wsl.zoo import ShardWriter, Zoo

    arch = {"activation": "relu", "depth": 1, "in_shape": [1, 8, 8], "init": "default", "name": "mlp",
            "num_classes": 10, "width": args.width}
    tmp = Path(tempfile.mkdtemp(prefix="bench_embed_"))
    w = ShardWriter(tmp / "zoo", "job0", config={})
    for i in range(n):
        torch.manual_seed(i)
        w.write_checkpoint(f"m{i:05d}", 1, build_net(arch).state_dict(), arch)
        w.add_model(f"m{i:05d}", arch, {"seed_init": i}, "trained", {"test_acc": [0.5]})
    w.commit()
    zoo = Zoo(tmp / "zoo")
    t = time.perf_counter()
    sds = [zoo.state_dict(m) for m in zoo.ids]
    load_s = time.perf_counter() - t
    space = read_space(zoo, zoo.ids[:1])
    print(f"{n} digits MLPs (width {args.width}, {space.numel} weights each); torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"load: {n / load_s:,.0f} nets/s ({load_s:.2f} s: verified safetensors checkpoints from the zoo)")
    print("| encoder | parameters | file KB | file load s | encode nets/s |")
    print("|---|---|---|---|---|")
    task = Task(name="test_acc", columns=["test_acc"])
    for schema in ENCODER_SCHEMAS:
        kwargs = {f: getattr(schema(), f) for f in schema.__dataclass_fields__ if f not in ("name", "_target_")}
        enc = ENCODERS[schema.name](space=space, out_dim=1, **kwargs)
        one = WeightSet({k: torch.zeros(2, *s) for k, s in space.shapes.items()},
                        {"__mask__.P0": torch.ones(2, args.width)}, torch.rand(2, 1))
        module = PropertyPredictor(enc, space, task, ["test_acc"], one).eval()
        desc = describe(encoder={"name": schema.name, "kwargs": kwargs}, out_dim=1, task=task,
                        targets=Targets(one.y, ["test_acc"]), archs=[arch], space=space, pad=False, bn_stats=False,
                        zoo={"path": str(zoo.path)}, seed=0, training={})
        path = save_encoder(tmp / schema.name, 0, module, desc)
        t = time.perf_counter()
        saved = load_encoder(path)
        file_s = time.perf_counter() - t
        encode_state_dicts([saved], sds[:16])  # warm-up
        t = time.perf_counter()
        encode_state_dicts([saved], sds)
        enc_s = time.perf_counter() - t
        params = sum(p.numel() for p in enc.parameters())
        print(f"| {schema.name} | {params:,} | {path.stat().st_size / 1024:.0f} | {file_s:.3f} | {n / enc_s:,.0f} |",
              flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} (after)")


if __name__ == "__main__":
    main()
