"""One wsl-zoo job: train the population its config describes and commit it to the zoo."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from lightning.pytorch.callbacks import TQDMProgressBar
from torch.utils.data import DataLoader

from wsl.apps.zoo_config import validate_zoo_config
from wsl.population import PopulationBatchSampler, PopulationModule, make_members, stack_state_dicts
from wsl.population.recording import EpochRecorder
from wsl.population.sampler import IndexDataset
from wsl.zoo import ShardWriter, merge_index

log = logging.getLogger("wsl.zoo")

JOB_KEYS = ("dataset", "net", "train", "zoo.checkpoint_every", "zoo.checkpoint_epochs", "population.seed")
MEMBER_KEYS = ("lr", "weight_decay")  # vary inside a population: not part of the job identity


def job_identity(cfg: DictConfig) -> str:
    """A stable, readable job id: rerunning the same command finds the same shard (resume)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    ident = {"dataset": {k: v for k, v in c["dataset"].items() if k != "root"}, "net": c["net"],
             "train": {k: v for k, v in c["train"].items() if k not in MEMBER_KEYS and k != "eval_batch_size"},
             "ckpt": [c["zoo"]["checkpoint_every"], c["zoo"]["checkpoint_epochs"]],
             "seed": c["population"]["seed"]}
    h = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]
    net = c["net"]["_target_"].rsplit(".", 1)[-1].lower()
    tf = c["dataset"]["train_fraction"]
    return (f"{c['dataset']['name']}-{net}-w{c['net']['width']}-d{c['net']['depth']}"
            f"-bs{c['train']['batch_size']}-tf{tf:g}-{h}")


def checkpoint_schedule(cfg: DictConfig) -> set[int]:
    e = int(cfg.train.epochs)
    if cfg.zoo.checkpoint_epochs is not None:
        return {int(x) for x in cfg.zoo.checkpoint_epochs} | {0, e}
    return set(range(0, e + 1, int(cfg.zoo.checkpoint_every))) | {e}


def init_member(net_factory, data, seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return net_factory(in_shape=data.input_shape, num_classes=data.num_classes)


def _stored_config(cfg: DictConfig) -> dict:
    c = OmegaConf.to_container(cfg, resolve=False)
    c.pop("logger", None)  # holds run-time paths; not part of what the zoo is
    return json.loads(json.dumps(OmegaConf.to_container(OmegaConf.create(c), resolve=True), default=str))


def _make_logger(cfg: DictConfig, run_dir: Path | None):
    from wsl.tracking import make_logger

    if not cfg.get("logger") or "_target_" not in cfg.logger:
        return False
    return make_logger(cfg.logger, str(run_dir or Path.cwd()))


def run_zoo_job(cfg: DictConfig, run_dir: Path | None = None, overrides=()) -> Path:
    """Train (or resume) the job's population and commit it. Returns the zoo directory."""
    validate_zoo_config(cfg)
    root = Path(cfg.zoo.path).expanduser().resolve()
    data = instantiate(cfg.dataset)
    net_factory = instantiate(cfg.net)
    probe = init_member(net_factory, data, 0)  # constructor checks before any training
    arch = probe.arch
    members = make_members(cfg.population.size, cfg.train.lr, cfg.train.weight_decay, cfg.population.seed)
    job_id = job_identity(cfg)
    ids = {m.index: f"{job_id}-{m.key()}" for m in members}
    config = _stored_config(cfg)
    writer = ShardWriter(root, job_id, config=config, zoo_name=cfg.zoo.name, overrides=list(overrides))
    done = writer.finished_ids()
    todo = [m for m in members if ids[m.index] not in done]
    if not todo:
        log.info("job %s: all %d members already in the zoo; nothing to train", job_id, len(members))
        merge_index(root)
        _annotate(cfg, root, list(ids.values()))
        return root
    log.info("job %s: training %d members (%d already done) on %s", job_id, len(todo), len(members) - len(todo),
             data.name)

    nets = [init_member(net_factory, data, m.seed_init) for m in todo]
    params = stack_state_dicts([n.state_dict() for n in nets])
    n_train = data.x_train.shape[0]
    bs = int(cfg.train.batch_size)
    steps = -(-n_train // bs)
    t = cfg.train
    module = PopulationModule(
        probe, params, data, [m.lr for m in todo], [m.weight_decay for m in todo], optimizer=t.optimizer,
        momentum=t.momentum, nesterov=t.nesterov, betas=tuple(t.betas), eps=t.eps, schedule=t.schedule,
        warmup_epochs=t.warmup_epochs, step_epochs=t.step_epochs, gamma=t.gamma, epochs=t.epochs,
        steps_per_epoch=steps, eval_batch_size=t.eval_batch_size)
    save_at = checkpoint_schedule(cfg)

    def sink(epoch, metrics, mod):
        if epoch not in save_at:
            return
        alive = mod.alive.cpu()
        for k, m in enumerate(todo):
            if alive[k]:
                writer.write_checkpoint(ids[m.index], epoch, mod.member_state_dict(k), arch)

    recorder = EpochRecorder(sink)
    loader = DataLoader(IndexDataset(), batch_size=None,
                        sampler=PopulationBatchSampler(n_train, bs, [m.seed_data for m in todo]))
    callbacks = [recorder]
    refresh = int(cfg.get("progress_refresh_rate", 10))
    if refresh > 0:
        callbacks.append(TQDMProgressBar(refresh_rate=refresh))
    trainer = L.Trainer(max_epochs=int(t.epochs), logger=_make_logger(cfg, run_dir), callbacks=callbacks,
                        enable_progress_bar=refresh > 0,
                        enable_checkpointing=False, use_distributed_sampler=False, log_every_n_steps=max(1, steps),
                        **OmegaConf.to_container(cfg.trainer, resolve=True))
    trainer.fit(module, loader)

    shared = {"dataset": data.name, "train_fraction": float(cfg.dataset.train_fraction),
              "subset_seed": int(cfg.dataset.subset_seed), "split_seed": int(cfg.dataset.split_seed),
              "net": arch["name"], "n_params": sum(p.numel() for p in probe.parameters()),
              **{k: v for k, v in arch.items() if k not in ("name", "in_shape", "num_classes")},
              "batch_size": bs, "epochs": int(t.epochs), "optimizer": t.optimizer, "momentum": float(t.momentum),
              "schedule": t.schedule, "warmup_epochs": int(t.warmup_epochs), "population_seed": int(cfg.population.seed)}
    div = module.diverged_epoch.cpu()
    for k, m in enumerate(todo):
        hp = dict(shared, lr=m.lr, weight_decay=m.weight_decay, seed_init=m.seed_init, seed_data=m.seed_data,
                  replica=m.replica)
        status = "diverged" if div[k] >= 0 else "trained"
        writer.add_model(ids[m.index], arch, hp, status, recorder.member_history(k), diverged_epoch=int(div[k]))
    writer.commit()
    n_div = int((div >= 0).sum())
    log.info("job %s: %d trained, %d diverged -> %s", job_id, len(todo) - n_div, n_div, root)
    if trainer.logger is not None:
        from wsl.tracking import log_run

        final = {k: float(np.nanmean(v[-1])) if np.isfinite(v[-1]).any() else float("nan")
                 for k, v in recorder.history.items()}
        log_run(trainer.logger, config, {"trained": len(todo) - n_div, "diverged": n_div, "mean": final})
    _annotate(cfg, root, list(ids.values()))
    return root


def _annotate(cfg: DictConfig, root: Path, model_ids: list[str]) -> None:
    """Landscape metrics of this job's models (landscape=basic|full); skips what is already there."""
    if cfg.get("landscape") and cfg.landscape.get("metrics"):
        from wsl.landscape import annotate_zoo

        annotate_zoo(root, cfg.landscape, model_ids)
