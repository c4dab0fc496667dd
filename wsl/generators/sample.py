"""Sampling networks from a generator run and writing them as a zoo (the exchange format).

Every sampled net becomes a zoo model with status "sampled", one checkpoint (epoch 0) whose
safetensors header and whose index row carry the provenance: generator run, checkpoint sha256,
method, seed, index within the draw, condition and guidance. Readers of zoos (evaluation,
landscape metrics, encoders) need nothing else.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch

from wsl.errors import ConfigError
from wsl.generators.run import GeneratorRun

log = logging.getLogger("wsl.generators")


def condition_tensor(run: GeneratorRun, condition: dict | None, n: int) -> torch.Tensor | None:
    """Raw condition values {key: value} -> normalized [n, C] (None: unconditional)."""
    condition = dict(condition or {})
    if not condition:
        return None
    if not run.condition_keys:
        raise ConfigError(f"condition={condition}: the generator in {run.path} was trained unconditionally")
    if set(condition) != set(run.condition_keys):
        raise ConfigError(f"condition keys {sorted(condition)} do not match the generator's {run.condition_keys} "
                          f"(give all of them, or none for unconditional sampling)")
    vals = []
    for k in run.condition_keys:
        v = condition[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"condition.{k} must be a finite number, got {v!r}")
        vals.append(float(v))
    raw = torch.tensor(vals, dtype=torch.float64)[None].expand(n, -1)
    return run.normalize_condition(raw)


@torch.no_grad()
def sample_vectors(run: GeneratorRun, n: int, seed: int = 0, condition: dict | None = None, guidance: float = 1.0,
                   steps: int | None = None, batch_size: int = 1000, device: str = "cpu") -> torch.Tensor:
    """n generator-space vectors [n, D]. The noise of sample i depends only on (seed, i // batch_size),
    so a draw is reproducible for a given batch size."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not math.isfinite(guidance) or guidance < 0:
        raise ConfigError(f"guidance must be a non-negative number, got {guidance!r}")
    net = run.denoiser.to(device).eval()
    dim = run.representation.dim
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + start)
        noise = torch.randn(b, dim, generator=g).to(device)
        cond = condition_tensor(run, condition, b)
        cond = None if cond is None else cond.to(device)
        out.append(run.method.sample(net, noise, cond=cond, guidance=float(guidance), steps=steps, generator=g).cpu())
    return torch.cat(out)


def sample_weights(run: GeneratorRun, n: int, **kw) -> torch.Tensor:
    """n sampled nets as flat weights [n, N] in the zoo's layout."""
    return run.representation.decode(sample_vectors(run, n, **kw))


def check_target_zoo(run: GeneratorRun, zoo_path) -> None:
    """Refuse to add samples to an existing zoo of another architecture or dataset (before any work)."""
    from wsl.zoo import Zoo

    root = Path(zoo_path).expanduser()
    source = run.zoo.get("path")
    if source and root.resolve() == Path(source).resolve():
        raise ConfigError(f"zoo.path={root} is the zoo the generator learned from; write the samples to "
                          "another zoo (evaluation compares the two)")
    if not (root / "index.h5").exists():
        if root.exists() and root.is_file():
            raise ConfigError(f"zoo.path={root} is a file, not a zoo directory")
        return
    zoo = Zoo(root)
    want = json.dumps(run.arch, sort_keys=True)
    for m in zoo.ids:
        have = json.dumps(zoo.arch(m), sort_keys=True)
        if have != want:
            raise ConfigError(f"architecture mismatch: the generator {run.path} makes {want}, but zoo {zoo.path} "
                              f"already holds {have} (model {m}); write the samples to another zoo.path")
        ds = zoo.job_config(m).get("dataset")
        if ds != run.zoo.get("dataset"):
            raise ConfigError(f"dataset mismatch: the generator {run.path} was trained on nets for "
                              f"{run.zoo.get('dataset')}, zoo {zoo.path} holds nets for {ds}; "
                              "write the samples to another zoo.path")


def write_sample_zoo(run: GeneratorRun, flat: torch.Tensor, zoo_path, seed: int, condition: dict | None = None,
                     guidance: float = 1.0, steps: int | None = None, job_id: str | None = None,
                     zoo_name: str | None = None, config: dict | None = None) -> Path:
    """Write sampled nets flat [n, N] as a zoo (status "sampled", one checkpoint each). Returns the zoo path."""
    from wsl.zoo import ShardWriter

    root = Path(zoo_path).expanduser().resolve()
    run_name = Path(run.path).name if run.path else "generator"
    job_id = job_id or f"gen-{_safe(run_name)}-s{int(seed)}"
    steps_used = steps if steps is not None else run.method.steps
    provenance = {"generator_run": str(run.path), "generator_checkpoint": str(Path(run.path) / "generator.safetensors"),
                  "generator_sha256": run.sha256, "generator_method": run.method.name,
                  "generator_denoiser": run.denoiser.name, "sample_seed": int(seed), "guidance": float(guidance),
                  "sampler_steps": int(steps_used), "source_zoo": run.zoo.get("path", "")}
    cond = {f"cond_{_column(k)}": float(v) for k, v in (condition or {}).items()}
    stored = {"dataset": run.zoo.get("dataset"), "generator": {**provenance, "condition": dict(condition or {})},
              "source_zoo": {k: run.zoo.get(k) for k in ("path", "name", "dataset_fingerprint", "epoch", "train_ids")},
              "sample": config or {}}
    writer = ShardWriter(root, job_id, config=stored, zoo_name=zoo_name or root.name)
    for i, sd in enumerate(run.representation.state_dicts(flat)):
        mid = f"{job_id}-{i:06d}"
        meta = {"provenance": json.dumps({**provenance, "sample_index": i, "condition": dict(condition or {})},
                                         sort_keys=True)}
        writer.write_checkpoint(mid, 0, sd, run.arch, extra_meta=meta)
        writer.add_model(mid, run.arch, {**provenance, "sample_index": i, **cond}, status="sampled")
    writer.commit()
    return root


def _column(key: str) -> str:
    """A condition key as an index column name ('landscape/trace' -> 'landscape_trace': HDF5 paths)."""
    import re

    return re.sub(r"[^A-Za-z0-9_]", "_", key)


def _safe(name: str) -> str:
    import re

    s = re.sub(r"[^A-Za-z0-9._=-]", "-", name).strip(".-") or "generator"
    return s[:120]


def sample_run(cfg) -> Path:
    """The whole of `wsl-sample` (cfg: the composed `sample` config). Every check precedes the sampling."""
    import time

    from omegaconf import DictConfig, OmegaConf

    from wsl.generators.run import load_run

    if isinstance(cfg, DictConfig):
        if OmegaConf.is_missing(cfg, "run"):
            raise ConfigError("run=<a wsl-train-generator run directory> is required")
        if OmegaConf.is_missing(cfg.zoo, "path"):
            raise ConfigError("zoo.path=<the output zoo> is required")
        cfg = OmegaConf.to_container(cfg, resolve=True)
    from wsl.generators.threads import set_threads

    set_threads(cfg.get("threads"))
    run = load_run(cfg["run"])
    n, seed = cfg["n"], cfg["seed"]
    condition = dict(cfg.get("condition") or {})
    condition_tensor(run, condition, 1)  # key and value checks before anything is written
    steps = cfg.get("steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ConfigError(f"steps must be a positive integer or null, got {steps!r}")
    check_target_zoo(run, cfg["zoo"]["path"])
    t = time.perf_counter()
    flat = sample_weights(run, n, seed=seed, condition=condition, guidance=float(cfg.get("guidance", 1.0)),
                          steps=steps, batch_size=int(cfg.get("batch_size", 1000)), device=cfg.get("device", "cpu"))
    t_sample = time.perf_counter() - t
    if not torch.isfinite(flat).all():
        bad = int((~torch.isfinite(flat)).any(1).sum())
        log.warning("%d of %d sampled nets have non-finite weights; they are written as they are", bad, n)
    t = time.perf_counter()
    root = write_sample_zoo(run, flat, cfg["zoo"]["path"], seed, condition, float(cfg.get("guidance", 1.0)), steps,
                            job_id=cfg.get("job_id"), zoo_name=cfg["zoo"].get("name"), config=cfg)
    log.info("sampled %d nets in %.2f s (%.0f per minute), wrote them in %.2f s to %s", n, t_sample,
             60 * n / max(t_sample, 1e-9), time.perf_counter() - t, root)
    return root
