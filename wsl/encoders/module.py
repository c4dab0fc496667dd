"""The LightningModule that trains any encoder on any property-prediction task.

It owns what the plain encoders do not: per-layer input scaling, target standardization, the
weight-space augmentations of wsl.symmetry, the loss (MSE on standardized targets, or
cross-entropy), the optimizer and the validation metrics.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from wsl.encoders.common import LayerScale
from wsl.encoders.tasks import Task, score
from wsl.encoders.weightspace import WeightSpace
from wsl.symmetry import AlignedMixUp, PermutationAugment


class WeightSet(Dataset):
    """Nets of one split held in memory: params {name: [M, ...]}, masks {mask name: [M, n]}, y [M, ...]."""

    def __init__(self, params: dict, masks: dict, y: torch.Tensor):
        self.params, self.masks, self.y = params, masks, y

    def __len__(self) -> int:
        return self.y.shape[0]

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.params.items()}, {k: v[i] for k, v in self.masks.items()}, self.y[i]

    def subset(self, idx) -> "WeightSet":
        return WeightSet(*self[torch.as_tensor(idx, dtype=torch.long)])


class PropertyPredictor(L.LightningModule):
    """encoder(scale(weights)) -> standardized target (regression) or logits (classification)."""

    def __init__(self, encoder: nn.Module, space: WeightSpace, task: Task, target_names: list,
                 train_set: WeightSet, augments: list | None = None, lr: float = 1e-3, weight_decay: float = 0.0,
                 epochs: int = 100, warmup_epochs: int = 0, num_classes: int = 0):
        super().__init__()
        self.encoder, self.space, self.task, self.target_names = encoder, space, task, list(target_names)
        self.num_classes = int(num_classes)
        self.scale = LayerScale(space).fit(space.to_batch(train_set.params, train_set.masks))
        y = train_set.y.float()
        if task.is_regression:  # standardize with training statistics (targets differ in scale by decades)
            self.register_buffer("y_mean", y.mean(0))
            self.register_buffer("y_std", y.std(0).clamp_min(1e-8) if y.shape[0] > 1 else torch.ones_like(y[0]))
        # a permutation of an invariant encoder's input changes nothing but rounding: skip that work
        invariant = bool(getattr(encoder, "invariant", False))
        self.augments = nn.ModuleList([a for a in (augments or [])
                                       if not (invariant and isinstance(a, PermutationAugment))])
        self.mask_spec = space.mask_spec()
        self.lr, self.weight_decay, self.epochs, self.warmup_epochs = lr, weight_decay, epochs, warmup_epochs
        self._val_preds: list = []

    # ---- forward ------------------------------------------------------------------------------
    def forward(self, params: dict, masks: dict) -> torch.Tensor:
        return self.encoder(self.scale(self.space.to_batch(params, masks)))

    def to_target_units(self, out: torch.Tensor) -> torch.Tensor:
        return out * self.y_std + self.y_mean if self.task.is_regression else out

    @torch.no_grad()
    def predict_set(self, data: WeightSet, batch_size: int = 256) -> torch.Tensor:
        """Predictions (target units, or logits) for every net of `data`, in eval mode."""
        was = self.training
        self.eval()
        outs = []
        for s in range(0, len(data), batch_size):
            p, m = ({k: v.to(self.device) for k, v in d.items()} for d in data[s:s + batch_size][:2])
            outs.append(self.to_target_units(self(p, m)).cpu())
        self.train(was)
        return torch.cat(outs)

    # ---- augmentation -------------------------------------------------------------------------
    def augment(self, params: dict, masks: dict, y: torch.Tensor):
        """Apply the configured weight-space augmentations to a batch; MixUp also mixes targets."""
        for aug in self.augments:
            if isinstance(aug, PermutationAugment):  # masks move with the neurons they describe
                both = aug({**params, **masks}, self.mask_spec)
                params = {k: both[k] for k in params}
                masks = {k: both[k] for k in masks}
            elif isinstance(aug, AlignedMixUp):
                partner = torch.randperm(y.shape[0], device=y.device)
                params, lam = aug(params, {k: v[partner] for k, v in params.items()}, self.space.spec)
                lam = torch.as_tensor(lam, dtype=torch.float32, device=y.device).view(-1, 1)  # [B, 1]
                if self.task.is_regression:  # y [B, T]
                    y = lam * y + (1 - lam) * y[partner]
                else:  # soft labels [B, C]
                    onehot = F.one_hot(y, self.num_classes).float()
                    y = lam * onehot + (1 - lam) * onehot[partner]
            else:
                params = aug(params)
        return params, masks, y

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.task.is_regression:
            return F.mse_loss(out, (y - self.y_mean) / self.y_std)
        return F.cross_entropy(out, y)  # y: class indices, or probabilities after MixUp

    # ---- lightning hooks ----------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        params, masks, y = batch
        params, masks, y = self.augment(params, masks, y)
        loss = self.loss(self(params, masks), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=y.shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        params, masks, y = batch
        out = self(params, masks)
        # sync_dist: under DDP each rank sees its share of the validation set; the logged loss (and so
        # the best-epoch choice that reads it) must be the same number on every rank
        self.log("val/loss", self.loss(out, y), on_step=False, on_epoch=True, batch_size=y.shape[0], sync_dist=True)
        self._val_preds.append((self.to_target_units(out).detach().cpu(), y.detach().cpu()))

    def on_validation_epoch_end(self):
        if not self._val_preds:
            return
        pred, true = (torch.cat(x) for x in zip(*self._val_preds))
        self._val_preds = []
        if self.trainer.world_size > 1:  # DDP: score the whole validation set, identically on every rank
            # rows of every rank, [W, n, ...] -> [W * n, ...] (DistributedSampler gives every rank equally many)
            pred, true = (self.all_gather(t.to(self.device)).reshape(-1, *t.shape[1:]).cpu() for t in (pred, true))
        metrics = score(self.task, self.target_names, pred, true)
        key = "tau" if self.task.is_regression else "acc"
        self.log(f"val/{key}", metrics[key], prog_bar=True)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        warm, total = self.warmup_epochs, max(1, self.epochs)

        def factor(epoch: int) -> float:  # linear warmup, then cosine decay to 0 at the last epoch
            if epoch < warm:
                return (epoch + 1) / (warm + 1)
            t = (epoch - warm) / max(1, total - warm)
            return 0.5 * (1 + torch.cos(torch.tensor(torch.pi * min(t, 1.0)))).item()

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
