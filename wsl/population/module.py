"""The LightningModule that trains a whole population in one vmapped program."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from wsl.population.functional import population_forward, psnr, skeleton
from wsl.population.optim import PopulationOptimizer
from wsl.population.schedules import lr_factor


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
    """

    def __init__(self, net: nn.Module, init_params: dict[str, torch.Tensor], data, lr, weight_decay,
                 optimizer: str = "sgd", momentum: float = 0.9, nesterov: bool = False, betas=(0.9, 0.999),
                 eps: float = 1e-8, schedule: str = "constant", warmup_epochs: int = 0, step_epochs: int = 0,
                 gamma: float = 0.1, epochs: int = 1, steps_per_epoch: int = 1, eval_batch_size: int = 4096,
                 target_rows=None):
        super().__init__()
        # structure only, on the meta device; kept out of the module tree so device moves skip it
        object.__setattr__(self, "net", skeleton(net))
        self.names = list(init_params)
        self.stacked = nn.ParameterList([nn.Parameter(init_params[k].clone()) for k in self.names])
        self.population_size = p = init_params[self.names[0]].shape[0]
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
        self.opt_kwargs = dict(kind=optimizer, momentum=momentum, nesterov=nesterov, betas=betas, eps=eps)
        self.sched_kwargs = dict(name=schedule, total_steps=epochs * steps_per_epoch,
                                 warmup_steps=warmup_epochs * steps_per_epoch,
                                 step_size=step_epochs * steps_per_epoch, gamma=gamma)
        self.eval_batch_size = eval_batch_size

    def train(self, mode: bool = True):
        self.net.train(mode)
        return super().train(mode)

    # ---- parameters -------------------------------------------------------------------------
    def params(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.stacked))

    @torch.no_grad()
    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        return {n: t[k].detach().cpu().clone() for n, t in zip(self.names, self.stacked)}

    # ---- training ---------------------------------------------------------------------------
    @property
    def metric_names(self) -> tuple[str, str]:
        """What evaluate() returns: (loss, accuracy) or, for INRs, (mean squared error, PSNR)."""
        return ("loss", "psnr") if self.kind == "inr" else ("loss", "acc")

    def member_losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x [P, B, ...], y [P, B] (labels) or [P, B, C] (INR targets) -> mean loss per member [P]:
        cross-entropy, or for INRs the mean squared error over pixels and channels."""
        out = population_forward(self.net, self.params(), x, shared_input=False)  # [P, B, C]
        if self.kind == "inr":
            return (out - y).pow(2).mean(dim=(1, 2))
        return F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)

    def _targets(self, split: str, idx: torch.Tensor) -> torch.Tensor:
        """Targets of the samples idx [P, B] (member k's row of idx): [P, B] labels or [P, B, C] values."""
        y = getattr(self, f"y_{split}")
        if self.kind == "inr":
            return y[self.target_rows[:, None], idx]
        return y[idx]

    def training_step(self, idx: torch.Tensor, batch_idx: int) -> torch.Tensor:
        x, y = self.x_train[idx], self._targets("train", idx)  # [P, B, ...], [P, B] or [P, B, C]
        losses = self.member_losses(x, y)
        finite = torch.isfinite(losses)
        newly = self.alive & ~finite
        self.diverged_epoch.copy_(torch.where(newly, self.current_epoch, self.diverged_epoch))
        self.alive &= finite
        loss = torch.where(self.alive, losses, torch.zeros_like(losses)).sum()
        self.log("train/loss_step", loss / self.alive.sum().clamp(min=1), prog_bar=True, on_step=True,
                 on_epoch=False, batch_size=idx.shape[1])
        return loss

    def configure_optimizers(self):
        opt = PopulationOptimizer(list(self.stacked), self.member_lr, self.member_wd,
                                  active=lambda: self.alive, **self.opt_kwargs)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(**self.sched_kwargs))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and accuracy [P] of every member on a whole split (eval mode, chunked); for INRs the
        mean squared error and the PSNR in dB (see metric_names)."""
        x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
        was_training = self.net.training
        self.net.eval()
        loss_sum = torch.zeros(self.population_size, device=x.device, dtype=torch.float64)
        correct = torch.zeros_like(loss_sum)
        chunk = self.eval_batch_size
        if self.kind == "inr":
            y = y[self.target_rows]  # [P, N, C]: each member's own image
        for s in range(0, x.shape[0], chunk):
            xb = x[s : s + chunk]
            out = population_forward(self.net, self.params(), xb, shared_input=True)  # [P, n, C]
            if self.kind == "inr":
                loss_sum += (out - y[:, s : s + chunk]).pow(2).mean(-1).sum(1).double()
                continue
            yb = y[s : s + chunk]
            ce = F.cross_entropy(out.flatten(0, 1), yb.repeat(self.population_size), reduction="none")
            loss_sum += ce.view(self.population_size, -1).sum(1).double()
            correct += (out.argmax(-1) == yb).sum(1).double()
        self.net.train(was_training)
        n = max(1, x.shape[0])
        loss = loss_sum / n
        second = psnr(loss, self.value_range) if self.kind == "inr" else correct / n
        nan = torch.full_like(loss, float("nan"))
        return torch.where(self.alive, loss, nan), torch.where(self.alive, second, nan)

    def evaluate_all(self) -> dict[str, torch.Tensor]:
        return {f"{split}_{name}": v for split in ("train", "val", "test") if getattr(self, f"x_{split}").shape[0]
                for name, v in zip(self.metric_names, self.evaluate(split))}
