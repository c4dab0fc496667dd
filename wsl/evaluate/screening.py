"""Data-free screening: a saved encoder's predicted score of every generated net against its measured one.

wsl-evaluate with `encoder_run=<wsl-train-encoder run>` loads the run's encoders (every seed, or
`encoder_seed`), checks before any work that they read the generated nets (wsl.encoders.embed.check_zoo)
and that their task predicts the score wsl-evaluate measures (a column <split>_<metric>, e.g. test_acc;
the evaluation split's own column first), then predicts each generated net's score from its weights alone
(the mean over seeds) and compares it with the score measured on the data: Kendall tau (how well the
encoder ranks the nets without running them), Spearman rho, the mean absolute error, and the scatter plot
(report: screening.png).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from wsl.errors import ConfigError, printable


@dataclass
class ScreeningPlan:
    encs: list
    column: str  # the task column the predictions stand for (e.g. test_acc)
    index: int  # its position among the task's targets


def plan_screening(job, zoo, ids: list, metric_key: str) -> ScreeningPlan | None:
    """The encoders of `job.encoder_run`, checked against the generated nets `ids` of `zoo`; None without one."""
    if job.encoder_run is None:
        return None
    from wsl.encoders.embed import check_zoo
    from wsl.encoders.encoder_run import load_run

    encs = load_run(job.encoder_run, job.encoder_seed, key="encoder_run")
    enc = encs[0]
    names = enc.target_names
    if enc.task.kind != "regression":
        raise ConfigError(f"encoder_run={printable(job.encoder_run)}: its task {enc.task.name!r} is a classification; "
                          "screening needs an encoder that predicts the score (e.g. task=test_acc)")
    pattern = re.compile(rf"(train|val|test)_{re.escape(metric_key)}")
    matching = [c for c in names if pattern.fullmatch(c)]
    if not matching:
        raise ConfigError(f"encoder_run={printable(job.encoder_run)}: its task {enc.task.name!r} predicts {names}, "
                          f"not the score wsl-evaluate measures ({job.split}_{metric_key}); train one with "
                          f"task.columns=[{job.split}_{metric_key}]")
    column = f"{job.split}_{metric_key}" if f"{job.split}_{metric_key}" in matching else matching[0]
    check_zoo(encs, zoo, ids, job.epoch, key="zoo.path", epoch_key="epoch")
    return ScreeningPlan(encs, column, names.index(column))


def screen(plan: ScreeningPlan, state_dicts: list, measured: np.ndarray, ids: list, chunk: int = 256) -> dict:
    """Predicted (mean over seeds, in the column's units) against measured score of every net."""
    from scipy.stats import spearmanr

    from wsl.encoders.embed import encode_state_dicts
    from wsl.encoders.tasks import kendall_tau

    out = encode_state_dicts(plan.encs, state_dicts, chunk)
    pred = np.asarray(out.columns(out.mean())[plan.column], dtype=np.float64)
    measured = np.asarray(measured, dtype=np.float64)
    ok = np.isfinite(pred) & np.isfinite(measured)
    n = int(ok.sum())
    tau = kendall_tau(pred[ok], measured[ok]) if n > 1 else float("nan")
    rho = float(spearmanr(pred[ok], measured[ok]).statistic) if n > 1 and tau == tau else float("nan")
    enc = plan.encs[0]
    trained = [e.desc.get("training", {}).get("test/tau") for e in plan.encs]
    trained = [t for t in trained if isinstance(t, (int, float))]
    return {"run": str(enc.path.parent.parent), "encoder": enc.name, "task": enc.task.name, "column": plan.column,
            "seeds": [e.seed for e in plan.encs], "n": n, "tau": tau, "spearman": rho,
            "mae": float(np.mean(np.abs(pred[ok] - measured[ok]))) if n else float("nan"),
            "encoder_test_tau": float(np.mean(trained)) if trained else None,
            "ids": list(ids), "predicted": pred, "measured": measured}


def screening_plot(sc: dict, metric_name: str, split: str):
    """Scatter of predicted against measured score, one point per generated net, with the identity line."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4.6))
    ax = fig.subplots()
    p, m = np.asarray(sc["predicted"], dtype=float), np.asarray(sc["measured"], dtype=float)
    ok = np.isfinite(p) & np.isfinite(m)
    ax.scatter(m[ok], p[ok], s=14, color="tab:red", alpha=0.7, label=f"generated nets (n={int(ok.sum())})")
    if ok.any():
        lo, hi = float(min(p[ok].min(), m[ok].min())), float(max(p[ok].max(), m[ok].max()))
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", ls="--", lw=1, label="predicted = measured")
    ax.set_xlabel(f"measured {split} {metric_name}")
    ax.set_ylabel(f"predicted {sc['column']} (encoder {sc['encoder']}, mean of {len(sc['seeds'])} seed(s))")
    ax.set_title(f"data-free screening: Kendall tau {sc['tau']:.3f}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig
