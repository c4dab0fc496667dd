"""The LightningModule that trains a whole population in one vmapped program."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from wsl.population.functional import population_forward, skeleton
from wsl.population.optim import PopulationOptimizer
from wsl.population.schedules import lr_factor


class PopulationModule(L.LightningModule):
    """P members of one architecture, parameters stacked as [P, ...] tensors.

    Member k sees its own minibatches (index rows from PopulationBatchSampler), its own lr and
    weight decay. Its loss is independent of every other member's parameters, so summing the
    member losses gives each member exactly its own gradient. A member whose loss turns NaN/inf
    is marked diverged and frozen; the others go on.
    """

    def __init__(self, net: nn.Module, init_params: dict[str, torch.Tensor], data, lr, weight_decay,
                 optimizer: str = "sgd", momentum: float = 0.9, nesterov: bool = False, betas=(0.9, 0.999),
                 eps: float = 1e-8, schedule: str = "constant", warmup_epochs: int = 0, step_epochs: int = 0,
                 gamma: float = 0.1, epochs: int = 1, steps_per_epoch: int = 1, eval_batch_size: int = 4096):
        super().__init__()
        # structure only, on the meta device; kept out of the module tree so device moves skip it
        object.__setattr__(self, "net", skeleton(net))
        self.names = list(init_params)
        self.stacked = nn.ParameterList([nn.Parameter(init_params[k].clone()) for k in self.names])
        self.population_size = init_params[self.names[0]].shape[0]
        p = self.population_size
        self.register_buffer("member_lr", torch.as_tensor(lr, dtype=torch.float32).expand(p).clone())
        self.register_buffer("member_wd", torch.as_tensor(weight_decay, dtype=torch.float32).expand(p).clone())
        self.register_buffer("alive", torch.ones(p, dtype=torch.bool))
        self.register_buffer("diverged_epoch", torch.full((p,), -1, dtype=torch.long))
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
    def member_losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x [P, B, ...], y [P, B] -> mean cross-entropy per member [P]."""
        logits = population_forward(self.net, self.params(), x, shared_input=False)  # [P, B, C]
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)

    def training_step(self, idx: torch.Tensor, batch_idx: int) -> torch.Tensor:
        x, y = self.x_train[idx], self.y_train[idx]  # [P, B, ...], [P, B]
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
        """Loss and accuracy [P] of every member on a whole split (eval mode, chunked)."""
        x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
        was_training = self.net.training
        self.net.eval()
        loss_sum = torch.zeros(self.population_size, device=x.device, dtype=torch.float64)
        correct = torch.zeros(self.population_size, device=x.device, dtype=torch.float64)
        chunk = max(1, self.eval_batch_size)
        for s in range(0, x.shape[0], chunk):
            xb, yb = x[s : s + chunk], y[s : s + chunk]
            logits = population_forward(self.net, self.params(), xb, shared_input=True)  # [P, n, C]
            ce = F.cross_entropy(logits.flatten(0, 1), yb.repeat(self.population_size), reduction="none")
            loss_sum += ce.view(self.population_size, -1).sum(1).double()
            correct += (logits.argmax(-1) == yb).sum(1).double()
        self.net.train(was_training)
        n = max(1, x.shape[0])
        loss, acc = loss_sum / n, correct / n
        dead = ~self.alive
        nan = torch.full_like(loss, float("nan"))
        return torch.where(dead, nan, loss), torch.where(dead, nan, acc)

    def evaluate_all(self) -> dict[str, torch.Tensor]:
        out = {}
        for split in ("train", "val", "test"):
            if getattr(self, f"x_{split}").shape[0] == 0:
                continue
            out[f"{split}_loss"], out[f"{split}_acc"] = self.evaluate(split)
        return out
