"""A population of MLPs computed as batched matrix products, without vmap (training and evaluation).

population_forward (vmap over functional_call) is the general path every architecture takes. For the
MLP, the zoo's most common net, PopulationModule takes this one instead: the same function of the
same stacked parameters, with

- the bias fused into the matrix product (baddbmm) and ReLU applied in place;
- a backward of its own (LinearAct) that hands every gradient over in the layout of the kernel that
  reads it next. Autograd's backward of the vmapped linear produced the ReLU mask's gradient in a
  transposed layout, and PyTorch's elementwise kernels over mixed layouts ran 25x slower than over
  contiguous ones (threshold_backward of 64 x 128 x 128 numbers: 5.7 ms against 0.23 ms);
- on shared inputs (evaluation), the first layer of every member as one matrix product.

Measured (one thread; wsl bench_zoo's shapes): a training step of 64 MLPs 40-32-10 3.9 -> 2.8 ms, an
evaluation of 1,000 samples by 64 MLPs 40-128-128-10 91 -> 49 ms. Results equal the vmapped path's
up to float rounding (tests/test_population_stacked.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from wsl.nets.mlp import MLP


def supports(net: nn.Module) -> bool:
    """Whether `net` (a module or its meta skeleton) is an MLP this path computes: wsl.nets.MLP itself
    (a subclass may change forward)."""
    return type(net) is MLP


# evaluation chunks: the activations of one chunk, over the members that compute it together, at most
# EVAL_NUMBERS float32 numbers (2 MiB: within the caches of a core), and EVAL_SAMPLES samples or more per
# chunk (members go in groups where needed). Measured (one thread, caches flushed between evaluations as
# the training steps between them do): an evaluation of MNIST-1D (5,000 samples) by 32 MLPs
# 40-128-128-10, every member together over 512-sample chunks (8 MiB of activations) 176 ms, groups of
# 8 members 110 ms; 64 MLPs 40-32-10, 64 x 819 samples 55 ms, 32 x 512 44 ms.
EVAL_NUMBERS = 2**19
EVAL_SAMPLES = 512


def eval_plan(eval_batch_size: int, members: int, largest_activation: int) -> tuple[int, int]:
    """(members per group, samples per chunk) of an evaluation by this path (see EVAL_NUMBERS)."""
    act = max(1, largest_activation)
    chunk = max(1, min(int(eval_batch_size), max(EVAL_SAMPLES, EVAL_NUMBERS // (members * act))))
    group = max(1, min(members, EVAL_NUMBERS // (chunk * act)))
    return math.ceil(members / math.ceil(members / group)), chunk  # equal groups


def mlp_forward(net: MLP, params: dict[str, torch.Tensor], x: torch.Tensor, shared_input: bool,
                features: bool = False) -> torch.Tensor:
    """Every member's output: params {name: [P, ...]}, x [N, *in_shape] (shared) or [P, N, *in_shape] ->
    [P, N, num_classes] (or [P, N, width] penultimate activations with `features`)."""
    p = next(iter(params.values())).shape[0]
    h = x.flatten(x.dim() - len(net.in_shape))  # [N, F] or [P, N, F]
    relu = isinstance(net.act, nn.ReLU)
    layers = [(f"hidden.{i}.weight", f"hidden.{i}.bias", True) for i in range(net.depth)]
    if not features:
        layers.append(("head.weight", "head.bias", False))
    grad = torch.is_grad_enabled()
    for w_name, b_name, act in layers:
        w, b = params[w_name], params[b_name]  # [P, out, in], [P, out]
        fused = act and relu
        if grad:
            h = LinearAct.apply(h.expand(p, *h.shape) if h.dim() == 2 else h, w, b, fused)
        else:  # shared input: every member's first layer as one product [N, F] x [F, P * out]
            h = _shared_linear(h, w, b) if h.dim() == 2 else _linear(h, w, b)
            if fused:
                h.relu_()
        if act and not fused:
            h = net.act(h)
    return h


def _shared_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x [N, F] through every member's layer w [P, out, F], b [P, out] -> [P, N, out], a view of one [N, P * out]
    product (the batched product of the next layer reads it as it is). The bias rides in the product as a
    column of ones: no pass that copies a broadcast bias into the output first."""
    p, out, f = w.shape
    xa = torch.cat([x, x.new_ones(x.shape[0], 1)], 1)  # [N, F + 1]
    wa = torch.cat([w, b.unsqueeze(-1)], -1).reshape(p * out, f + 1)  # [P * out, F + 1]
    return torch.mm(xa, wa.t()).view(x.shape[0], p, out).transpose(0, 1)


# layers with fewer outputs than this (a classifier's head) compute their transposed product: [P, out, N]
# = W [P, out, in] x h^T, a product with N columns instead of `out` (measured 3-4x faster for 10 outputs:
# 22 members x 512 samples x 32 -> 10, 797 against 189 us)
NARROW = 16


def _linear(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h [P, N, in] -> h W^T + b [P, N, out] (for a narrow layer, a transposed view of [P, out, N])."""
    if w.shape[1] < NARROW:
        return torch.baddbmm(b.unsqueeze(2), w, h.transpose(1, 2)).transpose(1, 2)
    return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))


class LinearAct(torch.autograd.Function):
    """y = h W^T + b per member, then ReLU in place where `relu`: h [P, B, in], w [P, out, in], b [P, out]
    -> [P, B, out]. Its backward returns contiguous input gradients and weight gradients in the layout
    of the product that makes them fastest (PopulationModule stores each weight in its gradient's layout)."""

    @staticmethod
    def forward(ctx, h, w, b, relu: bool):
        y = _linear(h, w, b)
        if relu:
            y.relu_()
        ctx.relu, ctx.narrow = relu, w.shape[1] < NARROW
        ctx.save_for_backward(h, w, y if relu else None)
        return y

    @staticmethod
    def backward(ctx, g):
        h, w, y = ctx.saved_tensors
        # g in y's layout ([P, out, B] underneath for a narrow layer): the mask and the products read it densely
        g = g.transpose(1, 2).contiguous().transpose(1, 2) if ctx.narrow else g.contiguous()
        # under autocast (bf16-mixed) the forward ran in g's dtype; the products here run in it too, and
        # autograd casts each gradient back to its input's dtype
        h, w = h.to(g.dtype), w.to(g.dtype)
        if ctx.relu:
            g = torch.ops.aten.threshold_backward(g, y, 0)
        gh = gw = gb = None
        if ctx.needs_input_grad[0]:
            gh = torch.bmm(g, w)  # [P, B, in]
        if ctx.needs_input_grad[1]:
            # [P, in, B] x [P, B, out], transposed: faster than [P, out, B] x [P, B, in] except for narrow
            # layers (measured 74 against 62 GFLOP/s at 128 x 128, 13 against 52 at 32 -> 10)
            gw = torch.bmm(g.transpose(1, 2), h) if ctx.narrow else torch.bmm(h.transpose(1, 2), g).transpose(1, 2)
        if ctx.needs_input_grad[2]:
            gb = g.sum(1)
        return gh, gw, gb, None
