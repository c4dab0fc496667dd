"""The phase taxonomy of loss landscapes (Yang et al. 2021), as a labelling rule per cell.

| phase | train loss | Hessian | mode connectivity | CKA   |
| I     | high       | large   | negative          |  —    |
| II    | high       | large   | positive          |  —    |
| III   | small      | small   | negative          |  —    |
| IV-A  | small      | small   | ≈ 0               | small |
| IV-B  | small      | small   | ≈ 0               | large |

Train loss splits {I, II} from {III, IV}; the sign of mode connectivity (with a tolerance band
for "≈ 0") splits I/II and III/IV; CKA splits IV-A/IV-B. The Hessian follows the loss in this
table, so it is drawn but not needed to decide. A missing metric leaves the label coarse
("I/II", "III/IV", "IV") rather than guessed. The thresholds are settings (plot.yaml `phase:`),
not universal constants: they depend on the task's loss scale.

`annotate_phases` stores the label of every model's cell in the zoo index (annotation group
`phase`, or `phase_epoch<E>` at an explicit checkpoint epoch; column `label`, read as
`phase/label` by Zoo.table() and by the encoder task `task=phase`), next to the seed-averaged
inputs it was decided from, a `note` naming what was missing, and the thresholds used.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict

from wsl.landscape.schema import PhaseThresholds, group_name
from wsl.zoo.annotations import done_rows, stored_columns, write_rows
from wsl.zoo.reader import Zoo

PHASES = ("I", "II", "III", "IV-A", "IV-B")


def checkpoint_epoch(zoo, mid: str, epoch: int) -> int | None:
    """The checkpoint of `mid` analyzed at `epoch` (-1: its last one); None if it has none there."""
    eps = zoo.checkpoint_epochs(mid)
    if epoch == -1:
        return eps[-1] if eps else None
    return epoch if epoch in eps else None


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def phase_label(train_loss, mc=None, cka=None, t: PhaseThresholds = PhaseThresholds()) -> str:
    """The taxonomy phase of one cell from its (seed-averaged) metrics; '?' without a train loss."""
    if _nan(train_loss):
        return "?"
    if train_loss > t.loss:  # underfitted: I or II
        if _nan(mc) or abs(mc) <= t.mc_tolerance:
            return "I/II"
        return "I" if mc < 0 else "II"
    if _nan(mc):
        return "III/IV"
    if mc < -t.mc_tolerance:  # a barrier between well-fit replicas
        return "III"
    # |mc| small, or positive (the curve dips below well-fit endpoints: no barrier either)
    if _nan(cka):
        return "IV"
    return "IV-B" if cka >= t.cka else "IV-A"


def cell_phase(train_loss, mc=None, cka=None, t: PhaseThresholds = PhaseThresholds(),
               why_missing: dict | None = None) -> tuple[str, str]:
    """(label, note) of a cell from its seed-averaged metrics; the note names the metric a coarse
    label lacks (and why, from `why_missing` {metric: reason}) or the ambiguity it reflects."""
    why = why_missing or {}

    def missing(name: str) -> str:
        return f"{name} missing" + (f" ({why[name]})" if why.get(name) else "")

    label = phase_label(train_loss, mc, cka, t)
    if label == "?":
        return label, missing("train_loss")
    if label == "I/II" and not _nan(mc):
        return label, (f"coarse: high train loss with |mode connectivity| {abs(mc):.3g} <= {t.mc_tolerance} "
                       "(neither I nor II)")
    if label in ("I/II", "III/IV"):
        return label, f"coarse: {missing('mode_connectivity')}"
    if label == "IV":
        return label, f"coarse: {missing('cka')}"
    return label, ""


def annotate_phases(zoo_path, thresholds: PhaseThresholds | None = None, epoch: int = -1, model_ids=None,
                    rebuild_index: bool = True) -> int:
    """Store the phase label of the cells of `model_ids` (default: all) on every member's row.
    `zoo_path`: a zoo directory, or an open Zoo (its rows; annotations are read from their files);
    `thresholds`: None for the defaults.

    Inputs, averaged over a cell's non-diverged seed replicas (as the phase diagrams do): the train
    loss at the analyzed checkpoint epoch (from the training history), `mode_connectivity/value`
    and `cka/value` (their `_epoch<E>` groups at an explicit epoch), whatever run stored them. A
    missing input leaves the label coarse and the note says which. Rows whose label, note and
    settings are unchanged are not rewritten. Returns the number of rows written. Inputs and stored
    labels are read from the annotation files (the index may lag behind them); `rebuild_index=False`
    leaves the index rebuild to the caller (annotate_zoo: once per run).
    """
    t = thresholds or PhaseThresholds()
    zoo = zoo_path if isinstance(zoo_path, Zoo) else Zoo(zoo_path)  # annotate_zoo passes its open zoo
    group = group_name("phase", epoch)
    wanted = set(zoo.ids if model_ids is None else map(str, model_ids))
    inputs = {"mode_connectivity": group_name("mode_connectivity", epoch), "cka": group_name("cka", epoch)}
    anns = {name: stored_columns(zoo, g) for name, g in inputs.items()}
    pos = {m: i for i, m in enumerate(zoo.ids)}
    have = done_rows(zoo, group, ("label", "note", "settings"))
    settings = json.dumps({"thresholds": asdict(t), "epoch": epoch,
                           "inputs": {"train_loss": "history train_loss at the checkpoint epoch",
                                      **{k: f"{g}/value" for k, g in inputs.items()}}}, sort_keys=True)

    def train_loss(mid):  # non-finite values are left out by _nanmean
        e = checkpoint_epoch(zoo, mid, epoch)
        h = zoo.history(mid).get("train_loss")
        return math.nan if e is None or h is None or e >= len(h) else float(h[e])

    rows = {}
    for cell in zoo.cells().values():
        if not wanted.intersection(cell):
            continue
        ok = [m for m in cell if zoo.row(m).status != "diverged"]
        n_div = len(cell) - len(ok)
        vals, why = {"train_loss": _nanmean([train_loss(m) for m in ok])}, {}
        if not ok:
            why["train_loss"] = "every member diverged"
        elif all(checkpoint_epoch(zoo, m, epoch) is None for m in ok):
            why["train_loss"] = f"no checkpoint at epoch {epoch}"
        elif _nan(vals["train_loss"]):
            why["train_loss"] = "no finite train loss at the checkpoint epoch in the history"
        for name, col in anns.items():
            has = col is not None and "value" in col
            vals[name] = _nanmean([float(col["value"][pos[m]]) for m in ok]) if has else math.nan
            if col is None:
                why[name] = f"annotation group {inputs[name]!r} not computed"
            elif _nan(vals[name]):
                notes = sorted({str(col["note"][pos[m]]) for m in ok if "note" in col and str(col["note"][pos[m]])})
                why[name] = "; ".join(notes) or f"no value in {inputs[name]!r}"
        label, note = cell_phase(vals["train_loss"], vals["mode_connectivity"], vals["cka"], t, why)
        if n_div:
            div = f"{n_div} of {len(cell)} members diverged (averaged over the rest)"
            note = f"{note}; {div}" if note else div
        for m in cell:
            e = checkpoint_epoch(zoo, m, epoch)
            rows[m] = {"label": label, "note": note, "settings": settings, "epoch": -1 if e is None else e,
                       "members": ",".join(sorted(cell)), **vals}
    todo = [m for m in rows if have.get(m) != (rows[m]["label"], rows[m]["note"], rows[m]["settings"])]
    if not todo:
        return 0
    attrs = {"metric": "phase", "scope": "cell", "settings": settings,
             **{f"threshold:{k}": float(v) for k, v in asdict(t).items()},
             "description": "phase of the loss-landscape taxonomy (Yang et al. 2021) of the model's cell, "
                            "from seed-averaged train loss, mode connectivity and CKA (wsl/landscape/phases.py)"}
    write_rows(zoo.path, group, {m: rows[m] for m in todo}, attrs, rebuild_index=rebuild_index)
    return len(todo)


def _nanmean(vals) -> float:
    vals = [v for v in vals if not _nan(v) and math.isfinite(v)]
    return float(sum(vals) / len(vals)) if vals else math.nan
