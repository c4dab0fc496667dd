"""Accuracy and loss of every net of a set on one data split, and the failure rate.

Every net is scored; summaries are mean ± std over all of them (never the best one). Nets are run
as one vmapped population (torch.func) unless they carry BatchNorm, whose running statistics are
first re-estimated on the *train* split one net at a time (the test split never feeds anything
that is then scored on it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from wsl.errors import ConfigError
from wsl.landscape.batchnorm import has_batchnorm, reset_bn_stats
from wsl.population.functional import population_forward, stack_state_dicts


@dataclass
class Scores:
    """Per-net results on one split (S nets, n inputs).

    accuracy [S] (0 where outputs are not finite: such a net predicts nothing), loss [S] (mean
    cross-entropy; nan where not finite), predictions [S, n] int64 (-1 where not finite),
    finite [S] bool, failed [S] bool (not finite, or not clearly better than a constant predictor).
    """

    accuracy: np.ndarray
    loss: np.ndarray
    predictions: np.ndarray
    finite: np.ndarray
    failed: np.ndarray
    min_accuracy: float  # the threshold `failed` used

    def __len__(self) -> int:
        return len(self.accuracy)

    def summary(self) -> dict:
        """Mean ± std over *all* nets (failed ones included: a generator owns its failures), plus
        the same over the nets that did not fail, and the failure rate."""
        out = {"n": int(len(self)), "failure_rate": float(self.failed.mean()) if len(self) else float("nan")}
        for key, v in (("acc", self.accuracy), ("acc_ok", self.accuracy[~self.failed]), ("loss", self.loss)):
            out[f"{key}_mean"], out[f"{key}_std"] = mean_std(v)
        return {**out, "n_finite": int(np.isfinite(self.loss).sum())}


def mean_std(v) -> tuple[float, float]:
    """Mean and standard deviation (ddof=1) of the finite values of `v`; nan where there are too few."""
    v = np.asarray(v, dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan"), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


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


def iter_logits(net: nn.Module, state_dicts: list[dict], x: torch.Tensor, x_train: torch.Tensor | None = None,
                chunk: int = 256, bn_batch_size: int = 1024):
    """Yield outputs [s, n, C] for consecutive chunks of `state_dicts` (s <= chunk).

    Nets without BatchNorm run vmapped; nets with BatchNorm run one by one, each after its running
    statistics were re-estimated on x_train (required then)."""
    bn = has_batchnorm(net)
    if bn and x_train is None:
        raise ConfigError("nets with BatchNorm need the train inputs to re-estimate their statistics")
    with torch.no_grad():
        for i in range(0, len(state_dicts), chunk):
            part = state_dicts[i : i + chunk]
            if bn:
                outs = []
                for sd in part:
                    net.load_state_dict(sd)
                    outs.append(reestimate_batchnorm(net, x_train, bn_batch_size)(x))
                yield torch.stack(outs).float()
            else:
                yield population_forward(net.eval(), stack_state_dicts(part), x, shared_input=True).float()


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
               x_train: torch.Tensor | None = None, min_accuracy: float | None = None, min_gain: float = 0.1,
               chunk: int = 256, bn_batch_size: int = 1024) -> Scores:
    """Accuracy, loss, predictions and failures of every net (state dicts of `net`'s architecture)
    on (x [n, ...], y [n]). BatchNorm nets get train-split statistics first (x_train required)."""
    thr = failure_threshold(y, num_classes, min_accuracy, min_gain)
    parts = [score_logits(lg, y, thr) for lg in iter_logits(net, state_dicts, x, x_train, chunk, bn_batch_size)]
    if not parts:
        e = np.zeros(0)
        return Scores(e, e.copy(), np.zeros((0, len(y)), dtype=np.int64), e.astype(bool), e.astype(bool), thr)
    return Scores(*(np.concatenate([getattr(p, f) for p in parts])
                    for f in ("accuracy", "loss", "predictions", "finite", "failed")), min_accuracy=thr)


def ensemble_scores(net: nn.Module, state_dicts: list[dict], x: torch.Tensor, y: torch.Tensor,
                    x_train: torch.Tensor | None = None, chunk: int = 256, bn_batch_size: int = 1024) -> dict:
    """The ensemble of all given nets (mean of their softmax outputs; members with non-finite
    outputs are left out): accuracy, loss and predictions [n]. The upper reference of the report."""
    total, members = None, 0
    for lg in iter_logits(net, state_dicts, x, x_train, chunk, bn_batch_size):
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
