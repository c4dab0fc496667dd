"""Per-epoch evaluation of every member, handed to a sink (e.g. the zoo writer)."""

from __future__ import annotations

from collections import defaultdict

import lightning as L
import numpy as np
import torch


class EpochRecorder(L.Callback):
    """Evaluates all members at epoch 0 (initialization) and after every epoch.

    `history[metric]` is a list over epochs of [P] arrays; `sink(epoch, metrics, module)` is
    called after each evaluation (the zoo app writes checkpoints there).
    """

    def __init__(self, sink=None):
        self.sink = sink
        self.history: dict[str, list] = defaultdict(list)

    def on_train_start(self, trainer, module):
        if trainer.current_epoch == 0 and not self.history:
            self._record(trainer, module, 0)

    def on_train_epoch_end(self, trainer, module):
        self._record(trainer, module, trainer.current_epoch + 1)

    @torch.no_grad()
    def _record(self, trainer, module, epoch: int) -> None:
        metrics = module.evaluate_all()
        for k, v in metrics.items():
            self.history[k].append(v.detach().cpu().numpy())
        if trainer.logger is not None:
            summary = {f"{k}_mean": float(np.nanmean(v.cpu().numpy())) if torch.isfinite(v).any() else float("nan")
                       for k, v in metrics.items()}
            summary.update(alive=float(module.alive.sum()), epoch=epoch)
            trainer.logger.log_metrics(summary, step=epoch)
        if self.sink is not None:
            self.sink(epoch, metrics, module)

    def member_history(self, k: int) -> dict[str, list[float]]:
        return {name: [float(a[k]) for a in vals] for name, vals in self.history.items()}
