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
from torch.utils.data import DataLoader, TensorDataset

from wsl.errors import ConfigError, ZooFormatError, printable
from wsl.generators.generator_run import CHECKPOINT, GeneratorRun
from wsl.generators.representation import WeightAutoencoder, WeightRepresentation
from wsl.generators.schema import PCAConfig, TrainGeneratorConfig, TrainZoo, representation_name
from wsl.schema import positive
from wsl.trainer import barrier, global_rank, make_trainer
from wsl.zoo import Zoo
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
    cond_spec: object = None  # wsl.generators.conditions.ConditionSpec (kinds, vocabularies)


def select_zoo(settings: TrainZoo, columns: list[str] = (), categorical: list[str] = ()) -> ZooSelection:
    """Open the zoo (`settings`: the `zoo` node), pick the trained nets of one architecture, read the
    condition `columns` (`categorical`: number columns read as categories; wsl.generators.conditions).
    Every check against the zoo runs here, before any weight is loaded.
    """
    from wsl.generators.conditions import TASK_KEY, excluded, read_conditions

    zoo = Zoo(settings.path)
    filt = settings.filter or {}
    ids = excluded(zoo, zoo.filter(status="trained", **filt), getattr(settings, "exclude", None))
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
    # a multi-task zoo conditioned on its task: the nets' data differ in dataset.task only
    same = ((lambda d: {k: v for k, v in (d or {}).items() if k != TASK_KEY}) if TASK_KEY in columns
            else (lambda d: d))
    for m in ids[1:]:
        if same(zoo.job_config(m).get("dataset")) != same(dataset):
            raise ConfigError(f"zoo {zoo.path}: models {ids[0]} and {m} were trained on different data "
                              f"({dataset} vs {zoo.job_config(m).get('dataset')}); select one dataset with zoo.filter")
    v = settings.val_fraction
    if v > 0:
        split = zoo.split((1.0 - v, v, 0.0), seed=settings.split_seed, ids=ids)
        train_ids, val_ids = split["train"], split["val"]
        if len(train_ids) < 2 or not val_ids:
            raise ConfigError(f"zoo.val_fraction={v} leaves {len(train_ids)} training and {len(val_ids)} validation "
                              f"nets of {len(ids)}; change it (0 trains on every net)")
    else:
        train_ids, val_ids = ids, []
    keys, both = list(columns), train_ids + val_ids
    cond, spec = torch.zeros(len(both), 0), None
    if keys:
        spec, cond = read_conditions(zoo.table(), both, keys, categorical, f"zoo {zoo.path}")
    check_epoch(zoo, both, settings.epoch, "zoo.epoch")
    return ZooSelection(zoo, train_ids, val_ids, arch, dataset, keys, cond[:len(train_ids)], cond[len(train_ids):],
                        spec)


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


def per_rank_batch(batch_size: int, n: int, world_size: int = 1, what: str = "training nets") -> int:
    """The batch size a rank can fill: `batch_size` capped at its share of the n nets.

    Under DDP every rank sees about n / world_size nets per epoch (Lightning's DistributedSampler),
    and training batches drop their incomplete last batch: a batch larger than a rank's share
    would give epochs of zero steps, i.e. a run that silently trains nothing.
    """
    positive("batch_size", batch_size)
    share = n // max(1, int(world_size))
    if share < 1:
        raise ConfigError(f"{n} {what} cannot be shared by {world_size} DDP processes (each needs at least one); "
                          "use fewer trainer.devices or a larger zoo")
    return min(batch_size, share)


def _loader(x: torch.Tensor, cond: torch.Tensor, batch_size: int, shuffle: bool, seed: int, world_size: int = 1):
    return DataLoader(TensorDataset(x, cond.float()), batch_size=per_rank_batch(batch_size, x.shape[0], world_size),
                      shuffle=shuffle, drop_last=shuffle, generator=torch.Generator().manual_seed(seed))


def fit_autoencoder(job: TrainGeneratorConfig, x: torch.Tensor, run_dir: Path | None) -> WeightAutoencoder:
    """p-diff's stage one: an autoencoder of the normalized weight vectors x [M, N] (job.representation.latent)."""
    from wsl.generators.module import AutoencoderModule

    lat = job.representation.latent
    ae = WeightAutoencoder(x.shape[1], latent_dim=lat.latent_dim, hidden=lat.hidden, depth=lat.depth)
    module = AutoencoderModule(ae, lr=lat.lr, weight_decay=lat.weight_decay, input_noise=lat.input_noise,
                               latent_noise=lat.latent_noise)
    trainer = make_trainer(job.trainer, progress_refresh_rate=job.progress_refresh_rate, run_dir=run_dir,
                           max_steps=lat.steps, max_epochs=-1)
    trainer.fit(module, _loader(x, torch.zeros(len(x), 0), job.batch_size, True, job.seed, trainer.world_size))
    _check_trained(trainer, "representation.latent autoencoder")
    return ae.eval()


def fit_chunk_vae(job: TrainGeneratorConfig, x: torch.Tensor, run_dir: Path | None):
    """representation=latent: the chunk VAE of the normalized weight vectors x [M, N], trained on random minibatches
    of (net, chunk) pairs (representation.batch per step) and standardized."""
    from wsl.generators.representations.vae import ChunkVAE

    r = job.representation
    torch.manual_seed(job.seed)
    vae = ChunkVAE(x.shape[1], chunk=r.chunk, latent_dim=r.latent_dim, hidden=r.hidden)
    t = time.perf_counter()
    history = vae.fit(x, beta=r.beta, steps=r.steps, batch=r.batch, lr=r.lr, weight_decay=r.weight_decay,
                      seed=job.seed, progress=job.progress_refresh_rate > 0)
    if not all(math.isfinite(v) for v in history):
        raise ConfigError(f"representation=latent: the VAE diverged (loss {history[-1]}); lower representation.lr")
    with torch.no_grad():
        mu, logvar = vae.posterior(x)
        vae.info = {"recon_mse": float(nn_mse(vae.reconstruct(mu), x)), "steps": int(r.steps),
                    "posterior_std": float((0.5 * logvar).exp().mean()), "seconds": round(time.perf_counter() - t, 3),
                    "loss_history": [round(v, 5) for v in history[-5:]]}
    log.info("chunk VAE: %d steps in %.1f s, reconstruction MSE %.4f (normalized weights), mean posterior std %.3f",
             r.steps, vae.info["seconds"], vae.info["recon_mse"], vae.info["posterior_std"])
    vae.fit_standardization(x)
    return vae


def nn_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).pow(2).mean()


def check_representation(job: TrainGeneratorConfig, n_train: int) -> None:
    """What the representation asks of the zoo, before any weight is read (one line naming the key)."""
    r = job.representation
    if r.reference >= n_train:
        raise ConfigError(f"representation.reference={r.reference} must index one of the {n_train} training nets")
    if isinstance(r, PCAConfig) and r.k > n_train - 1:
        raise ConfigError(f"representation.k={r.k} is more than the {n_train - 1} components that {n_train} training "
                          f"nets span (at most nets - 1 = {n_train - 1}); lower representation.k")


def train_generator(job: TrainGeneratorConfig, run_dir: Path | str | None = None,
                    config: dict | None = None) -> GeneratorRun:
    """The whole of `wsl-train-generator`: returns the saved run (its files are in `run_dir`).
    `config`: what the run stores as config.json (the app's typed config as plain types; None: no config.json)."""
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import WeightAveraging

    from wsl.generators.module import GeneratorModule, WarmupEMA
    from wsl.tracking import make_logger

    run_dir = Path(run_dir) if run_dir is not None else Path.cwd()
    t_start = time.perf_counter()
    if job.threads is not None:  # wsl.generators.schema: one thread is often faster on a shared machine
        torch.set_num_threads(job.threads)
    sel = select_zoo(job.zoo, job.condition.columns, job.condition.categorical)
    r, g = job.representation, job.generator
    kind = representation_name(r)
    check_representation(job, len(sel.train_ids))
    L.seed_everything(job.seed, workers=True, verbose=False)
    zoo, epoch = sel.zoo, job.zoo.epoch
    spec, layout = zoo.permutation_spec(sel.train_ids[0]), zoo.layout(sel.train_ids[0])
    log.info("loading %d nets (+%d validation) from %s", len(sel.train_ids), len(sel.val_ids), zoo.path)
    train_sds, val_sds = exclude_nonfinite(sel, [zoo.state_dict(m, epoch) for m in sel.train_ids],
                                           [zoo.state_dict(m, epoch) for m in sel.val_ids], epoch)
    t = time.perf_counter()
    rep, flat = WeightRepresentation.fit(train_sds, layout, spec, align=r.align, reference=r.reference,
                                         iterations=r.iterations, max_iter=r.max_iter)
    t_align = time.perf_counter() - t
    x = rep.normalize(flat)  # [M, N]
    rep.kind, x_std = kind, None
    if kind == "flat" and r.latent:
        rep.fit_latent(fit_autoencoder(job, x, run_dir), x)
        x = rep.encode(flat)  # [M, L]
    elif kind == "pca":
        from wsl.generators.representations.pca import PCACodes

        rep.stage = PCACodes.fit(x, r.k, r.block)
        x = rep.encode(flat)  # [M, k]
        if r.noise > 0:  # noise-injected training: each step sees codes + noise * eps (the posterior path's rows)
            x_std = torch.full_like(x, float(r.noise))
        log.info("PCA: %d components explain %.4f of the aligned training variance; a training net sits %.3f of its "
                 "distance from the others' mean outside their span (leave-one-out); samples sit at 0",
                 r.k, rep.stage.info["explained_variance"], rep.stage.info["loo_span_distance"])
    elif kind == "latent":
        rep.stage = fit_chunk_vae(job, x, run_dir)
        x, x_std = rep.stage.encode_with_std(x)  # [M, n * latent_dim] standardized means and posterior stds
        if not r.posterior:
            x_std = None
    val_x = rep.encode(torch.stack([layout.flatten(sd) for sd in rep.align(val_sds)])) if sel.val_ids else None

    c = len(sel.cond_keys)
    cond_mean = cond_std = cenc = None  # float64 [C], as select_zoo reads the columns
    if c:
        cond_mean, cond_std = sel.cond_spec.normalization(sel.cond_train)
        if not sel.cond_spec.plain:  # categories one-hot, tasks through a set encoder trained with the denoiser
            from wsl.generators.conditions import build_encoder

            cenc = build_encoder(sel.cond_spec, sel.dataset, job.condition)
    norm = (lambda v: ((v - cond_mean) / cond_std).float()) if c else (lambda v: v.float())
    try:  # a node is a schema instance (or a mapping naming an unregistered class): Hydra instantiates either
        cond_dim = c if cenc is None else cenc.dim
        if kind == "tokens":  # the representation's own denoiser (generator.denoiser is not used)
            from wsl.generators.representations.tokens import TokenDenoiser, layer_kinds

            denoiser = TokenDenoiser(rep.dim, cond_dim=cond_dim, segments=rep.segments(), kinds=layer_kinds(layout),
                                     chunk=r.chunk, d_model=r.d_model, nhead=r.nhead, layers=r.layers,
                                     dropout=r.dropout)
        else:
            denoiser = instantiate(g.denoiser, dim=rep.dim, cond_dim=cond_dim, segments=rep.segments())
        method = instantiate(g.method)
    except Exception as e:  # Hydra wraps the constructors' errors (e.g. too many tokens for this zoo)
        raise ConfigError(f"generator: {e.__cause__ or e}") from e
    opt = g.optimizer
    from wsl.generators.conditions import EncodedDenoiser

    module = GeneratorModule(denoiser if cenc is None else EncodedDenoiser(denoiser, cenc), method, x, norm(sel.cond_train), lr=opt.lr, weight_decay=opt.weight_decay,
                             schedule=opt.schedule, cond_dropout=job.condition.dropout,
                             spread_every=job.spread.every_n_steps, spread_n=job.spread.n, train_std=x_std)
    trainer = make_trainer(job.trainer, logger=make_logger(job.logger, run_dir), run_dir=run_dir,
                           callbacks=[WeightAveraging(multi_avg_fn=WarmupEMA(g.ema))] if g.ema else [],
                           progress_refresh_rate=job.progress_refresh_rate)
    world = int(trainer.world_size)
    t = time.perf_counter()
    data = x if x_std is None else torch.cat([x, x_std], dim=1)  # posterior samples: (mean, std) rows
    trainer.fit(module, _loader(data, norm(sel.cond_train), job.batch_size, True, job.seed, world),
                _loader(val_x, norm(sel.cond_val), job.batch_size, False, 0, world) if sel.val_ids else None)
    t_fit = time.perf_counter() - t
    _check_trained(trainer, "generator")
    denoiser.eval()
    if cenc is not None:
        cenc.eval()
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    final_spread = module.spread_history[-1][1] if module.spread_history else module.measure_spread()
    training = {"steps": int(trainer.global_step), "n_train": len(sel.train_ids), "n_val": len(sel.val_ids),
                "seconds_align": round(t_align, 3), "seconds_fit": round(t_fit, 3),
                "seconds_total": round(time.perf_counter() - t_start, 3), "metrics": metrics,
                "spread_ratio": final_spread, "spread_history": module.spread_history, "seed": job.seed,
                "representation": kind}
    if rep.stage is not None:
        training[kind] = rep.stage.summary()
    if not math.isfinite(metrics.get("train_loss", 0.0)):
        raise ConfigError(f"generator training diverged (train_loss={metrics['train_loss']}); lower generator.optimizer.lr")
    zinfo = {"path": str(zoo.path), "name": zoo.attrs.get("zoo_name", zoo.path.name), "dataset": sel.dataset,
             "dataset_fingerprint": zoo.training_data(sel.train_ids[0]).fingerprint(), "epoch": epoch,
             "train_ids": list(sel.train_ids), "val_ids": list(sel.val_ids), "filter": job.zoo.filter or {},
             **({"exclude": job.zoo.exclude} if job.zoo.exclude else {})}
    run = GeneratorRun(denoiser, method, rep, sel.arch, zinfo, sel.cond_keys, cond_mean, cond_std, training,
                       conditions=cenc)
    rank = global_rank(trainer)
    log.info("generator trained on rank %d of %d (spread ratio %.3f, %d steps, %.1f s)", rank, world, final_spread,
             trainer.global_step, t_fit)
    if rank == 0:  # DDP: every rank holds the same weights; one writes them
        run.save(run_dir, config=config)
        log.info("generator run saved to %s", run_dir)
    barrier()
    if rank != 0:  # the other ranks return what rank 0 wrote
        run.path, run.sha256 = run_dir.resolve(), hashlib.sha256((run_dir / CHECKPOINT).read_bytes()).hexdigest()
    return run


def _check_trained(trainer, what: str) -> None:
    """A fit that took no optimizer step is an error, never a silently untrained run."""
    if int(trainer.global_step) < 1:
        raise ConfigError(f"{what} training took 0 optimizer steps (trainer.max_steps={trainer.max_steps}, "
                          f"{trainer.num_training_batches} batch(es) per epoch on each of {trainer.world_size} "
                          "process(es)); raise trainer.max_steps, lower batch_size or use a larger zoo")
