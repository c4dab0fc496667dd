"""One wsl-zoo job: train the population its config describes and commit it to the zoo.

Classification datasets (modular arithmetic too), language modelling (`dataset=text`) and PDEs
(`dataset=convection`): `population.size` members, all trained on the same data. INR datasets
(`dataset=digits_inr net=siren`): every member configuration is fitted to every image (one model
per image and member: images x population.size nets), member i's targets being image i; the
index row holds the image's `label` and `image_index`, and the SIREN recipe goes into the stored
config (`inr`) and every row's hyperparameters. Both train in the same vmapped population and are
written, checkpointed and resumed the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wsl.apps.config import stored
from wsl.errors import ConfigError, WslError
from wsl.nets import build_net
from wsl.nets.schema import data_info
from wsl.population.functional import stack_state_dicts
from wsl.population.members import Member, derive_seed, make_members
from wsl.population.schema import ZooJobConfig
from wsl.zoo import ShardWriter, merge_index

log = logging.getLogger("wsl.zoo")

MEMBER_KEYS = ("lr", "weight_decay")  # vary inside a population: not part of the job identity
# net options added after zoos were made, at the value that gives the nets of before: left out of the
# job identity, so that those zoos keep their job ids (a rerun resumes them)
NET_KEYS_ADDED = {"norm": "none"}


def stored_config(job: ZooJobConfig) -> dict:
    """The config stored with the zoo (without the logger; landscape=none stores no metric settings)."""
    config = stored(job)
    if isinstance(config.get("dataset"), dict) and "task" in config["dataset"] and config["dataset"]["task"] is None:
        del config["dataset"]["task"]  # a single-task zoo stores what it stored before dataset.task existed
    if not job.landscape.metrics:
        config["landscape"] = {"metrics": []}
    if job.init_from is None:  # training from scratch: stored as before init.from/finetune existed
        config.pop("init", None)
        config.pop("finetune", None)
    # how the work is scheduled, not what it computes (the same nets, the same values up to float
    # tolerance): not stored, so that the stored config of a job does not depend on the machine
    config["population"].pop("chunk", None)
    config["population"].pop("retain_memory", None)
    config["landscape"].pop("device", None)
    return config


def base_identity(job: ZooJobConfig) -> tuple[str, str] | None:
    """(normalized init.from "<abs zoo>:<model_id>@<epoch>", its checkpoint's sha256 from the base zoo's
    index) or None without init.from; reads the base zoo's index only (no tensors)."""
    from wsl.zoo.reader import Zoo
    from wsl.zoo.reference import resolve_model_ref

    if job.init_from is None:
        return None
    ref = resolve_model_ref(job.init_from)
    sha = next(s for e, _, s in Zoo(ref.zoo).row(ref.model_id).checkpoints if e == ref.epoch)
    return ref.text, sha


def job_identity(job: ZooJobConfig, base: tuple[str, str] | None = None) -> str:
    """A stable, readable job id: rerunning the same command finds the same shard (resume). A fine-tune
    (init.from) adds the base checkpoint (normalized reference and sha256, `base` or read from the base
    zoo's index) and the finetune settings; without init.from the id is that of before."""
    c = stored(job)
    net = {k: v for k, v in c["net"].items() if not (k in NET_KEYS_ADDED and v == NET_KEYS_ADDED[k])}
    ident = {"dataset": {k: v for k, v in c["dataset"].items() if k != "root" and not (k == "task" and v is None)},
             "net": net,
             "train": {k: v for k, v in c["train"].items() if k not in MEMBER_KEYS and k != "eval_batch_size"},
             "ckpt": [c["zoo"]["checkpoint_every"], c["zoo"]["checkpoint_epochs"]],
             "seed": c["population"]["seed"]}
    tag = ""
    if job.init_from is not None:
        text, sha = base or base_identity(job)
        ident["init"] = {"from": text, "sha256": sha}
        ident["finetune"] = c["finetune"] if job.finetune.mode == "lora" else {"mode": "full"}
        tag = f"-lora{job.finetune.rank}" if job.finetune.mode == "lora" else "-ft"
    h = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]
    tf = getattr(job.dataset, "train_fraction", None)  # INR datasets have none: every net fits all of its image
    beta = getattr(job.dataset, "beta", None)  # a PDE's load axis
    return (f"{job.dataset.name}-{job.net.name}-w{job.net.width}-d{job.net.depth}"
            f"-bs{job.train.batch_size}{'' if tf is None else f'-tf{tf:g}'}{'' if beta is None else f'-beta{beta:g}'}"
            f"{tag}-{h}")


@dataclass
class Fit:
    """One model of the job: a member configuration and, for INR datasets, the image it fits."""

    member: Member
    model_id: str
    seed_init: int
    row: int | None = None  # INR: the target row (image) it fits; classification: shared data
    image_index: int = -1
    label: int = -1


def make_fits(members: list[Member], data, job_id: str) -> list[Fit]:
    if data.kind != "inr":
        return [Fit(m, f"{job_id}-{m.key()}", m.seed_init) for m in members]
    fits = []
    for m in members:
        for r in range(data.num_images):
            i = int(data.image_index[r])
            # without a shared init, an init of its own per image, derived from the member's seed
            seed = m.seed_init if data.shared_init else derive_seed(m.seed_init, i)
            fits.append(Fit(m, f"{job_id}-img{i:04d}-{m.key()}", seed, r, i, int(data.labels[r])))
    return fits


def inr_recipe(job: ZooJobConfig, data, arch: dict, net_hp: dict, steps_per_epoch: int) -> dict:
    """The INR fitting recipe, stored with the zoo (INR results depend on the exact SIREN variant)."""
    t, pixels = job.train, int(data.coords.shape[0])
    return {"net": arch["name"], **net_hp,
            "init": "siren (Sitzmann et al. 2020)" if arch["name"] == "siren" else arch.get("init", "default"),
            "shared_init": bool(data.shared_init), "loss": "mse", "optimizer": t.optimizer,
            "lr": list(t.lr) if isinstance(t.lr, list) else float(t.lr), "betas": list(t.betas),
            "schedule": t.schedule, "epochs": t.epochs, "steps": t.epochs * steps_per_epoch,
            "batch_size": t.batch_size, "pixels": pixels, "full_batch": t.batch_size >= pixels,
            "coords": data.info.get("coords", ""), "values": data.info.get("values", "")}


def checkpoint_schedule(job: ZooJobConfig) -> set[int]:
    e, z = job.train.epochs, job.zoo
    if z.checkpoint_epochs is not None:
        return set(z.checkpoint_epochs) | {0, e}
    return set(range(0, e + 1, z.checkpoint_every)) | {e}


def init_member(job: ZooJobConfig, data, seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        # nets are built on the CPU: its generator alone (torch.manual_seed also queues a seed for every
        # accelerator backend, with a Python stack trace each: 0.6 ms a member, 40 ms for 64 members)
        torch.default_generator.manual_seed(seed)
        return build_net(job.net.arch(data.input_shape, data.num_classes, data_info(data)))


def run_zoo_job(job: ZooJobConfig, run_dir: Path | None = None, overrides=()) -> Path:
    """Train (or resume) the job's population and commit it. Returns the zoo directory."""
    root = Path(job.zoo.path).expanduser().resolve()
    data = job.dataset.load()
    members = make_members(job.population.size, job.train.lr, job.train.weight_decay, job.population.seed)
    probe = init_member(job, data, 0)  # constructor checks before any training
    arch, config = probe.arch, stored_config(job)
    base = load_base(job, arch) if job.init_from is not None else None  # before anything is written
    lora = None
    if base is not None and job.finetune.mode == "lora":
        from wsl.nets.lora import make_spec

        lora = make_spec(probe, job.finetune.rank, job.finetune.alpha, job.finetune.layers)
    inr, job_id, t = data.kind == "inr", job_identity(job, base and (base.text, base.sha256)), job.train
    fits = make_fits(members, data, job_id)
    net_hp = {k: v for k, v in arch.items() if k not in ("name", "in_shape", "num_classes")}  # its options
    n_train = data.x_train.shape[0]
    steps = -(-n_train // t.batch_size)
    if inr:
        config["inr"] = inr_recipe(job, data, arch, net_hp, steps)
    if base is not None:  # provenance: the base checkpoint, normalized, and its sha256
        config["init"] = {"from": base.text, "sha256": base.sha256}
    writer = ShardWriter(root, job_id, config=config, zoo_name=job.zoo.name, overrides=list(overrides))
    done = writer.finished_ids()
    todo = [f for f in fits if f.model_id not in done]
    if not todo:
        log.info("job %s: all %d models already in the zoo; nothing to train", job_id, len(fits))
        if not index_is_current(root, [f.model_id for f in fits]):  # a commit killed before its merge
            merge_index(root)
        _annotate(job, root, [f.model_id for f in fits])
        return root
    if root.exists() and not os.access(root, os.W_OK | os.X_OK):  # an existing zoo this job must add to
        raise ConfigError(f"zoo.path={root} is read-only; this job has models to train and commit")
    log.info("job %s: training %d models (%d already done) on %s", job_id, len(todo), len(fits) - len(todo),
             data.name)

    # Lightning only now: a rerun with nothing to train never imports it (seconds)
    from torch.utils.data import DataLoader

    from wsl.population import PopulationBatchSampler, PopulationModule
    from wsl.population.chunks import groups
    from wsl.population.recording import EpochRecorder
    from wsl.population.sampler import IndexDataset
    from wsl.tracking import make_logger
    from wsl.trainer import make_trainer

    recipe = {k: getattr(t, k) for k in ("optimizer", "momentum", "nesterov", "betas", "eps", "schedule",
                                         "warmup_epochs", "step_epochs", "gamma", "epochs", "eval_batch_size")}
    save_at = checkpoint_schedule(job)
    meta = None
    if lora is not None:
        from wsl.nets.lora import init_adapters
        from wsl.population.lora import LoRAPopulationModule

        meta = {"lora": {"base": base.text, "base_checkpoint": base.path, "base_sha256": base.sha256,
                         "rank": lora.rank, "alpha": lora.alpha, "layers": lora.layers}}
    d = job.dataset
    if inr:
        data_hp = {"dataset": data.name, "subset_seed": d.subset_seed, "shared_init": bool(data.shared_init),
                   "loss": "mse", "init": config["inr"]["init"], "steps": t.epochs * steps}
    else:
        data_hp = d.hparams()
    if data.kind == "lm":  # the vocabulary (characters[id]; the net's arch holds its size, `vocab`) and the corpus
        data_hp.update(characters=data.vocab, corpus_sha256=data.info["corpus_sha256"])
    shared = {**data_hp, "net": arch["name"], "n_params": sum(p.numel() for p in probe.parameters()), **net_hp,
              "batch_size": t.batch_size, "epochs": t.epochs, "optimizer": t.optimizer, "momentum": t.momentum,
              "schedule": t.schedule, "warmup_epochs": t.warmup_epochs, "population_seed": job.population.seed}
    if base is not None:
        shared.update(init_from=base.text, init_sha256=base.sha256, finetune=job.finetune.mode,
                      train_samples=int(n_train), **(lora.hparams() if lora is not None else {}))
    chunk = chunk_size(job, probe, data, len(todo))
    if job.population.retain_memory:
        from wsl.population.allocator import retain_freed_memory

        retain_freed_memory()
    logger = make_logger(job.logger, run_dir or Path.cwd())
    history: dict[str, list] = {}
    n_div, trainer = 0, None
    for group in groups(todo, chunk):  # one program per group, committed as it ends (same nets as one program)
        if chunk < len(todo):
            log.info("job %s: training models %d-%d of %d together", job_id, todo.index(group[0]) + 1,
                     todo.index(group[-1]) + 1, len(todo))
        lrs, wds = [f.member.lr for f in group], [f.member.weight_decay for f in group]
        rows = [f.row for f in group] if inr else None
        if lora is not None:  # adapters on the frozen base: A from each member's seed_init, B = 0
            adapters = stack_state_dicts([init_adapters(lora, f.seed_init) for f in group])
            module = LoRAPopulationModule(probe, base.state, adapters, lora, data, lrs, wds, steps_per_epoch=steps,
                                          target_rows=rows, **recipe)
        else:  # a full fine-tune starts every member from the base net (seed_init seeds nothing then)
            params = stack_state_dicts([base.state] * len(group) if base is not None else
                                       [init_member(job, data, f.seed_init).state_dict() for f in group])
            module = PopulationModule(probe, params, data, lrs, wds, steps_per_epoch=steps, target_rows=rows,
                                      **recipe)

        def sink(epoch, metrics, mod, group=group):
            if epoch not in save_at:
                return
            alive = mod.alive.cpu()  # a LoRA member's checkpoint holds its adapters (member_state_dict)
            states = mod.member_state_dicts() if lora is None else [mod.member_state_dict(k) for k in range(len(group))]
            for k, f in enumerate(group):  # copies: encoded and written on the writer's thread while training goes on
                if alive[k]:
                    writer.write_checkpoint_later(f.model_id, epoch, states[k], arch, extra_meta=meta)

        recorder = EpochRecorder(sink)
        loader = DataLoader(IndexDataset(), batch_size=None,
                            sampler=PopulationBatchSampler(n_train, t.batch_size, [f.member.seed_data for f in group]))
        trainer = make_trainer(job.trainer, logger=logger, callbacks=[recorder],
                               progress_refresh_rate=job.progress_refresh_rate, max_epochs=t.epochs,
                               use_distributed_sampler=False, log_every_n_steps=max(1, steps))
        trainer.fit(module, loader)
        div = module.diverged_epoch.cpu()
        for k, f in enumerate(group):
            m = f.member
            hp = dict(shared, lr=m.lr, weight_decay=m.weight_decay, seed_init=f.seed_init, seed_data=m.seed_data,
                      replica=m.replica, **(dict(label=f.label, image_index=f.image_index) if inr else {}))
            writer.add_model(f.model_id, arch, hp, "diverged" if div[k] >= 0 else "trained",
                             recorder.member_history(k), diverged_epoch=int(div[k]))
        writer.commit()
        n_div += int((div >= 0).sum())
        for k, v in recorder.history.items():
            history[k] = [np.concatenate([a, b]) for a, b in zip(history[k], v)] if k in history else list(v)
    log.info("job %s: %d trained, %d diverged -> %s", job_id, len(todo) - n_div, n_div, root)
    if trainer is not None and trainer.logger is not None:
        from wsl.tracking import log_run

        final = {k: float(np.nanmean(v[-1])) if np.isfinite(v[-1]).any() else float("nan")
                 for k, v in history.items()}
        log_run(trainer.logger, config, {"trained": len(todo) - n_div, "diverged": n_div, "mean": final})
    _annotate(job, root, [f.model_id for f in fits])
    return root


@dataclass
class Base:
    """The net fine-tunes start from (init.from): its verified state dict, normalized reference, sha256."""

    state: dict
    text: str
    sha256: str
    path: str  # the base checkpoint file


def load_base(job: ZooJobConfig, arch: dict) -> Base:
    """The init.from checkpoint, read and verified; a ConfigError (one line) if its architecture is not
    the configured net's `arch`, or if the zoo, model or epoch is missing; ZooFormatError if corrupted."""
    from wsl.zoo.reader import Zoo
    from wsl.zoo.reference import load_model_ref, resolve_model_ref

    ref = resolve_model_ref(job.init_from)
    state, base_arch, sha = load_model_ref(ref)
    if base_arch != arch:
        diff = sorted(k for k in set(arch) | set(base_arch) if arch.get(k) != base_arch.get(k))
        what = ", ".join(f"{k}={base_arch.get(k)!r} (configured: {arch.get(k)!r})" for k in diff)
        raise ConfigError(f"init.from={ref.text}: model {ref.model_id} has another architecture than the configured "
                          f"net={arch.get('name')}: {what}; set net=/net.* to the base net's")
    return Base(state, ref.text, sha, str(Zoo(ref.zoo).checkpoint_path(ref.model_id, ref.epoch)))


def chunk_size(job: ZooJobConfig, probe, data, nets: int) -> int:
    """population.chunk, or for auto the nets per group that fit this machine's cache (all of them on a
    GPU): wsl.population.chunks."""
    if job.population.chunk != "auto":
        return min(int(job.population.chunk), nets)
    from wsl.population.chunks import auto_chunk
    from wsl.population.schema import net_footprint

    acc = str(job.trainer.get("accelerator", "auto")).lower()
    gpu = acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())
    shape = getattr(probe, "in_shape", None)
    acts = 0 if shape is None else net_footprint(probe, shape).train_activations
    per_sample = data.coords.shape[0] if data.kind == "inr" else job.train.batch_size
    return auto_chunk(nets, sum(p.numel() for p in probe.parameters()), per_sample * acts, job.train.optimizer, gpu)


def index_is_current(root: Path, model_ids: list[str]) -> bool:
    """The index holds `model_ids` and is no older than any shard or annotation file: a rerun with
    nothing to train then writes nothing (and works on a read-only zoo). Every commit writes its
    shard before the index under the zoo lock, so a shard newer than the index is one whose merge
    was killed."""
    from wsl.zoo.format import ANNOTATION_DIR, INDEX_FILE, SHARD_DIR
    from wsl.zoo.table import read_table

    index = root / INDEX_FILE
    try:
        t = index.stat().st_mtime_ns
        sources = [*(root / SHARD_DIR).glob("*.h5"), *(root / ANNOTATION_DIR).glob("*.h5")]
        if any(f.stat().st_mtime_ns > t for f in sources):
            return False
        return set(model_ids) <= set(read_table(index).ids)
    except (OSError, WslError):  # missing or unreadable: the merge rebuilds it (or says what is wrong)
        return False


def _annotate(job: ZooJobConfig, root: Path, model_ids: list[str]) -> None:
    """Landscape metrics of this job's models (landscape=basic|full); skips what is already there."""
    if job.landscape.metrics:
        from wsl.landscape import annotate_zoo

        annotate_zoo(root, job.landscape, model_ids)
