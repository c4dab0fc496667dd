"""A saved encoder applied to any zoo (what wsl-embed runs, and wsl-evaluate's data-free screening).

    encode_zoo(encs, zoo, ids, epoch)   -> Encoded: predictions and embeddings of every net, per seed
    embed_zoo(job)                      -> writes them as the annotation group `job.group` of the zoo

Order, so that bad input writes nothing: load the run (every seed file checked, wsl.encoders.encoder_run);
open the zoo and check that the encoder can read its nets (architecture, widths, fixed inputs and
outputs; `check_fits`), that the epoch exists, and (score=true) that the zoo has the task's columns;
then load the weights, encode, and write the group in one commit.

Columns of the group (one row per model of the zoo; `Zoo.table()` shows the 1-D ones as "<group>/<column>"):
- pred_<target>: the prediction in the zoo column's units (log targets transformed back; a classification:
  the predicted class value), from the mean over the seeds (regression: of the predictions; classification:
  of the class probabilities);
- pred_<target>_seed<k>: each seed's own prediction (when more than one seed is used);
- embedding (one seed) or embedding_seed<k>: [M, D] float32, the encoder's penultimate features (the input of
  its last linear layer; embeddings of different seeds live in different spaces, so they are never averaged).
Nets with non-finite weights get NaN rows (one warning names them).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import numpy as np
import torch

from wsl.encoders.encoder_run import SavedEncoder, check_fits, load_run
from wsl.encoders.module import WeightSet
from wsl.encoders.schema import EmbedConfig
from wsl.encoders.tasks import kendall_tau
from wsl.errors import ConfigError, ZooFormatError, printable
from wsl.zoo.epochs import check_epoch
from wsl.zoo.finite import some_ids

log = logging.getLogger("wsl.encoders")


def column_name(target: str) -> str:
    """A task column as part of an annotation column name ("phase/label" -> "phase_label")."""
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", target)


def check_zoo(encs: list, zoo, ids: list, epoch: int, key: str = "zoo.path", epoch_key: str = "zoo.epoch") -> None:
    """ConfigError (one line naming what differs) when the encoders cannot read the nets `ids` of `zoo`."""
    from wsl.encoders.experiment import read_space

    if not ids:
        raise ConfigError(f"{key}={printable(zoo.path)}: holds no model with a checkpoint")
    check_epoch(zoo, ids, epoch, epoch_key)
    enc = encs[0]
    where = f"{key}={printable(zoo.path)}"
    try:
        zoo_space = read_space(zoo, ids, pad=True, bn_stats=bool(enc.desc["space"]["bn_stats"]))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    check_fits(enc, zoo_space, zoo.arch(ids[0]), where)


@dataclass
class Encoded:
    """Predictions [M, T] (target units; a classification: class probabilities [M, C]) and embeddings [M, D]
    per seed, of the nets `ids`; `finite`: which nets had finite weights (the others are NaN)."""

    ids: list
    seeds: list
    preds: list  # per seed
    embeddings: list  # per seed
    finite: np.ndarray
    encs: list = field(default_factory=list)

    def mean(self) -> torch.Tensor:
        return torch.stack(self.preds).mean(0)

    def columns(self, pred: torch.Tensor) -> dict:
        """{target column: values in the zoo column's units} of a prediction tensor like self.preds[k]."""
        enc: SavedEncoder = self.encs[0]
        if enc.task.kind == "classification":
            out = enc.in_column_units(pred)  # argmax of probabilities = argmax of logits
            return {k: ["" if not f else v for v, f in zip(vals, self.finite)] for k, vals in out.items()}
        return {k: v.numpy() for k, v in enc.in_column_units(pred).items()}


def encode_state_dicts(encs: list, state_dicts: list, batch_size: int = 256, device: str = "cpu") -> Encoded:
    """Every encoder of `encs` (seeds of one run) applied to the nets `state_dicts` (already checked to fit)."""
    space = encs[0].space
    finite = np.array([all(bool(torch.isfinite(v).all()) for k, v in sd.items() if k in space.shapes)
                       for sd in state_dicts], dtype=bool)
    params, masks = zip(*(space.pad_state_dict(sd if ok else {k: torch.zeros_like(v) for k, v in sd.items()})
                          for sd, ok in zip(state_dicts, finite)))
    params, masks = ({k: torch.stack([d[k] for d in dicts]) for k in dicts[0]} for dicts in (params, masks))
    data = WeightSet(params, masks, torch.zeros(len(state_dicts)))
    preds, embs = [], []
    bad = torch.as_tensor(~finite)
    for enc in encs:
        enc.module.to(device)
        pred, emb = enc.predict(data, batch_size)
        enc.module.to("cpu")
        if enc.task.kind == "classification":
            pred = pred.softmax(-1)
        pred, emb = pred.double(), emb.float()
        pred[bad], emb[bad] = float("nan"), float("nan")
        preds.append(pred)
        embs.append(emb)
    return Encoded([], [e.seed for e in encs], preds, embs, finite, list(encs))


def encode_zoo(encs: list, zoo, ids: list, epoch: int, batch_size: int = 256, device: str = "cpu") -> Encoded:
    from tqdm.auto import tqdm

    sds = [zoo.state_dict(m, epoch) for m in tqdm(ids, desc="load", disable=len(ids) < 500, leave=False)]
    out = encode_state_dicts(encs, sds, batch_size, device)
    out.ids = list(ids)
    bad = [m for m, ok in zip(ids, out.finite) if not ok]
    if bad:
        log.warning("%d of %d nets of %s have non-finite weights at epoch %d; their rows are NaN: %s", len(bad),
                    len(ids), printable(zoo.path), epoch, some_ids(bad))
    return out


def scores(enc: SavedEncoder, table, ids: list, pred_cols: dict) -> dict:
    """Kendall tau (regression, per target and their mean) or accuracy (classification) of the predictions
    against the zoo's own columns, over the nets with a finite value."""
    sub = table.loc[list(ids)]
    out = {}
    for c, pred in pred_cols.items():
        true = np.asarray(enc.task.column_values(sub, c))
        if enc.task.kind == "classification":
            ok = np.array([p != "" for p in pred])
            out[f"acc/{c}"] = float(np.mean([p == t for p, t, o in zip(pred, true.tolist(), ok) if o])) if ok.any() \
                else float("nan")
            out["n"] = int(ok.sum())
        else:
            p, t = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
            ok = np.isfinite(p) & np.isfinite(t)
            out[f"tau/{c}"] = kendall_tau(p[ok], t[ok]) if ok.sum() > 1 else float("nan")
            out["n"] = int(ok.sum())
    vals = [v for k, v in out.items() if k != "n" and np.isfinite(v)]
    out["tau" if enc.task.kind == "regression" else "acc"] = float(np.mean(vals)) if vals else float("nan")
    return out


def embed_zoo(job: EmbedConfig) -> dict:
    """wsl-embed: encode every net of `job.zoo` with the run's encoders and write the annotation group.
    Returns a summary (group, zoo, nets, seeds, embedding size, scores)."""
    from wsl.zoo import Zoo
    from wsl.zoo.annotations import open_for_annotation
    from wsl.zoo.format import check_id
    from wsl.zoo.writer import write_annotation

    encs = load_run(job.run, job.seed)
    enc = encs[0]
    group = job.group or (f"embed_{column_name(enc.name)}_{column_name(enc.task.name)}"
                          + (f"_seed{job.seed}" if job.seed is not None else ""))
    try:
        check_id("annotation group", group)
    except ZooFormatError as e:
        raise ConfigError(f"group: {e}") from None
    zoo = Zoo(job.zoo.path)
    ids = [m for m in zoo.ids if zoo.row(m).checkpoints]
    check_zoo(encs, zoo, ids, job.zoo.epoch)
    table = zoo.table()
    where = f"the index of {printable(zoo.path)} (score=true)"
    do_score = job.score
    if job.score is None:  # when the zoo has the columns, with values (a generated zoo has no accuracies)
        try:
            enc.task.check_columns(table, where)
            do_score = True
        except ConfigError:
            do_score = False
    elif job.score:
        enc.task.check_columns(table, where)
    if job.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda: no CUDA device is available; use device=cpu")

    out = encode_zoo(encs, zoo, ids, job.zoo.epoch, job.batch_size, job.device)
    mean_cols = out.columns(out.mean())
    cols: dict = {f"pred_{column_name(c)}": v for c, v in mean_cols.items()}
    if len(encs) > 1:
        for seed, pred in zip(out.seeds, out.preds):
            cols.update({f"pred_{column_name(c)}_seed{seed}": v for c, v in out.columns(pred).items()})
    for seed, emb in zip(out.seeds, out.embeddings):
        cols["embedding" if len(encs) == 1 else f"embedding_seed{seed}"] = emb.numpy()
    summary = {"group": group, "zoo": str(zoo.path), "nets": len(ids), "seeds": out.seeds,
               "embedding_dim": int(out.embeddings[0].shape[1]), "encoder": enc.name, "task": enc.task.name}
    if do_score:
        summary["scores"] = scores(enc, table, ids, mean_cols)
        test_ids = enc.desc["zoo"].get("test_ids") or []
        if enc.desc["zoo"].get("path") == str(zoo.path) and test_ids:  # the training zoo: its held-out nets too
            held = [m for m in ids if m in set(test_ids)]
            if held:
                pos = {m: i for i, m in enumerate(ids)}
                sub = {c: [v[pos[m]] for m in held] if isinstance(v, list) else v[[pos[m] for m in held]]
                       for c, v in mean_cols.items()}
                summary["scores_test_split"] = scores(enc, table, held, sub)
    attrs = {"run": str(encs[0].path.parent.parent), "encoder": enc.name, "task": enc.task.name,
             "targets": list(enc.target_names), "seeds": list(out.seeds), "epoch": job.zoo.epoch,
             "sha256": {str(e.seed): e.sha256 for e in encs},
             "embedding": "the encoder's penultimate features (input of its last linear layer)",
             "prediction": "mean over seeds" if len(encs) > 1 else f"seed {out.seeds[0]}"}
    open_for_annotation(zoo.path)  # every path the write touches checked (and a lagging index rebuilt) first
    write_annotation(zoo.path, group, ids, cols, attrs, rebuild_index=True)
    return summary
