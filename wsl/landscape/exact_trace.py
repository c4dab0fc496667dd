"""Exact Hessian trace of piecewise-linear networks, for a whole population at once.

For the mean cross-entropy L = (1/N) Σ_n ℓ(z_n) of the logits z_n = f(θ, x_n) (Gauss-Newton split):

    H = (1/N) Σ_n [ J_nᵀ ∇²ℓ_n J_n  +  Σ_c (∂ℓ_n/∂z_c) ∇²_θ z_{n,c} ].

When every parameter enters one Linear or Conv layer, or one BatchNorm in eval mode (the affine map
γ (u − μ)/√(σ² + ε) + β of its stored statistics μ, σ²), each is used once per forward pass, and every
nonlinearity is piecewise linear (ReLU, leaky ReLU, max / average pooling), each logit is affine in
each single parameter once the activation pattern is fixed: the layer's output is affine in it and the
rest of the net, skip connections included, is linear in that output. So ∂²z/∂θ_i² = 0 (autograd's
Hessian, PyHessian's included, is this one): the second term has a zero diagonal (not zero: its
off-diagonal, e.g. between a conv weight and the γ after it) and, with ∇²ℓ_n = diag(p_n) − p_n p_nᵀ,

    tr(H) = (1/N) Σ_n [ Σ_c p_{n,c} |∇_θ z_{n,c}|²  −  |Σ_c p_{n,c} ∇_θ z_{n,c}|² ].

The per-sample, per-logit gradients are never formed whole. In a layer with input a and output
u = W a + b, the gradient of z_c is Σ_pos δ_c[pos] ⊗ a[pos] (δ_c = ∂z_c/∂u, positions: 1 for a
Linear layer, the output positions of a conv with a[pos] its input patch), so its squared norm is
Σ_{pos,pos'} ⟨δ_c[pos], δ_c[pos']⟩ (⟨a[pos], a[pos']⟩ + 1) — for a Linear layer |δ_c|² (|a|² + 1);
a conv layer uses this Gram form or forms the gradient, whichever costs less; a BatchNorm's are
Σ_pos δ_c[pos] û[pos] (γ) and Σ_pos δ_c[pos] (β), per channel, with û its normalized input. δ comes from one
backward pass per class through zero taps added to every layer's output, on the forward pass
vmapped over members. Cost: about C backward passes of the data (~2 Hessian-vector products on
the benchmark MLPs) and no estimator noise, against tens of Hutchinson probes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from wsl.population.functional import batches, num_members

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
MEMORY_FLOATS = 2**25  # per-sample Jacobian work kept in memory at once (128 MiB of float32)


def exact_trace_support(net: nn.Module, params: dict) -> str:
    """'' if the exact trace applies to `net`, else why not (the Hutchinson estimator still does)."""
    for name, mod in net.named_modules():  # batch statistics depend on every earlier parameter: not affine
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and (mod.training or mod.running_mean is None):
            how = "train mode" if mod.training else "no running statistics"
            return (f"BatchNorm {name} normalizes with batch statistics ({how}), which are not affine in the "
                    "parameters; the Hessian metrics need eval mode")
    if not getattr(net, "piecewise_linear", False):
        act = getattr(net, "activation_name", None)
        return (f"{type(net).__name__} (activation {act!r}) is not piecewise linear in its parameters"
                if act else f"{type(net).__name__} does not declare itself piecewise linear")
    owners = {f"{name}.{pname}" if name else pname: mod for name, mod in net.named_modules()
              for pname, _ in mod.named_parameters(recurse=False)}
    for k in params:
        mod = owners.get(k)
        if not isinstance(mod, LAYERS + NORMS):
            return f"parameter {k} is not in a Linear, Conv or BatchNorm layer ({type(mod).__name__})"
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)) and (mod.groups != 1 or isinstance(mod.padding, str)
                                                         or mod.padding_mode != "zeros"):
            return f"conv layer of {k} uses groups, string padding or non-zero padding mode"
    return ""


def _patches(mod: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """A layer's input as the vectors each output position sees: [n, K, L] (L = 1 for Linear)."""
    if isinstance(mod, nn.Linear):
        return a[..., None]
    if isinstance(mod, nn.Conv1d):  # as a 2-D conv of height 1
        return F.unfold(a[:, :, None], (1, mod.kernel_size[0]), dilation=(1, mod.dilation[0]),
                        padding=(0, mod.padding[0]), stride=(1, mod.stride[0]))
    return F.unfold(a, mod.kernel_size, dilation=mod.dilation, padding=mod.padding, stride=mod.stride)


def _layer_term(delta: torch.Tensor, patches: torch.Tensor, p: torch.Tensor, bias: bool) -> torch.Tensor:
    """Σ_c p_c |g_c|² − |Σ_c p_c g_c|² per sample, g_c = this layer's parameter gradient of logit c.

    delta [C, n, out, L] (∂z_c / ∂ layer output), patches [n, K, L], p [n, C] -> [n].
    """
    c, n, out, length = delta.shape
    k = patches.shape[1]
    pt = p.T  # [C, n]
    q = torch.einsum("cn,cnol->nol", pt, delta)  # Σ_c p_c δ_c  [n, out, L]
    if length * length * (c * out + k) <= c * out * k * length:  # Gram form: ⟨δ δ⟩ against ⟨patch patch⟩
        gram = patches.transpose(1, 2) @ patches + float(bias)  # [n, L, L]
        dd = torch.einsum("cn,cnol,cnom->nlm", pt, delta, delta) - q.transpose(1, 2) @ q
        return (dd * gram).sum((1, 2))
    g = torch.einsum("cnol,nkl->cnok", delta, patches)  # per-sample weight gradients [C, n, out, K]
    gq = torch.einsum("nol,nkl->nok", q, patches)
    s = (pt * g.pow(2).sum((2, 3))).sum(0) - gq.pow(2).sum((1, 2))
    if bias:
        gb = delta.sum(3)  # [C, n, out]
        s = s + (pt * gb.pow(2).sum(2)).sum(0) - q.sum(2).pow(2).sum(1)
    return s


def _norm_term(delta: torch.Tensor, normed: torch.Tensor, p: torch.Tensor, weight: bool, bias: bool) -> torch.Tensor:
    """_layer_term of an eval-mode BatchNorm: g_c = (Σ_pos δ_c û, Σ_pos δ_c) per channel (γ, β).

    delta [C, n, ch, L], normed [n, ch, L] (û, the input normalized by the running statistics), p [n, C] -> [n].
    """
    pt = p.T
    s = torch.zeros(delta.shape[1], dtype=delta.dtype, device=delta.device)
    for g in ([(delta * normed).sum(3)] if weight else []) + ([delta.sum(3)] if bias else []):  # [C, n, ch]
        s = s + (pt * g.pow(2).sum(2)).sum(0) - torch.einsum("cn,cnh->nh", pt, g).pow(2).sum(1)
    return s


class _Taps:
    """Runs `net` with a zero tensor added to each Linear/Conv/BatchNorm output, recording each layer's input
    (a BatchNorm's normalized by its running statistics: û, what γ multiplies)."""

    def __init__(self, net: nn.Module):
        self.net = net
        self.layers = [(n, m) for n, m in net.named_modules()
                       if isinstance(m, LAYERS) or (isinstance(m, NORMS) and m.affine)]

    def __call__(self, state: dict, x: torch.Tensor, taps: dict, inputs: dict) -> torch.Tensor:
        handles = []
        for name, mod in self.layers:
            def hook(m, inp, out, name=name):
                if isinstance(m, NORMS):  # the module's buffers here are the member's (functional_call)
                    shape = (1, -1) + (1,) * (inp[0].dim() - 2)
                    inputs[name] = (inp[0] - m.running_mean.view(shape)) * torch.rsqrt(m.running_var.view(shape) + m.eps)
                else:
                    inputs[name] = inp[0]
                return out + taps[name]
            handles.append(mod.register_forward_hook(hook))
        try:
            return functional_call(self.net, state, (x,))
        finally:
            for h in handles:
                h.remove()

    def shapes(self, state: dict, x: torch.Tensor) -> tuple[dict, int]:
        """(output shape of every layer for one sample: the taps' shapes, number of classes), from one
        forward pass; refuses layers that do not run exactly once (shared weights are not affine in each
        parameter)."""
        out, calls, handles = {}, dict.fromkeys(dict(self.layers), 0), []
        for name, mod in self.layers:
            def hook(_m, _i, o, name=name):
                out[name] = o.shape[1:]
                calls[name] += 1
            handles.append(mod.register_forward_hook(hook))
        try:
            with torch.no_grad():
                logits = functional_call(self.net, state, (x[:1],))
        finally:
            for h in handles:
                h.remove()
        for name, mod in self.layers:
            if calls[name] != 1:
                raise ValueError(f"exact Hessian trace does not apply: layer {name} runs {calls[name]} times per "
                                 "forward")
            if isinstance(mod, nn.Linear) and len(out[name]) != 1:
                raise ValueError(f"exact Hessian trace does not apply: Linear layer {name} maps inputs with extra "
                                 f"dimensions (output {list(out[name])} per sample)")
        return out, int(logits.shape[-1])


def exact_trace(net: nn.Module, params: dict, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None,
                buffers: dict | None = None) -> torch.Tensor:
    """tr(H) [P] of every member's mean cross-entropy on (x, y), exactly (see the module docstring).

    Only for nets `exact_trace_support` accepts (raises ValueError otherwise). y is not needed:
    the loss Hessian in logit space depends on the predicted probabilities only.
    """
    why = exact_trace_support(net, params)
    if why:
        raise ValueError(f"exact Hessian trace does not apply: {why}")
    buffers = buffers or {}
    p_count = num_members(params)
    taps_net = _Taps(net)
    first = {**{k: v[0] for k, v in params.items()}, **{k: v[0] for k, v in buffers.items()}}
    shapes, num_classes = taps_net.shapes(first, x)
    mods = dict(taps_net.layers)
    per_sample = 0  # floats of per-sample work: output Jacobians, formed conv gradients, input patches
    for k, s in shapes.items():
        if isinstance(mods[k], NORMS):  # output Jacobians and û
            per_sample += (num_classes + 1) * s.numel()
            continue
        positions = s[1:].numel() if len(s) > 1 else 1
        w = mods[k].weight
        per_sample += num_classes * (s.numel() + (w.numel() if positions > 1 else 0)) + w[0].numel() * positions
    step = max(1, min(batch_size or x.shape[0], MEMORY_FLOATS // max(1, p_count * per_sample)))

    def batch(xb: torch.Tensor) -> torch.Tensor:  # [P] sums over the batch's samples
        def forward(prm, buf, taps):
            inputs: dict = {}
            return taps_net({**prm, **buf}, xb, taps, inputs), inputs

        taps = {k: torch.zeros(p_count, xb.shape[0], *s, dtype=xb.dtype, device=xb.device, requires_grad=True)
                for k, s in shapes.items()}
        z, inputs = vmap(forward)(params, buffers, taps)  # [P, n, C], {layer: [P, n, ...]}
        p = z.detach().softmax(-1)
        # plain autograd, one backward per class (torch.func's vjp would import torch._dynamo: a second)
        grads = [torch.autograd.grad(z[..., c].sum(), list(taps.values()), retain_graph=c + 1 < num_classes)
                 for c in range(num_classes)]
        total = torch.zeros(p_count, dtype=z.dtype, device=z.device)
        slot = {k: i for i, k in enumerate(taps)}  # taps are in forward order, layers in module order
        for name, mod in taps_net.layers:
            d = torch.stack([g[slot[name]] for g in grads], 1)  # [P, C, n, out, *positions]
            if isinstance(mod, NORMS):
                normed = inputs[name].detach()
                total += vmap(_norm_term, in_dims=(0, 0, 0, None, None))(
                    d.reshape(*d.shape[:4], -1), normed.reshape(*normed.shape[:3], -1), p,
                    mod.weight is not None, mod.bias is not None).sum(1)
                continue
            d = d[..., None] if isinstance(mod, nn.Linear) else d.flatten(4)
            patches = vmap(lambda a, mod=mod: _patches(mod, a))(inputs[name].detach())
            total += vmap(_layer_term, in_dims=(0, 0, 0, None))(d, patches, p, mod.bias is not None).sum(1)
        return total

    out = torch.zeros(p_count, dtype=torch.float64, device=x.device)
    for sl in batches(x.shape[0], step):
        out += batch(x[sl]).double()
    return out / x.shape[0]
