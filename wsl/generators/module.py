"""LightningModules of the generators room: they wire the plain networks (denoisers, autoencoder: nn.Modules)
and methods (FlowMatching, Diffusion: plain objects with `loss` and `sample`) to a Lightning Trainer, and own
the losses' logging, the collapse monitor and the optimizers."""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn


def spread_ratio(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """RMS over coordinates of the per-coordinate std of `samples` [n, D], over the same for `reference`.

    1 means the samples spread as widely as the training weights; near 0 is mode collapse
    (every sample the same net); far above 1 is noise that the generator failed to remove.
    """
    ref = reference.float().var(dim=0).mean().sqrt()
    return float(samples.float().var(dim=0).mean().sqrt() / ref.clamp_min(1e-12))


class WarmupEMA:
    """multi_avg_fn for torch's AveragedModel (and Lightning's WeightAveraging): an exponential
    moving average whose decay ramps up as min(decay, (1 + n) / (10 + n)) after n updates.

    A fixed decay of 0.999 would keep ~86% of the first steps' weights after 150 steps, so a short
    run would save a nearly untrained generator; the ramp makes the average track early training.
    """

    def __init__(self, decay: float = 0.999):  # in (0, 1): wsl.generators.schema.GeneratorConfig.ema
        self.decay = float(decay)

    def __call__(self, averaged: list, current: list, n_averaged) -> None:
        n = float(n_averaged)
        d = min(self.decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(averaged, current, 1.0 - d)


def _optimizers(module: L.LightningModule, params, lr: float, weight_decay: float, schedule: str):
    """AdamW with a `constant` or `cosine` learning rate (wsl.generators.schema.OptimizerConfig)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if schedule == "constant":
        return opt
    total = max(1, int(module.trainer.estimated_stepping_batches))
    warmup = min(100, total // 10)

    def factor(step):  # linear warm-up, then cosine decay to 1% of lr
        if step < warmup:
            return (step + 1) / warmup
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class GeneratorModule(L.LightningModule):
    """Trains a denoiser with a generative method on batches (x [B, D], cond [B, C]) of encoded weights.

    cond_dropout: probability that a row's condition is replaced by the null condition (what makes
    classifier-free guidance possible). Every `spread_every` optimizer steps (and after the last
    one), `spread_n` vectors are sampled and their spread ratio against `train_x` (the encoded
    training set, [M, D]) is logged as `spread_ratio` (see `spread_ratio`): a ratio falling towards
    0 is mode collapse, caught while training instead of after sampling.
    """

    def __init__(self, denoiser: nn.Module, method, train_x: torch.Tensor, train_cond: torch.Tensor | None = None,
                 lr: float = 1e-3, weight_decay: float = 0.0, schedule: str = "cosine", cond_dropout: float = 0.1,
                 spread_every: int = 500, spread_n: int = 256, train_std: torch.Tensor | None = None):
        super().__init__()
        # train_std [M, D] (representation=latent): training batches are rows (mean, std) [B, 2D], and each step
        # trains on a fresh posterior sample mean + std * eps instead of the mean
        self.posterior = train_std is not None
        self.denoiser, self.method = denoiser, method
        self.register_buffer("train_x", train_x.detach().float(), persistent=False)  # [M, D]
        cond = train_cond if train_cond is not None and train_cond.numel() else None
        self.register_buffer("train_cond", None if cond is None else cond.detach().float(), persistent=False)
        self.lr, self.weight_decay, self.schedule = lr, weight_decay, schedule
        self.cond_dropout, self.spread_every, self.spread_n = cond_dropout, int(spread_every), int(spread_n)
        self.spread_history: list[tuple[int, float]] = []  # (optimizer step, ratio)

    def _split(self, batch, sample: bool = False):  # (x [B, D], cond [B, C]); C = 0: unconditional
        x, cond = batch
        if self.posterior and x.shape[1] == 2 * self.train_x.shape[1]:
            x, std = x.chunk(2, dim=1)
            x = x + std * torch.randn_like(x) if sample else x
        return x, (cond if cond.numel() else None)

    def training_step(self, batch, batch_idx):
        x, cond = self._split(batch, sample=True)
        dropping = cond is not None and self.cond_dropout > 0  # classifier-free guidance: hide some conditions
        drop = torch.rand(x.shape[0], device=x.device) < self.cond_dropout if dropping else None
        loss = self.method.loss(self.denoiser, x, cond, drop)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        x, cond = self._split(batch)
        loss = self.method.loss(self.denoiser, x, cond, None)
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=x.shape[0], sync_dist=True)  # DDP: one number

    @torch.no_grad()
    def measure_spread(self, seed: int = 0) -> float:
        """Sample `spread_n` vectors (conditions drawn from the training rows) and return their spread ratio."""
        n, g = self.spread_n, torch.Generator().manual_seed(seed)
        noise = torch.randn(n, self.train_x.shape[1], generator=g).to(self.train_x)
        rows = None if self.train_cond is None else torch.randint(0, len(self.train_cond), (n,), generator=g)
        cond = None if rows is None else self.train_cond[rows.to(self.train_cond.device)]
        was_training = self.denoiser.training
        self.denoiser.eval()
        try:
            samples = self.method.sample(self.denoiser, noise, cond=cond)
        finally:
            self.denoiser.train(was_training)
        return spread_ratio(samples, self.train_x)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        step = self.trainer.global_step
        if self.spread_every > 0 and step % self.spread_every == 0:
            self.spread_history.append((step, self.measure_spread()))
            self.log("spread_ratio", self.spread_history[-1][1], prog_bar=True)

    def on_train_end(self):
        # measured again after the weight-averaging callback (whose hook runs first) has swapped in the
        # averaged weights: the last entry is the saved generator's. Lightning allows no self.log here.
        if self.spread_every > 0:
            if self.spread_history and self.spread_history[-1][0] == self.trainer.global_step:
                self.spread_history.pop()
            self.spread_history.append((self.trainer.global_step, self.measure_spread()))

    def configure_optimizers(self):
        return _optimizers(self, self.denoiser.parameters(), self.lr, self.weight_decay, self.schedule)


class AutoencoderModule(L.LightningModule):
    """Trains a WeightAutoencoder (p-diff style): reconstruct x from a noised input through a noised latent.

    The noise on inputs and latents makes the decoder robust to the imperfect latents that a
    generator will later produce.
    """

    def __init__(self, autoencoder: nn.Module, lr: float = 1e-3, weight_decay: float = 0.0,
                 input_noise: float = 0.001, latent_noise: float = 0.1, schedule: str = "cosine"):
        super().__init__()
        self.autoencoder = autoencoder
        self.lr, self.weight_decay, self.schedule = lr, weight_decay, schedule
        self.input_noise, self.latent_noise = float(input_noise), float(latent_noise)

    def training_step(self, batch, batch_idx):
        x = batch[0]
        z = self.autoencoder.encoder(x + self.input_noise * torch.randn_like(x))
        recon = self.autoencoder.decoder(z + self.latent_noise * torch.randn_like(z))
        loss = nn.functional.mse_loss(recon, x)
        self.log("ae_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        return loss

    def configure_optimizers(self):
        return _optimizers(self, self.autoencoder.parameters(), self.lr, self.weight_decay, self.schedule)
