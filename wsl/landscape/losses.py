"""The loss a landscape metric differentiates and walks along: the zoo's own training loss.

The curvature (hessian.py) and path metrics (connectivity.py) read a loss through one interface, so
that a zoo's landscape is that of the loss its nets were trained on:

- `CrossEntropy` (data kinds "classification" and "lm"): the mean cross-entropy over every prediction
  (a sample; every position of a sequence), and the number of correct predictions.
- `PINNLoss` (kind "pinn"): wsl.population.pinn.ConvectionLoss, the function training calls: mean
  squared PDE residual at the sample's collocation points (derivatives with respect to the inputs by
  torch.func inside the vmapped population) + initial-condition MSE + periodic-boundary MSE on all of
  the split's initial points and boundary pairs. No accuracy (NaN); a PINN's score is its relative L2 error.

A loss is evaluated in batches of the samples: `batch(net, state, xb, yb, count, first)` is the batch's
share of every member's loss (the shares of the batches of one sample set sum to the loss over it;
`count` = `loss.count(x, y)` of the whole set, `first` marks the batch that carries terms not summed over
samples, such as the PINN's initial and boundary terms). `state` {name: [P, ...]} holds stacked
parameters and buffers; the result is differentiable in them, to any order (Hessian-vector products of the
PINN loss differentiate twice through its input derivatives).
"""

from __future__ import annotations

import torch
from torch import nn

from wsl.population.functional import population_forward, stacked_nll
from wsl.population.pinn import ConvectionLoss


class CrossEntropy:
    """Mean cross-entropy over every prediction: labels y [N] (or [N, T], a label per position)."""

    name = "cross_entropy"
    exact_trace = True  # the Gauss-Newton split wsl.landscape.exact_trace relies on holds

    def count(self, x: torch.Tensor, y: torch.Tensor) -> int:
        return max(1, y.numel())

    def batch(self, net: nn.Module, state: dict, xb: torch.Tensor, yb: torch.Tensor, count: int,
              first: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(this batch's share of every member's loss [P], correct predictions [P] (float64))."""
        logits = population_forward(net, state, xb, shared_input=True)  # [P, n, (T,) C]
        loss = stacked_nll(logits, yb).sum(1) / count
        return loss, (logits.detach().argmax(-1) == yb).flatten(1).double().sum(1)


class PINNLoss:
    """The convection PINN's training loss (wsl.population.pinn.ConvectionLoss) of one split: x [N, 2]
    collocation points (y, the exact u there, is not read)."""

    name = "pinn"
    exact_trace = False  # a PDE residual, not a cross-entropy of logits: Hutchinson's estimator applies

    def __init__(self, loss: ConvectionLoss):
        self.loss = loss
        self._cast = {}  # the loss's points in the dtype and on the device of the samples

    def _like(self, x: torch.Tensor) -> ConvectionLoss:
        key = (x.dtype, x.device)
        if key not in self._cast:
            c = self.loss
            self._cast[key] = ConvectionLoss(c.beta, *(t.to(x.device, x.dtype) for t in (
                c.initial_x, c.initial_u, c.boundary_left, c.boundary_right)))
        return self._cast[key]

    @classmethod
    def of(cls, data, split: str) -> "PINNLoss":
        return cls(ConvectionLoss.of(data, split))

    def count(self, x: torch.Tensor, y: torch.Tensor) -> int:
        return max(1, x.shape[0])

    def batch(self, net: nn.Module, state: dict, xb: torch.Tensor, yb: torch.Tensor, count: int,
              first: bool) -> tuple[torch.Tensor, None]:
        """(this batch's share of every member's loss [P]: its part of the mean squared residual, plus the
        initial and boundary terms on the first batch; None: no accuracy)."""
        loss = self._like(xb)
        res, _ = loss.residual(net, state, xb)
        share = res * (xb.shape[0] / count)
        if first:
            ic, bc = loss.initial_and_boundary(net, state)
            share = share + ic + bc
        return share, None


CROSS_ENTROPY = CrossEntropy()


def task_loss(data, split: str):
    """The training loss of `data` (a wsl.data object) on `split`, as the landscape metrics evaluate it;
    None for kinds without one here (INR zoos: each net fits its own image)."""
    if data.kind in ("classification", "lm"):
        return CROSS_ENTROPY
    if data.kind == "pinn":
        return PINNLoss.of(data, split)
    return None
