"""An INR zoo: one SIREN fitted to each digits image, written in the ordinary zoo format.

The population trainer (wsl.population) trains classifiers on shared data; an INR population needs
a regression loss and a different target per member (member k fits image k). This module fits
the whole population in one vmapped program (torch.func via wsl.population.population_forward):
the loss is the sum over members of each member's mean squared error, so every member gets exactly
its own gradient, and Adam, being elementwise, is exactly per-member Adam on stacked parameters.

The recipe (w0, width, depth, steps, lr, seeds, intensity scaling) is recorded in the zoo config and
in every model's hyperparameters, since INR results depend on the exact SIREN variant.
Each model's row holds its digit as `label` (the INR classification target) and `image_index`;
its history holds the fit's MSE at the start and end (`train_loss`) and the PSNR (`train_psnr`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import torch

from wsl.data.digits_inr import INRData
from wsl.errors import ConfigError
from wsl.nets.siren import SIREN
from wsl.population.functional import population_forward, skeleton, stack_state_dicts

log = logging.getLogger("wsl.encoders")


def psnr(mse: torch.Tensor, value_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for values spanning `value_range` ([-1, 1] -> 2)."""
    return 10 * torch.log10(value_range**2 / mse.clamp_min(1e-12))


def fit_sirens(data: INRData, width: int = 32, depth: int = 2, w0: float = 30.0, steps: int = 500,
               lr: float = 1e-3, seed: int = 0, shared_init: bool = False) -> tuple[SIREN, dict, dict]:
    """Fit one SIREN per image. Returns (a template net, stacked params {name: [M, ...]}, stats).

    shared_init=False: every image's SIREN has its own random initialization (seed derived from
    `seed` and the image index); True: all start from one initialization drawn with `seed` (the
    weights then differ only by what the fit wrote into them, which makes classification easier).

    stats: mse_init [M], mse [M] (after `steps` full-batch Adam steps), seeds [M], init (stacked
    initial params).
    """
    for key, v in (("inr.steps", steps), ("net.width", width), ("net.depth", depth)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{key} must be a positive integer, got {v!r}")
    if not lr > 0:
        raise ConfigError(f"inr.lr must be > 0, got {lr!r}")
    m = data.num_images
    if shared_init:
        seeds = [int(seed)] * m
    else:  # one init seed per image
        seeds = [int(seed) * 1_000_003 + int(i) for i in data.image_index.tolist()]
    nets = []
    for s in seeds:
        torch.manual_seed(s)
        nets.append(SIREN(in_shape=data.input_shape, num_classes=data.out_channels, width=width, depth=depth, w0=w0))
    template = nets[0]
    init = {k: v.detach().clone() for k, v in stack_state_dicts([n.state_dict() for n in nets]).items()}
    params = {k: torch.nn.Parameter(v.clone()) for k, v in init.items()}
    net = skeleton(template)
    coords, target = data.coords, data.values  # [P, 2], [M, P, 1]

    def member_mse(prm: dict) -> torch.Tensor:  # -> [M]
        out = population_forward(net, prm, coords, shared_input=True)  # [M, P, 1]
        return (out - target).pow(2).mean(dim=(1, 2))

    opt = torch.optim.Adam(params.values(), lr=lr)
    with torch.no_grad():
        mse_init = member_mse(params).detach()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        member_mse(params).sum().backward()
        opt.step()
    with torch.no_grad():
        mse = member_mse(params).detach()
    stats = {"mse_init": mse_init, "mse": mse, "seeds": seeds, "init": init}
    return template, {k: v.detach() for k, v in params.items()}, stats


def build_inr_zoo(path, data: INRData, width: int = 32, depth: int = 2, w0: float = 30.0, steps: int = 500,
                  lr: float = 1e-3, seed: int = 0, shared_init: bool = False, zoo_name: str | None = None) -> Path:
    """Fit SIRENs to every image of `data` and commit them as a zoo at `path` (one job shard)."""
    from wsl.zoo import ShardWriter

    recipe = {"net": "siren", "width": width, "depth": depth, "w0": float(w0), "w0_initial": float(w0),
              "optimizer": "adam", "steps": steps, "lr": float(lr), "loss": "mse", "full_batch": True,
              "seed": seed, "shared_init": bool(shared_init), "init": "siren (Sitzmann et al. 2020)",
              "target": data.info.get("values", "")}
    config = {"dataset": {"name": data.name, **data.info}, "inr": recipe}
    ident = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:8]
    job_id = f"{data.name}-siren-w{width}-d{depth}-{ident}"
    template, params, stats = fit_sirens(data, width, depth, w0, steps, lr, seed, shared_init)
    arch = template.arch
    writer = ShardWriter(path, job_id, config=config, zoo_name=zoo_name or Path(path).name)
    mse0, mse1 = stats["mse_init"], stats["mse"]
    for k in range(data.num_images):
        mid = f"{job_id}-img{int(data.image_index[k]):04d}"
        sd = {name: t[k] for name, t in params.items()}
        # epoch 0: the initialization; epoch 1: the fitted net (the whole fit counts as one epoch)
        writer.write_checkpoint(mid, 0, {name: t[k] for name, t in stats["init"].items()}, arch)
        writer.write_checkpoint(mid, 1, sd, arch)
        ok = bool(torch.isfinite(mse1[k]))
        hp = {**{k2: v for k2, v in recipe.items() if k2 not in ("seed", "net")}, "dataset": data.name, "recipe_seed": seed,
              "seed_init": stats["seeds"][k], "image_index": int(data.image_index[k]), "label": int(data.labels[k]),
              "n_params": sum(t[k].numel() for t in params.values())}
        hist = {"train_loss": [float(mse0[k]), float(mse1[k])],
                "train_psnr": [float(psnr(mse0[k])), float(psnr(mse1[k]))]}
        writer.add_model(mid, arch, hp, "trained" if ok else "diverged", hist, diverged_epoch=-1 if ok else 1)
    writer.commit()
    log.info("INR zoo %s: %d SIRENs, mean PSNR %.1f dB", path, data.num_images, float(psnr(mse1).mean()))
    return Path(path)

