"""representation=latent: a KL-regularized variational autoencoder over fixed-size chunks (D2NWG's design).

The normalized weight vector [D] is zero-padded to n = ceil(D / chunk) chunks of `chunk` coordinates. One
encoder MLP (shared by every chunk, told the chunk's position by a learned embedding) maps each chunk to a
Gaussian posterior N(mu, sigma^2) over `latent_dim` coordinates; one decoder maps a latent chunk (and its
position) back. Loss: mean squared error per real weight + beta * KL(q || N(0, I)) per latent coordinate.

The generator runs on the standardized posterior means [n * latent_dim] and (posterior=true) is trained on
fresh posterior samples mu + sigma * eps: the KL term keeps sigma away from 0, so the generator never sees the
same code twice and has no exact training codes to replay: this is what keeps its samples from being copies
(p-diff's deterministic autoencoder latent, `representation.latent` of the flat representation, memorizes).
"""

from __future__ import annotations

import torch
from torch import nn

from wsl.errors import ConfigError, ZooFormatError, printable


class ChunkVAE(nn.Module):
    """The chunk VAE and the stage interface (dim, encode, decode, tensors, meta, expected, load)."""

    name = "chunk_vae"

    def __init__(self, dim: int, chunk: int = 256, latent_dim: int = 4, hidden: int = 256):
        super().__init__()
        self.kwargs = {"dim": int(dim), "chunk": int(chunk), "latent_dim": int(latent_dim), "hidden": int(hidden)}
        self.n = -(-int(dim) // int(chunk))
        self.d, self.c, self.l = int(dim), int(chunk), int(latent_dim)
        self.pos = nn.Embedding(self.n, hidden)
        self.enc_in = nn.Linear(chunk, hidden)
        self.enc = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2 * latent_dim))
        self.dec_in = nn.Linear(latent_dim, hidden)
        self.dec = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, chunk))
        nn.init.normal_(self.pos.weight, std=0.02)
        self.register_buffer("latent_mean", torch.zeros(self.n * self.l))
        self.register_buffer("latent_std", torch.ones(self.n * self.l))
        self.info: dict = {}

    @property
    def dim(self) -> int:
        return self.n * self.l

    # ---- the autoencoder -------------------------------------------------------------------------------
    def chunks(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, D] -> zero-padded chunks [B, n, chunk]."""
        return nn.functional.pad(x.float(), (0, self.n * self.c - self.d)).view(x.shape[0], self.n, self.c)

    def mask(self) -> torch.Tensor:
        """[n, chunk]: 1 on real coordinates, 0 on the padding of the last chunk."""
        return (torch.arange(self.n * self.c) < self.d).float().view(self.n, self.c)

    def posterior_chunks(self, chunks: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """chunks [..., chunk] at positions pos [...] -> (mu, logvar) [..., latent_dim]."""
        mu, logvar = self.enc(self.enc_in(chunks) + self.pos(pos)).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 6.0)

    def reconstruct_chunks(self, z: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.dec(self.dec_in(z) + self.pos(pos))

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, D] -> (mu, logvar) [B, n, latent_dim]."""
        return self.posterior_chunks(self.chunks(x), torch.arange(self.n, device=x.device))

    def reconstruct(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, n, latent_dim] -> x [B, D]."""
        out = self.reconstruct_chunks(z, torch.arange(self.n, device=z.device))
        return out.reshape(z.shape[0], -1)[:, : self.d]

    def chunk_loss(self, chunks: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, beta: float):
        """(total, reconstruction MSE per real weight, KL per latent coordinate) of chunks [K, chunk] at pos [K]
        (mask [K, chunk]: real coordinates). Chunks are independent given their position, so a step may take any
        subset of (net, chunk) pairs."""
        mu, logvar = self.posterior_chunks(chunks, pos)
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
        mse = ((self.reconstruct_chunks(z, pos) - chunks).pow(2) * mask).sum() / mask.sum().clamp_min(1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        return mse + beta * kl, mse, kl

    def loss(self, x: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The loss over every chunk of the nets x [B, D]."""
        b = x.shape[0]
        pos = torch.arange(self.n, device=x.device).repeat(b)
        return self.chunk_loss(self.chunks(x).reshape(-1, self.c), pos, self.mask().to(x.device).repeat(b, 1), beta)

    def fit(self, x: torch.Tensor, beta: float, steps: int, batch: int, lr: float, weight_decay: float = 0.0,
            seed: int = 0, progress: bool = False) -> list[float]:
        """Train on random minibatches of `batch` (net, chunk) pairs of x [M, D] (AdamW, cosine learning rate with a
        short warm-up). Returns the loss every 100 steps."""
        import math

        g = torch.Generator().manual_seed(seed)
        chunks = self.chunks(x).reshape(-1, self.c)  # [M * n, chunk]
        pos = torch.arange(self.n).repeat(len(x))
        mask = self.mask().repeat(len(x), 1)
        opt = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=weight_decay)
        warm = min(100, steps // 10)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                                  0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
        self.train()
        history = []
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=steps, desc="chunk VAE", leave=False)
        for step in range(steps):
            idx = torch.randint(0, len(chunks), (min(batch, len(chunks)),), generator=g)
            loss, mse, kl = self.chunk_loss(chunks[idx], pos[idx], mask[idx], beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % 100 == 0 or step == steps - 1:
                history.append(loss.item())
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        self.eval()
        return history

    # ---- the stage -----------------------------------------------------------------------------------
    @torch.no_grad()
    def fit_standardization(self, x: torch.Tensor) -> None:
        mu, _ = self.posterior(x)
        mu = mu.reshape(len(x), -1)
        self.latent_mean.copy_(mu.mean(0))
        self.latent_std.copy_(mu.std(0, unbiased=False).clamp_min(1e-6))

    @torch.no_grad()
    def encode_with_std(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized vectors [M, D] -> standardized posterior means and stds [M, n * latent_dim]."""
        mu, logvar = self.posterior(x)
        mu, sd = mu.reshape(len(x), -1), (0.5 * logvar).exp().reshape(len(x), -1)
        return (mu - self.latent_mean) / self.latent_std, sd / self.latent_std

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_with_std(x)[0]

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:  # [M, n * latent_dim] standardized -> [M, D] normalized
        z = z.float() * self.latent_std.to(z.device) + self.latent_mean.to(z.device)
        return self.reconstruct(z.view(len(z), self.n, self.l))

    def summary(self) -> dict:
        return dict(self.info)

    # ---- storage -------------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.state_dict())

    def meta(self) -> dict:
        return {"name": self.name, "kwargs": dict(self.kwargs), "info": self.info}

    @classmethod
    def _checked(cls, meta: dict, n: int, source) -> dict:
        from wsl.generators.schema import VAEConfig
        from wsl.schema import FieldError

        kw = meta.get("kwargs")
        if not isinstance(kw, dict) or set(kw) != {"dim", "chunk", "latent_dim", "hidden"} or kw.get("dim") != n:
            raise ZooFormatError(f"{source}: key representation.stage.kwargs={printable(kw)[:120]} must give dim={n} "
                                 "(the layout's weights), chunk, latent_dim and hidden")
        try:
            VAEConfig(chunk=kw["chunk"], latent_dim=kw["latent_dim"], hidden=kw["hidden"])
        except (FieldError, ConfigError, TypeError) as e:
            raise ZooFormatError(f"{source}: key representation.stage.kwargs: {printable(e)[:200]}") from e
        return kw

    @classmethod
    def expected(cls, meta: dict, n: int, source) -> tuple[dict, int]:
        kw = cls._checked(meta, n, source)
        from wsl.generators.generator_run import _on_meta

        vae = _on_meta(lambda: cls(**kw), f"{source}: key representation.stage makes")
        return {k: tuple(v.shape) for k, v in vae.state_dict().items()}, vae.dim

    @classmethod
    def load(cls, meta: dict, tensors: dict) -> "ChunkVAE":
        vae = cls(**meta["kwargs"]).eval()
        vae.load_state_dict(tensors)
        vae.info = meta.get("info") if isinstance(meta.get("info"), dict) else {}
        return vae
