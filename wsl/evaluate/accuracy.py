"""Accuracy and loss of every net of a set on one data split, and the failure rate.

Every net is scored; summaries are mean ± std over all of them (never the best one). Nets are run
as one vmapped population (torch.func) unless they carry BatchNorm, whose running statistics are
first re-estimated on the *train* split one net at a time (the test split never feeds anything
that is then scored on it). `BatchNormInputs` says exactly which train inputs, in which batches:
what wsl-sample and wsl-evaluate record with their results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from wsl.errors import ConfigError
from wsl.landscape.batchnorm import has_batchnorm, reset_bn_stats
from wsl.population.functional import population_forward, stack_state_dicts


@dataclass(frozen=True)
class Metric:
    """The headline score of a domain: its index column suffix (`<split>_<key>`), its name in reports,
    its direction, and the `failure.<knob>` that fixes its failure threshold."""

    key: str
    name: str
    higher_is_better: bool
    knob: str

    def fails(self, value: np.ndarray, threshold: float) -> np.ndarray:
        """Nets whose score is on the wrong side of the threshold (nan scores are not caught here)."""
        v = np.asarray(value, dtype=float)
        return v < threshold if self.higher_is_better else v > threshold

    def better(self, a: float, b: float) -> float:
        """How much better a is than b, positive when better (a - b, or b - a for lower-is-better scores)."""
        return a - b if self.higher_is_better else b - a

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"


ACCURACY = Metric("acc", "accuracy", True, "min_accuracy")


@dataclass
class Scores:
    """Per-net results on one split (S nets, n inputs).

    accuracy [S] (0 where outputs are not finite: such a net predicts nothing; nan for a domain without
    one, PINNs), loss [S] (the domain's loss, for classification the mean cross-entropy; nan where not
    finite), predictions [S, n] (classification: int64 classes, -1 where not finite; see
    wsl.evaluate.domains for the other domains), finite [S] bool, failed [S] bool (not finite, or not
    clearly better than a constant predictor). score [S]: the domain's headline `metric` (default: the
    accuracy); min_accuracy: the threshold of that score `failed` used (named for classification, its
    first domain); extra: more per-net columns of the domain ({"residual": [S], ...}).
    """

    accuracy: np.ndarray
    loss: np.ndarray
    predictions: np.ndarray
    finite: np.ndarray
    failed: np.ndarray
    min_accuracy: float  # the threshold `failed` used (of `metric`)
    score: np.ndarray | None = None
    metric: Metric = ACCURACY
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.score is None:
            self.score = self.accuracy

    @property
    def threshold(self) -> float:
        return self.min_accuracy

    def __len__(self) -> int:
        return len(self.score)

    def column(self, name: str) -> np.ndarray | None:
        """A per-net column by index-metric name: "acc", "loss", the metric's key, or an extra one (None: not
        measured for this domain)."""
        if name == self.metric.key:
            return self.score
        if name == "acc":
            return self.accuracy
        if name == "loss":
            return self.loss
        return self.extra.get(name)

    def summary(self) -> dict:
        """Mean ± std over *all* nets (failed ones included: a generator owns its failures), plus
        the same over the nets that did not fail, and the failure rate. `score_*` is the headline metric
        (also under its own key, e.g. `rel_l2_*`; for classification `acc_*`)."""
        out = {"n": int(len(self)), "failure_rate": float(self.failed.mean()) if len(self) else float("nan"),
               "metric": self.metric.key}
        ok = ~self.failed
        cols = [("acc", self.accuracy), ("acc_ok", self.accuracy[ok]), ("loss", self.loss),
                ("score", self.score), ("score_ok", self.score[ok])]
        if self.metric.key != "acc":
            cols += [(self.metric.key, self.score), (f"{self.metric.key}_ok", self.score[ok])]
        cols += list(self.extra.items())
        for key, v in cols:
            out[f"{key}_mean"], out[f"{key}_std"] = mean_std(v)
        return {**out, "n_finite": int(np.isfinite(self.loss).sum())}


def mean_std(v) -> tuple[float, float]:
    """Mean and standard deviation (ddof=1) of the finite values of `v`; nan where there are too few."""
    v = np.asarray(v, dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan"), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


@dataclass
class BatchNormInputs:
    """The train inputs BatchNorm statistics are re-estimated on, and how they are batched.

    x [n, ...]: the train split (all of it), or `batches` batches of it drawn without replacement by a
    permutation seeded with `seed` (a fixed subset, the same for every net); batch_size: inputs per
    forward pass. The statistics are the average over the batches of each batch's mean and unbiased
    variance (one batch covering the inputs: their exact statistics), as `reset_bn_stats` computes them.
    """

    x: torch.Tensor
    batch_size: int
    split_size: int  # inputs in the whole train split
    seed: int | None = None  # of the subset; None: the whole split in its own order
    _moved: dict = field(default_factory=dict, repr=False, compare=False)  # device -> x there (copied once)

    @classmethod
    def of_split(cls, x_train: torch.Tensor, batch_size: int = 1024, batches: int | None = None,
                 seed: int = 0) -> "BatchNormInputs":
        """Re-estimation on the train split `x_train`: all of it (batches None, or at least the batches
        the split makes), or the first `batches` batches of its permutation seeded with `seed`."""
        n, b = int(x_train.shape[0]), int(batch_size)
        if b < 1 or (batches is not None and int(batches) < 1):
            raise ConfigError(f"batch_size={batch_size!r} and batches={batches!r} must be integers >= 1 (batches may be None)")
        if n == 0:
            raise ConfigError("the train split is empty: BatchNorm statistics cannot be re-estimated")
        if batches is None or int(batches) * b >= n:
            return cls(x_train, b, n)
        keep = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))[: int(batches) * b]
        return cls(x_train[keep], b, n, int(seed))

    @property
    def batches(self) -> int:
        return math.ceil(self.x.shape[0] / self.batch_size)

    def apply(self, net: nn.Module) -> nn.Module:
        """Re-estimate every BatchNorm's statistics of `net` on these inputs (on the device `net` is on);
        returns it in eval mode."""
        return reset_bn_stats(net, self.on(_device_of(net)), self.batch_size)

    def on(self, device: torch.device) -> torch.Tensor:
        """The inputs on `device` (copied there once, then reused for every net)."""
        if self.x.device == device:
            return self.x
        if device not in self._moved:
            self._moved[device] = self.x.to(device)
        return self._moved[device]

    def describe(self) -> dict:
        """What was used, as plain values (stored as provenance and in reports)."""
        return {"split": "train", "inputs": int(self.x.shape[0]), "split_size": self.split_size,
                "batch_size": self.batch_size, "batches": self.batches,
                "subset_seed": self.seed}

    def text(self) -> str:
        d = self.describe()
        what = (f"all {d['inputs']} inputs of the train split" if d["subset_seed"] is None else
                f"{d['inputs']} of the train split's {d['split_size']} inputs (a subset drawn with seed {d['subset_seed']})")
        return f"{what}, in {d['batches']} batch(es) of at most {d['batch_size']}"


def load_weights(net: nn.Module, state_dict: dict) -> nn.Module:
    """Load a state dict that holds every parameter of `net` and may lack its buffers (BatchNorm
    statistics, which are re-estimated afterwards); anything else missing or extra is an error."""
    buffers = {n for n, _ in net.named_buffers()}
    missing, unexpected = net.load_state_dict(state_dict, strict=False)
    if unexpected or set(missing) - buffers:
        raise ConfigError(f"state dict does not fit the net: missing {sorted(set(missing) - buffers)[:3]}, "
                          f"unexpected {sorted(unexpected)[:3]}")
    return net


def reestimate_batchnorm(net: nn.Module, x_train: torch.Tensor, batch_size: int = 1024) -> nn.Module:
    """Replace every BatchNorm's running mean/var by the average over `x_train` (per-batch variance
    averaged; one batch covering the split gives its exact statistics); the net is returned in eval mode."""
    return reset_bn_stats(net, x_train, batch_size)


def failure_threshold(y: torch.Tensor, num_classes: int, min_accuracy: float | None, min_gain: float) -> float:
    """Accuracy a net must reach not to count as failed.

    Default (min_accuracy=None): the accuracy of a constant predictor (the majority-class rate of the
    split) plus `min_gain` of the remaining gap to perfect — a net that closes less than that gap has
    learned nothing usable. Set `min_accuracy` to fix the threshold instead.
    """
    if min_accuracy is not None:
        return float(min_accuracy)
    majority = torch.bincount(y, minlength=num_classes).max().item() / max(1, len(y))
    return float(majority + min_gain * (1.0 - majority))


def _device_of(net: nn.Module) -> torch.device:
    p = next(iter(net.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _bn_inputs(x_train, bn_batch_size: int) -> BatchNormInputs | None:
    if x_train is None or isinstance(x_train, BatchNormInputs):
        return x_train
    return BatchNormInputs(x_train, int(bn_batch_size), int(x_train.shape[0]))


def iter_logits(net: nn.Module, state_dicts: list[dict], x: torch.Tensor,
                x_train: "torch.Tensor | BatchNormInputs | None" = None, chunk: int = 256, bn_batch_size: int = 1024,
                device: "torch.device | str" = "cpu"):
    """Yield outputs [s, n, C] (float32, on the CPU) for consecutive chunks of `state_dicts` (s <= chunk).

    Nets without BatchNorm run vmapped; nets with BatchNorm run one by one, each after its running
    statistics were re-estimated on the train inputs x_train (required then: a BatchNormInputs, or a
    tensor of train inputs taken whole in batches of bn_batch_size). Statistics stored in the state
    dicts are never used. The forward passes (and the re-estimation) run on `device` (`net` is moved
    there); the outputs come back to the CPU, so everything computed from them is the same code either way."""
    bn = has_batchnorm(net)
    if bn and x_train is None:
        raise ConfigError("nets with BatchNorm need the train inputs to re-estimate their statistics")
    bn_inputs = _bn_inputs(x_train, bn_batch_size) if bn else None
    device = torch.device(device)
    net.to(device)
    x = x.to(device)
    with torch.no_grad():
        for i in range(0, len(state_dicts), chunk):
            part = state_dicts[i : i + chunk]
            if bn:
                outs = []
                for sd in part:
                    load_weights(net, sd)  # weights alone are enough: the statistics are replaced
                    outs.append(bn_inputs.apply(net)(x).float().cpu())
                yield torch.stack(outs)
            else:
                params = {k: v.to(device) for k, v in stack_state_dicts(part).items()}
                yield population_forward(net.eval(), params, x, shared_input=True).float().cpu()


def score_logits(logits: torch.Tensor, y: torch.Tensor, min_accuracy: float) -> Scores:
    """Scores from outputs [S, n, C] and labels [n]."""
    S = logits.shape[0]
    finite = torch.isfinite(logits).flatten(1).all(1)  # [S]
    pred = logits.argmax(-1)  # [S, n]
    pred[~finite] = -1
    acc = (pred == y).double().mean(1)  # [S]
    # mean cross-entropy per net; a net with non-finite outputs has no loss
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), y.repeat(S), reduction="none").reshape(S, -1).double().mean(1)
    loss[~finite] = float("nan")
    acc_np, fin = acc.numpy(), finite.numpy()
    return Scores(accuracy=acc_np, loss=loss.numpy(), predictions=pred.numpy(), finite=fin,
                  failed=~fin | (acc_np < min_accuracy), min_accuracy=float(min_accuracy))


def score_nets(net: nn.Module, state_dicts: list[dict], x: torch.Tensor, y: torch.Tensor, num_classes: int,
               x_train: "torch.Tensor | BatchNormInputs | None" = None, min_accuracy: float | None = None, min_gain: float = 0.1,
               chunk: int = 256, bn_batch_size: int = 1024, device: "torch.device | str" = "cpu") -> Scores:
    """Accuracy, loss, predictions and failures of every net (state dicts of `net`'s architecture)
    on (x [n, ...], y [n]). BatchNorm nets get train-split statistics first (x_train required). The
    forward passes run on `device`."""
    thr = failure_threshold(y, num_classes, min_accuracy, min_gain)
    parts = [score_logits(lg, y, thr) for lg in iter_logits(net, state_dicts, x, x_train, chunk, bn_batch_size, device)]
    if not parts:
        e = np.zeros(0)
        return Scores(e, e.copy(), np.zeros((0, len(y)), dtype=np.int64), e.astype(bool), e.astype(bool), thr)
    return Scores(*(np.concatenate([getattr(p, f) for p in parts])
                    for f in ("accuracy", "loss", "predictions", "finite", "failed")), min_accuracy=thr)


def ensemble_scores(net: nn.Module, state_dicts: list[dict], x: torch.Tensor, y: torch.Tensor,
                    x_train: "torch.Tensor | BatchNormInputs | None" = None, chunk: int = 256, bn_batch_size: int = 1024,
                    device: "torch.device | str" = "cpu") -> dict:
    """The ensemble of all given nets (mean of their softmax outputs; members with non-finite
    outputs are left out): accuracy, loss and predictions [n]. The upper reference of the report."""
    total, members = None, 0
    for lg in iter_logits(net, state_dicts, x, x_train, chunk, bn_batch_size, device):
        ok = torch.isfinite(lg).flatten(1).all(1)
        p = lg[ok].double().softmax(-1).sum(0)  # [n, C]
        total = p if total is None else total + p
        members += int(ok.sum())
    if members == 0:
        return {"n_members": 0, "accuracy": float("nan"), "loss": float("nan"), "predictions": None}
    probs = total / members  # [n, C]
    pred = probs.argmax(-1)
    loss = torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), y).item()
    return {"n_members": members, "accuracy": float((pred == y).double().mean()), "loss": float(loss),
            "predictions": pred.numpy()}
