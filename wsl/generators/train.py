"""Training a generator on a zoo: select and encode the nets, fit the denoiser, save the run."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from wsl.errors import ConfigError, ZooFormatError, printable
from wsl.generators.representation import WeightAutoencoder, WeightRepresentation
from wsl.generators.run import GeneratorRun
from wsl.generators.threads import set_threads
from wsl.zoo.epochs import check_epoch
from wsl.zoo.finite import all_finite, some_ids

log = logging.getLogger("wsl.generators")


@dataclass
class ZooSelection:
    """The nets a generator learns from, as read from the zoo (nothing fitted yet)."""

    zoo: object  # wsl.zoo.Zoo
    train_ids: list
    val_ids: list
    arch: dict
    dataset: dict  # the zoo job's dataset config (rebuilds the exact splits)
    cond_keys: list
    cond_train: torch.Tensor  # [M, C] raw property values
    cond_val: torch.Tensor  # [V, C]


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) or OmegaConf.is_list(node) else node


def select_zoo(cfg: DictConfig) -> ZooSelection:
    """Open `zoo.path`, pick the trained nets of one architecture, read their conditions.

    Every check runs here, before any weight is loaded.
    """
    from wsl.zoo import Zoo

    if OmegaConf.is_missing(cfg.zoo, "path") or not cfg.zoo.path:
        raise ConfigError("zoo.path=<the zoo to learn from> is required")
    zoo = Zoo(cfg.zoo.path)
    filt = _plain(cfg.zoo.get("filter")) or {}
    if not isinstance(filt, dict):
        raise ConfigError(f"zoo.filter must be a mapping of hyperparameter equalities, got {filt!r}")
    ids = zoo.filter(status="trained", **filt)
    if len(ids) < 2:
        raise ConfigError(f"zoo {zoo.path} has {len(ids)} trained net(s) matching zoo.filter={filt}; "
                          "a generator needs at least 2")
    archs = {json.dumps(zoo.arch(m), sort_keys=True) for m in ids}
    if len(archs) > 1:
        raise ConfigError(f"zoo {zoo.path} holds {len(archs)} architectures ({'; '.join(sorted(archs))}); "
                          "select one with zoo.filter (e.g. +zoo.filter.width=32)")
    arch = json.loads(archs.pop())
    dataset = zoo.job_config(ids[0]).get("dataset")
    if not dataset:
        raise ZooFormatError(f"{zoo.path}: the job of model {ids[0]} records no dataset config")
    for m in ids[1:]:
        if zoo.job_config(m).get("dataset") != dataset:
            raise ConfigError(f"zoo {zoo.path}: models {ids[0]} and {m} were trained on different data "
                              f"({dataset} vs {zoo.job_config(m).get('dataset')}); select one dataset with zoo.filter")
    v = float(cfg.zoo.val_fraction)
    if not 0.0 <= v < 1.0:
        raise ConfigError(f"zoo.val_fraction must be in [0, 1), got {v}")
    if v > 0:
        split = zoo.split((1.0 - v, v, 0.0), seed=int(cfg.zoo.split_seed), ids=ids)
        train_ids, val_ids = split["train"], split["val"]
        if len(train_ids) < 2 or not val_ids:
            raise ConfigError(f"zoo.val_fraction={v} leaves {len(train_ids)} training and {len(val_ids)} validation "
                              f"nets of {len(ids)}; change it (0 trains on every net)")
    else:
        train_ids, val_ids = ids, []
    keys = [str(k) for k in (_plain(cfg.condition.columns) or [])]
    cond_train, cond_val = torch.zeros(len(train_ids), 0), torch.zeros(len(val_ids), 0)
    if keys:
        for k in keys:
            if k.startswith("test_") or k.endswith("/test_acc") or k.endswith("/test_loss"):
                raise ConfigError(f"condition.columns: {k!r} is measured on the test split; nothing may be fitted on it "
                                  "(condition on val_acc or train_acc instead)")
        table = zoo.table()
        missing = [k for k in keys if k not in table.columns]
        if missing:
            raise ConfigError(f"condition.columns: {missing} are not columns of zoo {zoo.path}; "
                              f"have {sorted(str(c) for c in table.columns)}")

        def values(sel):
            try:
                arr = torch.tensor(table.loc[sel, keys].to_numpy(dtype="float64"), dtype=torch.float64)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"condition.columns={keys}: not numeric in zoo {zoo.path} ({e})") from e
            if sel and not torch.isfinite(arr).all():
                bad = [sel[i] for i in (~torch.isfinite(arr)).any(1).nonzero().flatten().tolist()[:3]]
                raise ConfigError(f"condition.columns={keys}: missing or infinite values for models {bad}")
            return arr.reshape(len(sel), len(keys))

        cond_train, cond_val = values(train_ids), values(val_ids)
    check_epoch(zoo, train_ids + val_ids, int(cfg.zoo.epoch), "zoo.epoch")
    return ZooSelection(zoo, train_ids, val_ids, arch, dataset, keys, cond_train, cond_val)



def exclude_nonfinite(sel: ZooSelection, train_sds: list, val_sds: list, epoch: int) -> tuple[list, list]:
    """Drop the nets whose weights are not all finite (a verify ERROR; one would poison the per-tensor statistics
    and every batch it is in) from `sel` (ids and conditions) and from the loaded state dicts, with one warning
    naming them; refuse when fewer than 2 training nets are left."""
    ok_t, ok_v = [all_finite(sd) for sd in train_sds], [all_finite(sd) for sd in val_sds]
    if all(ok_t) and all(ok_v):
        return train_sds, val_sds
    bad = [m for m, ok in zip(sel.train_ids + sel.val_ids, ok_t + ok_v) if not ok]
    shown = some_ids(bad)
    if sum(ok_t) < 2:
        raise ConfigError(f"zoo {printable(sel.zoo.path)}: {len(bad)} net(s) have non-finite weights at epoch {epoch} "
                          f"({shown}), leaving {sum(ok_t)} training net(s); a generator needs at least 2 "
                          "(check the zoo with wsl-verify)")
    log.warning("excluding %d of %d nets of %s with non-finite weights at epoch %d: %s", len(bad),
                len(ok_t) + len(ok_v), printable(sel.zoo.path), epoch, shown)
    it, iv = [i for i, ok in enumerate(ok_t) if ok], [i for i, ok in enumerate(ok_v) if ok]
    sel.train_ids, sel.val_ids = [sel.train_ids[i] for i in it], [sel.val_ids[i] for i in iv]
    sel.cond_train, sel.cond_val = sel.cond_train[it], sel.cond_val[iv]
    return [train_sds[i] for i in it], [val_sds[i] for i in iv]


def _trainer(cfg: DictConfig, node: DictConfig | None, run_dir: Path | None, callbacks: list, logger):
    import lightning as L
    from lightning.pytorch.callbacks import TQDMProgressBar

    kw = _plain(cfg.trainer) or {}
    if node is not None:
        kw.update(_plain(node))
    refresh = int(cfg.get("progress_refresh_rate", 0))
    if refresh > 0:
        callbacks = [*callbacks, TQDMProgressBar(refresh_rate=refresh)]
    kw.setdefault("enable_model_summary", False)
    from wsl.tracking import quiet_lightning

    quiet_lightning()
    return L.Trainer(logger=logger, callbacks=callbacks, enable_progress_bar=refresh > 0,
                     enable_checkpointing=False, default_root_dir=str(run_dir) if run_dir else None, **kw)


def _logger(cfg: DictConfig, run_dir: Path | None):
    from hydra.utils import instantiate

    if not cfg.get("logger") or "_target_" not in cfg.logger:
        return False
    lcfg = OmegaConf.to_container(cfg.logger, resolve=False)
    lcfg["save_dir"] = str(run_dir or Path.cwd())  # the group's default names Hydra's run dir
    return instantiate(lcfg)


def per_rank_batch(batch_size: int, n: int, world_size: int = 1, what: str = "training nets") -> int:
    """The batch size a rank can fill: `batch_size` capped at its share of the n nets.

    Under DDP every rank sees about n / world_size nets per epoch (Lightning's DistributedSampler),
    and training batches drop their incomplete last batch: a batch larger than a rank's share
    would give epochs of zero steps, i.e. a run that silently trains nothing.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    share = n // max(1, int(world_size))
    if share < 1:
        raise ConfigError(f"{n} {what} cannot be shared by {world_size} DDP processes (each needs at least one); "
                          "use fewer trainer.devices or a larger zoo")
    return min(batch_size, share)


def _loader(x: torch.Tensor, cond: torch.Tensor, batch_size: int, shuffle: bool, seed: int, world_size: int = 1):
    from torch.utils.data import DataLoader, TensorDataset

    bs = per_rank_batch(int(batch_size), x.shape[0], world_size)
    return DataLoader(TensorDataset(x, cond.float()), batch_size=bs, shuffle=shuffle, drop_last=shuffle,
                      generator=torch.Generator().manual_seed(seed))


def _global_rank(trainer=None) -> int:
    if trainer is not None:
        return int(trainer.global_rank)
    from lightning.pytorch.utilities import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def _barrier() -> None:
    """Wait for every DDP rank (no-op without a process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


LATENT_DEFAULTS = {"latent_dim": 64, "hidden": 512, "depth": 2, "steps": 2000, "lr": 1e-3, "weight_decay": 0.0,
                   "input_noise": 0.001, "latent_noise": 0.1}


def latent_settings(node) -> dict:
    """representation.latent merged over LATENT_DEFAULTS (`true` or {} take every default)."""
    given = _plain(node)
    given = {} if given is True else given
    if not isinstance(given, dict):
        raise ConfigError(f"representation.latent must be null, true or a mapping of {sorted(LATENT_DEFAULTS)}, "
                          f"got {given!r}")
    unknown = sorted(set(given) - set(LATENT_DEFAULTS))
    if unknown:
        raise ConfigError(f"representation.latent: unknown key(s) {unknown}; valid: {sorted(LATENT_DEFAULTS)}")
    return {**LATENT_DEFAULTS, **given}


def fit_autoencoder(cfg: DictConfig, x: torch.Tensor, run_dir: Path | None) -> WeightAutoencoder:
    """p-diff's stage one: an autoencoder of the normalized weight vectors x [M, N]."""
    from wsl.generators.module import AutoencoderModule

    lat = latent_settings(cfg.representation.latent)
    ae = WeightAutoencoder(x.shape[1], latent_dim=int(lat["latent_dim"]), hidden=int(lat["hidden"]),
                           depth=int(lat["depth"]))
    module = AutoencoderModule(ae, lr=float(lat["lr"]), weight_decay=float(lat["weight_decay"]),
                               input_noise=float(lat["input_noise"]), latent_noise=float(lat["latent_noise"]))
    trainer = _trainer(cfg, {"max_steps": int(lat["steps"]), "max_epochs": -1}, run_dir, [], False)
    trainer.fit(module, _loader(x, torch.zeros(len(x), 0), cfg.batch_size, True, int(cfg.seed), trainer.world_size))
    _check_trained(trainer, "representation.latent autoencoder")
    return ae.eval()


def train_generator(cfg: DictConfig, run_dir: Path | str | None = None) -> GeneratorRun:
    """The whole of `wsl-train-generator`: returns the saved run (its files are in `run_dir`)."""
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import WeightAveraging

    from wsl.generators.module import GeneratorModule, WarmupEMA

    run_dir = Path(run_dir) if run_dir is not None else Path.cwd()
    t_start = time.perf_counter()
    set_threads(cfg.get("threads"))
    sel = select_zoo(cfg)
    if cfg.representation.get("latent") not in (None, False):
        latent_settings(cfg.representation.latent)  # checked before any weight is loaded
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    r = cfg.representation
    zoo = sel.zoo
    spec = zoo.permutation_spec(sel.train_ids[0])
    layout = zoo.layout(sel.train_ids[0])
    epoch = int(cfg.zoo.epoch)
    log.info("loading %d nets (+%d validation) from %s", len(sel.train_ids), len(sel.val_ids), zoo.path)
    train_sds = [zoo.state_dict(m, epoch) for m in sel.train_ids]
    val_sds = [zoo.state_dict(m, epoch) for m in sel.val_ids]
    train_sds, val_sds = exclude_nonfinite(sel, train_sds, val_sds, epoch)
    t = time.perf_counter()
    rep, flat = WeightRepresentation.fit(train_sds, layout, spec, align=bool(r.align), reference=int(r.reference),
                                         iterations=int(r.iterations), max_iter=int(r.max_iter))
    t_align = time.perf_counter() - t
    x = rep.normalize(flat)  # [M, N]
    if r.get("latent") not in (None, False):
        rep.fit_latent(fit_autoencoder(cfg, x, run_dir), x)
        x = rep.encode(flat)  # [M, L]
    val_x = None
    if sel.val_ids:
        val_flat = torch.stack([layout.flatten(sd) for sd in rep.align(val_sds)])
        val_x = rep.encode(val_flat)

    c = len(sel.cond_keys)
    cond_mean = sel.cond_train.mean(0) if c else None
    cond_std = sel.cond_train.std(0, unbiased=False).clamp_min(1e-8) if c else None
    norm = (lambda v: ((v - cond_mean) / cond_std).float()) if c else (lambda v: v.float())
    g = cfg.generator
    try:
        denoiser = instantiate(g.denoiser, dim=rep.dim, cond_dim=c, segments=rep.segments())
        method = instantiate(g.method)
    except Exception as e:  # Hydra wraps the constructors' ConfigErrors; name the key instead
        cause = e.__cause__ or e
        raise ConfigError(f"generator: {cause}") from e
    opt = g.optimizer
    module = GeneratorModule(denoiser, method, x, norm(sel.cond_train), lr=float(opt.lr),
                             weight_decay=float(opt.weight_decay), schedule=str(opt.schedule),
                             cond_dropout=float(cfg.condition.dropout), spread_every=int(cfg.spread.every_n_steps),
                             spread_n=int(cfg.spread.n))
    callbacks = []
    if g.get("ema"):
        callbacks.append(WeightAveraging(multi_avg_fn=WarmupEMA(float(g.ema))))
    trainer = _trainer(cfg, None, run_dir, callbacks, _logger(cfg, run_dir))
    world = int(trainer.world_size)
    train_loader = _loader(x, norm(sel.cond_train), cfg.batch_size, True, int(cfg.seed), world)
    val_loader = (_loader(val_x, norm(sel.cond_val), cfg.batch_size, False, 0, world)
                  if val_x is not None else None)
    t = time.perf_counter()
    trainer.fit(module, train_loader, val_loader)
    t_fit = time.perf_counter() - t
    _check_trained(trainer, "generator")
    denoiser.eval()
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    final_spread = module.spread_history[-1][1] if module.spread_history else module.measure_spread()
    training = {"steps": int(trainer.global_step), "n_train": len(sel.train_ids), "n_val": len(sel.val_ids),
                "seconds_align": round(t_align, 3), "seconds_fit": round(t_fit, 3),
                "seconds_total": round(time.perf_counter() - t_start, 3), "metrics": metrics,
                "spread_ratio": final_spread, "spread_history": module.spread_history, "seed": int(cfg.seed)}
    if not math.isfinite(metrics.get("train_loss", 0.0)):
        raise ConfigError(f"generator training diverged (train_loss={metrics['train_loss']}); lower generator.optimizer.lr")
    zinfo = {"path": str(zoo.path), "name": zoo.attrs.get("zoo_name", zoo.path.name), "dataset": sel.dataset,
             "dataset_fingerprint": zoo.task_data(sel.train_ids[0]).fingerprint(), "epoch": epoch,
             "train_ids": list(sel.train_ids), "val_ids": list(sel.val_ids),
             "filter": _plain(cfg.zoo.get("filter")) or {}}
    run = GeneratorRun(denoiser, method, rep, sel.arch, zinfo, sel.cond_keys,
                       cond_mean.double() if c else None, cond_std.double() if c else None, training)
    rank = _global_rank(trainer)
    log.info("generator trained on rank %d of %d (spread ratio %.3f, %d steps, %.1f s)", rank, world, final_spread,
             trainer.global_step, t_fit)
    if rank == 0:  # DDP: every rank holds the same weights; one writes them
        config = OmegaConf.to_container(cfg, resolve=False)
        config.pop("logger", None)
        config = OmegaConf.to_container(OmegaConf.create(config), resolve=True)
        run.save(run_dir, config=config)
        log.info("generator run saved to %s", run_dir)
    _barrier()
    if rank != 0:  # the other ranks return what rank 0 wrote
        data = (run_dir / "generator.safetensors").read_bytes()
        run.path, run.sha256 = run_dir.resolve(), hashlib.sha256(data).hexdigest()
    return run


def _check_trained(trainer, what: str) -> None:
    """A fit that took no optimizer step is an error, never a silently untrained run."""
    if int(trainer.global_step) < 1:
        raise ConfigError(f"{what} training took 0 optimizer steps (trainer.max_steps={trainer.max_steps}, "
                          f"{trainer.num_training_batches} batch(es) per epoch on each of {trainer.world_size} "
                          "process(es)); raise trainer.max_steps, lower batch_size or use a larger zoo")
