"""One property-prediction experiment: a zoo, a task, an encoder, several seeds, a results table.

    run_experiment(job, out_dir)   # what wsl-train-encoder calls (job: a wsl.encoders.schema.TrainEncoderConfig)

Order of work, so that bad input fails before any training: read the table and check the task's
columns; check that the encoder can read every selected net (structure and widths, from the
architectures alone); then load the weights, split by cells (seed replicas of one hyperparameter
cell never straddle splits), and train one encoder per seed. The model of each seed is its best
validation epoch (lowest loss, or highest accuracy for classification; never selected on test); its
test metrics, parameter count, wall time and peak memory go into results.csv / results.md in the run
directory, with mean ± std.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import resource
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader

import wsl.nets.siren  # noqa: F401  (registers net=siren so INR zoos can be read)
from wsl.encoders.module import PropertyPredictor, WeightSet
from wsl.encoders.schema import Split, TrainEncoderConfig
from wsl.encoders.tasks import Task, score
from wsl.encoders.weightspace import WeightSpace
from wsl.errors import ConfigError, printable
from wsl.tracking import make_logger
from wsl.trainer import barrier, global_rank, make_trainer
from wsl.zoo.atomic import write_bytes_atomic
from wsl.zoo.epochs import check_epoch
from wsl.zoo.finite import some_ids

log = logging.getLogger("wsl.encoders")
LORA_SPECTRUM = "wsl.encoders.lora_spectrum.LoRASpectrum"  # encoder=lora_spectrum: run_spectrum, not train_one


# ------------------------------------------------------------------------------------------ loading
def read_space(zoo, ids: list, pad: bool = False, bn_stats: bool = False) -> WeightSpace:
    """The weight space of the selected nets, from their architectures alone (no checkpoint read):
    parameters only, plus BatchNorm's running mean and variance with bn_stats. Raises ConfigError
    naming the model and layer an encoder cannot read."""
    archs: set = set()
    firsts: dict = {}  # one model per set of parameter shapes is enough to find the first that does not fit
    for mid in ids:
        key = json.dumps(zoo.arch(mid), sort_keys=True)
        if key not in archs:
            archs.add(key)
            net = zoo.skeleton(mid)
            shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
            firsts.setdefault(json.dumps(shapes, sort_keys=True), (mid, net.permutation_spec(), shapes))
    return WeightSpace.from_models(list(firsts.values()), pad=pad, bn_stats=bn_stats)


def load_weights(zoo, ids: list, space: WeightSpace, epoch: int = -1) -> tuple[dict, dict]:
    """Stacked, zero-padded parameters {name: [M, ...]} and neuron masks {mask name: [M, n]}."""
    params, masks = zip(*(space.pad_state_dict(zoo.state_dict(mid, epoch)) for mid in ids))
    return tuple({k: torch.stack([d[k] for d in dicts]) for k in dicts[0]} for dicts in (params, masks))


def split_by_model(ids: list, fractions, seed: int) -> dict:
    """Train/val/test split of single models (what Zoo.split does when every model is its own cell)."""
    order = np.random.default_rng(seed).permutation(len(ids))
    bounds = np.cumsum(fractions) * len(ids)
    out = {"train": [], "val": [], "test": []}
    for done, i in enumerate(order):
        out["train" if done < bounds[0] else "val" if done < bounds[1] else "test"].append(ids[i])
    return out


def split_models(zoo, split: Split, ids: list, warn: bool = True) -> dict:
    """Train/val/test split by cells (split.by=cell) or by models (split.by=model: one warning, with `warn`,
    when replicas of a cell then straddle splits); each part needs at least two models."""
    cells = zoo.cells(ids)
    if split.by == "model":
        parts = split_by_model(ids, tuple(split.fractions), split.seed)
        side = {m: s for s, ms in parts.items() for m in ms}
        straddle = sum(len({side[m] for m in c}) > 1 for c in cells.values())
        if straddle and warn:
            log.warning("split.by=model: seed replicas of %d of %d cells sit on both sides of the split; test "
                        "scores then measure nets of hyperparameters the encoder saw in training, not unseen "
                        "cells", straddle, len(cells))
    else:
        parts = zoo.split(tuple(split.fractions), seed=split.seed, ids=ids)
    for s in ("train", "val", "test"):
        if len(parts[s]) < 2:
            hint = ("use a larger zoo, other split.fractions, or split.by=model (seed replicas of a cell then sit on "
                    "both sides of the split)" if split.by == "cell" else "use a larger zoo or other split.fractions")
            raise ConfigError(f"the {s} split has {len(parts[s])} models ({len(ids)} usable, {len(cells)} cells, "
                              f"split.by={split.by}); {hint}")
    return parts


def finite_models(zoo, ids: list, data: WeightSet, epoch: int) -> list:
    """Indices of the models whose weights (a wsl-verify ERROR) and task targets are all finite; one warning
    per kind names the others: one such net makes every loss it enters, and the metrics of its split, nan.
    Refuses when none is left."""
    weights_ok = torch.stack([torch.isfinite(v.reshape(len(ids), -1)).all(1) for v in data.params.values()]).all(0)
    targets_ok = torch.isfinite(data.y.reshape(len(ids), -1).float()).all(1)
    keep = weights_ok & targets_ok
    for ok, what in ((weights_ok, f"non-finite weights at epoch {epoch}"), (targets_ok, "non-finite task targets")):
        if not ok.all():
            bad = [m for m, good in zip(ids, ok.tolist()) if not good]
            if not keep.any():
                raise ConfigError(f"{printable(zoo.path)}: all {len(ids)} usable models have {what} or other "
                                  f"non-finite data (e.g. {some_ids(bad)}); nothing to learn from (check the zoo "
                                  "with wsl-verify)")
            log.warning("excluding %d of %d models of %s with %s: %s", len(bad), len(ids), printable(zoo.path), what,
                        some_ids(bad))
    return keep.nonzero().flatten().tolist()


# ------------------------------------------------------------------------------------------ training
class BestState(L.Callback):
    """Keep (in memory) the encoder weights of the best validation epoch: lowest validation loss for
    regression, highest validation accuracy for classification (cross-entropy keeps rising on
    overconfident predictions long after the accuracy stops improving)."""

    def __init__(self, monitor: str = "val/loss", mode: str = "min"):
        self.monitor, self.sign = monitor, (1.0 if mode == "min" else -1.0)
        self.best, self.state, self.epoch = math.inf, None, -1

    def on_validation_end(self, trainer, module):  # after the module's epoch-end metrics are logged
        if trainer.sanity_checking:
            return
        v = trainer.callback_metrics.get(self.monitor)
        if v is not None and math.isfinite(float(v)) and self.sign * float(v) < self.best:
            self.best, self.epoch = self.sign * float(v), trainer.current_epoch
            self.state = {k: t.detach().clone() for k, t in module.state_dict().items()}


def train_one(job: TrainEncoderConfig, seed: int, space: WeightSpace, task: Task, targets, sets: dict,
              encoder_factory, out_dir: Path, keep=None) -> dict:
    """Train one encoder with `seed`; return its metrics on val and test and its costs. `keep(seed, module,
    row)` receives the trained module (its best validation epoch), e.g. to save it."""
    L.seed_everything(seed, workers=True, verbose=False)
    encoder = encoder_factory(space=space, out_dim=len(targets.classes) or len(targets.names))  # no classes: regression
    # augmentations configured to do nothing (noise sigma 0, dropout p 0) are skipped
    augments = [instantiate(a, _convert_="all") for a in (job.augment or {}).values()
                if a is not None and 0 not in (getattr(a, "sigma", None), getattr(a, "p", None))]
    if space.padded and any(type(a).__name__ == "AlignedMixUp" for a in augments):
        raise ConfigError("augment.mixup aligns nets of one width; it cannot mix padded nets (zoo.pad=true)")
    o = job.optim
    module = PropertyPredictor(encoder, space, task, targets.names, sets["train"], augments, lr=o.lr,
                               weight_decay=o.weight_decay, epochs=job.trainer["max_epochs"],
                               warmup_epochs=o.warmup_epochs, num_classes=len(targets.classes))
    bs = job.batch_size
    train_loader = DataLoader(sets["train"], batch_size=bs, shuffle=True, drop_last=len(sets["train"]) > bs)
    val_loader = DataLoader(sets["val"], batch_size=job.eval_batch_size)
    best = BestState("val/loss", "min") if task.is_regression else BestState("val/acc", "max")
    logger = make_logger(job.logger, out_dir, name="encoder", version=f"seed{seed}")
    trainer = make_trainer(job.trainer, logger=logger, callbacks=[best], enable_checkpointing=False,
                           num_sanity_val_steps=0)
    device = trainer.strategy.root_device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    trainer.fit(module, train_loader, val_loader)
    fit_s = time.perf_counter() - t0
    epochs_run = max(1, trainer.current_epoch)
    if best.state is not None:
        module.load_state_dict(best.state)
    if device.type == "cuda":  # peak memory allocated by torch
        mem, mem_kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    else:  # the process's peak resident set size (a high-water mark)
        mem, mem_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_peak_rss"
    row = {"seed": seed, "params": sum(p.numel() for p in encoder.parameters()), "best_epoch": best.epoch,
           "epochs": epochs_run, "fit_s": fit_s, "s_per_epoch": fit_s / epochs_run, "peak_mem_mb": mem,
           "mem_kind": mem_kind}
    for split in ("val", "test"):
        scores = score(task, targets.names, module.predict_set(sets[split]), sets[split].y, targets.classes)
        row.update({f"{split}/{k}": v for k, v in scores.items()})
    if keep is not None:
        keep(seed, module, row)
    return row


# ------------------------------------------------------------------------------------------ results
def summarize(rows: list) -> pd.DataFrame:
    """Per-seed rows + a 'mean' and a 'std' row."""
    df = pd.DataFrame(rows)
    num = df.select_dtypes("number")
    mean, std = num.mean(), num.std(ddof=1 if len(df) > 1 else 0)
    out = pd.concat([df, pd.DataFrame([{**mean.to_dict(), "seed": "mean"}, {**std.to_dict(), "seed": "std"}])],
                    ignore_index=True)
    for c in ("encoder", "task", "mem_kind"):  # text: the same in every row
        out[c] = df[c].iloc[0]
    return out


def markdown_table(df: pd.DataFrame, task: Task) -> str:
    """One line per results table: mean ± std over seeds of the headline metrics and of the costs."""
    per_seed = df[~df["seed"].isin(["mean", "std"])]
    mean, std = (df[df["seed"] == s].iloc[0] for s in ("mean", "std"))  # summarize's rows
    pm = lambda k, fmt="{:.3f}": f"{fmt.format(mean[k])} ± {fmt.format(std[k])}"  # noqa: E731
    keys = ["test/tau", "test/r2"] if task.is_regression else ["test/acc", *(["test/mae"] if "test/mae" in mean else [])]
    cols = ["encoder", "task", *(k.replace("/", " ") for k in keys), "params", "s/epoch", "wall s", "peak MB", "seeds"]
    line = [str(mean["encoder"]), str(mean["task"]), *(pm(k) for k in keys), f"{int(per_seed['params'].iloc[0]):,}",
            pm("s_per_epoch", "{:.2f}"), pm("fit_s", "{:.1f}"), f"{per_seed['peak_mem_mb'].max():.0f}",
            str(len(per_seed))]
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    note = (f"\npeak MB: {mean['mem_kind']}; wall s: fit time per seed (training + validation); "
            "each seed's model is its best validation epoch "
            f"({'lowest loss' if task.is_regression else 'highest accuracy'})\n")
    return head + "| " + " | ".join(line) + " |\n" + note


def write_results(df: pd.DataFrame, task: Task, out_dir: Path) -> None:
    """results.csv / results.md, written by rank 0 only; under DDP every rank waits until they exist
    (every rank computed the same table: DDP keeps the parameters equal and the test sets are not split)."""
    if global_rank() == 0:
        for name, text in (("results.csv", df.to_csv(index=False)), ("results.md", markdown_table(df, task))):
            write_bytes_atomic(out_dir / name, text.encode(), what="results", root=out_dir)
    barrier()


# ------------------------------------------------------------------------------------------ saving
def saver(job: TrainEncoderConfig, name: str, space: WeightSpace, task: Task, targets, zoo, ids: list, split: dict,
          out_dir: Path, modules: dict | None, save: bool):
    """keep(seed, module, row) for train_one: saves each seed's model (rank 0; every rank holds the same
    weights under DDP) with the run's config.json, and hands it to `modules`."""
    from hydra.utils import get_class

    from wsl.encoders import ENCODERS
    from wsl.encoders.encoder_run import describe, save_encoder, start_run

    cls = get_class(job.encoder._target_)
    registry = next((n for n, c in ENCODERS.items() if c is cls), None)  # e.g. nfn for encoder.name=nfn_np
    if registry is None and save:
        log.warning("encoder %s (%s) is not in wsl.encoders.ENCODERS: its models are not saved", name,
                    job.encoder._target_)
        save = False
    archs = list({json.dumps(zoo.arch(m), sort_keys=True): zoo.arch(m) for m in ids}.values())  # first seen first
    kwargs = {k: v for k, v in dataclasses.asdict(job.encoder).items() if k not in ("name", "_target_")}
    zoo_info = {"path": str(zoo.path), "name": zoo.attrs.get("zoo_name", zoo.path.name), "epoch": job.zoo.epoch,
                "split": dataclasses.asdict(job.split), **{f"{s}_ids": list(split[s]) for s in ("train", "val", "test")}}
    token = None
    if save and global_rank() == 0:
        config = json.dumps(dataclasses.asdict(job), indent=2, sort_keys=True, default=str).encode()
        write_bytes_atomic(out_dir / "config.json", config, what="config", root=out_dir)
        token = start_run(out_dir, list(job.seeds))  # seed files an earlier run left here are then ignored

    def keep(seed: int, module, row: dict) -> None:
        if modules is not None:
            modules[seed] = module
        if not save or global_rank() != 0:
            return
        training = {k: v for k, v in row.items() if isinstance(v, (int, float, str))}
        desc = describe(encoder={"name": registry, "kwargs": kwargs, "label": name}, out_dim=len(targets.classes) or len(targets.names),
                        task=task, targets=targets, archs=archs, space=space, pad=job.zoo.pad, bn_stats=job.zoo.bn_stats,
                        zoo=zoo_info, seed=seed, training=training, run_token=token)
        save_encoder(out_dir, seed, module, desc)

    return keep


# ------------------------------------------------------------------------------------------ entry
def run_experiment(job: TrainEncoderConfig, out_dir, encoder_factory=None, modules: dict | None = None) -> pd.DataFrame:
    """Train `job.encoder` on `job.task` for every seed in `job.seeds`; write and return the table, and
    save each seed's model (encoders/seed<k>.safetensors, wsl.encoders.encoder_run) with config.json.

    encoder_factory(space=, out_dim=) -> nn.Module overrides job.encoder (the benchmark uses it for an
    outside reference implementation; such a model is not saved: no registry name rebuilds it).
    modules: a dict that receives {seed: the trained PropertyPredictor}.
    """
    from wsl.zoo import Zoo

    out_dir = Path(out_dir)
    task: Task = instantiate(job.task, _convert_="all")
    zoo = Zoo(job.zoo.path)
    table = zoo.table()
    task.check_columns(table, where=f"the index of {zoo.path}")
    ids = [mid for mid in zoo.ids if table.loc[mid, "status"] == "trained"]  # diverged nets have no meaningful targets
    if not ids:
        raise ConfigError(f"{zoo.path}: no model has status ['trained']")
    check_epoch(zoo, ids, job.zoo.epoch, "zoo.epoch")
    space = read_space(zoo, ids, pad=job.zoo.pad, bn_stats=job.zoo.bn_stats)
    options = dataclasses.asdict(job.encoder)
    name = options.pop("name")
    saved = encoder_factory is None  # an outside factory has no registry name to rebuild it from
    encoder_factory = encoder_factory or instantiate(options, _partial_=True, _convert_="all")
    split = split_models(zoo, job.split, ids)
    targets = task.targets(table, ids)
    if options.get("_target_") == LORA_SPECTRUM:  # DSiRe: LoRA spectra (Zoo.adapters), nearest neighbours, no training
        from wsl.encoders.lora_spectrum import run_spectrum

        rows = run_spectrum(zoo, split, task, targets, ids, options["k"], options["log"], list(job.seeds),
                            job.zoo.epoch)
        df = summarize([{"encoder": name, "task": task.name, **r} for r in rows])
        write_results(df, task, out_dir)
        return df
    full = WeightSet(*load_weights(zoo, ids, space, job.zoo.epoch), targets.y)
    keep = finite_models(zoo, ids, full, job.zoo.epoch)
    if len(keep) < len(ids):  # such nets are not data: excluded, the rest is split again
        ids, full = [ids[i] for i in keep], full.subset(keep)
        split, targets = split_models(zoo, job.split, ids, warn=False), task.targets(table, ids)
        full.y = targets.y  # recomputed: the classes and log offsets of the models kept
    pos = {mid: i for i, mid in enumerate(ids)}
    sets = {s: full.subset([pos[m] for m in split[s]]) for s in ("train", "val", "test")}
    log.info("%s on %s: %d nets (%d/%d/%d), space %s", name, task.name, len(ids), len(sets["train"]),
             len(sets["val"]), len(sets["test"]), space.describe())
    on_trained = saver(job, name, space, task, targets, zoo, ids, split, out_dir, modules, saved)
    rows = []
    for seed in job.seeds:
        row = train_one(job, seed, space, task, targets, sets, encoder_factory, out_dir, on_trained)
        rows.append({"encoder": name, "task": task.name, **row})
        key = "test/tau" if task.is_regression else "test/acc"
        log.info("%s seed %d: %s=%.4f (%.2fs/epoch)", name, seed, key, row[key], row["s_per_epoch"])
    df = summarize(rows)
    write_results(df, task, out_dir)
    return df
