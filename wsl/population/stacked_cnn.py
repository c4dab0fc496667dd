"""A population of CNNs computed as batched matrix products over unfolded windows, without vmap.

Under vmap a population's convolution becomes one grouped convolution (a group per member), which
oneDNN ran at a fraction of the speed of the same members' convolutions one at a time: a training step
of 8 CNNs of width 16 (MNIST-1D) took 5.0-5.7 ms vmapped, against 2.8-3.0 ms here; of 8 CNNs of width 64
19.8-21.8 ms against 17.9-18.4 (one thread). Here activations are kept channels last ([P, N, *S, C]), each
layer copies its input windows into one matrix per member (im2col: every window's k^n x C numbers are one
contiguous run of the input) and multiplies it with the member's kernel as one batched product, bias fused,
ReLU in place. The backward (ConvAct) adds each kernel tap's share of the input gradient back in place
(col2im), and hands every gradient over contiguous or in the layout of the product that made it
(PopulationModule stores each weight in its gradient's layout, so the kernel reshapes without a copy).

PopulationModule takes this path for wsl.nets.CNN on 1-D signals with stride-2 convolutions (pooling="stride",
the Small CNN Zoo's) and no BatchNorm; other CNNs (and 2-D inputs: see supports) keep the vmapped path. Results
equal the vmapped path's up to float rounding (tests/test_population_stacked_cnn.py).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from wsl.nets.cnn import CNN
from wsl.population.stacked import LinearAct, _linear


def supports(net: nn.Module) -> bool:
    """Whether PopulationModule takes this path for `net` (a module or its meta skeleton): wsl.nets.CNN itself (a
    subclass may change forward) on 1-D signals, strided convolutions without pooling layers or BatchNorm.

    The functions below compute 2-D inputs as well (tested), but there this path was not reliably faster: a training
    step of 64 CNNs of width 16 on 8 x 8 digits took 54 ms against vmap's 41 (its per-tap copies and adds over
    16-channel runs of 4 x 4 positions, out of cache), of 8 CNNs of width 32 8.7 against 10.1 ms. On MNIST-1D it
    was faster at every size measured (8-64 members, widths 16-64, depths 2-3: 10-40%)."""
    return type(net) is CNN and len(net.in_shape) == 2 and net.pooling == "stride" and net.norm == "none"


def cnn_forward(net: CNN, params: dict[str, torch.Tensor], x: torch.Tensor, shared_input: bool,
                features: bool = False) -> torch.Tensor:
    """Every member's output: params {name: [P, ...]}, x [N, C, *S] (shared) or [P, N, C, *S] -> [P, N,
    num_classes] (or [P, N, width] globally pooled features with `features`)."""
    relu = isinstance(net.act, nn.ReLU)
    stride, pad = net.convs[0].stride[0], net.convs[0].padding[0]
    h = x.movedim(x.dim() - len(net.in_shape), -1)  # channels last: [N, *S, C] or [P, N, *S, C]
    grad = torch.is_grad_enabled()
    for i in range(net.depth):
        w, b = params[f"convs.{i}.weight"], params[f"convs.{i}.bias"]  # [P, O, C, *k], [P, O]
        shared = h.dim() == w.dim() - 1
        if grad:
            h = ConvAct.apply(h.expand(w.shape[0], *h.shape) if shared else h, w, b, stride, pad, relu)
        else:  # shared input (evaluation): every member's first layer as one product
            h = _shared_conv(h, w, b, stride, pad) if shared else _conv(h, w, b, stride, pad)[0]
            if relu:
                h.relu_()
        if not relu:
            h = net.act(h)
    h = h.flatten(2, -2).mean(2)  # global average pooling: [P, N, width]
    if features:
        return h
    w, b = params["head.weight"], params["head.bias"]
    return LinearAct.apply(h, w, b, False) if grad else _linear(h, w, b)


def _out_size(n: int, k: int, stride: int, pad: int) -> int:
    return (n + 2 * pad - k) // stride + 1


def _taps(sizes, out_sizes, k: int, stride: int, pad: int):
    """For every kernel tap (j_1, ..., j_n) in row-major order: per spatial dimension, the output positions
    (start, stop) whose window puts this tap inside the input, and the input position of the first."""
    per_dim = []
    for n, m in zip(sizes, out_sizes):
        dim = []
        for j in range(k):
            lo = min(m, max(0, -(-(pad - j) // stride)))  # first o with o * stride + j - pad >= 0
            hi = max(lo, min(m, (n - 1 - j + pad) // stride + 1))  # past the last o with o * stride + j - pad < n
            dim.append((lo, hi, lo * stride + j - pad))
        per_dim.append(dim)
    return itertools.product(*per_dim)


def _im2col(h: torch.Tensor, k: int, stride: int, pad: int, ndim: int) -> torch.Tensor:
    """h [..., *S, C] (ndim spatial dimensions) -> windows [..., *So, k^ndim, C], zeros where a window
    overhangs the input (the padding): one strided copy per kernel tap."""
    lead, sizes, c = h.shape[: h.dim() - ndim - 1], h.shape[h.dim() - ndim - 1 : -1], h.shape[-1]
    out_sizes = [_out_size(n, k, stride, pad) for n in sizes]
    cols = h.new_empty(*lead, *out_sizes, k**ndim, c)
    for t, ranges in enumerate(_taps(sizes, out_sizes, k, stride, pad)):
        tap = cols.select(-2, t)  # [..., *So, C]
        _zero_outside(tap, ranges, out_sizes, len(lead))
        if all(hi > lo for lo, hi, _ in ranges):  # else the tap lies in the padding at every output position
            dst, src = _tap_views(tap, h, ranges, stride, len(lead))
            dst.copy_(src)
    return cols


def _col2im(g_cols: torch.Tensor, sizes, k: int, stride: int, pad: int) -> torch.Tensor:
    """The adjoint of _im2col: g_cols [..., *So, k^ndim, C] -> [..., *S, C], each tap's share added in place."""
    ndim = len(sizes)
    lead, out_sizes, c = g_cols.shape[: g_cols.dim() - ndim - 2], g_cols.shape[g_cols.dim() - ndim - 2 : -2], g_cols.shape[-1]
    g = g_cols.new_zeros(*lead, *sizes, c)
    for t, ranges in enumerate(_taps(sizes, out_sizes, k, stride, pad)):
        if all(hi > lo for lo, hi, _ in ranges):
            src, dst = _tap_views(g_cols.select(-2, t), g, ranges, stride, len(lead))
            dst.add_(src)
    return g


def _zero_outside(tap: torch.Tensor, ranges, out_sizes, sp: int) -> None:
    """Zero the output positions of `tap` [..., *So, C] whose window puts the tap outside the input."""
    for d, (lo, hi, _) in enumerate(ranges):
        if lo > 0:
            tap.narrow(sp + d, 0, lo).zero_()
        if hi < out_sizes[d]:
            tap.narrow(sp + d, hi, out_sizes[d] - hi).zero_()


def _tap_views(tap: torch.Tensor, h: torch.Tensor, ranges, stride: int, sp: int):
    """(tap's output positions inside the input, the input positions they read): two views of equal shape (every
    range in `ranges` non-empty)."""
    for d, (lo, hi, first) in enumerate(ranges):
        tap = tap.narrow(sp + d, lo, hi - lo)
        h = h.narrow(sp + d, first, (hi - lo - 1) * stride + 1)[(slice(None),) * (sp + d) + (slice(None, None, stride),)]
    return tap, h


def _kernel_matrix(w: torch.Tensor) -> torch.Tensor:
    """w [P, O, C, *k] -> [P, O, k^ndim * C], taps major (the order of _im2col's windows): a view where w is
    stored channels last (PopulationModule stores it in its gradient's layout after the first step)."""
    return w.movedim(2, -1).reshape(w.shape[0], w.shape[1], -1)


def _conv(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride: int, pad: int):
    """Every member's convolution: h [P, N, *S, C], w [P, O, C, *k], b [P, O] -> (output [P, N, *So, O], the windows
    [P, N, *So, k^n, C] and kernels [P, O, k^n C] it multiplied)."""
    cols = _im2col(h, w.shape[-1], stride, pad, w.dim() - 3)
    wm = _kernel_matrix(w)
    y = torch.baddbmm(b.unsqueeze(1), cols.view(w.shape[0], -1, wm.shape[2]), wm.transpose(1, 2))  # [P, N So, O]
    return y.view(*cols.shape[:-2], w.shape[1]), cols, wm


def _shared_conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride: int, pad: int) -> torch.Tensor:
    """Shared input x [N, *S, C] through every member's convolution -> [P, N, *So, O], a view of one
    [N * So, P * O] product (the next layer's windows are copied out of it as they are)."""
    p, o, ndim = w.shape[0], w.shape[1], w.dim() - 3
    cols = _im2col(x, w.shape[-1], stride, pad, ndim)  # [N, *So, k^n, C]
    out_shape = cols.shape[:-2]
    wm = _kernel_matrix(w).reshape(p * o, -1)  # [P * O, k^n C]
    y = torch.addmm(b.reshape(1, p * o), cols.view(-1, wm.shape[1]), wm.t())  # [N * So, P * O]
    return y.view(*out_shape, p, o).movedim(-2, 0)


class ConvAct(torch.autograd.Function):
    """Every member's convolution, then ReLU in place where `relu`: h [P, N, *S, C] (channels last), w [P, O, C,
    *k], b [P, O] -> [P, N, *So, O] (stride and zero padding `pad` in every spatial dimension). Its backward
    returns a contiguous input gradient and the weight gradient in the layout of its product (channels last)."""

    @staticmethod
    def forward(ctx, h, w, b, stride: int, pad: int, relu: bool):
        y, cols, wm = _conv(h, w, b, stride, pad)  # [P, N, *So, O], [P, N, *So, k^n, C], [P, O, k^n C]
        if relu:
            y.relu_()
        ctx.relu, ctx.stride, ctx.pad = relu, stride, pad
        ctx.sizes, ctx.cols_shape, ctx.w_shape = h.shape[2:-1], cols.shape, w.shape
        ctx.save_for_backward(cols, wm, y if relu else None)
        return y

    @staticmethod
    def backward(ctx, g):
        cols, wm, y = ctx.saved_tensors
        p, o = ctx.w_shape[0], ctx.w_shape[1]
        g = g.contiguous().view(p, -1, o)  # [P, N So, O]
        # under autocast (bf16-mixed) the forward ran in g's dtype; the products here run in it too, and
        # autograd casts each gradient back to its input's dtype
        cols, wm = cols.to(g.dtype).view(p, -1, wm.shape[2]), wm.to(g.dtype)
        if ctx.relu:
            g = torch.ops.aten.threshold_backward(g, y.view_as(g), 0)
        gh = gw = gb = None
        if ctx.needs_input_grad[0]:
            g_cols = torch.bmm(g, wm).view(ctx.cols_shape)  # [P, N, *So, k^n, C]
            gh = _col2im(g_cols, ctx.sizes, ctx.w_shape[-1], ctx.stride, ctx.pad)
        if ctx.needs_input_grad[1]:
            k, ndim, c = ctx.w_shape[-1], len(ctx.sizes), ctx.w_shape[2]
            gw = torch.bmm(g.transpose(1, 2), cols).view(p, o, *([k] * ndim), c).movedim(-1, 2)  # [P, O, C, *k]
        if ctx.needs_input_grad[2]:
            gb = g.sum(1)
        return gh, gw, gb, None, None, None
