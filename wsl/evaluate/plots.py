"""The score-vs-novelty plane: the generated nets against every baseline and the training zoo.

Two panels share the score axis (accuracy; for language models bits per character, for PINNs the
relative L2 error, both lower is better: the axis is drawn inverted, so that up is better in every
domain): weight novelty (aligned NN L2 distance over the median training-to-training one) and
behavioural novelty (1 − highest IoU of wrong-prediction sets with any training checkpoint; the
domain's analogue, wsl.evaluate.domains). Each set is drawn as its mean ± std (never its best net);
the generated nets are also shown one by one. The ensemble of the training zoo is the dashed reference.
"""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.figure import Figure  # figures for files only: no pyplot state, the user's backend is left alone

from wsl.evaluate.accuracy import mean_std
from wsl.evaluate.results import Evaluation  # noqa: E402

STYLE = {  # method -> (colour, marker)
    "generated": ("tab:red", "*"),
    "training": ("black", "o"),
    "noise": ("tab:blue", "s"),
    "average": ("tab:green", "^"),
    "gaussian": ("tab:purple", "D"),
}


def _mean_std(v: np.ndarray) -> tuple[float, float]:  # error bar 0 for a single net
    m, s = mean_std(v)
    return m, 0.0 if math.isnan(s) else s


def accuracy_novelty_plot(ev: Evaluation):
    """The figure of the plane (one panel, weight novelty, for a domain without behavioural novelty: PINNs)."""
    name = ev.info.get("metric_name", "accuracy")
    higher = ev.info.get("higher_is_better", True)
    panels = [("weight_novelty", "weight novelty: aligned NN L2 / training-to-training median")]
    if ev.info.get("behavioural_novelty", True):
        panels.append(("behaviour_novelty", ev.info.get("novelty_axis", "behavioural novelty: 1 − max IoU of "
                                                                       "wrong-prediction sets")))
    fig = Figure(figsize=(12, 4.8) if len(panels) == 2 else (7.5, 5.4))
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    for ax, (attr, xlabel) in zip(axes, panels):
        seen = set()
        for method in ("noise", "average"):  # the sweeps as lines, in sweep order
            sets = ev.by_method(method)
            if len(sets) > 1:
                pts = np.array([[_mean_std(getattr(s, attr))[0], _mean_std(s.scores.score)[0]] for s in sets])
                pts = pts[np.argsort(pts[:, 0])] if method == "average" else pts
                ax.plot(pts[:, 0], pts[:, 1], "-", color=STYLE[method][0], alpha=0.5, lw=1)
        for s in ev.sets:
            colour, marker = STYLE.get(s.method, ("grey", "x"))
            x = getattr(s, attr)
            if s.method == "generated":
                ax.scatter(x, s.scores.score, s=14, color=colour, alpha=0.35, lw=0)
            mx, sx = _mean_std(x)
            my, sy = _mean_std(s.scores.score)  # over all nets with a finite score, failures included
            ax.errorbar(mx, my, xerr=sx, yerr=sy, fmt=marker, color=colour, ms=9 if s.method == "generated" else 6,
                        capsize=2, label=s.method if s.method not in seen else None)
            seen.add(s.method)
            if s.setting and s.method in ("noise", "average"):
                ax.annotate(s.setting.split("=")[-1], (mx, my), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color=colour)
        ens = ev.ensemble.get("score", ev.ensemble.get("accuracy"))
        if ens is not None and np.isfinite(ens):
            ax.axhline(ens, color="grey", ls="--", lw=1, label="ensemble of training zoo")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{ev.info.get('split', 'test')} {name}\n(mean ± std over all nets"
                       + (")" if higher else "; lower is better: axis inverted)"))
    if not higher:
        axes[0].invert_yaxis()  # shared: up is better in both panels
    axes[0].legend(fontsize=8, loc="lower left")
    title = f"{name} vs novelty: {ev.info.get('zoo_name', '')} against {ev.info.get('reference_name', '')}"
    if len(panels) == 1:  # one panel: the title in lines
        title = (f"{name} vs novelty\n{ev.info.get('zoo_name', '')} against {ev.info.get('reference_name', '')}\n"
                 "(no behavioural novelty for this domain: see the report's memorization audit)")
    fig.suptitle(title, fontsize=9 if len(panels) == 1 else None)
    fig.tight_layout()
    return fig


def distance_histogram(ev: Evaluation):
    """The figure of the nearest-neighbour L2 of the generated nets next to the training-to-training distances."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for s in ev.by_method("training") + ev.by_method("generated"):
        v = s.audit.l2[np.isfinite(s.audit.l2)]
        if len(v):
            ax.hist(v, bins=30, alpha=0.5, color=STYLE[s.method][0], label=f"{s.label} (n={len(v)})")
    ax.set_xlabel("L2 distance to the nearest training checkpoint (after alignment)")
    ax.set_ylabel("nets")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def figure_bytes(fig, dpi: int = 110) -> bytes:
    """The figure as PNG bytes: the caller writes them where it checked it may."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    return buf.getvalue()
