"""How wsl-evaluate judges the nets of each data kind: the headline score and its direction, the
failure rule, the ensemble, and the behavioural half of the memorization audit.

- classification (images, modular): accuracy, higher is better; loss the cross-entropy. Fails when its
  accuracy < the majority-class rate + min_gain x (1 - that rate). Behaviour: agreement of predicted
  classes; IoU of the sets of inputs got wrong.
- lm (text): bits per character over every position of the split, lower is better; also the
  next-character accuracy and the loss in nats per character. Fails when bpc > (1 - min_gain) x the
  split's unigram entropy (the best constant predictor's bpc). Behaviour: the same as classification,
  on the next-character predictions (one per position).
- pinn (convection): relative L2 error on the split's points, lower is better; loss the physics loss
  (residual + initial + boundary) and its terms; no accuracy. Fails when rel_l2 > (1 - min_gain) x the
  best constant field's rel_l2 (about 1 on the convection grid, where u = 0 scores exactly 1): rel_l2 >
  0.9 by default, a net that does not beat predicting nothing. Behaviour (described, not a novelty):
  output agreement 1 - min_t ||u - u_t|| / ||u_exact||; error-field similarity max_t cos(u - u_exact,
  u_t - u_exact).

Every "constant predictor" rule reads: a net fails when it does not close `min_gain` of the gap
between the best input-independent prediction and a perfect one; `failure.min_accuracy`,
`failure.max_bpc`, `failure.max_rel_l2` fix the threshold instead (each only for its domain).

A PINN has no behavioural novelty: its target is ONE function, so every accurate net computes nearly the
same field, and output overlap cannot tell a memorized net from a new one. Measured on 64 convection
PINNs (beta = 1, scripts/bench_generators.py --net pinn): independently trained nets agree with their
nearest other training net to 0.980 (1 - relative distance), closer than a copy of a training net with
1% relative weight noise stays to its own source (0.967); the error fields of independent nets are more
alike (cosine 0.94) than those of such copies (0.80, a small error field is dominated by the noise).
The audit therefore judges PINN memorization in weight space only (the weight novelty); the two
overlaps are reported as descriptions, the behavioural novelty column and axis are left out.

The numbers are those the population program stores for the same nets (`<split>_acc`, `_loss`,
`_bpc`, `_rel_l2`, `_residual`, `_ic`, `_bc`): the same definitions, up to float rounding of the
chunking. BatchNorm nets (classification only, in wsl's nets) get train-split statistics first.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsl.errors import ConfigError
from wsl.evaluate.accuracy import (ACCURACY, BatchNormInputs, Metric, Scores, ensemble_scores, failure_threshold,
                                   has_batchnorm, load_weights, score_nets)
from wsl.evaluate.novelty import Overlap, prediction_overlap
from wsl.population.functional import population_forward, stack_state_dicts

BPC = Metric("bpc", "bits per character", False, "max_bpc")
REL_L2 = Metric("rel_l2", "relative L2 error", False, "max_rel_l2")
KNOBS = {"classification": "min_accuracy", "lm": "max_bpc", "pinn": "max_rel_l2"}
OUTPUT_BUDGET = 1 << 24  # output numbers per forward pass (nets x inputs x outputs): 64 MiB of float32


def check_failure(kind: str, failure, dataset: str = "") -> None:
    """Refuse a failure threshold set for another domain (one line naming the key and the right one)."""
    if kind not in KNOBS:
        return
    for knob in KNOBS.values():
        value = getattr(failure, knob, None)
        if value is not None and knob != KNOBS[kind]:
            metric = {"classification": "accuracy", "lm": "bits per character", "pinn": "relative L2 error"}[kind]
            where = f"{kind} data" + (f", dataset={dataset}" if dataset else "")
            raise ConfigError(f"failure.{knob}={value} does not apply to this zoo ({where}); "
                              f"its nets are judged by their {metric}: set failure.{KNOBS[kind]}")


class Judge:
    """Scores the nets of one architecture on one dataset (`task`). Subclasses: one per data kind."""

    kind = "classification"
    metric = ACCURACY
    # the audit's behavioural columns: (agreement, overlap of errors) and how they are defined
    behaviour = ("max agreement", "max wrong-set IoU")
    behaviour_text = ("prediction agreement (fraction of inputs with the same predicted class) and IoU of the "
                      "sets of inputs each net gets wrong")
    novelty_axis = "behavioural novelty: 1 − max IoU of wrong-prediction sets"
    behavioural_novelty = True  # False: the overlaps describe the nets, but tell no memorization (PINNs)

    def __init__(self, task, net: nn.Module, bn: BatchNormInputs | None = None, chunk: int = 256,
                 failure=None, min_gain: float = 0.1, device: "torch.device | str" = "cpu"):
        # forward passes and BatchNorm re-estimation run on `device` (the net is moved there); every score is
        # computed from outputs brought back to the CPU, so the same code judges either way
        self.device = torch.device(device)
        self.task, self.net, self.bn, self.chunk = task, net.to(self.device), bn, int(chunk)
        self.failure = failure
        self.min_gain = float(getattr(failure, "min_gain", min_gain))
        self.fixed = getattr(failure, KNOBS[self.kind], None) if failure is not None else None

    def split(self, name: str):
        return self.task.split(name)

    def n_predictions(self, split: str) -> int:
        return int(self.split(split)[1].shape[0])

    def describe_inputs(self, split: str) -> str:
        return f"{self.n_predictions(split)} inputs"

    def threshold(self, split: str) -> float:
        x, y = self.split(split)
        return failure_threshold(y, self.task.num_classes, self.fixed, self.min_gain)

    def failure_text(self, threshold: float) -> str:
        return (f"its accuracy is below {threshold:.4f} (a constant predictor's accuracy plus {self.min_gain:g} of the "
                "gap to 1, unless failure.min_accuracy is set)")

    def scores(self, state_dicts: list, split: str) -> Scores:
        x, y = self.split(split)
        return score_nets(self.net, state_dicts, x, y, self.task.num_classes, x_train=self.bn,
                          min_accuracy=self.threshold(split), chunk=self.chunk, device=self.device)

    def ensemble(self, state_dicts: list, split: str, finite=None) -> dict:
        """The ensemble of all nets (mean softmax; members with non-finite outputs left out, whatever `finite`
        says: it is for the domains that need it)."""
        x, y = self.split(split)
        out = ensemble_scores(self.net, state_dicts, x, y, x_train=self.bn, chunk=self.chunk, device=self.device)
        return {**out, "score": out["accuracy"]}

    def overlap(self, pred, ref_pred, split: str, exclude=None) -> Overlap:
        y = self.split(split)[1]
        return prediction_overlap(pred, ref_pred, y.numpy().reshape(-1), self.task.num_classes, exclude)

    # ---- helpers of the vmapped domains
    def _complete(self, state_dicts: list) -> list:
        """State dicts with BatchNorm statistics re-estimated on the train inputs (nets without BatchNorm:
        as given), so that every net runs vmapped in eval mode."""
        if not has_batchnorm(self.net):
            return state_dicts
        if self.bn is None:
            raise ConfigError("nets with BatchNorm need the train inputs to re-estimate their statistics")
        out = []
        for sd in state_dicts:
            load_weights(self.net, sd)
            self.bn.apply(self.net)
            out.append({k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()})
        return out

    def _net_chunks(self, state_dicts: list):
        """(first index, stacked state of up to `chunk` nets, on the judge's device) in order."""
        for i in range(0, len(state_dicts), self.chunk):
            stacked = stack_state_dicts(self._complete(state_dicts[i: i + self.chunk]))
            yield i, {k: v.to(self.device) for k, v in stacked.items()}


class LanguageModelJudge(Judge):
    """Character-level language models (LMData, x and y [n, T] token ids): bits per character over every
    position of the split (lower is better), next-character accuracy, loss in nats per character; the
    behaviour of a net is its next-character prediction at every position."""

    kind = "lm"
    metric = BPC
    behaviour = ("max agreement", "max wrong-set IoU")
    behaviour_text = ("next-character prediction agreement (fraction of positions with the same predicted "
                      "character) and IoU of the sets of positions each net gets wrong")
    novelty_axis = "behavioural novelty: 1 − max IoU of wrong next-character sets"

    def n_predictions(self, split: str) -> int:
        return int(self.split(split)[1].numel())

    def describe_inputs(self, split: str) -> str:
        y = self.split(split)[1]
        return f"{y.shape[0]} windows of {y.shape[1]} characters: {y.numel()} next-character predictions"

    def unigram_bpc(self, split: str) -> float:
        """Bits per character of the best constant predictor: the entropy of the split's next characters."""
        y = self.split(split)[1].reshape(-1)
        p = torch.bincount(y, minlength=self.task.num_classes).double() / max(1, y.numel())
        p = p[p > 0]
        return float(-(p * p.log2()).sum())

    def threshold(self, split: str) -> float:
        if self.fixed is not None:
            return float(self.fixed)
        return (1.0 - self.min_gain) * self.unigram_bpc(split)

    def failure_text(self, threshold: float) -> str:
        return (f"its bits per character are above {threshold:.4f} ((1 − {self.min_gain:g}) × the split's unigram "
                "entropy: the best constant predictor's bpc, unless failure.max_bpc is set)")

    def _passes(self, state_dicts: list, x: torch.Tensor):
        """(first net, nets, input slice, logits [s, nb, T, C]) over chunks of nets and of windows."""
        C = self.task.num_classes
        x = x.to(self.device)
        for i, params in self._net_chunks(state_dicts):
            s = next(iter(params.values())).shape[0]
            nb = max(1, OUTPUT_BUDGET // max(1, s * x.shape[1] * C))
            for j in range(0, x.shape[0], nb):
                with torch.no_grad():
                    yield i, s, slice(j, j + nb), population_forward(self.net.eval(), params, x[j: j + nb],
                                                                     shared_input=True).float().cpu()

    def scores(self, state_dicts: list, split: str) -> Scores:
        x, y = self.split(split)
        S, n = len(state_dicts), y.numel()
        ce, correct = torch.zeros(S, dtype=torch.float64), torch.zeros(S, dtype=torch.float64)
        finite = torch.ones(S, dtype=torch.bool)
        pred = torch.full((S, *y.shape), -1, dtype=torch.int32)
        for i, s, sl, out in self._passes(state_dicts, x):
            yb = y[sl]
            rows = slice(i, i + s)
            finite[rows] &= torch.isfinite(out).flatten(1).all(1)
            ce[rows] += F.cross_entropy(out.flatten(0, -2), yb.expand(s, *yb.shape).flatten(),
                                        reduction="none").view(s, -1).sum(1).double()
            p = out.argmax(-1)
            correct[rows] += (p == yb).flatten(1).sum(1).double()
            pred[rows, sl] = p.to(torch.int32)
        loss = ce / max(1, n)
        loss[~finite] = float("nan")
        acc = correct / max(1, n)
        acc[~finite] = 0.0
        pred[~finite] = -1
        bpc = (loss / math.log(2)).numpy()
        thr = self.threshold(split)
        fin = finite.numpy()
        return Scores(accuracy=acc.numpy(), loss=loss.numpy(), predictions=pred.reshape(S, -1).numpy(), finite=fin,
                      failed=~fin | self.metric.fails(bpc, thr), min_accuracy=thr, score=bpc, metric=self.metric)

    def ensemble(self, state_dicts: list, split: str, finite=None) -> dict:
        """The mixture of all nets (mean of their next-character distributions at every position; nets with
        non-finite outputs left out: `finite` [S], their Scores' column, measured when not given): bits per
        character, accuracy, loss, predictions."""
        x, y = self.split(split)
        finite = self.scores(state_dicts, split).finite if finite is None else finite
        keep = [sd for sd, ok in zip(state_dicts, finite) if ok]
        if not keep:
            return {"n_members": 0, "score": float("nan"), "bpc": float("nan"), "accuracy": float("nan"),
                    "loss": float("nan"), "predictions": None}
        total = torch.zeros(*y.shape, self.task.num_classes, dtype=torch.float64)
        for _, _, sl, out in self._passes(keep, x):
            total[sl] += out.double().softmax(-1).sum(0)
        probs = total / len(keep)
        pred = probs.argmax(-1)
        loss = F.nll_loss(probs.clamp_min(1e-300).log().flatten(0, -2), y.flatten()).item()
        return {"n_members": len(keep), "score": loss / math.log(2), "bpc": loss / math.log(2),
                "accuracy": float((pred == y).double().mean()), "loss": float(loss),
                "predictions": pred.reshape(-1).to(torch.int32).numpy()}


class PINNJudge(Judge):
    """Physics-informed nets of the convection problem (PINNData): relative L2 error against the exact
    solution at the split's points (lower is better), the physics loss and its terms; the behaviour of a
    net is its solution field u on those points."""

    kind = "pinn"
    metric = REL_L2
    behaviour = ("max output agreement", "max error-field similarity")
    behaviour_text = ("output agreement (1 − relative L2 distance between two nets' solutions, ‖u − u_t‖ / "
                      "‖u_exact‖) and error-field similarity (cosine between the error fields u − u_exact); they "
                      "describe the nets but tell no memorization: a PINN's target is one function, every accurate "
                      "net computes nearly the same field (independent training nets typically agree more closely "
                      "than a copy with 1% weight noise agrees with its source), so PINN memorization is judged "
                      "by the weight novelty alone and no behavioural novelty is given")
    novelty_axis = ("behavioural novelty: not defined for PINNs (one target function: accurate nets agree, "
                    "copies or not)")
    behavioural_novelty = False

    def __init__(self, task, net, bn=None, chunk=256, failure=None, min_gain: float = 0.1, device="cpu"):
        super().__init__(task, net, bn, chunk, failure, min_gain, device)
        if has_batchnorm(net):
            raise ConfigError("nets with BatchNorm on PINN data: a physics-informed net's residual is taken one "
                              "point at a time, which BatchNorm does not allow; use a net without BatchNorm")

    def describe_inputs(self, split: str) -> str:
        return f"{self.n_predictions(split)} points (x, t)"

    def constant_rel_l2(self, split: str) -> float:
        """Relative L2 error of the best constant field (the mean of the exact solution on the split)."""
        u = self.split(split)[1].double()
        return float((u - u.mean()).norm() / u.norm().clamp_min(1e-30))

    def threshold(self, split: str) -> float:
        if self.fixed is not None:
            return float(self.fixed)
        return (1.0 - self.min_gain) * self.constant_rel_l2(split)

    def failure_text(self, threshold: float) -> str:
        return (f"its relative L2 error is above {threshold:.4f} ((1 − {self.min_gain:g}) × the best constant "
                "field's, about 1 on the convection grid where u = 0 scores exactly 1: a net that does not beat "
                "predicting nothing; unless failure.max_rel_l2 is set)")

    def _fields(self, state_dicts: list, split: str):
        """(first net, nets, u [s, N], residual [s, N], u at the initial points [s, Ni], u at the boundary pairs
        [s, 2 Nb]) per chunk of nets, as the population program computes them (wsl.population.pinn)."""
        from wsl.population.pinn import convection_residual

        x = self.split(split)[0].to(self.device)
        ic_x = self.task.initial(split)[0].to(self.device)
        left, right = self.task.boundary(split)
        ends = torch.cat([left, right]).to(self.device)
        for i, params in self._net_chunks(state_dicts):
            s = next(iter(params.values())).shape[0]
            nb = max(1, OUTPUT_BUDGET // max(1, 64 * s))  # activations of the per-point derivatives
            us, rs = [], []
            for j in range(0, x.shape[0], nb):
                with torch.no_grad():
                    u, r = convection_residual(self.net, params, x[j: j + nb], self.task.beta, True)
                us.append(u.cpu())
                rs.append(r.cpu())
            with torch.no_grad():
                u_ic = population_forward(self.net, params, ic_x, shared_input=True)[..., 0]
                u_ends = population_forward(self.net, params, ends, shared_input=True)[..., 0]
            yield i, s, torch.cat(us, 1), torch.cat(rs, 1), u_ic.cpu(), u_ends.cpu()

    def _terms(self, u, res, u_ic, u_ends, split: str) -> dict:
        """Per-net metrics [s] (float64) from the fields, as the population program defines them."""
        exact = self.split(split)[1][:, 0]
        ic_u = self.task.initial(split)[1][:, 0]
        nb = u_ends.shape[1] // 2
        residual = res.pow(2).double().mean(1)
        ic = (u_ic - ic_u).pow(2).double().mean(1)
        bc = (u_ends[:, :nb] - u_ends[:, nb:]).pow(2).double().mean(1)
        rel = (u - exact).double().pow(2).sum(1).sqrt() / exact.double().norm().clamp_min(1e-30)
        return {"loss": residual + ic + bc, "residual": residual, "ic": ic, "bc": bc, "rel_l2": rel}

    def scores(self, state_dicts: list, split: str) -> Scores:
        S, n = len(state_dicts), self.n_predictions(split)
        cols = {k: np.full(S, np.nan) for k in ("loss", "residual", "ic", "bc", "rel_l2")}
        fields = np.full((S, n), np.nan)
        finite = np.zeros(S, dtype=bool)
        for i, s, u, res, u_ic, u_ends in self._fields(state_dicts, split):
            ok = (torch.isfinite(u).all(1) & torch.isfinite(res).all(1) & torch.isfinite(u_ic).all(1)
                  & torch.isfinite(u_ends).all(1)).numpy()
            finite[i: i + s] = ok
            for k, v in self._terms(u, res, u_ic, u_ends, split).items():
                cols[k][i: i + s] = np.where(ok, v.numpy(), np.nan)
            fields[i: i + s] = np.where(ok[:, None], u.double().numpy(), np.nan)
        thr = self.threshold(split)
        rel = cols.pop("rel_l2")
        return Scores(accuracy=np.full(S, np.nan), loss=cols.pop("loss"), predictions=fields, finite=finite,
                      failed=~finite | self.metric.fails(rel, thr), min_accuracy=thr, score=rel, metric=self.metric,
                      extra=cols)

    def ensemble(self, state_dicts: list, split: str, finite=None) -> dict:
        """The mean solution of all nets (nets with non-finite outputs left out): its relative L2 error and its
        physics loss (the residual, initial and boundary terms are linear in u: those of the mean field)."""
        sums, members = None, 0
        for _, _, *f in self._fields(state_dicts, split):
            ok = torch.stack([torch.isfinite(t).all(1) for t in f]).all(0)
            part = [t[ok].double().sum(0) for t in f]
            sums = part if sums is None else [a + b for a, b in zip(sums, part)]
            members += int(ok.sum())
        if members == 0:
            return {"n_members": 0, "score": float("nan"), "rel_l2": float("nan"), "accuracy": float("nan"),
                    "loss": float("nan"), "predictions": None}
        u, res, u_ic, u_ends = (t[None] / members for t in sums)
        terms = {k: float(v[0]) for k, v in self._terms(u, res, u_ic, u_ends, split).items()}
        return {"n_members": members, "score": terms["rel_l2"], **terms, "accuracy": float("nan"),
                "predictions": u[0].numpy()}

    def overlap(self, pred, ref_pred, split: str, exclude=None) -> Overlap:
        """Output agreement 1 − min_t ‖u − u_t‖ / ‖u_exact‖ and error-field similarity max_t cos(u − u_exact,
        u_t − u_exact) of each of S fields pred [S, N] against ref_pred [T, N] (nan rows: no output; a row
        with nothing to compare gets nan)."""
        exact = self.split(split)[1][:, 0].double()
        p = torch.as_tensor(np.asarray(pred, dtype=np.float64))
        r = torch.as_tensor(np.asarray(ref_pred, dtype=np.float64))
        if r.shape[0] == 0:
            raise ConfigError("output overlap needs at least one training checkpoint")
        agree = 1.0 - torch.cdist(p, r) / exact.norm().clamp_min(1e-30)  # [S, T]
        ep, er = p - exact, r - exact
        cos = _unit(ep) @ _unit(er).T
        if exclude is not None:
            ex = torch.as_tensor(exclude)
            rows, cols = torch.arange(p.shape[0])[ex >= 0], ex[ex >= 0]
            agree[rows, cols] = cos[rows, cols] = float("nan")
        agree, cos = agree.nan_to_num(nan=-math.inf), cos.nan_to_num(nan=-math.inf)
        a, ai = agree.max(1)
        c = cos.max(1).values
        none = ~torch.isfinite(a)
        a[none], ai[none] = float("nan"), -1
        c[~torch.isfinite(c)] = float("nan")
        return Overlap(a.numpy(), ai.numpy(), c.numpy())


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)


JUDGES = {"classification": Judge, "lm": LanguageModelJudge, "pinn": PINNJudge}


def check_kind(task, failure=None) -> str:
    """The data kind of `task` when wsl-evaluate scores it (and `failure` sets no other domain's threshold);
    one line naming the dataset otherwise."""
    kind = getattr(task, "kind", "classification")
    if kind not in JUDGES:
        raise ConfigError(f"wsl-evaluate scores classification, language-model (dataset=text) and PINN "
                          f"(dataset=convection) zoos; dataset={getattr(task, 'name', '?')} is of kind {kind!r} "
                          "(an INR zoo fits one image per net: compare its PSNR columns instead)")
    if failure is not None:
        check_failure(kind, failure, getattr(task, "name", ""))
    return kind


def judge_for(task, net: nn.Module, bn: BatchNormInputs | None = None, chunk: int = 256, failure=None,
              device: "torch.device | str" = "cpu") -> Judge:
    """The judge of `task`'s data kind (its forward passes on `device`); refuses a kind wsl-evaluate does not
    score, in one line."""
    return JUDGES[check_kind(task, failure)](task, net, bn, chunk, failure, device=device)
