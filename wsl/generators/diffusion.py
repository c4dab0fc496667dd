"""DDPM training (Ho et al. 2020) and DDIM sampling (Song et al. 2021).

Forward process: x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε with ε ~ N(0, I), t in {0, ..., T-1}.
The network sees (x_t, t / T) and predicts one of (the loss is the plain mean squared error of it):
- x_0 (`prediction="x0"`, the default, as G.pt regresses weights directly): a network narrower
  than the weight vector cannot output the noise that ε and v contain, but it can output a net;
- ε (`"eps"`, Ho et al.): near t = T, where ᾱ_t → 0 (the cosine schedule reaches ~1e-9),
  recovering x_0 divides the error of ε̂ by sqrt(ᾱ_t) and the first DDIM step blows up;
- v = sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x_0 (`"v"`, Salimans & Ho 2022): bounded at both ends,
  x̂_0 = sqrt(ᾱ_t) x_t - sqrt(1 - ᾱ_t) v̂; the best choice for low-dimensional data.

DDIM walks a decreasing subsequence τ_1 > ... > τ_S of the T steps:
    x̂_0 = (x_t - sqrt(1 - ᾱ_t) ε̂) / sqrt(ᾱ_t)
    x_s = sqrt(ᾱ_s) x̂_0 + sqrt(1 - ᾱ_s - σ²) ε̂ + σ z,
    σ = η sqrt((1 - ᾱ_s) / (1 - ᾱ_t)) sqrt(1 - ᾱ_t / ᾱ_s),
deterministic for η = 0, ancestral DDPM for η = 1 and S = T.
"""

from __future__ import annotations

import math

import torch

from wsl.errors import ConfigError
from wsl.generators.denoisers import guided
from wsl.generators.schema import DIFFUSION_SCHEDULES as SCHEDULES


def alphas_cumprod(timesteps: int, schedule: str) -> torch.Tensor:
    """ᾱ_t for t = 0..T-1 as float64 [T]."""
    if schedule == "linear":  # Ho et al.: β from 1e-4 to 0.02 over 1000 steps, rescaled for other T
        scale = 1000.0 / timesteps
        betas = torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
    elif schedule == "cosine":  # Nichol & Dhariwal 2021, s = 0.008, β clipped at 0.999
        s = 0.008
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    else:
        raise ConfigError(f"schedule={schedule!r} is unknown; valid: {', '.join(SCHEDULES)}")
    return torch.cumprod(1 - betas, dim=0)


class Diffusion:
    """DDPM with x_0-, ε- or v-prediction; `steps` and `eta` are the DDIM sampler's defaults.
    Its options are checked by wsl.generators.schema.DiffusionConfig (a config, a loaded run)."""

    name = "diffusion"

    def __init__(self, timesteps: int = 1000, schedule: str = "cosine", steps: int = 20, eta: float = 0.0,
                 prediction: str = "x0", clip: float | None = None):
        self.timesteps, self.schedule, self.steps, self.eta = timesteps, schedule, steps, float(eta)
        self.prediction = prediction
        self.clip = None if clip is None else float(clip)  # optional clamp of x̂_0 (normalized units)
        self.abar = alphas_cumprod(timesteps, schedule)  # [T] float64

    def loss(self, net, x0: torch.Tensor, cond=None, drop=None) -> torch.Tensor:
        """Mean squared error of the ε (or v) prediction at uniformly drawn steps. x0: [B, D]."""
        t = torch.randint(0, self.timesteps, (x0.shape[0],), device=x0.device)
        ab = self.abar.to(x0.device)[t].to(x0.dtype)[:, None]  # [B, 1]
        eps = torch.randn_like(x0)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        target = {"eps": eps, "x0": x0}.get(self.prediction, ab.sqrt() * eps - (1 - ab).sqrt() * x0)  # else v
        return torch.nn.functional.mse_loss(net(xt, t.to(x0.dtype) / self.timesteps, cond, drop), target)

    def schedule_steps(self, steps: int) -> list[int]:
        """The DDIM subsequence τ, decreasing from T-1 to 0, `steps` distinct entries."""
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= self.timesteps:
            raise ConfigError(f"DDIM steps must be an integer in [1, {self.timesteps}], got {steps!r}")
        tau = torch.linspace(self.timesteps - 1, 0, steps, dtype=torch.float64).round().long().tolist()
        return sorted(set(tau), reverse=True)

    @torch.no_grad()
    def sample(self, net, noise: torch.Tensor, cond=None, guidance: float = 1.0, steps: int | None = None,
               eta: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """DDIM from x_T = `noise` [n, D] down to x_0 [n, D]."""
        eta = self.eta if eta is None else float(eta)
        tau = self.schedule_steps(self.steps if steps is None else steps)
        abar = self.abar.tolist()
        x, n = noise, noise.shape[0]
        for i, t in enumerate(tau):
            ab_t = abar[t]
            ab_s = abar[tau[i + 1]] if i + 1 < len(tau) else 1.0  # after the last step: clean data
            tt = torch.full((n,), t / self.timesteps, device=x.device, dtype=x.dtype)
            out = guided(net, x, tt, cond, guidance)
            a, s = math.sqrt(ab_t), math.sqrt(1 - ab_t)
            if self.prediction == "eps":
                x0, eps = (x - s * out) / a, out
            elif self.prediction == "x0":
                x0, eps = out, (x - a * out) / s
            else:  # v
                x0, eps = a * x - s * out, s * x + a * out
            if self.clip is not None:
                x0 = x0.clamp(-self.clip, self.clip)
                eps = (x - a * x0) / s
            sigma = eta * math.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s))
            x = math.sqrt(ab_s) * x0 + math.sqrt(max(1 - ab_s - sigma**2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x

    def kwargs(self) -> dict:
        """Constructor arguments (stored with a generator run)."""
        return {"timesteps": self.timesteps, "schedule": self.schedule, "steps": self.steps, "eta": self.eta,
                "prediction": self.prediction, "clip": self.clip}
