"""The metrics `landscape.metrics` may list, by name. Each adapts one estimator to stacked members.

model scope: compute(net, params, buffers, data, s) -> ({column: array [P]}, notes [P])
cell scope:  compute_pairs(net, a, b, data, s) -> {column: array [Q]} for Q stacked replica pairs
(data: {split: (x, y) or (x, y, loss)} of the metric's sample sets, `loss` the zoo's training loss on that
split (wsl.landscape.losses.task_loss; absent or None: the mean cross-entropy); a, b: full stacked states incl.
buffers).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from wsl.landscape.batchnorm import has_batchnorm
from wsl.landscape.cka import linear_cka
from wsl.landscape.connectivity import linear_barrier, mode_connectivity
from wsl.landscape.exact_trace import exact_trace, exact_trace_support
from wsl.landscape.hessian import hutchinson_trace, top_eigenvalue
from wsl.landscape.losses import CROSS_ENTROPY
from wsl.landscape.schema import SETTINGS
from wsl.landscape.spectra import layer_spectrum, weight_layers
from wsl.population.functional import num_members, population_outputs


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def missing_running_stats(net, names) -> str:
    """'' if the state dict keys `names` hold the running statistics of every BatchNorm of `net`, else
    which are missing (eval mode would silently use a fresh layer's mean 0 and variance 1)."""
    names = set(names)
    missing = [f"{n}.{b}" for n, m in net.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
               and m.track_running_stats for b in ("running_mean", "running_var") if f"{n}.{b}" not in names]
    if not missing:
        return ""
    return (f"the checkpoints hold no BatchNorm running statistics ({', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}), which this metric evaluates the net with")


def _samples(entry) -> tuple:
    """(x, y, loss) of a data entry (x, y) or (x, y, loss); no loss: the mean cross-entropy."""
    x, y, *rest = entry
    return x, y, (rest[0] if rest and rest[0] is not None else CROSS_ENTROPY)


# what each kind of data (wsl.data) gives the metrics: its training loss (wsl.landscape.losses.task_loss): a
# cross-entropy on labelled samples ("classification"; "lm": a label per position, the mean over every position)
# or a PINN's residual + initial + boundary terms ("pinn"), or none
LOSS_KINDS = ("classification", "lm", "pinn")
KIND_LOSS = {"inr": "an INR zoo fits each net to its own image (mean squared error)"}


def refusal(metric, net, s: dict, names, kind: str = "classification") -> str:
    """Why `metric` is not computed for `net` (its state dict keys `names`) with settings s, on data of
    `kind`; '' if it is."""
    if metric.needs_loss and kind not in LOSS_KINDS:
        return (f"{metric.name} needs the zoo's training loss on shared samples; "
                f"{KIND_LOSS.get(kind, f'data of kind {kind!r} give none')}")
    why = metric.refusal(net, s)
    if not why and metric.uses_running_stats:
        why = missing_running_stats(net, names)
    return why


class Metric:
    """One metric of the `landscape.metrics` list (its settings: wsl.landscape.schema.SETTINGS[name]).

    scope "model": computed per member of a stacked population; scope "cell": computed on pairs of
    seed replicas of one hyperparameter cell and stored (mean over pairs) on every member's row.
    `identity` lists the settings that define the value (they are stored with it and compared on
    resume); the others only change speed or memory.
    """

    name: str = ""
    scope: str = "model"
    identity: tuple = ()
    uses_running_stats: bool = False  # runs the net in eval mode with the BatchNorm statistics stored with it
    needs_loss: bool = False  # evaluates the training loss on samples (kinds LOSS_KINDS)

    def samples(self, s: dict) -> list[tuple[str, int | None, int]]:
        """(split, num_samples, seed) of every data sample set the metric reads."""
        return []

    def refusal(self, net, s: dict) -> str:
        """Why the metric does not apply to this architecture with settings s ('' if it does): annotate
        logs it once and records it as every row's note instead of computing."""
        return ""


class _Curvature(Metric):
    uses_running_stats = True  # the Hessian of the eval-mode loss: BatchNorm statistics are constants
    needs_loss = True

    def samples(self, s):
        return [(sp, s["num_samples"], s["sample_seed"]) for sp in s["splits"]]


class HessianEig(_Curvature):
    """Dominant Hessian eigenvalue by Lanczos (or power iteration) on Hessian-vector products (model in eval mode)."""

    name = "hessian_eig"
    identity = ("splits", "num_samples", "sample_seed", "method", "max_iters", "tol", "seed")

    def compute(self, net, params, buffers, data, s):
        cols = {}
        for sp in s["splits"]:
            x, y, loss = _samples(data[sp])
            r = top_eigenvalue(net, params, x, y, s["max_iters"], s["tol"], s["seed"], s["batch_size"], buffers,
                               retain=s["retain_graphs"], method=s["method"], loss=loss)
            cols.update({sp: _np(r.eigenvalue), f"{sp}_iters": _np(r.iterations), f"{sp}_converged": _np(r.converged)})
        return cols, ["" if all(cols[f"{sp}_converged"][i] for sp in s["splits"]) else
                      f"{s['method']} did not reach tol={s['tol']} in {s['max_iters']} iterations"
                      for i in range(num_members(params))]


class HessianTrace(_Curvature):
    """Hessian trace: exact for the cross-entropy of piecewise-linear nets (tr H = tr GGN;
    wsl.landscape.exact_trace), else (smooth activations, a PINN's physics-informed loss) by Hutchinson's
    estimator with Rademacher probes (optionally Krylov-deflated). Column `<split>_exact` is 1 where the value
    is exact (its `_stderr` and `_samples` are then 0)."""

    name = "hessian_trace"
    identity = ("splits", "num_samples", "sample_seed", "method", "samples", "min_samples", "rel_stderr",
                "deflation", "seed")

    def compute(self, net, params, buffers, data, s):
        p = num_members(params)
        losses = [_samples(data[sp])[2] for sp in s["splits"]]
        why = "method=hutchinson" if s["method"] == "hutchinson" else exact_trace_support(net, params)
        no_exact = [ls.name for ls in losses if not ls.exact_trace]
        if not why and no_exact:  # the Gauss-Newton split behind the exact trace is the cross-entropy's
            why = f"the loss is the {no_exact[0]} loss, not a cross-entropy of logits"
        if s["method"] == "exact" and why:  # asked for, does not apply: say so on every row
            nan = np.full(p, np.nan)
            cols = {c: nan for sp in s["splits"] for c in (sp, f"{sp}_stderr", f"{sp}_samples", f"{sp}_exact")}
            return cols, [f"exact trace does not apply: {why}; use method=auto or hutchinson"] * p
        cols = {}
        for sp, loss in zip(s["splits"], losses):
            x, y, _ = _samples(data[sp])
            if not why:
                cols.update({sp: _np(exact_trace(net, params, x, y, s["batch_size"], buffers)),
                             f"{sp}_stderr": np.zeros(p), f"{sp}_samples": np.zeros(p), f"{sp}_exact": np.ones(p)})
                continue
            r = hutchinson_trace(net, params, x, y, s["samples"], s["seed"], s["batch_size"], buffers,
                                 s["rel_stderr"], s["min_samples"], retain=s["retain_graphs"], deflation=s["deflation"],
                                 loss=loss)
            cols[sp], cols[f"{sp}_stderr"], cols[f"{sp}_samples"] = _np(r.trace), _np(r.stderr), _np(r.samples)
            cols[f"{sp}_exact"] = np.zeros(p)
            if r.deflated is not None:  # the exactly computed part, tr(QᵀHQ) of the deflated Krylov subspace
                cols[f"{sp}_deflated"] = _np(r.deflated)
        return cols, [""] * p


class Spectra(Metric):
    """Per-layer heavy-tailed spectral metrics of WᵀW, and their mean over the layers that fit (conv kernels:
    one matrix per kernel position, eigenvalues pooled, by default; BatchNorm parameters are not matrices)."""

    name = "spectra"
    identity = tuple(SETTINGS["spectra"].__dataclass_fields__)
    per_layer = ("alpha", "alpha_hat", "log_spectral_norm", "stable_rank", "num_evals")
    summarized = ("alpha", "alpha_hat", "log_spectral_norm", "stable_rank")

    def compute(self, net, params, buffers, data, s):
        layers = weight_layers({k: params[k][0] for k, _ in net.named_parameters() if k in params})  # the net's order
        short = {l: l.removesuffix(".weight") for l in layers}
        p = num_members(params)
        cols = {f"{m}[{short[l]}]": np.full(p, np.nan) for l in layers for m in self.per_layer}
        cols.update({f"{m}_mean": np.full(p, np.nan) for m in self.summarized}, layers_fit=np.zeros(p))
        notes = []
        for i in range(p):
            fits = [layer_spectrum(l, params[l][i], s["min_evals"], s["min_tail"], s["farms"], s["aspect_ratio"],
                                   s["max_blocks"], s["max_candidates"], s["conv"]) for l in layers]
            for l, r in zip(layers, fits):
                for m in self.per_layer:
                    cols[f"{m}[{short[l]}]"][i] = getattr(r, m)
            for m in self.summarized:  # mean over the layers where the value exists
                vals = [getattr(r, m) for r in fits if math.isfinite(getattr(r, m))]
                cols[f"{m}_mean"][i] = np.mean(vals) if vals else np.nan
            cols["layers_fit"][i] = sum(math.isfinite(r.alpha) for r in fits)
            notes.append("; ".join(f"{short[r.name]}: {r.note}" for r in fits if r.note))
        return cols, notes


class _PairMetric(Metric):
    scope = "cell"
    needs_loss = True  # the loss along a path between replicas

    def samples(self, s):  # and train data: BatchNorm statistics are always reset on it
        return [(sp, s["num_samples"], s["sample_seed"]) for sp in dict.fromkeys([s["split"], "train"])]


class Barrier(_PairMetric):
    """Loss barrier on the straight line between two seed replicas."""

    name = "barrier"
    identity = ("split", "num_samples", "sample_seed", "points", "max_pairs")

    def compute_pairs(self, net, a, b, data, s):
        x, y, loss = _samples(data[s["split"]])
        bn_x = data["train"][0] if has_batchnorm(net) else None
        r = linear_barrier(net, a, b, x, y, s["points"], bn_x, s["batch_size"], loss=loss)
        return {"value": _np(r.barrier)}


class ModeConnectivity(_PairMetric):
    """Mode connectivity along a trained quadratic Bézier curve between two seed replicas."""

    name = "mode_connectivity"
    identity = ("split", "num_samples", "sample_seed", "steps", "lr", "batch_size", "points", "max_pairs", "seed")

    def compute_pairs(self, net, a, b, data, s):
        x, y, loss = _samples(data[s["split"]])
        bn_x = data["train"][0] if has_batchnorm(net) else None
        r = mode_connectivity(net, a, b, x, y, s["steps"], s["lr"], s["batch_size"], s["points"], s["seed"], bn_x,
                              s["eval_batch_size"], loss=loss)
        return {"value": _np(r.mc), "t_star": _np(r.t_star)}


class CKA(_PairMetric):
    """Linear CKA between two seed replicas' outputs (logits or penultimate features) on held-out inputs."""

    name = "cka"
    identity = ("split", "num_samples", "sample_seed", "representation", "max_pairs")
    uses_running_stats = True
    needs_loss = False  # outputs on inputs alone: any kind of data (a PINN's u, a language model's logits)

    def refusal(self, net, s):
        if s["representation"] == "features" and not callable(getattr(net, "features", None)):
            return (f"{type(net).__name__} has no features() (penultimate activations); "
                    "use landscape.cka.representation=logits")
        return ""

    def samples(self, s):
        return [(s["split"], s["num_samples"], s["sample_seed"])]

    def compute_pairs(self, net, a, b, data, s):
        x = data[s["split"]][0]
        oa = population_outputs(net, a, x, s["representation"], s["batch_size"])  # [Q, N, d] or [Q, N, T, d]
        ob = population_outputs(net, b, x, s["representation"], s["batch_size"])
        # an output per position (a language model): one sample's representation is all of its positions'
        return {"value": _np(linear_cka(oa.flatten(2), ob.flatten(2)))}


METRICS: dict[str, Metric] = {m.name: m for m in (HessianEig(), HessianTrace(), Barrier(), ModeConnectivity(),
                                                  CKA(), Spectra())}
