"""Property-prediction tasks: which columns of a zoo's table to predict, and how to score them.

A task reads its targets from `Zoo.table()` columns (final metrics, hyperparameters, annotation
columns "<group>/<column>"); a column the index lacks is a ConfigError naming it, raised before
any training. Regression targets are standardized with training-split statistics inside the
LightningModule; classification labels are mapped to 0..C-1 in sorted order of their values.

Metrics (per target): Kendall tau and R^2 for regression, accuracy for classification.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import kendalltau

from wsl.encoders.schema import TaskConfig
from wsl.errors import ConfigError

# columns computed from other columns: name -> (needed columns, function of the table)
DERIVED = {
    "generalization_gap": (("train_acc", "test_acc"), lambda t: t["train_acc"] - t["test_acc"]),
}
# each domain's accuracy-like column (the index's <split>_<suffix>), the task that predicts it, and its name
ACCURACY_LIKE = (("rel_l2", "test_rel_l2", "a PINN zoo (dataset=convection) has no accuracy: its accuracy-like column "
                  "is the relative L2 error"),)


def no_value_hint(table, column: str) -> str:
    """Why an accuracy column holds no value in this zoo and which column to predict instead ('' if unknown)."""
    m = re.fullmatch(r"(train|val|test)_acc", column)
    split = m.group(1) if m else "test" if column == "generalization_gap" else None
    if split is None:
        return ""
    for suffix, task, what in ACCURACY_LIKE:
        if f"{split}_{suffix}" in table.columns:
            how = f"task={task}" if split == "test" else f"task.columns=[{split}_{suffix}]"
            return f" ({what} '{split}_{suffix}', lower is better: use {how})"
    return ""


@dataclass
class Targets:
    """Targets of the selected models: y [M, T] float (regression) or [M] long (classification)."""

    y: torch.Tensor
    names: list  # target names (regression) or [column] (classification)
    classes: list = field(default_factory=list)  # classification: the value of each class index
    offsets: dict = field(default_factory=dict)  # log targets: the offset added before log10


@dataclass
class Task(TaskConfig):
    """What an encoder predicts: the options of its schema (conf/task/*.yaml), the targets and the scores."""

    @property
    def is_regression(self) -> bool:
        return self.kind == "regression"

    def check_columns(self, table, where: str = "the zoo's index") -> None:
        """Raise ConfigError naming the first target column `table` cannot provide: missing, or (a regression
        target) without a single finite value, e.g. the accuracy of a PINN zoo, which names the column to
        predict instead."""
        have = set(table.columns)
        for c in self.columns:
            needed = DERIVED[c][0] if c in DERIVED and c not in have else (c,)
            for n in needed:
                if n not in have:
                    extra = f" (needed for {c!r})" if n != c else ""
                    raise ConfigError(f"task={self.name}: column {n!r}{extra} is missing from {where}; "
                                      f"available: {', '.join(sorted(map(str, have)))}")
            if self.kind == "regression":
                v = np.asarray(self.column_values(table, c), dtype=object)
                finite = [x for x in v if isinstance(x, (int, float, np.number)) and np.isfinite(x)]
                if len(v) and not finite:
                    raise ConfigError(f"task={self.name}: column {c!r} has no finite value in {where}"
                                      f"{no_value_hint(table, c) or ''}")

    def column_values(self, table, column: str) -> np.ndarray:
        if column in table.columns:
            return table[column].to_numpy()
        return DERIVED[column][1](table).to_numpy()

    def targets(self, table, ids: list) -> Targets:
        """Targets of the models `ids` (rows of `table`, indexed by model id)."""
        self.check_columns(table)
        sub = table.loc[list(ids)]
        if self.kind == "classification":
            col = self.columns[0]
            vals = self.column_values(sub, col)
            classes = sorted(set(vals.tolist()), key=lambda v: (str(type(v)), v))
            if len(classes) < 2:
                raise ConfigError(f"task={self.name}: column {col!r} has a single value {classes}; nothing to classify")
            return Targets(torch.tensor([classes.index(v) for v in vals.tolist()], dtype=torch.long), [col], classes)
        cols, ys, offsets = [], [], {}
        for c in self.columns:
            v = np.asarray(self.column_values(sub, c), dtype=np.float64)
            if np.unique(v[np.isfinite(v)]).size < 2:
                if self.drop_constant:
                    continue
                raise ConfigError(f"task={self.name}: column {c!r} is constant in this zoo; nothing to predict "
                                  "(set task.drop_constant=true to skip such columns)")
            if c in self.log:
                pos = v[v > 0]
                offsets[c] = 0.0 if v.min() > 0 else (float(pos.min()) if pos.size else 1.0)
                v = np.log10(v + offsets[c])
            cols.append(c)
            ys.append(v)
        if not cols:
            raise ConfigError(f"task={self.name}: every column of {self.columns} is constant in this zoo")
        return Targets(torch.tensor(np.stack(ys, 1), dtype=torch.float32), cols, [], offsets)


# ------------------------------------------------------------------------------------------ metrics
def kendall_tau(pred: np.ndarray, true: np.ndarray) -> float:
    """Kendall's tau-b between predictions and targets (NaN when either is constant)."""
    if np.unique(pred).size < 2 or np.unique(true).size < 2:
        return float("nan")
    return float(kendalltau(pred, true).statistic)


def r2(pred: np.ndarray, true: np.ndarray) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot."""
    ss_tot = float(((true - true.mean()) ** 2).sum())
    if ss_tot == 0:
        return float("nan")
    return 1.0 - float(((true - pred) ** 2).sum()) / ss_tot


def score(task: Task, targets_names: list, pred: torch.Tensor, true: torch.Tensor, classes=None) -> dict:
    """Metrics of predictions on one split. Regression: pred/true [M, T] in target units;
    classification: pred logits [M, C], true [M]. With numeric class values `classes` (e.g. task=train_size:
    numbers of train samples), classification also reports `mae`, the mean absolute error in those values."""
    if task.kind == "classification":
        out = {"acc": float((pred.argmax(-1) == true).float().mean())}
        if classes and all(isinstance(c, (int, float, np.number)) and not isinstance(c, bool) for c in classes):
            values = torch.tensor([float(c) for c in classes], dtype=torch.float64)
            out["mae"] = float((values[pred.argmax(-1)] - values[true]).abs().mean()) if len(true) else float("nan")
        return out
    p, t = pred.double().numpy(), true.double().numpy()
    out = {}
    for j, name in enumerate(targets_names):
        out[f"tau/{name}"] = kendall_tau(p[:, j], t[:, j])
        out[f"r2/{name}"] = r2(p[:, j], t[:, j])
    for key in ("tau", "r2"):  # averaged over targets (NaN where a target is constant on this split)
        vals = [out[f"{key}/{n}"] for n in targets_names if np.isfinite(out[f"{key}/{n}"])]
        out[key] = float(np.mean(vals)) if vals else float("nan")
    return out
