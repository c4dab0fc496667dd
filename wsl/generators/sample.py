"""Sampling networks from a generator run and writing them as a zoo (the exchange format).

Every sampled net becomes a zoo model with status "sampled", one checkpoint (epoch 0) whose
safetensors header and whose index row carry the provenance: generator run, checkpoint sha256,
method, seed, index within the draw, condition and guidance. Readers of zoos (evaluation,
landscape metrics, encoders) need nothing else.

BatchNorm: a generator makes weights (parameters) only. Each sampled net with BatchNorm gets its
running statistics re-estimated on the TRAIN split of the zoo's dataset (never val or test; the
dataset is rebuilt from the run's record and checked against its fingerprint), and its checkpoint
is the whole state dict, buffers included. The inputs, batches and batch size used are recorded in
every net's provenance (`bn_*` keys).
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import time
from pathlib import Path

import torch

from wsl.errors import ConfigError, ZooFormatError, printable
from wsl.evaluate.accuracy import BatchNormInputs, has_batchnorm, load_weights
from wsl.landscape.batchnorm import batchnorm_layers
from wsl.generators.conditions import sampled_dataset
from wsl.generators.generator_run import GeneratorRun, load_run
from wsl.generators.limits import MAX_BATCH_BYTES, MAX_SAMPLES
from wsl.generators.schema import SampleConfig
from wsl.schema import is_int, positive
from wsl.zoo import ShardWriter, Zoo, merge_index
from wsl.zoo.format import ANNOTATION_DIR, INDEX_FILE, LOCK_FILE, MODEL_DIR, SHARD_DIR, check_stored_dataset
from wsl.zoo.table import read_table

log = logging.getLogger("wsl.generators")


def condition_tensor(run: GeneratorRun, condition: dict | None, n: int) -> torch.Tensor | None:
    """Raw condition values {key: number} -> normalized [n, C] (None: unconditional). The keys must be
    the run's condition keys (wsl-sample's schema checked that the values are finite numbers)."""
    if condition is not None and not isinstance(condition, dict):
        raise ConfigError(f"condition must be a mapping of the run's condition keys to numbers (e.g. "
                          f"condition={{val_acc:0.9}}), got {printable(condition)[:80]}")
    if not condition:
        return None
    if not run.condition_keys:
        raise ConfigError(f"condition={printable(condition)[:200]}: the generator in {run.path} was trained "
                          "unconditionally (sample without condition=)")
    if set(condition) != set(run.condition_keys):
        raise ConfigError(f"condition keys {printable(sorted(map(str, condition)))[:200]} do not match the keys the "
                          f"generator was conditioned on, {printable(run.condition_keys)[:200]} (give all of them, or "
                          "none for unconditional sampling)")
    if run.conditions is not None:  # categories, tasks (wsl.generators.conditions)
        from wsl.generators.conditions import encode_condition

        return encode_condition(run, condition).expand(n, -1)
    bad = next((k for k in run.condition_keys if isinstance(condition[k], (str, bool))), None)
    if bad is not None:
        raise ConfigError(f"condition.{bad}={printable(condition[bad])[:80]!r}: {bad} is a numeric condition; "
                          "give a number")
    raw = torch.tensor([float(condition[k]) for k in run.condition_keys], dtype=torch.float64)[None].expand(n, -1)
    return ((raw - run.cond_mean) / run.cond_std).float()


@torch.no_grad()
def sample_vectors(run: GeneratorRun, n: int, seed: int = 0, condition: dict | None = None, guidance: float = 1.0,
                   steps: int | None = None, batch_size: int = 1000, device: str = "cpu",
                   start: int = 0) -> torch.Tensor:
    """n generator-space vectors [n, D]: samples start .. start+n-1 of a draw. The noise of sample i depends only
    on (seed, i // batch_size), so a draw is reproducible for a given batch size, and any of its batches can be
    drawn alone (start: a multiple of batch_size; what a resumed wsl-sample does)."""
    positive("n", n)
    positive("batch_size", batch_size)
    if not is_int(start) or start < 0 or start % batch_size:
        raise ConfigError(f"start must be a non-negative multiple of batch_size ({batch_size}), got {start!r}")
    if not math.isfinite(guidance) or guidance < 0:
        raise ConfigError(f"guidance must be a non-negative number, got {guidance!r}")
    cond = condition_tensor(run, condition, 1)
    net = run.denoiser.to(device).eval()
    out = []
    for first in range(start, start + n, batch_size):
        b = min(batch_size, start + n - first)
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + first)
        noise = torch.randn(b, run.representation.dim, generator=g).to(device)
        c = None if cond is None else cond.to(device).expand(b, -1)
        out.append(run.method.sample(net, noise, cond=c, guidance=float(guidance), steps=steps, generator=g).cpu())
    return torch.cat(out)


def sample_weights(run: GeneratorRun, n: int, **kw) -> torch.Tensor:
    """n sampled nets as flat weights [n, N] in the zoo's layout."""
    return run.representation.decode(sample_vectors(run, n, **kw))


def train_split(run: GeneratorRun, condition: dict | None = None):
    """The dataset the run's zoo was trained on (its exact splits, any domain: images, modular, text,
    convection; wsl.data.rebuild_dataset), rebuilt from the run's record and checked against the
    fingerprint the run stored: refused when the data on this machine differ. A task-conditioned draw
    (`condition`): the data of the condition's task (wsl.generators.conditions.sampled_dataset)."""
    from wsl.data import rebuild_dataset

    cfg = sampled_dataset(run, condition)
    where = f"{printable(run.path)}: key zoo.dataset"
    if not isinstance(cfg, dict) or not cfg.get("name"):
        raise ZooFormatError(f"{where} records no dataset; the BatchNorm statistics of sampled nets are re-estimated "
                             "on its train split")
    check_stored_dataset(cfg, where)
    try:
        task = rebuild_dataset(cfg)
    except ConfigError as e:  # a recorded value this wsl cannot build the data from
        raise ZooFormatError(f"{where}: the dataset cannot be rebuilt: {e}") from None
    fp = run.zoo.get("dataset_fingerprint") if cfg == run.zoo.get("dataset") else None  # another task: other data
    if fp and task.fingerprint() != fp:
        raise ConfigError(f"{where}: the dataset {printable(cfg)[:200]} read here differs from the one the zoo was "
                          "trained on (fingerprints differ); BatchNorm statistics must come from the zoo's own train "
                          "split (check dataset.root and the files)")
    return task


def batchnorm_inputs(run: GeneratorRun, settings=None, condition: dict | None = None) -> BatchNormInputs | None:
    """The train inputs the statistics of the run's nets are re-estimated on (settings: a BatchNormConfig,
    default its defaults); None for nets without BatchNorm."""
    from wsl.evaluate.schema import BatchNormConfig
    from wsl.nets import build_net

    with torch.device("meta"):
        if not has_batchnorm(build_net(run.arch)):
            return None
    s = settings or BatchNormConfig()
    return BatchNormInputs.of_split(train_split(run, condition).x_train, s.batch_size, s.batches, s.seed)


class CompleteNets:
    """Sampled weights -> complete state dicts: the parameters as sampled, then (nets with BatchNorm) the
    running statistics re-estimated on train inputs `bn`; every tensor the architecture has."""

    def __init__(self, run: GeneratorRun, bn: BatchNormInputs | None):
        from wsl.nets import build_net

        self.net, self.bn, self.layout = build_net(run.arch), bn, run.representation.layout
        rest = set(self.net.state_dict()) - set(self.layout.names)  # tensors the generator does not make
        stats = {f"{name}.{b}" for name, m in self.net.named_modules() if m in batchnorm_layers(self.net)
                 for b, _ in m.named_buffers(recurse=False)}
        if rest - stats:
            raise ConfigError(f"the nets of {printable(run.path)} have tensors the generator does not make "
                              f"({sorted(rest - stats)[:3]}) that are not BatchNorm statistics: a sampled net "
                              "cannot be completed")
        if rest and bn is None:
            raise ConfigError("nets with BatchNorm need the train inputs to re-estimate their statistics")

    @torch.no_grad()
    def __call__(self, weights: dict) -> dict:
        if self.bn is None:
            return weights
        load_weights(self.net, weights)
        self.bn.apply(self.net)
        return {k: v.detach().clone().contiguous() for k, v in self.net.state_dict().items()}

    def provenance(self) -> dict:
        """Flat index columns recording the re-estimation (empty without BatchNorm)."""
        if self.bn is None:
            return {}
        d = self.bn.describe()
        out = {"bn_split": d["split"], "bn_inputs": d["inputs"], "bn_batches": d["batches"],
               "bn_batch_size": d["batch_size"]}
        if d["subset_seed"] is not None:
            out["bn_subset_seed"] = d["subset_seed"]
        return out


def check_target_zoo(run: GeneratorRun, zoo_path, condition: dict | None = None) -> None:
    """Refuse an output zoo that holds anything but this generator run's own samples, before any work: the
    training zoo (or a copy of it, or any zoo of trained nets), a zoo of another architecture or dataset, a
    file, a directory of other files. Only a zoo of this run's samples is resumed or extended."""
    root, source = Path(zoo_path).expanduser(), run.zoo.get("path")
    shown = printable(root)
    if source and root.resolve() == Path(source).resolve():
        raise ConfigError(f"zoo.path={shown} is the zoo the generator learned from; write the samples to "
                          "another zoo (evaluation compares the two)")
    if root.exists() and not root.is_dir():
        raise ConfigError(f"zoo.path={shown} is a file, not a zoo directory")
    if not root.exists():
        return
    if not (root / INDEX_FILE).exists():
        # no index: an empty directory, a draw killed before its first index merge, or not a zoo at all
        zoo_entries = {SHARD_DIR, MODEL_DIR, ANNOTATION_DIR, LOCK_FILE}
        other = sorted(p.name for p in root.iterdir() if p.name not in zoo_entries and not p.name.startswith("."))
        if other:
            raise ConfigError(f"zoo.path={shown} is a directory that is not a zoo (it holds {printable(other[0])!r}"
                              f"{f' and {len(other) - 1} more' if len(other) > 1 else ''}); write the samples to a new "
                              "directory")
        rows = [r for shard in sorted((root / SHARD_DIR).glob("*.h5")) for r in read_table(shard).rows]
    else:
        zoo = Zoo(root)
        want = json.dumps(run.arch, sort_keys=True)
        for m in zoo.ids:
            have = json.dumps(zoo.arch(m), sort_keys=True)
            if have != want:
                raise ConfigError(f"architecture mismatch: the generator {run.path} makes {want}, but zoo {zoo.path} "
                                  f"already holds {printable(have)} (model {printable(m)}); write the samples to "
                                  "another zoo.path")
            ds = zoo.job_config(m).get("dataset")
            if ds != sampled_dataset(run, condition):
                raise ConfigError(f"dataset mismatch: the generator {run.path} was trained on nets for "
                                  f"{run.zoo.get('dataset')}, zoo {zoo.path} holds nets for {printable(ds)}; "
                                  "write the samples to another zoo.path")
        rows = [zoo.row(m) for m in zoo.ids]
    # this run's own samples: status sampled, the run's checkpoint sha256
    foreign = [r for r in rows if r.status != "sampled" or r.hparams.get("generator_sha256") != run.sha256]
    if foreign:
        r = foreign[0]
        raise ConfigError(f"zoo.path={shown} holds {len(foreign)} net(s) that are not samples of this generator run "
                          f"(e.g. model {printable(r.model_id)!r}, status {printable(r.status)!r}); wsl-sample only adds "
                          "to a zoo of its own samples: write them to another zoo.path")


class _SampleSink:
    """The output zoo of one draw (generator, seed, condition, guidance, steps, batch size): its model ids, which
    of them an earlier run already committed, and writing more of them."""

    def __init__(self, run: GeneratorRun, zoo_path, seed: int, condition: dict | None = None, guidance: float = 1.0,
                 steps: int | None = None, job_id: str | None = None, zoo_name: str | None = None,
                 config: dict | None = None, batch_size: int | None = None, bn: BatchNormInputs | None = None):
        self.run, self.condition = run, dict(condition or {})
        self.complete = CompleteNets(run, bn)
        self.root = Path(zoo_path).expanduser().resolve()
        run_name = re.sub(r"[^A-Za-z0-9._=-]", "-", Path(run.path).name if run.path else "").strip(".-")[:120]
        self.job_id = job_id or f"gen-{run_name or 'generator'}-s{int(seed)}"
        self.provenance = {"generator_run": str(run.path),
                           "generator_checkpoint": str(Path(run.path) / "generator.safetensors"),
                           "generator_sha256": run.sha256, "generator_method": run.method.name,
                           "generator_denoiser": run.denoiser.name, "sample_seed": int(seed),
                           "guidance": float(guidance), "sampler_steps": int(run.method.steps if steps is None else steps),
                           "source_zoo": run.zoo.get("path", "")}
        rep = run.representation
        if rep.kind != "flat":  # representation=tokens | pca | latent (flat runs keep their columns)
            self.provenance["representation"] = rep.kind
        if rep.kind == "pca":  # samples lie in the training nets' affine span (wsl.generators.representations.pca)
            info = rep.stage.info
            self.provenance.update({"pca_k": int(rep.stage.dim), "pca_span_distance": 0.0,
                                    "pca_explained_variance": float(info.get("explained_variance", float("nan"))),
                                    "pca_zoo_loo_span_distance": float(info.get("loo_span_distance", float("nan")))})
        if batch_size is not None:  # the noise of a sample depends on it (sample_vectors)
            self.provenance["sample_batch_size"] = int(batch_size)
        self.provenance.update(self.complete.provenance())  # BatchNorm statistics: train inputs, batches
        # index columns are HDF5 paths: condition key 'landscape/trace' -> column cond_landscape_trace
        self.cond = {f"cond_{re.sub(r'[^A-Za-z0-9_]', '_', k)}": v if isinstance(v, (str, bool)) else float(v)
                     for k, v in self.condition.items()}
        stored = {"dataset": sampled_dataset(run, self.condition), "generator": {**self.provenance, "condition": self.condition},
                  "source_zoo": {k: run.zoo.get(k) for k in ("path", "name", "dataset_fingerprint", "epoch", "train_ids")},
                  "sample": config or {}}
        self.writer = ShardWriter(self.root, self.job_id, config=stored, zoo_name=zoo_name or self.root.name)

    def model_id(self, i: int) -> str:
        return f"{self.job_id}-{i:06d}"

    def hparams(self, i: int) -> dict:
        return {**self.provenance, "sample_index": i, **self.cond}

    def finished(self) -> set[int]:
        """Sample indices whose nets this zoo already holds from an earlier run of the same draw (committed rows
        of this job with equal provenance); a rerun after a kill skips them."""
        path, arch, out = self.writer.shard_path, json.dumps(self.run.arch, sort_keys=True), set()
        for r in read_table(path).rows if path.exists() else []:
            i = r.hparams.get("sample_index")
            if (isinstance(i, int) and r.model_id == self.model_id(i) and r.status == "sampled" and r.checkpoints
                    and json.dumps(r.arch, sort_keys=True) == arch
                    and all(r.hparams.get(k) == v for k, v in self.hparams(i).items())):
                out.add(i)
        return out

    def write(self, flat: torch.Tensor, indices) -> None:
        """Write and commit the checkpoints and rows of nets flat [k, N] with sample indices `indices`."""
        for i, weights in zip(indices, self.run.representation.state_dicts(flat)):
            sd = self.complete(weights)  # + BatchNorm statistics re-estimated on the train split
            mid = self.model_id(int(i))
            meta = {"provenance": json.dumps({**self.provenance, "sample_index": int(i), "condition": self.condition},
                                             sort_keys=True)}
            self.writer.write_checkpoint(mid, 0, sd, self.run.arch, extra_meta=meta)
            self.writer.add_model(mid, self.run.arch, self.hparams(int(i)), status="sampled")
        self.writer.commit()


def write_sample_zoo(run: GeneratorRun, flat: torch.Tensor, zoo_path, seed: int, condition: dict | None = None,
                     guidance: float = 1.0, steps: int | None = None, job_id: str | None = None,
                     zoo_name: str | None = None, config: dict | None = None, first: int = 0,
                     batchnorm=None) -> Path:
    """Write sampled nets flat [n, N] (sample indices first .. first+n-1) as a zoo (status "sampled", one
    checkpoint each) and commit them. Nets with BatchNorm get statistics re-estimated on the train split
    (batchnorm: a BatchNormConfig; default its defaults). Returns the zoo path."""
    sink = _SampleSink(run, zoo_path, seed, condition, guidance, steps, job_id, zoo_name, config,
                       bn=batchnorm_inputs(run, batchnorm, condition))
    sink.write(flat, range(first, first + len(flat)))
    return sink.root


def _check_room(run: GeneratorRun, sink: "_SampleSink", n: int) -> set[int]:
    """n is bounded by what can be written: a hard cap on nets per run, and the free space at the output zoo
    for the nets not yet committed there. Returns the sample indices an earlier run of this draw committed."""
    where = sink.root
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    # one net on disk: its float32 checkpoint (tensors, a header of ~100 bytes per tensor plus the arch and
    # provenance JSON) rounded up to whole 4 KiB blocks, and its index rows (in the shard and in the merged index)
    layout, row = run.representation.layout, len(json.dumps(sink.hparams(0)))
    buffers = [v for k, v in sink.complete.net.state_dict().items() if k not in set(layout.names)]  # BatchNorm's
    ckpt = (4 * layout.numel + sum(8 * v.numel() for v in buffers) + 100 * (len(layout.entries) + len(buffers))
            + 2 * row + len(json.dumps(run.arch)) + 512)
    per_net = -(-ckpt // 4096) * 4096 + 2 * (row + 512)
    room = f"each net takes about {_size(per_net)} on disk and {printable(where)} has {_size(free)} free " \
           f"(room for about {free // per_net:,} nets)"
    if n > MAX_SAMPLES:
        raise ConfigError(f"n={n} is more than one wsl-sample run writes: at most {MAX_SAMPLES:,} nets per run; {room}")
    done = {i for i in sink.finished() if i < n}
    todo = n - len(done)
    if todo * per_net > free:
        raise ConfigError(f"n={n}: the {todo:,} nets still to draw do not fit: {room}; lower n or choose another zoo.path "
                          f"(at most {MAX_SAMPLES:,} nets per run)")
    return done


def _size(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if b < 1024 or unit == "TiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024


def sample_zoo(job: SampleConfig, config: dict | None = None) -> Path:
    """The whole of `wsl-sample`: draw job.n nets from the generator run in job.run into the zoo at
    job.zoo.path; returns that path. `config`: the draw's settings the zoo stores with its nets (the
    app's typed config as plain types). What depends on the run (condition keys, the sampler's steps,
    a batch's memory, the output zoo, the disk's room) is checked here, before anything is written."""
    if job.threads is not None:  # wsl.generators.schema: one thread is often faster on a shared machine
        torch.set_num_threads(job.threads)
    run = load_run(job.run)
    condition_tensor(run, job.condition, 1)
    sampled_dataset(run, job.condition)  # a task-conditioned run draws one task per zoo
    n, seed, batch_size, steps = job.n, job.seed, job.batch_size, job.steps
    if steps is not None and hasattr(run.method, "schedule_steps"):
        run.method.schedule_steps(steps)  # a diffusion takes at most its `timesteps` steps
    # one batch is what a draw holds in memory at a time (generator vectors and flat weights, float32)
    rep = run.representation
    per_net = 4 * max(rep.dim, rep.layout.numel)
    if per_net * min(batch_size, n) > MAX_BATCH_BYTES:
        raise ConfigError(f"batch_size={batch_size}: one batch of nets of {rep.layout.numel} weights holds "
                          f"{_size(per_net * min(batch_size, n))} in memory; at most {_size(MAX_BATCH_BYTES)} "
                          f"(lower batch_size to {max(1, MAX_BATCH_BYTES // per_net)} or less)")
    check_target_zoo(run, job.zoo.path, job.condition)
    bn = batchnorm_inputs(run, job.batchnorm, job.condition)  # the train split (nets with BatchNorm), before anything is written
    if bn is not None:
        log.info("BatchNorm statistics of every sampled net: re-estimated on %s", bn.text())
    sink = _SampleSink(run, job.zoo.path, seed, job.condition, job.guidance, steps, job_id=job.job_id,
                       zoo_name=job.zoo.name, config=config, batch_size=batch_size, bn=bn)
    # each batch is committed (shard + index) once written: a killed run loses at most the batch in progress,
    # and a rerun of the same draw skips every net already committed, without drawing it again
    done = _check_room(run, sink, n)
    if done:
        log.info("resuming: %d of %d nets of this draw are already in %s; drawing the rest", len(done), n, sink.root)
    t_sample, t_write, drawn = 0.0, 0.0, 0
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        if all(i in done for i in idx):
            continue
        t = time.perf_counter()
        flat = sample_weights(run, len(idx), seed=seed, condition=job.condition, guidance=job.guidance, steps=steps,
                              batch_size=batch_size, device=job.device, start=start)
        t_sample += time.perf_counter() - t
        log.info("sample: drew nets %d..%d", idx[0], idx[-1])
        if not torch.isfinite(flat).all():
            bad = int((~torch.isfinite(flat)).any(1).sum())
            log.warning("%d of %d sampled nets have non-finite weights; they are written as they are", bad, len(idx))
        t = time.perf_counter()
        keep = [j for j, i in enumerate(idx) if i not in done]
        sink.write(flat[keep], [idx[j] for j in keep])
        t_write += time.perf_counter() - t
        drawn += len(idx)
    if not drawn:  # all committed earlier; that run may have died between its shard commit and index merge
        merge_index(sink.root)
    log.info("sampled %d nets in %.2f s (%.0f per minute), wrote them in %.2f s to %s", drawn, t_sample,
             60 * drawn / max(t_sample, 1e-9), t_write, sink.root)
    return sink.root
