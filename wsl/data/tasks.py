"""Tasks carved out of one classification dataset (`dataset.task`), for multi-task zoos of one
architecture (task-conditioned generation, D2NWG; `experiment=tasks_digits`).

A task `<a>v<b>` (e.g. `3v8`) is the binary problem "class a (label 0) against class b (label 1)": every
split of the dataset restricted to the two classes, relabelled 0 and 1. Nets of every task have two
outputs, so one architecture serves them all. Plain Python at import: schemas check names without torch.
"""

from __future__ import annotations

import re
from dataclasses import replace

from wsl.errors import ConfigError

_PAIR = re.compile(r"^(\d{1,3})v(\d{1,3})$")
TASK_CLASSES = 2  # outputs of a net of any task


def parse_task(task: str, num_classes: int, key: str = "dataset.task") -> tuple[int, int]:
    """'3v8' -> (3, 8); anything else (another form, equal classes, a class the dataset lacks) is refused
    with one line naming `key`."""
    m = _PAIR.match(str(task)) if isinstance(task, str) else None
    if m is None:
        raise ConfigError(f"{key}={task!r} is not a task name: tasks are class pairs '<a>v<b>' such as '3v8'")
    a, b = int(m.group(1)), int(m.group(2))
    if a == b or max(a, b) >= num_classes:
        raise ConfigError(f"{key}={task!r}: a task pairs two different classes of 0..{num_classes - 1}")
    return a, b


def all_pairs(num_classes: int = 10) -> list[str]:
    """Every class-pair task of a dataset, a < b."""
    return [f"{a}v{b}" for a in range(num_classes) for b in range(a + 1, num_classes)]


def restrict_to_task(data, task: str | None, key: str = "dataset.task"):
    """`data` (ClassificationData) restricted to task `<a>v<b>` (labels 0 = a, 1 = b) in every split;
    task None: `data` unchanged."""
    if task is None:
        return data
    a, b = parse_task(task, data.num_classes, key)
    parts = {}
    for s in ("train", "val", "test"):
        x, y = data.split(s)
        keep = (y == a) | (y == b)
        parts[f"x_{s}"], parts[f"y_{s}"] = x[keep], (y[keep] == b).long()
    info = dict(data.info, task=task, n_train=len(parts["y_train"]), n_val=len(parts["y_val"]),
                n_test=len(parts["y_test"]))
    return replace(data, num_classes=TASK_CLASSES, info=info, **parts)
