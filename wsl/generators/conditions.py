"""Conditions of a generator beyond numbers: categories (an optimizer, a train fraction, any index column)
and tasks (D2NWG-style task-conditioned generation).

A generator run conditioned on zoo columns sees, per training net, one raw row of C values:

- numeric  (a number column, e.g. val_acc, lr): the value, normalized by the training mean and std;
- categorical (a text column such as optimizer, or a number column listed in condition.categorical):
  the index of the value in the stored vocabulary (the training values, sorted), one-hot encoded;
- task (the `task` column of a multi-task zoo, dataset.task): the index of the task, encoded by a small
  set encoder (DeepSets: mean over the task's labelled train examples of phi(x, onehot(y)), then rho),
  trained with the generator. A task the generator never saw is encoded the same way from its own
  examples, which is what lets `wsl-sample condition={task:<held-out>}` work.

The denoiser keeps its interface `forward(x, t, cond [B, cond_dim], drop)`: `ConditionEncoder` turns the
raw rows into that vector (cond_dim = numeric keys + vocabulary sizes + the set embedding's width), and
`EncodedDenoiser` puts it in front of the denoiser while training, so the set encoder learns from the
generator's loss. Runs conditioned on numbers only are stored as before (no encoder).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from wsl.errors import ConfigError, ZooFormatError, printable
from wsl.generators.limits import MAX_WIDTH

NUMERIC, CATEGORICAL, TASK = "numeric", "categorical", "task"
KINDS = (NUMERIC, CATEGORICAL, TASK)
TASK_KEY = "task"  # the index column a multi-task zoo records (wsl.data.schema: dataset.task)
MAX_VOCAB = 10_000  # values of one categorical key (a run file is untrusted)


def _shown(v) -> str:
    """A value as it appears in a message: repr (quotes on text), control characters escaped, cut short."""
    return printable(repr(v))[:80]


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _scalar(v):
    """A table cell as a JSON scalar (numpy numbers -> Python)."""
    return v.item() if hasattr(v, "item") else v


def same_value(a, b) -> bool:
    """Category equality: numbers by value (0.01 == 1e-2), anything else by its text."""
    if _is_number(a) and _is_number(b):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    return str(a) == str(b)


@dataclass
class ConditionSpec:
    """What each condition key is: its kind, and for categories and tasks the training vocabulary."""

    keys: list
    kinds: list
    vocab: dict = field(default_factory=dict)  # categorical / task key -> training values in index order
    set_encoder: dict | None = None  # SetEncoder kwargs (a task key)

    @property
    def plain(self) -> bool:
        """Numbers only: stored as runs were before categories existed (no encoder)."""
        return all(k == NUMERIC for k in self.kinds)

    def meta(self) -> dict:
        return {"kinds": list(self.kinds), "vocab": {k: list(v) for k, v in self.vocab.items()},
                "set_encoder": self.set_encoder}

    @classmethod
    def from_meta(cls, keys: list, meta: dict, source) -> "ConditionSpec":
        """The spec a run file describes, every part checked (the file is untrusted)."""
        kinds, vocab, se = meta.get("kinds"), meta.get("vocab"), meta.get("set_encoder")
        if not isinstance(kinds, list) or len(kinds) != len(keys) or any(k not in KINDS for k in kinds):
            raise ZooFormatError(f"{source}: key condition.kinds must list one of {KINDS} per condition key "
                                 f"({len(keys)}), got {printable(kinds)[:120]}")
        if not isinstance(vocab, dict):
            raise ZooFormatError(f"{source}: key condition.vocab must be a mapping")
        for k, kind in zip(keys, kinds):
            if kind == NUMERIC:
                continue
            v = vocab.get(k)
            if (not isinstance(v, list) or not 1 <= len(v) <= MAX_VOCAB
                    or not all(isinstance(e, (str, int, float, bool)) for e in v)):
                raise ZooFormatError(f"{source}: key condition.vocab.{printable(k)[:40]} must list 1..{MAX_VOCAB} "
                                     f"values, got {printable(v)[:120]}")
        if TASK in kinds:
            if not isinstance(se, dict) or set(se) != {"in_features", "num_classes", "hidden", "dim"} or not all(
                    isinstance(se[n], int) and not isinstance(se[n], bool) and 1 <= se[n] <= MAX_WIDTH * 64
                    for n in se):
                raise ZooFormatError(f"{source}: key condition.set_encoder must give in_features, num_classes, "
                                     f"hidden and dim as positive integers, got {printable(se)[:160]}")
        return cls(list(keys), list(kinds), {k: list(vocab[k]) for k, kd in zip(keys, kinds) if kd != NUMERIC},
                   se if TASK in kinds else None)

    def index(self, key: str, value, what: str) -> int:
        """The vocabulary index of a categorical value; an unknown one is refused naming `what`."""
        for i, v in enumerate(self.vocab[key]):
            if same_value(v, value):
                return i
        raise ConfigError(f"{what}={_shown(value)} is not a category the generator was trained on; "
                          f"known: {printable(self.vocab[key])[:200]}")

    def normalization(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-key mean and std [C] (float64): the training statistics of numeric keys; 0 and 1 for the
        indices of categories and tasks (kept as they are)."""
        mean, std = raw.mean(0), raw.std(0, unbiased=False).clamp_min(1e-8)
        for j, kind in enumerate(self.kinds):
            if kind != NUMERIC:
                mean[j], std[j] = 0.0, 1.0
        return mean, std


def read_conditions(table, ids: list, keys: list, categorical=(), where: str = "the zoo") -> tuple[ConditionSpec, torch.Tensor]:
    """The condition columns `keys` of the zoo `table` at rows `ids`: (spec, raw [N, C] float64 values:
    numbers, or vocabulary indices of categories and tasks). A column of numbers is numeric unless listed
    in `categorical`; a text (or true/false) column is categorical; `task` is a task. Refused, one line
    naming the key: a missing column, a column mixing numbers and text, missing values."""
    missing = [k for k in keys if k not in table.columns]
    if missing:
        raise ConfigError(f"condition.columns: {missing} are not columns of {where}; "
                          f"have {sorted(str(c) for c in table.columns)}")
    unknown = [k for k in categorical if k not in keys]
    if unknown:
        raise ConfigError(f"condition.categorical: {unknown} are not in condition.columns={list(keys)}")
    kinds, vocab, cols = [], {}, []
    for k in keys:
        cells = [_scalar(v) for v in table.loc[ids, k].tolist()]
        absent = [m for m, v in zip(ids, cells) if v is None or (isinstance(v, float) and not math.isfinite(v))]
        if absent:
            raise ConfigError(f"condition.columns: column {k!r} of {where} has missing or infinite values "
                              f"(models {absent[:3]})")
        numbers = [_is_number(v) for v in cells]
        if k == TASK_KEY or k in categorical or not any(numbers):
            kind = TASK if k == TASK_KEY else CATEGORICAL
            values = sorted({v for v in cells}, key=lambda v: (not _is_number(v), v if _is_number(v) else str(v)))
            if kind == TASK and not all(isinstance(v, str) for v in values):
                raise ConfigError(f"condition.columns: column {k!r} of {where} must hold task names (dataset.task), "
                                  f"got {printable(values[:3])}")
            kinds.append(kind)
            vocab[k] = values
            cols.append([float(next(i for i, v in enumerate(values) if v == c)) for c in cells])
        elif not all(numbers):
            bad = next((m, v) for m, v, ok in zip(ids, cells, numbers) if not ok)
            raise ConfigError(f"condition.columns: column {k!r} of {where} is numeric but model {bad[0]} has "
                              f"{_shown(bad[1])}; fix the zoo or list it in condition.categorical=[{k}]")
        else:
            kinds.append(NUMERIC)
            cols.append([float(v) for v in cells])
    raw = torch.tensor(cols, dtype=torch.float64).T.reshape(len(ids), len(keys))
    return ConditionSpec(list(keys), kinds, vocab), raw


# ------------------------------------------------------------------------------------------ tasks
def task_examples(dataset: dict, task: str, key: str = "condition.task") -> tuple[torch.Tensor, torch.Tensor]:
    """The labelled train examples of `task` (x [n, F] flattened, y [n]) of the zoo's dataset config
    (recorded by the run; its `task` replaced). The train split only: val and test never feed a condition."""
    from wsl.data import rebuild_dataset
    from wsl.data.tasks import parse_task

    if not isinstance(dataset, dict) or not dataset.get("name"):
        raise ZooFormatError(f"the generator run records no dataset; the examples of {key}={task!r} come from it")
    from wsl.data.schema import SHAPES

    parse_task(task, SHAPES.get(dataset["name"], (None, 10))[1], key)
    data = rebuild_dataset({**dataset, "task": task})
    return data.x_train.reshape(len(data.x_train), -1).float(), data.y_train.long()


class SetEncoder(nn.Module):
    """DeepSets over labelled examples: rho(mean_i phi([x_i, onehot(y_i)])) -> [dim]."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 64, dim: int = 32):
        super().__init__()
        self.kwargs = {"in_features": in_features, "num_classes": num_classes, "hidden": hidden, "dim": dim}
        self.num_classes = num_classes
        self.phi = nn.Sequential(nn.Linear(in_features + num_classes, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                 nn.SiLU())
        self.rho = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # [..., S, F], [..., S] -> [..., dim]
        y1 = nn.functional.one_hot(y.long(), self.num_classes).to(x.dtype)
        return self.rho(self.phi(torch.cat([x, y1], dim=-1)).mean(dim=-2))


class ConditionEncoder(nn.Module):
    """raw condition rows [B, C] (numbers normalized, indices of categories and tasks) -> [B, dim]."""

    def __init__(self, spec: ConditionSpec, set_size: int = 64):
        super().__init__()
        self.spec, self.set_size = spec, int(set_size)
        self.set_encoder = SetEncoder(**spec.set_encoder) if TASK in spec.kinds else None
        self.dim = sum(1 if k == NUMERIC else self.set_encoder.kwargs["dim"] if k == TASK else len(spec.vocab[key])
                       for key, k in zip(spec.keys, spec.kinds))
        self.task_sets: list = []  # (x, y) of each training task, in vocabulary order (training only; not stored)

    def attach_tasks(self, dataset: dict) -> None:
        key = self.spec.keys[self.spec.kinds.index(TASK)]
        self.task_sets = [task_examples(dataset, t, f"condition.columns={key}") for t in self.spec.vocab[key]]

    def task_table(self) -> torch.Tensor:
        """[T, dim] embeddings of the training tasks: from random subsets of set_size examples while
        training (fresh every step), from every train example otherwise."""
        dev = next(self.set_encoder.parameters()).device
        if self.training:
            s = min([self.set_size] + [len(y) for _, y in self.task_sets])
            picks = [torch.randperm(len(y))[:s] for _, y in self.task_sets]
            x = torch.stack([x[p] for (x, _), p in zip(self.task_sets, picks)]).to(dev)
            y = torch.stack([y[p] for (_, y), p in zip(self.task_sets, picks)]).to(dev)
            return self.set_encoder(x, y)
        return torch.stack([self.set_encoder(x.to(dev), y.to(dev)) for x, y in self.task_sets])

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        parts = []
        table = self.task_table() if self.set_encoder is not None else None
        for j, (key, kind) in enumerate(zip(self.spec.keys, self.spec.kinds)):
            col = raw[:, j]
            if kind == NUMERIC:
                parts.append(col[:, None])
            elif kind == CATEGORICAL:
                parts.append(nn.functional.one_hot(col.round().long(), len(self.spec.vocab[key])).to(raw.dtype))
            else:
                parts.append(table[col.round().long()].to(raw.dtype))
        return torch.cat(parts, dim=1)

    @torch.no_grad()
    def encode_values(self, values: dict, mean: torch.Tensor, std: torch.Tensor, dataset: dict) -> torch.Tensor:
        """One condition {key: value} as the denoiser's [dim] vector: numbers normalized, categories
        one-hot (an unknown one refused), a task (seen in training or not) through the set encoder over its
        own train examples."""
        parts = []
        for j, (key, kind) in enumerate(zip(self.spec.keys, self.spec.kinds)):
            v, what = values[key], f"condition.{key}"
            if kind == NUMERIC:
                if not _is_number(v):
                    raise ConfigError(f"{what}={_shown(v)}: {key} is a numeric condition; give a number")
                parts.append(((torch.tensor([float(v)], dtype=torch.float64) - mean[j]) / std[j]).float())
            elif kind == CATEGORICAL:
                i = self.spec.index(key, v, what)
                parts.append(nn.functional.one_hot(torch.tensor(i), len(self.spec.vocab[key])).float())
            else:
                if not isinstance(v, str):
                    raise ConfigError(f"{what}={_shown(v)}: give a task name such as 3v8")
                x, y = task_examples(dataset, v, what)
                self.set_encoder.eval()
                dev = next(self.set_encoder.parameters()).device
                parts.append(self.set_encoder(x.to(dev), y.to(dev)).float().cpu())
        return torch.cat(parts)


class EncodedDenoiser(nn.Module):
    """A denoiser behind a ConditionEncoder: forward(x, t, raw condition rows, drop); trained as one module,
    so the set encoder learns from the generator's loss. The run stores the two parts separately."""

    def __init__(self, denoiser: nn.Module, encoder: ConditionEncoder):
        super().__init__()
        self.denoiser, self.encoder = denoiser, encoder

    def forward(self, x, t, cond=None, drop=None):
        return self.denoiser(x, t, None if cond is None else self.encoder(cond), drop)


def build_encoder(spec: ConditionSpec, dataset: dict, settings) -> ConditionEncoder:
    """The ConditionEncoder of a training run (`settings`: the `condition` node): a task key gets a set
    encoder sized by condition.set_encoder, fed with every training task's train examples."""
    if TASK in spec.kinds:
        key = spec.keys[spec.kinds.index(TASK)]
        x, y = task_examples(dataset, spec.vocab[key][0], f"condition.columns={key}")
        from wsl.data.tasks import TASK_CLASSES

        spec.set_encoder = {"in_features": int(x.shape[1]), "num_classes": TASK_CLASSES,
                            "hidden": int(settings.set_encoder.hidden), "dim": int(settings.set_encoder.dim)}
    enc = ConditionEncoder(spec, set_size=settings.set_encoder.set_size)
    if enc.set_encoder is not None:
        enc.attach_tasks(dataset)
    return enc


def excluded(zoo, ids: list, exclude: dict | None) -> list:
    """`ids` without the nets whose index column equals one of the values `exclude` lists for it
    (zoo.exclude={task:[3v8,1v7]}: tasks held out of training)."""
    if not exclude:
        return ids
    table = zoo.table()
    keep = list(ids)
    for col, values in exclude.items():
        if col not in table.columns:
            raise ConfigError(f"zoo.exclude: {col!r} is not a column of zoo {zoo.path}")
        values = values if isinstance(values, list) else [values]
        cells = table.loc[keep, col].tolist()
        keep = [m for m, c in zip(keep, cells) if not any(same_value(_scalar(c), v) for v in values)]
    return keep


def sampled_dataset(run, condition: dict | None) -> dict | None:
    """The dataset config the nets drawn under `condition` are for: the run's (its zoo's), with dataset.task
    set to the condition's task when the run is task-conditioned (the sampled zoo records it)."""
    ds = run.zoo.get("dataset")
    if run.conditions is None or TASK not in run.conditions.spec.kinds:
        return ds
    key = run.conditions.spec.keys[run.conditions.spec.kinds.index(TASK)]
    if not condition:  # unconditional draws mix the tasks: no one dataset describes them
        raise ConfigError(f"the generator in {printable(run.path)} is conditioned on {key}; a sampled zoo holds the nets "
                          f"of one task: give condition={{{key}:<task>, ...}} (e.g. {key}={run.conditions.spec.vocab[key][0]})")
    return {**ds, TASK_KEY: condition.get(key)} if isinstance(ds, dict) else ds


def encode_condition(run, condition: dict) -> torch.Tensor:
    """[1, cond_dim]: the condition of a run with categories or tasks (wsl.generators.sample.condition_tensor)."""
    return run.conditions.encode_values(condition, run.cond_mean, run.cond_std, run.zoo.get("dataset"))[None]
