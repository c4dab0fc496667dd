"""The memorization audit: how close is each net to the training zoo, in weights and in behaviour?

Weight space (Zeng et al. 2025): the nearest-neighbour L2 and cosine distance of a net to the
training checkpoints *after permutation alignment*, read against the same distance between
training checkpoints (each to its nearest *other* one). The ratio of the two is the weight novelty:
0 is a copy (up to a permutation of hidden units), about 1 is as far from the zoo as one more
independently trained member.

Alignment has a cost per pair (one weight matching), so it runs in two stages:
1. every net (training checkpoints and queries) is aligned once to an anchor checkpoint; distances
   in this common frame are upper bounds of the pairwise aligned distances (loose ones: a query is
   aligned exactly to the anchor only, so the anchor itself tends to look nearest, and other
   checkpoints look ~10% farther than they are for independently trained nets);
2. the `top_k` nearest candidates of each query (by L2 and by cosine in the anchor frame) are
   re-aligned to the query pairwise and their distance replaced by the smaller one.
A copy of a training checkpoint (permuted or not) aligns to the anchor like its original, so
stage 1 already finds it; for novel nets, stage 2 tightens the distance (measured on digits MLPs:
top_k=5 is within ~1% of aligning every pair, top_k=0 ~5% above). top_k >= the zoo size aligns every
pair (exact up to weight matching's own optimality).
Weight matching maximizes the inner product of the two nets; norms do not change under a
permutation, so one alignment minimizes the L2 distance and maximizes the cosine together.

Behaviour (needs no alignment: predictions are permutation invariant): the highest agreement of
predictions with any training checkpoint, and the highest IoU of the sets of inputs each net gets
wrong (a language model: its next-character predictions at every position). PINNs (one target
function: accurate nets agree, copies or not) get the output overlaps as descriptions and no
behavioural novelty (wsl.evaluate.domains).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from wsl.errors import ConfigError
from wsl.evaluate.accuracy import mean_std
from wsl.zoo.finite import all_finite

AlignFn = Callable[[dict, dict], dict]  # (reference state dict, state dict) -> aligned state dict


@contextlib.contextmanager
def one_thread():
    """Run weight matching on one intra-op thread. Its tensors are tiny (units x units); with more
    threads each op pays a thread hand-off, which on a busy machine costs far more than the work
    (measured: 24 ms vs 3.6 ms per depth-1 width-32 MLP alignment, 400 ms vs 8 ms at depth 2)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@dataclass
class Neighbours:
    """Nearest training checkpoint of each of S queries (indices into the reference list)."""

    l2: np.ndarray  # [S] L2 distance to the nearest one after alignment
    l2_index: np.ndarray  # [S] (-1 for a net with non-finite weights)
    cosine: np.ndarray  # [S] cosine distance (1 - cosine similarity) to the nearest one by cosine


class AlignedReference:
    """The training checkpoints, aligned to one anchor among them, ready for nearest-neighbour queries.

    state_dicts: T checkpoints of one architecture; flatten: state dict -> Tensor[N] (a zoo Layout's
    flatten); align: weight matching (None: compare raw weights, no alignment); anchor: index of the
    anchor checkpoint; top_k: candidates re-aligned pairwise per query and per distance.
    """

    def __init__(self, state_dicts: list[dict], flatten: Callable[[dict], torch.Tensor],
                 align: AlignFn | None, anchor: int = 0, top_k: int = 2):
        if not state_dicts:
            raise ConfigError("the memorization audit needs at least one training checkpoint")
        if not 0 <= anchor < len(state_dicts):
            raise ConfigError(f"anchor={anchor} is out of range for {len(state_dicts)} training checkpoints")
        self.flatten, self.align, self.top_k = flatten, align, int(top_k)
        self.anchor_sd = state_dicts[anchor]
        self.state_dicts = self.to_anchor(state_dicts)  # aligned to the anchor
        self.flat = self._flat(self.state_dicts)  # [T, N] float64

    def __len__(self) -> int:
        return len(self.state_dicts)

    def _flat(self, sds: list[dict]) -> torch.Tensor:
        return torch.stack([self.flatten(sd).double() for sd in sds])

    def to_anchor(self, state_dicts: list[dict]) -> list[dict]:
        """Each state dict aligned to the anchor (nets with non-finite weights are left as they are:
        no permutation makes them comparable, and their distances come out nan)."""
        if self.align is None:
            return list(state_dicts)
        with one_thread():
            return [self.align(self.anchor_sd, sd) if all_finite(sd) else sd for sd in state_dicts]

    def nearest(self, state_dicts: list[dict], exclude: np.ndarray | None = None,
                in_anchor_frame: bool = False) -> Neighbours:
        """Nearest training checkpoint of each query. exclude[s] = a reference index query s may not
        match (itself, for training-to-training distances); -1 for none. in_anchor_frame: the
        queries are already aligned to the anchor (the training checkpoints themselves)."""
        S = len(state_dicts)
        if S == 0:
            return Neighbours(np.zeros(0), np.zeros(0, np.int64), np.zeros(0))
        q_sds = list(state_dicts) if in_anchor_frame else self.to_anchor(state_dicts)
        q = self._flat(q_sds)  # [S, N]
        d2 = torch.cdist(q, self.flat)  # [S, T]
        cos = 1.0 - _cosine(q, self.flat)  # [S, T]
        if exclude is not None:
            ex = torch.as_tensor(exclude)
            rows, cols = torch.arange(S)[ex >= 0], ex[ex >= 0]
            d2[rows, cols] = cos[rows, cols] = float("inf")
        bad = ~torch.isfinite(q).all(1)  # [S] nets with non-finite weights have no neighbour
        d2[bad], cos[bad] = float("inf"), float("inf")
        if self.align is not None and self.top_k > 0:
            with one_thread():
                self._refine(q_sds, d2, cos)
        l2, l2_i = d2.min(1)
        c = cos.min(1).values
        l2[bad], c[bad], l2_i[bad] = float("nan"), float("nan"), -1
        return Neighbours(l2.numpy(), l2_i.numpy(), c.clamp_min(0).numpy())

    def _refine(self, q_sds: list[dict], d2: torch.Tensor, cos: torch.Tensor) -> None:
        """Pairwise re-alignment of each query to its top-k candidates (in place, never larger)."""
        k = min(self.top_k, d2.shape[1])
        cand = torch.cat([d2.topk(k, largest=False).indices, cos.topk(k, largest=False).indices], 1)  # [S, 2k]
        for s, row in enumerate(cand.tolist()):
            for t in sorted(set(row)):
                if not torch.isfinite(d2[s, t]):
                    continue  # an excluded pair
                a = self.flatten(self.align(self.state_dicts[t], q_sds[s])).double()[None]  # [1, N]
                r = self.flat[t][None]
                d2[s, t] = torch.minimum(d2[s, t], torch.cdist(a, r)[0, 0])
                cos[s, t] = torch.minimum(cos[s, t], 1.0 - _cosine(a, r)[0, 0])


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # [S, N], [T, N] -> [S, T]
    an = a / a.norm(dim=1, keepdim=True).clamp_min(1e-30)
    bn = b / b.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return an @ bn.T


@dataclass
class Overlap:
    """Highest behavioural overlap of each of S nets with any training checkpoint."""

    agreement: np.ndarray  # [S] max fraction of inputs with the same predicted class
    agreement_index: np.ndarray  # [S]
    wrong_iou: np.ndarray  # [S] max IoU of the sets of misclassified inputs


def prediction_overlap(pred: np.ndarray, ref_pred: np.ndarray, y: np.ndarray, num_classes: int,
                       exclude: np.ndarray | None = None) -> Overlap:
    """pred [S, n], ref_pred [T, n] predicted classes (-1: no prediction), y [n].

    Agreement counts class by class as a sum of C matrix products, or checkpoint by checkpoint when there
    are fewer checkpoints than classes (never an [S, T, n] tensor).
    Two nets that both get nothing wrong have identical (empty) error sets: IoU 1.
    """
    p, r = torch.as_tensor(pred), torch.as_tensor(ref_pred)
    S, n = p.shape
    if r.shape[0] == 0:
        raise ConfigError("prediction overlap needs at least one training checkpoint")
    agree = torch.zeros(S, r.shape[0], dtype=torch.float64)
    if num_classes <= r.shape[0]:
        for c in range(num_classes):
            agree += (p == c).double() @ (r == c).double().T
    else:  # many classes (a vocabulary), few checkpoints: one comparison per checkpoint
        for t in range(r.shape[0]):
            agree[:, t] = ((p == r[t]) & (p >= 0)).sum(1).double()
    agree /= max(1, n)
    yt = torch.as_tensor(y)
    wp = (p != yt).double()  # [S, n] wrong (or no prediction)
    wr = (r != yt).double()  # [T, n]
    inter = wp @ wr.T
    union = wp.sum(1, keepdim=True) + wr.sum(1)[None] - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))
    if exclude is not None:
        ex = torch.as_tensor(exclude)
        rows, cols = torch.arange(S)[ex >= 0], ex[ex >= 0]
        agree[rows, cols] = iou[rows, cols] = -1.0
    a, ai = agree.max(1)
    return Overlap(a.numpy(), ai.numpy(), iou.max(1).values.numpy())


@dataclass
class Audit:
    """Per-net audit results against a training zoo, with the training-to-training yardstick."""

    l2: np.ndarray  # [S]
    cosine: np.ndarray  # [S]
    l2_ratio: np.ndarray  # [S] l2 / median training-to-training NN L2 (the weight novelty)
    cosine_ratio: np.ndarray  # [S]
    nearest: np.ndarray  # [S] index of the nearest training checkpoint (L2)
    agreement: np.ndarray  # [S]
    wrong_iou: np.ndarray  # [S]
    memorized: np.ndarray  # [S] bool: l2_ratio below the threshold
    behavioural: bool = True  # False: agreement/wrong_iou describe the nets but are no novelty (PINNs)

    def summary(self, mask: np.ndarray | None = None) -> dict:
        """Mean ± std of every column over the nets in `mask` (default: all)."""
        keep = np.ones(len(self.l2), bool) if mask is None else np.asarray(mask, bool)
        out = {"n_audited": int(keep.sum())}
        for f in ("l2", "cosine", "l2_ratio", "cosine_ratio", "agreement", "wrong_iou"):
            out[f + "_mean"], out[f + "_std"] = mean_std(getattr(self, f)[keep])
        out["memorized_rate"] = float(self.memorized[keep].mean()) if keep.any() else float("nan")
        return out


@dataclass
class Yardstick:
    """Training-to-training nearest-neighbour statistics (each checkpoint against all others)."""

    l2: np.ndarray  # [T]
    cosine: np.ndarray  # [T]
    agreement: np.ndarray  # [T]
    wrong_iou: np.ndarray  # [T]
    nearest: np.ndarray  # [T] index of the nearest other checkpoint (L2)

    def as_audit(self, memorized_below: float, behavioural: bool = True) -> "Audit":
        """The training checkpoints' own audit (each against the others): novelty about 1 by construction."""
        return self.audit(self.l2, self.cosine, self.nearest, self.agreement, self.wrong_iou, memorized_below,
                          behavioural)

    def audit(self, l2, cosine, nearest, agreement, wrong_iou, memorized_below: float,
              behavioural: bool = True) -> "Audit":
        """Nearest-neighbour results read against this yardstick (novelty = distance / its median)."""
        l2_ratio = l2 / max(self.l2_median, 1e-30)
        return Audit(l2=l2, cosine=cosine, l2_ratio=l2_ratio, cosine_ratio=cosine / max(self.cosine_median, 1e-30),
                     nearest=nearest, agreement=agreement, wrong_iou=wrong_iou, memorized=l2_ratio < memorized_below,
                     behavioural=behavioural)

    @property
    def l2_median(self) -> float:
        return float(np.median(self.l2))

    @property
    def cosine_median(self) -> float:
        return float(np.median(self.cosine))


OverlapFn = Callable[..., Overlap]  # (pred [S, n], ref_pred [T, n], exclude=None) -> Overlap


def _overlap_fn(y, num_classes, overlap: OverlapFn | None) -> OverlapFn:
    if overlap is not None:
        return overlap
    if y is None or num_classes is None:
        raise ConfigError("the behavioural audit needs labels and a class count, or an overlap function")
    return lambda pred, ref_pred, exclude=None: prediction_overlap(pred, ref_pred, y, num_classes, exclude)


def training_yardstick(ref: AlignedReference, ref_pred: np.ndarray, y: np.ndarray | None = None,
                       num_classes: int | None = None, overlap: OverlapFn | None = None) -> Yardstick:
    """Each training checkpoint against its nearest *other* training checkpoint. Behaviour: predicted
    classes against labels y (num_classes), or `overlap` (a domain's own, wsl.evaluate.domains)."""
    T = len(ref)
    if T < 2:
        raise ConfigError("the memorization audit needs at least two training checkpoints "
                          f"(training-to-training distances are its yardstick), got {T}")
    self_idx = np.arange(T)
    nb = ref.nearest(ref.state_dicts, exclude=self_idx, in_anchor_frame=True)
    ov = _overlap_fn(y, num_classes, overlap)(ref_pred, ref_pred, exclude=self_idx)
    return Yardstick(nb.l2, nb.cosine, ov.agreement, ov.wrong_iou, nb.l2_index)


def audit(ref: AlignedReference, yard: Yardstick, state_dicts: list[dict], pred: np.ndarray,
          ref_pred: np.ndarray, y: np.ndarray | None = None, num_classes: int | None = None,
          memorized_below: float = 0.5, overlap: OverlapFn | None = None, behavioural: bool = True) -> Audit:
    """Audit S nets (state dicts + predictions [S, n]) against the training checkpoints.

    A net counts as memorized when its aligned NN distance is below `memorized_below` times the
    median training-to-training NN distance (closer to a training checkpoint than half the typical
    gap between two independently trained ones). Behaviour as in training_yardstick; behavioural=False:
    the overlaps describe the nets but give no behavioural novelty (a domain where they cannot)."""
    nb = ref.nearest(state_dicts)
    ov = _overlap_fn(y, num_classes, overlap)(pred, ref_pred)
    return yard.audit(nb.l2, nb.cosine, nb.l2_index, ov.agreement, ov.wrong_iou, memorized_below, behavioural)
