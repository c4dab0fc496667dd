"""SGD and Adam over stacked parameters with one learning rate and weight decay per member.

torch.optim gives every tensor one learning rate; here each tensor is [P, ...] and member k
uses lr[k], weight_decay[k]. The update rules are PyTorch's own (SGD with momentum and coupled
weight decay; Adam with coupled L2 like torch.optim.Adam; AdamW decoupled), so member k follows
exactly the trajectory torch.optim would give it alone. The group's scalar `lr` (1.0 at start)
is a multiplier that torch's LR schedulers drive. Members whose `active` flag is False are frozen.
"""

from __future__ import annotations

import torch


class PopulationOptimizer(torch.optim.Optimizer):
    def __init__(self, params, member_lr: torch.Tensor, member_wd: torch.Tensor, kind: str = "sgd",
                 momentum: float = 0.9, nesterov: bool = False, betas=(0.9, 0.999), eps: float = 1e-8,
                 active=None):
        defaults = dict(lr=1.0, kind=kind, momentum=momentum, nesterov=nesterov, betas=tuple(betas), eps=eps)
        super().__init__(params, defaults)
        self.member_lr = member_lr  # [P]
        self.member_wd = member_wd  # [P]
        self._active = active  # callable -> bool [P], or None (all active)

    @staticmethod
    def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return v.to(like.device, like.dtype).view(-1, *([1] * (like.dim() - 1)))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        active = self._active() if self._active is not None else None
        # every member active (the usual case): the update in place, one pass per term, no new tensors
        # of the parameters' size (at width 512 the out-of-place update was a quarter of the step)
        fast = active is None or bool(active.all())
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if fast and params:
                self._update_inplace(params, group)
                continue
            for p in params:
                lr = self._bcast(self.member_lr, p) * group["lr"]
                new = self._update(p, p.grad, lr, self._bcast(self.member_wd, p), group, self.state[p])
                p.copy_(new if active is None else torch.where(self._bcast(active, p).bool(), new, p))
        return loss

    def _update_inplace(self, params, group):
        """The same rule as _update, every member active: parameters and optimizer state updated in
        place (torch._foreach_* across tensors where the factor is one number)."""
        kind, grads = group["kind"], [p.grad for p in params]
        lrs = [self._bcast(self.member_lr, p) * group["lr"] for p in params]
        if not hasattr(self, "_decay"):  # member_wd is fixed: read once (on a GPU every read is a sync)
            self._decay = bool((self.member_wd != 0).any())
        decay = self._decay
        if decay and kind != "adamw":  # coupled weight decay (L2): the gradient is the step's to change
            for g, p in zip(grads, params):
                g.addcmul_(self._bcast(self.member_wd, p), p)
        if kind == "sgd":
            mom = group["momentum"]
            if mom:
                bufs, gs = [], []
                for p, g in zip(params, grads):
                    state = self.state[p]
                    if "momentum_buffer" not in state:  # the first step: the buffer is the gradient
                        state["momentum_buffer"] = g.clone()
                    else:
                        bufs.append(state["momentum_buffer"])
                        gs.append(g)
                if bufs:
                    torch._foreach_mul_(bufs, mom)
                    torch._foreach_add_(bufs, gs)
                bufs = [self.state[p]["momentum_buffer"] for p in params]
                if group["nesterov"]:
                    torch._foreach_add_(grads, bufs, alpha=mom)
                else:
                    grads = bufs
            for p, g, lr in zip(params, grads, lrs):
                p.addcmul_(lr, g, value=-1)
            return
        if kind == "adamw" and decay:
            for p, lr in zip(params, lrs):
                p.mul_(1 - lr * self._bcast(self.member_wd, p))
        (beta1, beta2), eps = group["betas"], group["eps"]
        for p, g, lr in zip(params, grads, lrs):
            state = self.state[p]
            if "step" not in state:
                state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            state["step"] += 1
            t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = v.sqrt().div_((1 - beta2**t) ** 0.5).add_(eps)
            p.addcmul_(lr / (1 - beta1**t), m.div(denom), value=-1)

    def _update(self, p, grad, lr, wd, group, state):
        kind = group["kind"]
        g = grad if kind == "adamw" else grad + wd * p  # coupled weight decay (L2); AdamW's is decoupled
        if kind == "sgd":
            mom = group["momentum"]
            if mom:
                buf = state.get("momentum_buffer")
                buf = state["momentum_buffer"] = g.clone() if buf is None else buf.mul_(mom).add_(g)
                g = g + mom * buf if group["nesterov"] else buf
            return p - lr * g
        if kind == "adamw":
            p = p * (1 - lr * wd)
        if "step" not in state:
            state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        state["step"] += 1
        t = state["step"]
        (beta1, beta2), m, v = group["betas"], state["exp_avg"], state["exp_avg_sq"]
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = v.sqrt() / (1 - beta2**t) ** 0.5 + group["eps"]
        return p - (lr / (1 - beta1**t)) * m / denom
