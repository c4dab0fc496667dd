"""The LightningModule that trains a whole population in one vmapped program."""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn

from wsl.population.functional import population_forward, psnr, skeleton, split_state
from wsl.population.pinn import ConvectionLoss
from wsl.population.optim import PopulationOptimizer
from wsl.population.schedules import lr_factor
from wsl.population import stacked as stacked_mlp, stacked_cnn
from wsl.population.schema import eval_chunk, eval_plan, net_footprint


class PopulationModule(L.LightningModule):
    """P members of one architecture, parameters stacked as [P, ...] tensors.

    Member k sees its own minibatches (index rows from PopulationBatchSampler), its own lr and
    weight decay. Its loss is independent of every other member's parameters, so summing the
    member losses gives each member exactly its own gradient. A member whose loss turns NaN/inf
    is marked diverged and frozen; the others go on.

    data.kind "classification" (ClassificationData): every member sees the same data; loss cross-entropy,
    metrics <split>_loss and <split>_acc. data.kind "inr" (INRData): inputs (coordinates) are shared,
    targets are one row per image ([T, N, C]) and member k fits row `target_rows[k]`; loss mean
    squared error, metrics <split>_loss (the MSE) and <split>_psnr (dB, peak = data.value_range).
    data.kind "lm" (LMData): x, y [N, T] token ids, y the next token at every position; loss the
    cross-entropy over every position, metrics <split>_loss (nats per token), <split>_bpc (bits per
    token, loss / ln 2) and <split>_acc (next-token accuracy over all positions). data.kind "pinn"
    (PINNData, the convection equation): minibatches of collocation points, every step also the split's
    initial points and boundary pairs; loss = mean squared residual u_t + beta u_x (derivatives of each
    member by torch.func inside the vmapped program, wsl.population.pinn) + initial-condition MSE +
    periodic-boundary MSE; metrics <split>_loss (the total), <split>_residual, <split>_ic, <split>_bc
    and <split>_rel_l2 (relative L2 error against the exact solution at the split's points).

    Buffers (BatchNorm running_mean, running_var, num_batches_tracked) are stacked [P, ...] like the
    parameters and registered as module buffers (they follow the module's device and are in its
    state dict), never seen by the optimizer. Training steps update member k's row with member k's
    batch statistics; evaluation runs the net in eval mode on them. `init_params` may be whole state
    dicts (parameters and buffers) or the parameters alone (buffers then start as `net`'s own).
    A diverged member's buffers are frozen with its parameters (restored to their values before the
    step that diverged).
    """

    def __init__(self, net: nn.Module, init_params: dict[str, torch.Tensor], data, lr, weight_decay,
                 optimizer: str = "sgd", momentum: float = 0.9, nesterov: bool = False, betas=(0.9, 0.999),
                 eps: float = 1e-8, schedule: str = "constant", warmup_epochs: int = 0, step_epochs: int = 0,
                 gamma: float = 0.1, epochs: int = 1, steps_per_epoch: int = 1, eval_batch_size: int = 4096,
                 target_rows=None):
        super().__init__()
        # structure only, on the meta device; kept out of the module tree so device moves skip it
        object.__setattr__(self, "net", skeleton(net))
        params, buffers = split_state(net, init_params)
        self.population_size = p = next(iter(params.values())).shape[0]
        own = net.state_dict()
        unknown = sorted(set(buffers) - set(own))
        if unknown:
            raise ValueError(f"init_params holds tensors that are not in the net's state dict: {unknown[:3]}")
        self.state_names = list(own)  # the net's state_dict order: what member_state_dict returns
        self.names = [k for k in self.state_names if k in params]
        missing = sorted(k for k, _ in net.named_parameters() if k not in params)
        if missing:
            raise ValueError(f"init_params lacks the net's parameters {missing[:3]}")
        self.buffer_names = [k for k in self.state_names if k not in params]
        self.stacked = nn.ParameterList([nn.Parameter(params[k].clone()) for k in self.names])
        # buffers the caller did not give start as the net's own, one copy per member
        stacked = [(buffers[k] if k in buffers else own[k].expand(p, *own[k].shape)).clone() for k in self.buffer_names]
        self.stacked_buffers = _Buffers(stacked)
        self.register_buffer("member_lr", torch.as_tensor(lr, dtype=torch.float32).expand(p).clone())
        self.register_buffer("member_wd", torch.as_tensor(weight_decay, dtype=torch.float32).expand(p).clone())
        self.register_buffer("alive", torch.ones(p, dtype=torch.bool))
        self.register_buffer("diverged_epoch", torch.full((p,), -1, dtype=torch.long))
        self.kind = data.kind
        self.value_range = float(getattr(data, "value_range", 2.0))
        if self.kind == "inr":  # member k fits target row target_rows[k] (default: row k)
            rows = torch.arange(p) if target_rows is None else torch.as_tensor(target_rows, dtype=torch.long)
            self.register_buffer("target_rows", rows.clone(), persistent=False)
        for split in ("train", "val", "test"):
            x, y = data.split(split)
            self.register_buffer(f"x_{split}", x, persistent=False)
            self.register_buffer(f"y_{split}", y, persistent=False)
            if self.kind == "pinn":  # the split's initial points (with u(x, 0)) and boundary pairs
                for name, t in zip(("ic_x", "ic_u"), data.initial(split)):
                    self.register_buffer(f"{name}_{split}", t, persistent=False)
                for name, t in zip(("bc_left", "bc_right"), data.boundary(split)):
                    self.register_buffer(f"{name}_{split}", t, persistent=False)
        self.beta = float(getattr(data, "beta", 0.0))
        self.opt_kwargs = dict(kind=optimizer, momentum=momentum, nesterov=nesterov, betas=betas, eps=eps)
        self.sched_kwargs = dict(name=schedule, total_steps=epochs * steps_per_epoch,
                                 warmup_steps=warmup_epochs * steps_per_epoch,
                                 step_size=step_epochs * steps_per_epoch, gamma=gamma)
        self.eval_batch_size = eval_batch_size
        # samples per evaluation chunk: eval_batch_size at most, fewer where all members' activations
        # over a chunk would leave the cache (faster on CPU, same numbers)
        shape = getattr(net, "in_shape", None)
        fp = None if shape is None else net_footprint(net, shape)
        # MLPs and strided CNNs: batched matrix products with a backward of their own instead of vmap,
        # evaluated in smaller chunks (wsl.population.stacked, wsl.population.stacked_cnn)
        self.stacked_path = _stacked_path(net) if not self.buffer_names and fp is not None else None
        if self.stacked_path is not None:
            self.eval_group, self.eval_chunk = stacked_mlp.eval_plan(eval_batch_size, p, fp.largest_activation)
            self.eval_group_chunk = self.eval_chunk
        else:
            self.eval_chunk = eval_batch_size if fp is None else eval_chunk(eval_batch_size, p, fp.largest_activation)
            # classification, INRs, language models: members in groups over larger chunks where the nets are wide
            self.eval_group, self.eval_group_chunk = ((p, self.eval_chunk) if fp is None else
                                                      eval_plan(eval_batch_size, p, fp.largest_activation,
                                                                fp.parameters))

    def train(self, mode: bool = True):
        self.net.train(mode)
        return super().train(mode)

    # ---- parameters -------------------------------------------------------------------------
    def params(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.stacked))

    def stacked_state(self) -> dict[str, torch.Tensor]:
        """Stacked buffers {name: [P, ...]} (BatchNorm statistics; empty for nets without buffers)."""
        return dict(zip(self.buffer_names, self.stacked_buffers.tensors()))

    @torch.no_grad()
    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's state dict: parameters and buffers, in the net's state_dict order and dtypes."""
        state = {**self.params(), **self.stacked_state()}
        return {n: state[n][k].detach().cpu().clone(memory_format=torch.contiguous_format) for n in self.state_names}

    @torch.no_grad()
    def member_state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """Every member's state dict (as member_state_dict(k)), the stacked tensors copied to the CPU once
        (one device-to-host copy per tensor, not one per member and tensor)."""
        state = {**self.params(), **self.stacked_state()}
        rows = {n: state[n].detach().cpu().unbind(0) for n in self.state_names}
        return [{n: rows[n][k].clone(memory_format=torch.contiguous_format) for n in self.state_names}
                for k in range(self.population_size)]

    # ---- training ---------------------------------------------------------------------------
    @property
    def metric_names(self) -> tuple[str, ...]:
        """What evaluate() returns: (loss, accuracy); for INRs (mean squared error, PSNR); for language
        models (loss, bits per token, next-token accuracy); for PINNs (total loss, residual, initial and
        boundary terms, relative L2 error)."""
        return METRIC_NAMES[self.kind]

    def member_losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x [P, B, ...], y [P, B] (labels), [P, B, C] (INR targets) or [P, B, T] (next tokens) -> mean loss
        per member [P]: cross-entropy (over every position for "lm"), for INRs the mean squared error over
        pixels and channels, for PINNs the physics-informed loss (x: collocation points, y unused)."""
        if self.kind == "pinn":
            return sum(self.pinn_terms(x, "train", shared_input=False)[:3])
        out = self.forward_members(self.params(), x, shared_input=False, buffers=self.stacked_state())
        if self.kind == "inr":
            return (out - y).pow(2).mean(dim=(1, 2))
        return member_cross_entropy(out, y).flatten(1).mean(1)

    def forward_members(self, params: dict[str, torch.Tensor], x: torch.Tensor, shared_input: bool,
                        buffers: dict[str, torch.Tensor]) -> torch.Tensor:
        """Every member's output (population_forward's contract): MLPs by wsl.population.stacked, strided
        CNNs by wsl.population.stacked_cnn, every other net by vmap."""
        if self.stacked_path is not None:
            return self.stacked_path(self.net, params, x, shared_input)
        return population_forward(self.net, params, x, shared_input=shared_input, buffers=buffers)

    def pinn_terms(self, x: torch.Tensor, split: str, shared_input: bool):
        """(mean squared residual [P], initial MSE [P], boundary MSE [P], u at x [P, N]) of every member:
        residuals at points x ([N, 2] shared or [P, N, 2] per member), the initial points and boundary
        pairs of `split` (wsl.population.pinn.ConvectionLoss, which the landscape metrics use too)."""
        loss = ConvectionLoss(self.beta, getattr(self, f"ic_x_{split}"), getattr(self, f"ic_u_{split}"),
                              getattr(self, f"bc_left_{split}"), getattr(self, f"bc_right_{split}"))
        return loss.terms(self.net, self.params(), x, shared_input)

    def _targets(self, split: str, idx: torch.Tensor) -> torch.Tensor:
        """Targets of the samples idx [P, B] (member k's row of idx): [P, B] labels or [P, B, C] values."""
        y = getattr(self, f"y_{split}")
        if self.kind == "inr":
            return y[self.target_rows[:, None], idx]
        return _rows(y, idx)

    def training_step(self, idx: torch.Tensor, batch_idx: int) -> torch.Tensor:
        if not getattr(self, "_layout_seen", False):
            self._watch_gradient_layout()
        x, y = _rows(self.x_train, idx), self._targets("train", idx)  # [P, B, ...], [P, B] or [P, B, C]
        # BatchNorm statistics (small) before the step: frozen members get theirs back after it
        self._buffers_before = [b.clone() for b in self.stacked_buffers.tensors()]
        losses = self.member_losses(x, y)  # train mode: updates every member's running statistics in place
        finite = torch.isfinite(losses)
        newly = self.alive & ~finite
        self.diverged_epoch.copy_(torch.where(newly, self.current_epoch, self.diverged_epoch))
        self.alive &= finite
        loss = torch.where(self.alive, losses, torch.zeros_like(losses)).sum()
        if self._shows_step_loss(batch_idx):
            self.log("train/loss_step", loss / self.alive.sum().clamp(min=1), prog_bar=True, on_step=True,
                     on_epoch=False, batch_size=idx.shape[1])
        return loss

    def _shows_step_loss(self, batch_idx: int) -> bool:
        """Whether the step's mean loss is read by anything: a progress bar refreshing after this step or
        a logger writing it (Lightning's own tests for both). self.log cost about 1 ms per step, as
        much as a small population's forward pass; with neither (logger=none, no bar) it is skipped."""
        trainer = self._trainer
        if trainer is None:
            return True
        bar = trainer.progress_bar_callback
        if bar is not None and getattr(bar, "is_enabled", True):
            rate, n = max(1, int(getattr(bar, "refresh_rate", 1) or 1)), batch_idx + 1
            if n % rate == 0 or n == trainer.num_training_batches:
                return True
        if trainer.loggers:
            return bool(getattr(trainer._logger_connector, "should_update_logs", True))
        return False

    def _watch_gradient_layout(self) -> None:
        """Record the memory layout in which backward produces each stacked parameter's gradient (hooks run
        before the gradient is stored), for on_after_backward."""
        self._layout_seen, self._grad_strides = True, {}
        self._layout_hooks = [p.register_hook(lambda g, i=i: self._grad_strides.setdefault(i, g.stride()) and None)
                              for i, p in enumerate(self.stacked)]

    @torch.no_grad()
    def on_after_backward(self) -> None:
        """After the first backward: every stacked parameter whose gradient backward produces in another
        dense layout (a vmapped linear's weight gradient arrives as [P, in, out] transposed) is stored in
        that layout, with its gradient, before the optimizer makes its state. Autograd then hands each
        later gradient over as it is, where it copied it into the parameter's layout at every step (a step
        of 64 MLPs 40-32-10 took 5.6 ms before, 3.4 after; of 8 MLPs 40-512-512-10 45.8 and 41.1). Values are
        unchanged; member_state_dict(s) return contiguous copies as before."""
        hooks, self._layout_hooks = getattr(self, "_layout_hooks", None), None
        if not hooks:
            return
        for h in hooks:
            h.remove()
        for i, p in enumerate(self.stacked):
            strides = self._grad_strides.get(i)
            if strides is None or strides == p.stride() or not _dense(p.shape, strides):
                continue
            p.data = torch.empty_strided(p.shape, strides, dtype=p.dtype, device=p.device).copy_(p.data)
            if p.grad is not None:
                p.grad = torch.empty_strided(p.shape, strides, dtype=p.grad.dtype, device=p.device).copy_(p.grad)

    @torch.no_grad()
    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        """Frozen (diverged) members keep the buffers they had before the step (after backward:
        autograd forbids changing them while the step's graph is alive)."""
        before, self._buffers_before = getattr(self, "_buffers_before", None), None
        if before and not bool(self.alive.all()):
            for b, old in zip(self.stacked_buffers.tensors(), before):
                b.copy_(torch.where(self.alive.view(-1, *([1] * (b.dim() - 1))), b, old))

    def configure_optimizers(self):
        opt = PopulationOptimizer(list(self.stacked), self.member_lr, self.member_wd,
                                  active=lambda: self.alive, **self.opt_kwargs)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(**self.sched_kwargs))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str) -> tuple[torch.Tensor, ...]:
        """Every member's metrics [P] on a whole split (eval mode, chunked), in the order of
        metric_names: loss and accuracy; for INRs the mean squared error and the PSNR in dB; for
        language models loss, bits per token and next-token accuracy; for PINNs the total loss, its
        three terms and the relative L2 error. A diverged member's are NaN."""
        was_training = self.net.training
        self.net.eval()
        try:
            values = self._evaluate_pinn(split) if self.kind == "pinn" else self._evaluate(split)
        finally:
            self.net.train(was_training)
        nan = torch.full_like(values[0], float("nan"))
        return tuple(torch.where(self.alive, v, nan) for v in values)

    def _evaluate(self, split: str) -> tuple[torch.Tensor, ...]:
        x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
        loss_sum = torch.zeros(self.population_size, device=x.device, dtype=torch.float64)
        correct = torch.zeros_like(loss_sum)
        group = self.eval_group  # all members together: chunks of eval_chunk; in groups: larger chunks
        chunk = self.eval_chunk if group >= self.population_size else self.eval_group_chunk
        params, buffers = self.params(), self.stacked_state()  # once (a LoRA population merges its weights here)
        if self.kind == "inr":
            y = y[self.target_rows]  # [P, N, C]: each member's own image
        for m in range(0, self.population_size, group):
            members = slice(m, m + group)
            prm = params if group >= self.population_size else {k: v[members] for k, v in params.items()}
            buf = buffers if group >= self.population_size else {k: v[members] for k, v in buffers.items()}
            for s in range(0, x.shape[0], chunk):
                xb = x[s : s + chunk]
                out = self.forward_members(prm, xb, shared_input=True, buffers=buf)
                if self.kind == "inr":
                    loss_sum[members] += (out - y[members, s : s + chunk]).pow(2).mean(-1).sum(1).double()
                    continue
                yb = y[s : s + chunk]  # [n] labels or [n, T] next tokens
                ce, right = member_metrics(out, yb)
                loss_sum[members] += ce.flatten(1).sum(1).double()
                correct[members] += right.flatten(1).sum(1).double()
        n = max(1, x.shape[0] if self.kind == "inr" else y.numel())  # pixels; predictions (samples x positions)
        loss = loss_sum / n
        if self.kind == "inr":
            return loss, psnr(loss, self.value_range)
        if self.kind == "lm":
            return loss, loss / math.log(2), correct / n
        return loss, correct / n

    def _evaluate_pinn(self, split: str) -> tuple[torch.Tensor, ...]:
        x, exact = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")  # points [N, 2], exact u [N, 1]
        res_sum = torch.zeros(self.population_size, device=x.device, dtype=torch.float64)
        err_sum = torch.zeros_like(res_sum)
        ic = bc = None
        for s in range(0, x.shape[0], self.eval_chunk):
            xb = x[s : s + self.eval_chunk]
            res, ic, bc, u = self.pinn_terms(xb, split, shared_input=True)  # ic, bc: the same every chunk
            res_sum += res.double() * xb.shape[0]
            err_sum += (u - exact[s : s + self.eval_chunk, 0]).double().pow(2).sum(1)
        n = max(1, x.shape[0])
        residual = (res_sum / n).float()
        rel_l2 = (err_sum.sqrt() / exact.double().pow(2).sum().sqrt().clamp_min(1e-30)).float()
        return residual + ic + bc, residual, ic, bc, rel_l2

    def evaluate_all(self) -> dict[str, torch.Tensor]:
        return {f"{split}_{name}": v for split in ("train", "val", "test") if getattr(self, f"x_{split}").shape[0]
                for name, v in zip(self.metric_names, self.evaluate(split))}


def member_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every prediction, unreduced: logits [..., C], labels y [...] -> [...].
    logsumexp minus the label's logit: F.cross_entropy(reduction="none") up to float rounding, several
    times faster on CPU for the [P * n, C] shapes of a population (measured 4x at 64 x 819 x 10). Logits laid
    out classes first (a transposed view of [P, C, n]: wsl.population.stacked's head) are reduced over that
    dimension, along contiguous samples (a step of 64 MLPs 40-32-10 about 10% faster)."""
    if _classes_first(logits):
        t = logits.transpose(1, 2)  # [P, C, n]
        return t.logsumexp(1) - t.gather(1, y.unsqueeze(1)).squeeze(1)
    return logits.logsumexp(-1) - logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)


def member_metrics(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy, logits.argmax(-1) == y) of every member at every prediction: logits [P, *y.shape, C],
    labels y (shared by the members) -> two [P, *y.shape] tensors.

    Both from d = logits minus the label's logit: the cross-entropy is log(sum(exp(d))) and the label is
    the argmax (the first largest logit, as torch.argmax) unless some class c has d_c > 0, or d_c >= 0
    with c before the label. The sums over classes are matrix products: PyTorch's CPU reductions over a
    last dimension of 10 classes were as slow as the population's forward pass (logsumexp and argmax
    3 ms of a 5 ms evaluation chunk of 64 members x 819 samples). A chunk whose losses are not all
    finite (a logit difference past float range, NaN) takes logsumexp and argmax themselves. Ties are
    exact; logit differences smaller than float's smallest normal number (1e-38) count as ties. Logits laid out
    classes first take _classes_first_metrics, the same rule."""
    if _classes_first(logits):
        return _classes_first_metrics(logits.transpose(1, 2), y)
    zy = logits.gather(-1, y.expand(logits.shape[0], *y.shape).unsqueeze(-1))
    d = logits - zy
    ones = torch.ones(d.shape[-1], 1, dtype=d.dtype, device=d.device)
    ce = (d.exp() @ ones).squeeze(-1).log()
    if not bool(torch.isfinite(ce).all()):
        return _exact_metrics(logits, y)
    before = torch.arange(d.shape[-1], device=d.device) < y.unsqueeze(-1)  # [*y.shape, C]: classes before the label
    threshold = torch.where(before, -torch.finfo(d.dtype).tiny, 0.0).to(d.dtype)
    wrong = ((d > threshold).to(d.dtype) @ ones).squeeze(-1)
    return ce, wrong == 0


def _exact_metrics(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """member_metrics by logsumexp and argmax themselves (chunks with a non-finite loss)."""
    return member_cross_entropy(logits, y.expand(logits.shape[0], *y.shape)), logits.argmax(-1) == y


def _classes_first_metrics(logits_t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """member_metrics of logits laid out classes first: logits_t [P, C, n] (contiguous), labels y [n] -> (cross-
    entropy, right) [P, n] each, by the same rule (ties exact). Reductions over the class dimension then run
    along contiguous samples: 22 members x 512 samples x 10 classes took 0.47 ms, the matrix-product form on
    the transposed view 0.9-1.2 ms."""
    d = logits_t - logits_t.gather(1, y.view(1, 1, -1).expand(logits_t.shape[0], 1, -1))  # [P, C, n]
    before = torch.arange(d.shape[1], device=d.device).unsqueeze(1) < y  # [C, n]: classes before the label
    wrong = (d > torch.where(before, -torch.finfo(d.dtype).tiny, 0.0).to(d.dtype)).sum(1)
    ce = d.exp_().sum(1).log_()
    if not bool(torch.isfinite(ce).all()):
        return _exact_metrics(logits_t.transpose(1, 2), y)
    return ce, wrong == 0


def _classes_first(out: torch.Tensor) -> bool:
    """Whether out [P, n, C] is a transposed view of contiguous [P, C, n] logits."""
    return out.dim() == 3 and out.shape[2] > 1 and not out.is_contiguous() and out.transpose(1, 2).is_contiguous()


def _stacked_path(net: nn.Module):
    """The forward of the batched-matmul path that computes `net` (mlp_forward, cnn_forward), or None: vmap."""
    if stacked_mlp.supports(net):
        return stacked_mlp.mlp_forward
    if stacked_cnn.supports(net):
        return stacked_cnn.cnn_forward
    return None


METRIC_NAMES = {"classification": ("loss", "acc"), "inr": ("loss", "psnr"), "lm": ("loss", "bpc", "acc"),
                "pinn": ("loss", "residual", "ic", "bc", "rel_l2")}


def _rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t[idx] for an index tensor idx [P, B] of rows of t: index_select, which is several times faster
    on CPU than advanced indexing (measured 55 against 356 us for 64 x 128 rows of MNIST-1D)."""
    return t.index_select(0, idx.reshape(-1)).view(*idx.shape, *t.shape[1:])


def _dense(shape, strides) -> bool:
    """Whether `strides` lay a tensor of `shape` out densely (a permutation of a contiguous layout)."""
    dims = sorted((st, n) for st, n in zip(strides, shape) if n != 1)
    expect = 1
    for st, n in dims:
        if st != expect:
            return False
        expect *= n
    return True


class _Buffers(nn.Module):
    """Stacked buffers as a submodule (names "0", "1", ...): moved with the module, saved in its state."""

    def __init__(self, tensors: list[torch.Tensor]):
        super().__init__()
        for i, t in enumerate(tensors):
            self.register_buffer(str(i), t)

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, str(i)) for i in range(len(self._buffers))]
