"""Benchmark of the landscape metrics (issue: loss-landscape metadata).

Trains one population (default 32 MLPs on sklearn digits: 4 learning rates × 8 seeds; --net resnet:
ResNet-8s with BatchNorm, width 8 by default, 19,810 parameters) with wsl's population trainer, then in
the same run:

 (a) computes every metric of `landscape=full` (and `basic`) on it in one wsl-landscape call and
     prints that time over the training time (target <= 1x), with each metric's compute time;
 (b) computes Hessian top eigenvalue and trace of every member with wsl (one vmapped program) and
     with the PyHessian package model by model, on the same samples: 1. with the same estimators
     and settings (power iteration, 100 Rademacher probes: what vmapping buys by itself), 2. each as
     it is used by default (wsl's landscape=full: Lanczos and, for these ReLU nets, the exact trace;
     PyHessian's eigenvalues() and trace() with their defaults), 3. as 2 with PyHessian cut to the
     probes plain Hutchinson needs per model for a 5% standard error, 4. as 2 in PyHessian's
     dataloader mode. It prints their agreement in units of estimator noise, the Hessian-vector
     products per model and the time ratio (target >= 10x). With --exact N, the exact Hessian of the
     first N members is the ground truth. The load average is printed at start and end (the machine
     may be shared).

    pip install --no-deps pyhessian      # PyHessian 0.1; it needs only torch and numpy
    python scripts/bench_landscape.py [--members 32] [--epochs 10] [--threads 1] [--exact 1]
    python scripts/bench_landscape.py --net resnet --members 8 --epochs 5 --exact 0

With --net resnet every curvature number is of the eval-mode loss (BatchNorm running statistics as
constants), as PyHessian computes it (it puts the model in eval mode); the exact trace applies (ReLU,
eval-mode BatchNorm). The dense Hessian is left out above 4,000 parameters (n² memory).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from wsl.apps.common import CONF_DIR
from wsl.apps.landscape import typed_config


def _clock() -> np.ndarray:
    """(wall seconds, CPU seconds of this process). On a shared machine other processes stretch the
    wall time of whatever runs while they are busy; this process's CPU time they barely change."""
    return np.array([time.perf_counter(), time.process_time()])


def _fmt(t: np.ndarray) -> str:
    return f"{t[0]:.2f} s wall / {t[1]:.2f} s CPU"


def compose_cfg(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


EXACT_MAX_PARAMS = 4000  # the dense Hessian's n² float64 entries (and its vectorized backward passes) stay small


def train_population(path: Path, members: int, epochs: int, width: int, net: str = "mlp") -> float:
    from wsl.apps.zoo import typed_config as zoo_config
    from wsl.apps.zoo_job import run_zoo_job

    arch = ["net=resnet", "net.depth=1", "net.norm=batch"] if net == "resnet" else []
    cfg = compose_cfg("zoo", [f"zoo.path={path}", f"population.size={members}", f"train.epochs={epochs}", *arch,
                              f"net.width={width}", "train.lr=[0.1,0.05,0.02,0.01]", "logger=none",
                              "zoo.checkpoint_epochs=[0]", "progress_refresh_rate=0",
                              "trainer.accelerator=cpu"])
    t = _clock()
    run_zoo_job(zoo_config(cfg))
    return _clock() - t


def time_metrics(path: Path, option: str, extra: tuple = ()) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One `annotate_zoo` call with `landscape=<option>`, as wsl-landscape runs it: its wall time, and
    the compute time of each metric (the rest reads checkpoints and data and writes the index)."""
    from wsl.landscape import annotate as annotating
    from wsl.landscape import annotate_zoo
    from wsl.landscape.metrics import METRICS

    cfg = typed_config(compose_cfg("landscape", [f"zoo.path={path}", f"landscape={option}", *extra])).landscape
    spent: dict[str, float] = {}
    patched = []

    def timed(name, fn):
        def wrapper(*a, **k):
            t = _clock()
            try:
                return fn(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + _clock() - t
        return wrapper

    for m in cfg.metrics:
        metric = METRICS[m]
        attr = "compute" if metric.scope == "model" else "compute_pairs"
        patched.append((metric, attr))
        setattr(metric, attr, timed(m, getattr(metric, attr)))
    orig_phase = annotating.annotate_phases
    annotating.annotate_phases = timed("phase", orig_phase)
    try:
        t = _clock()
        annotate_zoo(path, cfg)
        total = _clock() - t
    finally:
        for metric, attr in patched:
            delattr(metric, attr)  # back to the class's method
        annotating.annotate_phases = orig_phase
    return total, spent


def exact_curvature(net, state, x, y):
    from wsl.landscape.hessian import dense_hessian
    from wsl.population.functional import split_state

    params, buffers = split_state(net, dict(state))  # BatchNorm statistics: constants (eval mode)
    h = dense_hessian(net, params, x, y, buffers)
    ev = torch.linalg.eigvalsh(h)
    return ev[ev.abs().argmax()].item(), h.trace().item()


class _Counter:
    """Counts PyHessian's Hessian-vector products (one per power iteration or probe)."""

    def __init__(self):
        import importlib

        ph = importlib.import_module("pyhessian.hessian")  # the module (the package exports a class of that name)
        self.n, self.ph = 0, ph
        self._hv, self._dl = ph.hessian_vector_product, ph.hessian.dataloader_hv_product

    def __enter__(self):
        def hv(*a, **k):
            self.n += 1
            return self._hv(*a, **k)

        def dl(obj, *a, **k):
            self.n += 1
            return self._dl(obj, *a, **k)

        self.ph.hessian_vector_product, self.ph.hessian.dataloader_hv_product = hv, dl
        return self

    def __exit__(self, *exc):
        self.ph.hessian_vector_product, self.ph.hessian.dataloader_hv_product = self._hv, self._dl


def _pyhessian(models, x, y, max_iters, tol, probes, loader_batch=None):
    """PyHessian 0.1, model by model: single-batch mode (its fastest), or its dataloader mode.
    probes: an int (every model), a list (per model) or None (its own default stopping rule:
    trace(maxIter=100, tol=1e-3) stops once a probe moves the running mean by < 0.1%)."""
    from pyhessian import hessian as PyHessian
    from torch.utils.data import DataLoader, TensorDataset

    eig, tr, se, used = [], [], [], []
    with _Counter() as count:
        for i, model in enumerate(models):
            if loader_batch:
                loader = DataLoader(TensorDataset(x, y), batch_size=loader_batch, shuffle=False)
                h = PyHessian(model, torch.nn.CrossEntropyLoss(), dataloader=loader, cuda=False)
            else:
                h = PyHessian(model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False)
            ev, _ = h.eigenvalues(maxIter=max_iters, tol=tol, top_n=1)
            if probes is None:
                vhv = h.trace()
            else:
                k = probes if isinstance(probes, int) else int(probes[i])
                vhv = h.trace(maxIter=k, tol=0.0)  # tol=0: exactly k Rademacher vectors
            eig.append(ev[0])
            tr.append(float(np.mean(vhv)))
            se.append(float(np.std(vhv, ddof=1) / math.sqrt(len(vhv))) if len(vhv) > 1 else float("nan"))
            used.append(len(vhv))
    return np.asarray(eig), np.asarray(tr), np.asarray(se), count.n / len(models), np.asarray(used)


def _wsl(net, states, x, y, eig_kw: dict, trace_kw: dict, batch_size=256, retain=True):
    """wsl on the stacked population: (eigenvalues, traces, trace standard errors, Hessian-vector products
    per model, probes per model). trace_kw {"method": "exact"}: the exact trace (no probes, zero error)."""
    from wsl.landscape.exact_trace import exact_trace
    from wsl.landscape.hessian import hutchinson_trace, top_eigenvalue
    from wsl.population.functional import split_state, stack_state_dicts

    params, buffers = split_state(net, stack_state_dicts(states))
    eig = top_eigenvalue(net, params, x, y, seed=0, batch_size=batch_size, buffers=buffers, retain=retain, **eig_kw)
    if trace_kw.get("method") == "exact":
        tr = exact_trace(net, params, x, y, batch_size, buffers).numpy()
        zero = np.zeros_like(tr)
        return eig.eigenvalue.numpy(), tr, zero, eig.iterations.double().mean().item(), zero
    tr = hutchinson_trace(net, params, x, y, seed=0, batch_size=batch_size, buffers=buffers, retain=retain,
                          **trace_kw)
    products = (eig.iterations + tr.samples + trace_kw.get("deflation", 0)).double().mean().item()
    return eig.eigenvalue.numpy(), tr.trace.numpy(), tr.stderr.numpy(), products, tr.samples.numpy()


def _timed(fn, *a, **k):
    t = _clock()
    out = fn(*a, **k)
    return out, _clock() - t


def _side_by_side(repeats, f, g):
    """Run f and g alternately `repeats` times; the best time of each (a shared, busy machine slows
    whichever runs during a burst of load; alternating and keeping the best evens that out)."""
    tf, tg = [], []
    for _ in range(repeats):
        rf, t = _timed(f)
        tf.append(t)
        rg, t = _timed(g)
        tg.append(t)
    return rf, np.min(tf, axis=0), rg, np.min(tg, axis=0)


def _agreement(label, w, ph, t_wsl, t_ph, tol, exact=False):
    w_eig, w_tr, w_se, w_n = w[:4]
    ph_eig, ph_tr, ph_se, ph_n, ph_probes = ph
    rel_eig = np.abs(w_eig - ph_eig) / np.abs(ph_eig)
    z = (w_tr - ph_tr) / np.sqrt(w_se**2 + ph_se**2)
    print(f"  {label}")
    print(f"    top eigenvalue: median relative difference {np.median(rel_eig):.1e}, max {rel_eig.max():.1e} "
          f"(both stop at relative change < {tol})")
    noise = (f"wsl exact (no estimator noise), PyHessian median relative standard error "
             f"{np.nanmedian(ph_se / np.abs(ph_tr)):.3f}" if exact else
             f"median relative standard error wsl {np.median(w_se / np.abs(w_tr)):.3f}, PyHessian "
             f"{np.nanmedian(ph_se / np.abs(ph_tr)):.3f}")
    print(f"    trace: {noise}; z = (wsl - PyHessian) / combined standard error: median |z| "
          f"{np.nanmedian(np.abs(z)):.2f}, max {np.nanmax(np.abs(z)):.2f}; |z| < 2 for {np.mean(np.abs(z) < 2):.0%} "
          f"(~95% expected if they agree)")
    if ph_probes.min() < 5:  # its default rule stops once one probe barely moves the mean: a few probes can agree by chance
        print(f"    PyHessian used {ph_probes.min()}-{ph_probes.max()} probes (median {np.median(ph_probes):.0f}); on the "
              f"{np.sum(ph_probes < 5)} model(s) it stopped at < 5, its standard error is not meaningful; |z| < 2 for "
              f"{np.mean(np.abs(z[ph_probes >= 5]) < 2):.0%} of the rest")
    print(f"    Hessian-vector products per model: wsl {w_n:.1f}{' + the exact trace (10 backward passes)' if exact else ''}"
          f", PyHessian {ph_n:.1f}")
    r = t_ph / t_wsl
    print(f"    time: wsl {_fmt(t_wsl)} vs PyHessian {_fmt(t_ph)} -> PyHessian time / wsl time = {r[0]:.1f}x wall, "
          f"{r[1]:.1f}x CPU (target >= 10x)")
    return rel_eig, z


def compare_curvature(path: Path, max_iters: int, tol: float, probes: int, exact: int, loader_batch: int,
                      repeats: int, full: dict) -> None:
    from wsl.landscape.sampling import make_sample_set
    from wsl.zoo import Zoo

    zoo = Zoo(path)
    ids = [m for m in zoo.ids if zoo.row(m).status == "trained"]
    data = zoo.training_data(ids[0])
    ss = make_sample_set(data, "train", 2048, 0)  # the samples landscape=full uses (here: all of train)
    x, y = ss.tensors(data)
    states = [zoo.state_dict(m) for m in ids]
    models = [zoo.load_model(m) for m in ids]
    net = zoo.skeleton(ids[0]).eval()
    e, t = full["hessian_eig"], full["hessian_trace"]
    rel = t["rel_stderr"]
    print(f"\n(b) Hessian top eigenvalue and trace of {len(ids)} models on {x.shape[0]} train samples "
          f"(graphs of 256 samples, kept), against PyHessian model by model given all samples as one batch "
          f"(its fastest mode: one graph per model, reused)")

    # 1. the same estimators with the same settings: what vmapping a population buys by itself
    same_e = {"method": "power", "max_iters": max_iters, "tol": tol}
    same_t = {"samples": probes}
    w, t_w, ph, t_ph = _side_by_side(repeats, lambda: _wsl(net, states, x, y, same_e, same_t),
                                     lambda: _pyhessian(models, x, y, max_iters, tol, probes))
    _agreement(f"1. same estimators, same settings: power iteration (max {max_iters}, tol {tol}) and {probes} "
               f"Rademacher probes", w, ph, t_w, t_ph, tol)
    w_plain = w

    # 2. each as it is used: wsl landscape=full (Lanczos; the exact trace of these ReLU nets) against
    #    PyHessian's documented calls with their defaults
    best_e = {"method": e["method"], "max_iters": e["max_iters"], "tol": e["tol"]}
    best_t = {"method": "exact"}
    w, t_w, ph, t_ph = _side_by_side(repeats, lambda: _wsl(net, states, x, y, best_e, best_t),
                                     lambda: _pyhessian(models, x, y, max_iters, tol, None))
    _agreement(f"2. each with its defaults: wsl landscape=full ({e['method']} tol {e['tol']}, exact trace) vs "
               f"PyHessian eigenvalues() and trace() (power iteration tol {tol}; Hutchinson until a probe moves "
               f"the mean by < 0.1%, at most 100)", w, ph, t_w, t_ph, tol, exact=True)
    w_best, ph_best = w, ph

    # 3. PyHessian doing the least work that still gives a usable trace: per model the probes plain
    #    Hutchinson needs for a `rel` relative standard error (counted by wsl's stopping rule)
    need = _wsl(net, states, x, y, same_e, {"samples": 1000, "rel_stderr": rel, "min_samples": t["min_samples"]})[4]
    w, t_w, ph, t_ph = _side_by_side(repeats, lambda: _wsl(net, states, x, y, best_e, best_t),
                                     lambda: _pyhessian(models, x, y, max_iters, tol, need))
    _agreement(f"3. as 2, PyHessian cut to the {int(need.min())}-{int(need.max())} probes per model that a {rel:.0%} "
               f"standard error needs (wsl is exact)", w, ph, t_w, t_ph, tol, exact=True)
    if loader_batch:
        w, t_w, ph, t_ph = _side_by_side(
            repeats, lambda: _wsl(net, states, x, y, best_e, best_t, loader_batch, False),
            lambda: _pyhessian(models, x, y, max_iters, tol, None, loader_batch))
        _agreement(f"4. as 2, memory bounded by one batch of {loader_batch} samples (PyHessian's dataloader mode; "
                   f"wsl retain_graphs=false)", w, ph, t_w, t_ph, tol, exact=True)
    worst = int(np.argmax(np.abs(w_best[0] - ph_best[0]) / np.abs(ph_best[0])))
    n_params = sum(p.numel() for p in zoo.load_model(ids[0]).parameters())
    if exact > 0 and n_params > EXACT_MAX_PARAMS:
        print(f"  exact Hessian left out: {n_params} parameters > {EXACT_MAX_PARAMS} (n² memory)")
        exact = 0
    for i in sorted(set(range(min(exact, len(ids)))) | ({worst} if exact > 0 else set())):
        ev, trace = exact_curvature(net, dict(states[i]), x, y)
        print(f"  exact Hessian of model {i}{' (largest eigenvalue disagreement in 2.)' if i == worst else ''}: "
              f"top eigenvalue {ev:.4f} (wsl {w_best[0][i]:.4f}, PyHessian {ph_best[0][i]:.4f}, wsl power iteration "
              f"{w_plain[0][i]:.4f}), trace {trace:.4f} (wsl exact {w_best[1][i]:.4f}, PyHessian defaults "
              f"{ph_best[1][i]:.3f}±{ph_best[2][i]:.3f}, {probes} plain probes {w_plain[1][i]:.3f}±{w_plain[2][i]:.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=32, help="population size (a multiple of 4 learning rates)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--net", choices=("mlp", "resnet"), default="mlp",
                    help="mlp: MLPs; resnet: ResNet-8s (3 stages of 1 block) with BatchNorm")
    ap.add_argument("--width", type=int, default=None, help="hidden width (mlp, default 32) or first-stage "
                    "channels (resnet, default 8)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for every timed part")
    ap.add_argument("--max-iters", type=int, default=100)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--probes", type=int, default=100)
    ap.add_argument("--exact", type=int, default=1, help="members checked against the exact Hessian")
    ap.add_argument("--loader-batch", type=int, default=256,
                    help="also compare with data in batches of this size (PyHessian's dataloader mode); 0: skip")
    ap.add_argument("--repeats", type=int, default=1, help="alternate the timed runs this often, keep the best")
    ap.add_argument("--zoo", type=Path, default=None, help="reuse this trained zoo (copied) instead of training one; "
                    "give --train-seconds, its training time, for (a)")
    ap.add_argument("--train-seconds", type=float, default=None)
    ap.add_argument("--out", type=Path, default=None, help="keep the zoo here (default: a temp dir)")
    args = ap.parse_args()
    if args.width is None:
        args.width = 8 if args.net == "resnet" else 32
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench_landscape_"))
    path = args.out or work / "zoo"
    try:
        print("load average at start: %.2f %.2f %.2f" % os.getloadavg())
        kind = "ResNet-8s with BatchNorm" if args.net == "resnet" else "MLPs"
        print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); population of {args.members} "
              f"{kind} (width {args.width}) on digits, {args.epochs} epochs")
        if args.zoo:
            shutil.copytree(args.zoo, path)
            t_train = np.array([args.train_seconds, args.train_seconds])
        else:
            t_train = train_population(path, args.members, args.epochs, args.width, args.net)
        shutil.copytree(path, work / "zoo-basic")
        shutil.copytree(path, work / "zoo-previous")
        print(f"\n(a) training the population: {_fmt(t_train)} (wsl-zoo job, checkpoints at epochs 0 and final)")
        previous = ("landscape.hessian_trace.method=hutchinson",)  # Krylov-deflated Hutchinson, 5% error
        for option, zoo, extra in (("full", path, ()), ("basic", work / "zoo-basic", ()),
                                   ("full", work / "zoo-previous", previous)):
            if extra:
                print(f"    ... the same with the previous curvature defaults ({', '.join(extra)}):")
            total, spent = time_metrics(zoo, option, extra)
            print(f"    landscape={option}: compute (CPU s) " + ", ".join(f"{m} {t[1]:.2f}" for m, t in spent.items())
                  + f"; reading checkpoints and data, writing the index {total[1] - sum(t[1] for t in spent.values()):.2f}")
            r = total / t_train
            print(f"    landscape={option}: all metrics {_fmt(total)} (one wsl-landscape call) -> metrics / training = "
                  f"{r[0]:.2f}x wall, {r[1]:.2f}x CPU (target <= 1x)")
        full = dataclasses.asdict(typed_config(compose_cfg("landscape", [f"zoo.path={path}", "landscape=full"])).landscape)
        compare_curvature(path, args.max_iters, args.tol, args.probes, args.exact, args.loader_batch, args.repeats, full)
        print("load average at end: %.2f %.2f %.2f" % os.getloadavg())
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
