"""Averaging per phase: on a zoo written by `wsl-merge merge.by=cell` from a phase-diagram zoo, wsl-plot draws
the merge gain of every cell next to the phase map of the source zoo (Yang et al. 2021's taxonomy, decided
from the SOURCE nets' seed-averaged train loss, mode connectivity and CKA, wsl.landscape.phases).

One figure per value combination of the other swept hyperparameters: phase map | test gain of the merge
over its best ingredient (chosen on validation) | test gain over the ensemble of the cell's nets; gains
on a diverging scale centred at 0 (positive: the merge is better). A CSV of the cells goes with it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from wsl.landscape.phases import phase_label
from wsl.landscape.plots import _safe, _save, cell_slices, cell_table, choose_axes, heatmap_on, non_axis
from wsl.zoo.atomic import write_bytes_atomic

log = logging.getLogger("wsl.merge")
GAINS = ("merge/gain_vs_best", "merge/gain_vs_ensemble")


def is_cell_merge(table) -> bool:
    return all(c in table for c in GAINS) and "merge_by" in table and (table["merge_by"].astype(str) == "cell").all()


def _source_phases(table, x, y, others, thresholds):
    """{cell key tuple: phase label} from the source zoo's nets, or None where it cannot be read."""
    from wsl.zoo import Zoo

    src = str(table["merge_source_zoo"].iloc[0])
    try:
        st = Zoo(src).table()
    except Exception as e:  # moved or deleted: the merged nets' own (coarse) labels are drawn instead
        log.warning("merge gain plot: source zoo %s cannot be read (%s); phase labels from the merged nets' own "
                    "train loss (coarse)", src, str(e).splitlines()[0][:200])
        return None
    keys = [k for k in (*others, y, x) if k is not None]
    if any(k not in st for k in keys):
        return None
    cells = cell_table(st, x, y, others, [], thresholds)
    return {tuple(str(r[k]) for k in keys): r["phase"] for _, r in cells.iterrows()}


def plot_merge_phases(zoo_path, out: Path, x=None, y=None, thresholds=None, dpi: int = 120,
                      fmt: str = "png") -> list[Path]:
    """The merge-gain-by-phase figures of a merge.by=cell zoo into `out` (wsl-plot's claimed directory); []
    for any other zoo."""
    from matplotlib.figure import Figure

    from wsl.landscape.schema import PhaseThresholds
    from wsl.zoo import Zoo

    thresholds = thresholds or PhaseThresholds()
    zoo = Zoo(zoo_path)
    table = zoo.table()
    if not len(table) or not is_cell_merge(table):
        return []
    hp = list(dict.fromkeys(k for mid in zoo.ids for k in zoo.hparams(mid)))
    swept = [h for h in hp if not non_axis(h) and h in table and table[h].astype(str).nunique() > 1]
    x, y = choose_axes(swept, x, y, hp)
    others = [h for h in swept if h not in (x, y)]
    cells = cell_table(table, x, y, others, list(GAINS), thresholds)
    phases = _source_phases(table, x, y, others, thresholds)
    keys = [k for k in (*others, y, x) if k is not None]
    if phases is not None:
        cells["phase"] = [phases.get(tuple(str(r[k]) for k in keys), "?") for _, r in cells.iterrows()]
        where = "phase of the source zoo's cell"
    else:
        cells["phase"] = [phase_label(v, t=thresholds) for v in cells.get("train_loss", [float("nan")] * len(cells))]
        where = "phase from the merged net's train loss alone"
    metric = str(zoo.annotation("merge")["attrs"].get("metric", "acc"))
    method = str(table["merge_method"].iloc[0])
    axes_name = f"{_safe(x or 'none')}_vs_{_safe(y or 'none')}"
    csv = out / f"cells__merge_gain__{axes_name}.csv"
    write_bytes_atomic(csv, cells.to_csv(index=False).encode(), what="plot", root=out)
    written = [csv]
    for part, suffix, what in cell_slices(cells, others):
        nx = part[x].nunique() if x else 1
        ny = part[y].nunique() if y else 1
        fig = Figure(figsize=(3 * (1.8 + 1.1 * nx), 1.8 + 0.8 * ny), layout="constrained")
        axs = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
        heatmap_on(fig, axs[0], part, x, y, None, f"phase (source nets){chr(10) + what if what else ''}",
                   categorical=True)
        heatmap_on(fig, axs[1], part, x, y, GAINS[0], f"test {metric} gain: {method} merge\n− best ingredient (val-chosen)",
                   cmap="RdBu", center=0.0)
        heatmap_on(fig, axs[2], part, x, y, GAINS[1], f"test {metric} gain: {method} merge\n− ensemble of the cell", cmap="RdBu",
                   center=0.0)
        fig.suptitle(f"averaging per phase (wsl-merge method={method}, merge.by=cell); labels: {where}", fontsize=9)
        written.append(_save(fig, out / f"merge_gain__{axes_name}{suffix}.{fmt}", dpi))
    return written
