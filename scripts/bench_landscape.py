"""Benchmark of the landscape metrics (issue: loss-landscape metadata).

Trains one population (default 32 MLPs on sklearn digits: 4 learning rates × 8 seeds) with wsl's
population trainer, then in the same run:

 (a) computes every metric of `landscape=full` on it and prints that time over the training time
     (target <= 1x);
 (b) computes Hessian top eigenvalue and trace of every member with wsl (one vmapped program) and
     with the PyHessian package model by model, on the same samples with the same settings,
     and prints both methods' numbers, their agreement in units of estimator noise, and the
     time ratio (target >= 10x). With --exact N, the exact Hessian of the first N members is
     the ground truth for both.

    pip install --no-deps pyhessian      # PyHessian 0.1; it needs only torch and numpy
    python scripts/bench_landscape.py [--members 32] [--epochs 10] [--threads 1] [--exact 1]
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from wsl.apps.common import CONF_DIR


def compose_cfg(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def train_population(path: Path, members: int, epochs: int, width: int) -> float:
    from wsl.apps.zoo_job import run_zoo_job

    cfg = compose_cfg("zoo", [f"zoo.path={path}", f"population.size={members}", f"train.epochs={epochs}",
                              f"net.width={width}", "train.lr=[0.1,0.05,0.02,0.01]", "logger=none",
                              "zoo.checkpoint_epochs=[0]", "progress_refresh_rate=0",
                              "trainer.accelerator=cpu"])
    t = time.perf_counter()
    run_zoo_job(cfg)
    return time.perf_counter() - t


def time_metrics(path: Path, option: str) -> dict[str, float]:
    from wsl.landscape import annotate_zoo

    cfg = OmegaConf.to_container(compose_cfg("landscape", [f"zoo.path={path}", f"landscape={option}"]).landscape,
                                 resolve=True)
    out = {}
    for m in cfg["metrics"]:
        t = time.perf_counter()
        annotate_zoo(path, {**cfg, "metrics": [m]})
        out[m] = time.perf_counter() - t
    return out


def exact_curvature(net, state, x, y):
    from wsl.landscape.functional import member_loss

    names = list(state)
    flat = torch.cat([state[k].flatten() for k in names]).double()

    def f(theta):
        d, o = {}, 0
        for k in names:
            d[k] = theta[o:o + state[k].numel()].view(state[k].shape)
            o += state[k].numel()
        return member_loss(net.double(), d, x.double(), y)

    h = torch.autograd.functional.hessian(f, flat)
    net.float()
    ev = torch.linalg.eigvalsh(h)
    return ev[ev.abs().argmax()].item(), h.trace().item()


def _pyhessian(models, x, y, max_iters, tol, probes, loader_batch=None):
    """PyHessian 0.1, model by model: single-batch mode (its fastest), or its dataloader mode."""
    from pyhessian import hessian as PyHessian
    from torch.utils.data import DataLoader, TensorDataset

    eig, tr, se = [], [], []
    for model in models:
        if loader_batch:
            loader = DataLoader(TensorDataset(x, y), batch_size=loader_batch, shuffle=False)
            h = PyHessian(model, torch.nn.CrossEntropyLoss(), dataloader=loader, cuda=False)
        else:
            h = PyHessian(model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False)
        ev, _ = h.eigenvalues(maxIter=max_iters, tol=tol, top_n=1)
        vhv = h.trace(maxIter=probes, tol=0.0)  # tol=0: all `probes` Rademacher vectors, as wsl uses
        eig.append(ev[0])
        tr.append(float(np.mean(vhv)))
        se.append(float(np.std(vhv, ddof=1) / math.sqrt(len(vhv))))
    return np.asarray(eig), np.asarray(tr), np.asarray(se)


def _wsl(net, states, x, y, max_iters, tol, probes, batch_size=256, retain=True):
    from wsl.landscape.functional import split_state, stack_states
    from wsl.landscape.hessian import hutchinson_trace, top_eigenvalue

    params, buffers = split_state(net, stack_states(states))
    eig = top_eigenvalue(net, params, x, y, max_iters=max_iters, tol=tol, seed=0, batch_size=batch_size,
                         buffers=buffers, retain=retain)
    tr = hutchinson_trace(net, params, x, y, samples=probes, seed=0, batch_size=batch_size, buffers=buffers,
                          retain=retain)
    return eig.eigenvalue.numpy(), tr.trace.numpy(), tr.stderr.numpy()


def _timed(fn, *a, **k):
    t = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t


def _side_by_side(repeats, f, g):
    """Run f and g alternately `repeats` times; the best time of each (a shared, busy machine slows
    whichever runs during a burst of load; alternating and keeping the best evens that out)."""
    tf, tg = [], []
    for _ in range(repeats):
        rf, t = _timed(f)
        tf.append(t)
        rg, t = _timed(g)
        tg.append(t)
    return rf, min(tf), rg, min(tg)


def compare_curvature(path: Path, max_iters: int, tol: float, probes: int, exact: int, loader_batch: int,
                      repeats: int) -> None:
    from wsl.landscape.sampling import make_sample_set
    from wsl.zoo import Zoo

    zoo = Zoo(path)
    ids = [m for m in zoo.ids if zoo.row(m).status == "trained"]
    data = zoo.task_data(ids[0])
    ss = make_sample_set(data, "train", 2048, 0)  # the samples landscape=full uses (here: all of train)
    x, y = ss.tensors(data)
    states = [zoo.state_dict(m) for m in ids]
    models = [zoo.load_model(m) for m in ids]
    net = zoo.skeleton(ids[0]).eval()

    (w_eig, w_tr, w_se), t_wsl, (ph_eig, ph_tr, ph_se), t_ph = _side_by_side(
        repeats, lambda: _wsl(net, states, x, y, max_iters, tol, probes),
        lambda: _pyhessian(models, x, y, max_iters, tol, probes))
    rel_eig = np.abs(w_eig - ph_eig) / np.abs(ph_eig)
    z = (w_tr - ph_tr) / np.sqrt(w_se**2 + ph_se**2)
    print(f"\n(b) Hessian on {x.shape[0]} train samples, {len(ids)} models, power iteration max {max_iters} "
          f"iterations tol {tol}, Hutchinson {probes} Rademacher probes")
    print(f"{'model':>5} {'eig wsl':>10} {'eig PyH':>10} {'rel diff':>9} {'trace wsl':>16} {'trace PyH':>16} {'z':>6}")
    for i in range(len(ids)):
        print(f"{i:5d} {w_eig[i]:10.4f} {ph_eig[i]:10.4f} {rel_eig[i]:9.2e} {w_tr[i]:9.3f}±{w_se[i]:<6.3f} "
              f"{ph_tr[i]:9.3f}±{ph_se[i]:<6.3f} {z[i]:6.2f}")
    print(f"top eigenvalue: median relative difference {np.median(rel_eig):.2e}, max {rel_eig.max():.2e} "
          f"(both stop at relative change < {tol}, from different random start vectors)")
    print(f"trace: z = (wsl - PyHessian) / combined standard error: median |z| {np.median(np.abs(z)):.2f}, "
          f"max {np.abs(z).max():.2f}; |z| < 2 for {np.mean(np.abs(z) < 2):.0%} (~95% expected if they agree)")
    print(f"time, PyHessian given all {x.shape[0]} samples as one batch (its fastest mode, one graph per model "
          f"reused) vs wsl defaults (graphs of 256 samples, kept): wsl {t_wsl:.2f} s vs PyHessian {t_ph:.2f} s "
          f"-> PyHessian time / wsl time = {t_ph / t_wsl:.1f}x (target >= 10x)")
    if loader_batch:
        (l_eig, l_tr, _), t_wl, _, t_pl = _side_by_side(
            repeats, lambda: _wsl(net, states, x, y, max_iters, tol, probes, loader_batch, False),
            lambda: _pyhessian(models, x, y, max_iters, tol, probes, loader_batch))
        print(f"time, memory bounded by one batch of {loader_batch} samples (PyHessian's dataloader mode; wsl "
              f"retain_graphs=false): wsl {t_wl:.2f} s vs PyHessian {t_pl:.2f} s -> ratio {t_pl / t_wl:.1f}x "
              f"(wsl values equal the kept-graph ones: max rel. diff {np.max(np.abs(l_tr - w_tr) / np.abs(w_tr)):.1e})")
    for i in range(min(exact, len(ids))):
        e, trace = exact_curvature(net, dict(states[i]), x, y)
        print(f"exact Hessian of model {i}: top eigenvalue {e:.4f} (wsl {w_eig[i]:.4f}, PyHessian {ph_eig[i]:.4f}), "
              f"trace {trace:.3f} (wsl {w_tr[i]:.3f}±{w_se[i]:.3f}, PyHessian {ph_tr[i]:.3f}±{ph_se[i]:.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=32, help="population size (a multiple of 4 learning rates)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for every timed part")
    ap.add_argument("--max-iters", type=int, default=100)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--probes", type=int, default=100)
    ap.add_argument("--exact", type=int, default=1, help="members checked against the exact Hessian")
    ap.add_argument("--loader-batch", type=int, default=256,
                    help="also compare with data in batches of this size (PyHessian's dataloader mode); 0: skip")
    ap.add_argument("--repeats", type=int, default=1, help="alternate the timed runs this often, keep the best")
    ap.add_argument("--out", type=Path, default=None, help="keep the zoo here (default: a temp dir)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench_landscape_"))
    path = args.out or work / "zoo"
    try:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); population of {args.members} "
              f"MLPs (width {args.width}) on digits, {args.epochs} epochs")
        t_train = train_population(path, args.members, args.epochs, args.width)
        shutil.copytree(path, work / "zoo-basic")
        print(f"\n(a) training the population: {t_train:.2f} s (wsl-zoo job, checkpoints at epochs 0 and final)")
        for option, zoo in (("full", path), ("basic", work / "zoo-basic")):
            times = time_metrics(zoo, option)
            total = sum(times.values())
            print(f"    landscape={option}: " + ", ".join(f"{m} {t:.2f} s" for m, t in times.items()))
            print(f"    landscape={option}: all metrics {total:.2f} s -> metrics / training = {total / t_train:.2f}x "
                  f"(target <= 1x)")
        compare_curvature(path, args.max_iters, args.tol, args.probes, args.exact, args.loader_batch, args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
