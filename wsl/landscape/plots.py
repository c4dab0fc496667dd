"""Phase diagrams: for two swept hyperparameters, a heatmap per metric, seeds averaged.

Each cell shows the mean over its non-diverged seed replicas and its phase label (phases.py);
a cell with diverged members is hatched and says how many. Other swept hyperparameters get one
figure per value combination. Uses matplotlib's object API with the Agg canvas (no display, no
global pyplot state); files are written to a temp name and renamed.
"""

from __future__ import annotations

import io
import itertools
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from wsl.errors import ConfigError, printable
from wsl.landscape.phases import PHASES, PhaseThresholds, phase_label
from wsl.zoo.atomic import write_bytes_atomic, write_marker
from wsl.zoo.safe_paths import claim_output_dir, inside, make_dirs, remove_temp_files

# hyperparameters that are never axes: seeds (averaged over) and quantities derived from others
NON_AXES = {"seed_init", "seed_data", "replica", "population_seed", "subset_seed", "split_seed", "n_params"}
LOAD_AXES = ("width", "train_fraction", "beta", "depth", "kernel")  # preferred on x (beta: a PDE's coefficient)
TEMPERATURE_AXES = ("batch_size", "lr", "weight_decay", "momentum")  # preferred on y
# test_acc of classifiers, test_bpc of language models, test_rel_l2 of PINNs (their "accuracy"): those present
DEFAULT_METRICS = ("train_loss", "test_acc", "test_bpc", "test_rel_l2", "hessian_eig/train", "hessian_eig/test",
                   "hessian_trace/train", "hessian_trace/test", "barrier/value", "mode_connectivity/value", "cka/value",
                   "spectra/alpha_mean", "spectra/alpha_hat_mean", "spectra/log_spectral_norm_mean", "spectra/stable_rank_mean")
PHASE_INPUTS = ("train_loss", "mode_connectivity/value", "cka/value")  # phase_label's arguments


def non_axis(h: str) -> bool:
    """Hyperparameters never drawn as axes: seeds, derived ones, and wsl-merge's provenance (merge_*)."""
    return h in NON_AXES or str(h).startswith("merge_")


def choose_axes(swept: list[str], x: str | None, y: str | None, hparams: list[str]) -> tuple[str | None, str | None]:
    for key, v in (("plot.x", x), ("plot.y", y)):
        if v is not None and v not in hparams:
            raise ConfigError(f"{key}={v!r} is not a hyperparameter of this zoo; swept: {swept or 'none'}; "
                              f"all: {hparams}")
    if x is not None and x == y:
        raise ConfigError(f"plot.x and plot.y are both {x!r}; choose two different hyperparameters")
    rest = [h for h in swept if h not in (x, y)]
    if x is None:
        x = next((h for h in LOAD_AXES if h in rest), rest[0] if rest else None)
        rest = [h for h in rest if h != x]
    if y is None:
        y = next((h for h in TEMPERATURE_AXES if h in rest), rest[0] if rest else None)
    return x, y


def cell_table(table: pd.DataFrame, x: str | None, y: str | None, others: list[str], metrics: list[str],
               thresholds: PhaseThresholds) -> pd.DataFrame:
    """One row per (others, y, x) cell: seed-averaged metrics of trained members, divergence counts, phase."""
    keys = [k for k in (*others, y, x) if k is not None]
    df = table.assign(_diverged=table["status"].astype(str) == "diverged")
    recs = []
    groups = df.groupby(keys, sort=True, dropna=False) if keys else [((), df)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        ok = g[~g["_diverged"]]
        rec = {**dict(zip(keys, key)), "n_members": len(g), "n_diverged": int(g["_diverged"].sum())}
        rec.update({m: _mean(ok, m) for m in metrics})
        rec["phase"] = phase_label(*(_mean(ok, c) for c in PHASE_INPUTS), t=thresholds)
        recs.append(rec)
    return pd.DataFrame.from_records(recs)


def _mean(df: pd.DataFrame, col: str) -> float:
    if col not in df:
        return math.nan
    v = pd.to_numeric(df[col], errors="coerce")
    return float(v.mean()) if v.notna().any() else math.nan


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) and not math.isnan(v) else str(v)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", str(name)).strip("-") or "x"


def _save(fig, path: Path, dpi: int) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format=path.suffix.lstrip("."), bbox_inches="tight")
    write_bytes_atomic(path, buf.getvalue(), what="plot", root=path.parent)  # temp + rename, no link followed
    return path


APP = "wsl-plot"
PLOT_FILES = ("*.png", "*.pdf", "*.svg", "cells__*.csv", ".*.tmp")  # .*.tmp: a killed write's temp file


def plot_dir(out_dir, zoo_path) -> Path:
    """Where the plots go (`plot.out_dir`, default <zoo>/plots), checked before any work: a new directory,
    or this app's earlier output (its marker file; in <zoo>/plots also plot files written before the
    marker existed). Never a zoo, a file, a link or a directory holding anything else (ConfigError)."""
    if out_dir is None:
        zoo = Path(zoo_path).expanduser()
        d = inside(zoo, zoo / "plots", "write plots")  # a `plots` link planted in the zoo: refused
        return claim_output_dir(d, APP, "plot.out_dir", PLOT_FILES, legacy=True)
    return claim_output_dir(out_dir, APP, "plot.out_dir", PLOT_FILES)


def _sort_key(v):
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(v))


def _ink(im, value) -> str:
    """Black text on light cells, white on dark ones (by the cell colour's luminance)."""
    r, g, b, _ = im.cmap(im.norm(value))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def _heatmap(cells, x, y, column, title, categorical=False):
    from matplotlib.figure import Figure

    xs = sorted(cells[x].unique(), key=_sort_key) if x else [""]
    ys = sorted(cells[y].unique(), key=_sort_key) if y else [""]
    fig = Figure(figsize=(1.2 + 1.1 * len(xs), 1.2 + 0.8 * len(ys)))
    heatmap_on(fig, fig.add_subplot(1, 1, 1), cells, x, y, column, title, categorical)
    return fig


def heatmap_on(fig, ax, cells, x, y, column, title, categorical=False, cmap=None, center=None):
    """Draw one heatmap of `cells` (cell_table rows) on `ax`: `column`'s values (categorical: the phase labels)
    with each cell's value and phase label written in it. cmap: a colormap name (default viridis); center:
    a value the colour scale is made symmetric around (e.g. 0 for a gain)."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Rectangle

    xs = sorted(cells[x].unique(), key=_sort_key) if x else [""]
    ys = sorted(cells[y].unique(), key=_sort_key) if y else [""]
    grid = np.full((len(ys), len(xs)), np.nan)
    phase = [["" for _ in xs] for _ in ys]
    div, tot = np.zeros((2, len(ys), len(xs)), dtype=int)  # tot 0: no model has these hyperparameters
    for _, r in cells.iterrows():
        i = ys.index(r[y]) if y else 0
        j = xs.index(r[x]) if x else 0
        if column is not None:
            grid[i, j] = r[column]
        phase[i][j] = r["phase"]
        div[i, j], tot[i, j] = r["n_diverged"], r["n_members"]
    if categorical:
        names = list(PHASES) + ["I/II", "III/IV", "IV", "?"]
        grid = np.array([[names.index(p) if p in names else len(names) - 1 for p in row] for row in phase], float)
        cmap = ListedColormap(["#d7301f", "#fc8d59", "#fdcc8a", "#9ecae1", "#3182bd", "#fdae6b", "#c6dbef",
                               "#6baed6", "#dddddd"]).with_extremes(bad="white")
        scale = {"vmin": -0.5, "vmax": len(names) - 0.5}
    else:
        cmap, scale = colormaps[cmap or "viridis"].with_extremes(bad="#dddddd"), {}
    grid[tot == 0] = np.nan  # no such cell: left blank
    if center is not None and np.isfinite(grid).any():
        half = max(float(np.nanmax(np.abs(grid - center))), 1e-12)
        scale = {"vmin": center - half, "vmax": center + half}
    im = ax.imshow(np.ma.masked_invalid(grid), origin="lower", aspect="auto", cmap=cmap, **scale)
    if not categorical:
        fig.colorbar(im, ax=ax, label=column)
    for i in range(len(ys)):
        for j in range(len(xs)):
            if tot[i, j] == 0:
                continue
            value = "n/a" if math.isnan(grid[i, j]) else _fmt(grid[i, j])
            label = phase[i][j] if categorical else f"{value}\n{phase[i][j]}"
            if div[i, j]:
                label += f"\n{div[i, j]}/{tot[i, j]} div"
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="xx", edgecolor="red", lw=1.5))
            ax.text(j, i, label, ha="center", va="center", fontsize=8,
                    color="black" if categorical or math.isnan(grid[i, j]) else _ink(im, grid[i, j]))
    ax.set_xticks(range(len(xs)), [_fmt(v) for v in xs])
    ax.set_yticks(range(len(ys)), [_fmt(v) for v in ys])
    ax.set(xlabel=x or "", ylabel=y or "")
    ax.set_title(title, fontsize=9)


def plot_zoo(zoo_path, x: str | None = None, y: str | None = None, metrics=None, out_dir=None,
             thresholds: PhaseThresholds = PhaseThresholds(), dpi: int = 120, fmt: str = "png") -> list[Path]:
    """Draw the phase diagrams of a zoo; returns the written files (PNGs and a CSV of cell values)."""
    from wsl.zoo import Zoo

    zoo = Zoo(zoo_path)
    table = zoo.table()
    if not len(table):
        raise ConfigError(f"{zoo.path} has no models to plot")
    hp = list(dict.fromkeys(k for mid in zoo.ids for k in zoo.hparams(mid)))
    # the axes to choose from: hyperparameters (not seeds) that take more than one value in the zoo
    swept = [h for h in hp if not non_axis(h) and h in table and table[h].astype(str).nunique() > 1]
    x, y = choose_axes(swept, x, y, hp)
    others = [h for h in swept if h not in (x, y)]
    metrics = ([m for m in DEFAULT_METRICS if m in table and table[m].notna().any()] if metrics is None
               else list(metrics))
    unknown = [m for m in metrics if m not in table]
    if unknown:
        numeric = [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])]
        raise ConfigError(f"plot.metrics: {unknown} not in {zoo.path}'s table; available: {numeric}")
    out = plot_dir(out_dir or None, zoo.path)
    try:
        return _draw(out, bool(out_dir), zoo, table, x, y, others, metrics, thresholds, dpi, fmt)
    except OSError as e:  # read-only zoo, full disk: one line naming the directory
        raise ConfigError(f"cannot write plots to {printable(out)} ({e.strerror or e}); choose another directory with "
                          "plot.out_dir=<dir>") from e


def cell_slices(cells, others):
    """One (cells, file-name suffix, title text) per combination of the swept axes that are not drawn
    (`others`; one slice of everything when there are none); empty combinations are left out."""
    for sl in itertools.product(*[sorted(cells[o].unique(), key=_sort_key) for o in others]):
        part = cells
        for o, v in zip(others, sl):
            part = part[part[o] == v]
        if len(part):
            yield (part, "".join(f"__{_safe(o)}={_safe(v)}" for o, v in zip(others, sl)),
                   ", ".join(f"{o}={_fmt(v)}" for o, v in zip(others, sl)))


def _draw(out: Path, own_dir: bool, zoo, table, x, y, others, metrics, thresholds, dpi, fmt) -> list[Path]:
    if own_dir:
        out.mkdir(parents=True, exist_ok=True)  # the user's own path (checked: not a link, not a file)
    else:
        make_dirs(zoo.path, out)  # inside the zoo: never through a link
    write_marker(out, APP)
    remove_temp_files(out, out, ".*.tmp", dead_only=True)  # temp files of a killed earlier run
    cells = cell_table(table, x, y, others, metrics, thresholds)
    axes_name = f"{_safe(x or 'none')}_vs_{_safe(y or 'none')}"
    csv = out / f"cells__{axes_name}.csv"
    write_bytes_atomic(csv, cells.to_csv(index=False).encode(), what="plot", root=out)
    written = [csv]
    for part, suffix, where in cell_slices(cells, others):
        where = f" — {where}" if where else ""
        for m in metrics:
            fig = _heatmap(part, x, y, m, f"{m} (seeds averaged){where}")
            written.append(_save(fig, out / f"{_safe(m)}__{axes_name}{suffix}.{fmt}", dpi))
        fig = _heatmap(part, x, y, None, f"phase (Yang et al. 2021){where}", categorical=True)
        written.append(_save(fig, out / f"phase__{axes_name}{suffix}.{fmt}", dpi))
    return written
