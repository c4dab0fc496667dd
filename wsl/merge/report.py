"""wsl-merge's comparison: per group, the merge's test score against its best ingredient (chosen on
validation) and against the ensemble of its ingredients; a table (printed, CSV, JSON) and a bar plot."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from wsl.zoo.atomic import write_bytes_atomic

COLUMNS = ("group", "label", "n_members", "merged_test", "best_test", "ingredients_test_mean", "ensemble_test",
           "gain_vs_best", "gain_vs_ensemble", "merged_val", "best_val", "seconds")


def table_text(rows: list[dict], method: str) -> str:
    """The comparison as aligned text (what wsl-merge prints)."""
    if not rows:
        return "(no groups)"
    metric = rows[0]["metric"]
    head = f"{'group':>5}  {'members':>7}  {'merged':>8}  {'best':>8}  {'mean':>8}  {'ensemble':>8}  " \
           f"{'vs best':>8}  {'vs ens':>8}  label"
    lines = [f"method={method}: test {metric} per group (best: the ingredient with the best validation "
             f"{metric}; gains positive = merge better)", head]
    for r in rows:
        lines.append(f"{r['group']:>5}  {r['n_members']:>7}  {r['merged_test']:8.4f}  {r['best_test']:8.4f}  "
                     f"{r['ingredients_test_mean']:8.4f}  {r['ensemble_test']:8.4f}  {r['gain_vs_best']:+8.4f}  "
                     f"{r['gain_vs_ensemble']:+8.4f}  {r['label']}")
    if len(rows) > 1:
        g = [r["gain_vs_best"] for r in rows]
        e = [r["gain_vs_ensemble"] for r in rows]
        lines.append(f"mean over {len(rows)} groups: gain vs best {_mean(g):+.4f}, vs ensemble {_mean(e):+.4f}; "
                     f"merge better than its best ingredient in {sum(x > 0 for x in g)} of {len(g)}")
    return "\n".join(lines)


def _mean(v) -> float:
    v = [x for x in v if isinstance(x, (int, float)) and math.isfinite(x)]
    return sum(v) / len(v) if v else math.nan


def write_report(out: Path, rows: list[dict], method: str, seconds: float) -> list[Path]:
    """merge_table.csv, merge_table.json and merge_gain.png in `out` (created)."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    cols = list(COLUMNS) + sorted({k for r in rows for k in r} - set(COLUMNS))
    df = pd.DataFrame.from_records(rows, columns=cols)
    csv, js, png = out / "merge_table.csv", out / "merge_table.json", out / "merge_gain.png"
    write_bytes_atomic(csv, df.to_csv(index=False).encode(), what="report", root=out)
    doc = {"method": method, "seconds": seconds, "metric": rows[0]["metric"] if rows else None, "groups": rows}
    write_bytes_atomic(js, json.dumps(doc, indent=1, default=str).encode(), what="report", root=out)
    write_bytes_atomic(png, _plot(rows, method), what="report", root=out)
    return [csv, js, png]


def _plot(rows: list[dict], method: str) -> bytes:
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(rows)
    fig = Figure(figsize=(max(5.0, 1.0 + 0.9 * n), 3.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(n)
    bars = (("best ingredient (val-chosen)", "best_test", "#9ecae1"), ("ingredients' mean", "ingredients_test_mean",
                                                                       "#c6dbef"),
            (f"merge ({method})", "merged_test", "#d7301f"), ("ensemble", "ensemble_test", "#636363"))
    w = 0.8 / len(bars)
    for j, (name, key, color) in enumerate(bars):
        ax.bar(x + (j - 1.5) * w, [r[key] for r in rows], w, label=name, color=color)
    vals = [r[k] for r in rows for _, k, _ in bars if math.isfinite(r[k])]
    if vals:
        lo, hi = min(vals), max(vals)
        pad = max(0.02, 0.15 * (hi - lo))
        ax.set_ylim(max(0.0, lo - pad) if rows[0]["higher_is_better"] else lo - pad, hi + pad)
    ax.set_xticks(x, [_short(r["label"]) for r in rows], rotation=30 if n > 3 else 0, ha="right" if n > 3 else "center",
                  fontsize=7)
    metric = rows[0]["metric"] if rows else ""
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"wsl-merge method={method}: merge vs best ingredient and ensemble, per group", fontsize=9, pad=20)
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return buf.getvalue()


def _short(label: str, n: int = 40) -> str:
    return label if len(label) <= n else label[: n - 3] + "..."
