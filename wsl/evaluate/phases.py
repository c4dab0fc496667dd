"""Do the generated nets land in the same phase as their training cell?

Generated nets are a zoo, so the landscape metrics (curvature, connectivity, CKA, spectra) are
computed on them by the same tool as on the training zoo (`wsl-landscape`) and appear in both
indexes as annotation columns "<group>/<column>". A generated net's training cell is the
hyperparameter cell of its nearest training checkpoint (after alignment).

- Phase label: the taxonomy rule of wsl.landscape.phases, applied to each training cell (its mean
  train loss, mode connectivity and CKA) and to each generated net (its own train loss, and mode
  connectivity / CKA where its zoo has them). A net without connectivity gets a coarse label
  ("I/II", "III/IV"); it is *consistent* with its cell when the phases the two labels allow overlap.
- Every other numeric annotation present in both zoos: is the net's value inside its cell's
  [min, max], and how many cell standard deviations from the cell mean.
Columns absent from either zoo are not compared (the report says none were found).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from wsl.evaluate.accuracy import mean_std

PHASE_INPUTS = {"mc": "mode_connectivity/value", "cka": "cka/value"}  # as wsl-landscape names them
# bookkeeping columns of landscape annotations: settings, notes, iteration counts, not metrics
_SKIP_NAMES = {"epoch", "pairs", "settings", "note", "t_star", "layers_fit"}
_SKIP_SUFFIXES = ("_iters", "_converged", "_stderr", "_samples", "_exact")
_ALLOWED = {"I": {"I"}, "II": {"II"}, "III": {"III"}, "IV-A": {"IV-A"}, "IV-B": {"IV-B"}, "I/II": {"I", "II"},
            "III/IV": {"III", "IV-A", "IV-B"}, "IV": {"IV-A", "IV-B"}}


def _is_numeric(a: np.ndarray) -> bool:
    dt = np.asarray(a).dtype
    return np.issubdtype(dt, np.number) and not np.issubdtype(dt, np.bool_)


def _metric_column(col: str) -> bool:
    name = col.rsplit("/", 1)[-1]
    return name not in _SKIP_NAMES and not name.endswith(_SKIP_SUFFIXES)


def _members(ref_cells: np.ndarray) -> dict:
    out: dict = {}
    for t, c in enumerate(ref_cells):
        out.setdefault(c, []).append(t)
    return out


def consistent(label_a: str, label_b: str) -> bool:
    """Two phase labels agree as far as both are resolved (e.g. "III/IV" and "IV-B" do)."""
    return bool(_ALLOWED.get(label_a, set()) & _ALLOWED.get(label_b, set()))


def phase_rows(gen_cols: dict, ref_cols: dict, nearest: np.ndarray, ref_cells: np.ndarray,
               gen_train_loss: np.ndarray, ref_train_loss: np.ndarray, thresholds=None) -> list[dict]:
    """One row: how many generated nets carry a phase label consistent with their training cell's."""
    from wsl.landscape.phases import PhaseThresholds, phase_label  # imported only when annotations exist

    t = thresholds if thresholds is not None else PhaseThresholds()
    members = _members(ref_cells)
    col = lambda cols, k, n: np.asarray(cols[PHASE_INPUTS[k]], dtype=float) if PHASE_INPUTS[k] in cols \
        else np.full(n, np.nan)  # noqa: E731
    r_mc, r_cka = col(ref_cols, "mc", len(ref_train_loss)), col(ref_cols, "cka", len(ref_train_loss))
    g_mc, g_cka = col(gen_cols, "mc", len(gen_train_loss)), col(gen_cols, "cka", len(gen_train_loss))
    cell_label = {c: phase_label(*(mean_std(v[m])[0] for v in (ref_train_loss, r_mc, r_cka)), t=t)
                  for c, m in members.items()}
    hits, gen_labels = 0, Counter()
    for s, i in enumerate(nearest):
        if not (0 <= i < len(ref_cells)) or not np.isfinite(gen_train_loss[s]):
            continue
        g = phase_label(float(gen_train_loss[s]), float(g_mc[s]), float(g_cka[s]), t=t)
        gen_labels[g] += 1
        hits += consistent(g, cell_label[ref_cells[i]])
    n = sum(gen_labels.values())
    return [{"column": "phase", "kind": "label", "n": n, "same_as_cell": hits / n if n else math.nan,
             "generated": dict(gen_labels), "training": dict(Counter(cell_label.values())),
             "thresholds": {"loss": t.loss, "mc_tolerance": t.mc_tolerance, "cka": t.cka}}]


def metric_rows(gen_cols: dict, ref_cols: dict, nearest: np.ndarray, ref_cells: np.ndarray) -> list[dict]:
    """One row per numeric annotation column present in both zoos."""
    members = _members(ref_cells)
    rows = []
    for c in sorted(set(gen_cols) & set(ref_cols)):
        g, r = np.asarray(gen_cols[c]), np.asarray(ref_cols[c])
        if not (_metric_column(c) and _is_numeric(g) and _is_numeric(r)):
            continue
        g, r = g.astype(np.float64), r.astype(np.float64)
        inside, zs = [], []
        for s, i in enumerate(nearest):
            if not 0 <= i < len(r):
                continue
            cell = r[members[ref_cells[i]]]
            cell = cell[np.isfinite(cell)]
            if not len(cell) or not np.isfinite(g[s]):
                continue
            inside.append(cell.min() <= g[s] <= cell.max())
            sd = cell.std(ddof=1) if len(cell) > 1 else 0.0
            zs.append(abs(g[s] - cell.mean()) / sd if sd > 0 else (0.0 if g[s] == cell.mean() else math.inf))
        (gm, gs), (rm, rs) = mean_std(g), mean_std(r)
        rows.append({"column": c, "kind": "numeric", "n": len(inside),
                     "generated_mean": gm, "generated_std": gs, "training_mean": rm, "training_std": rs,
                     "inside_cell_range": float(np.mean(inside)) if inside else math.nan,
                     "median_cell_z": float(np.median(zs)) if zs else math.nan})
    return rows


def compare_phases(gen_cols: dict, ref_cols: dict, nearest: np.ndarray, ref_cells: np.ndarray,
                   gen_train_loss: np.ndarray | None = None, ref_train_loss: np.ndarray | None = None,
                   thresholds=None) -> list[dict]:
    """gen_cols {column: [S]}, ref_cols {column: [T]} annotation columns; nearest [S] index of each
    generated net's nearest training checkpoint; ref_cells [T] cell key of each training checkpoint;
    train losses [S] / [T] (for phase labels). Empty when the training zoo carries no annotation."""
    if not ref_cols:
        return []
    nearest, ref_cells = np.asarray(nearest), np.asarray(ref_cells, dtype=object)
    rows = []
    if gen_train_loss is not None and ref_train_loss is not None:
        rows += phase_rows(gen_cols, ref_cols, nearest, ref_cells, np.asarray(gen_train_loss, float),
                           np.asarray(ref_train_loss, float), thresholds)
    return rows + metric_rows(gen_cols, ref_cols, nearest, ref_cells)
