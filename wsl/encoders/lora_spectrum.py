"""The DSiRe baseline (Salama et al. 2024, "Dataset Size Recovery from LoRA Weights"): how many
samples a LoRA fine-tune saw, from the spectrum of its LoRA updates.

For every adapted layer, the update dW = (alpha / rank) B A (wsl.nets.lora) gives a feature vector:
its `rank` largest singular values and its Frobenius norm (DSiRe finds both fall as the train set grows),
in log (log=true: ratios, not differences, separate the sizes). Each layer gets its own k-nearest-neighbour
predictor on its standardized features (statistics of the training nets); the layers vote: classification takes the majority label (a tie goes to the tied label
whose votes came from the nearest neighbours), regression the median of the layers' predictions. No
gradient training: fitting stores the training nets' features, so seeds give the same predictions.

Used by wsl-train-encoder as `encoder=lora_spectrum` on a LoRA zoo (finetune=lora), e.g. with
`task=train_size` (column `train_samples`); it reads `Zoo.adapters`, not the merged weights.
"""

from __future__ import annotations

import resource
import time

import numpy as np
import torch

from wsl.errors import ConfigError, printable


def spectrum_features(zoo, ids: list, epoch: int = -1) -> tuple[np.ndarray, list[str]]:
    """[M, L, rank + 1] features (singular values of each layer's dW, largest first, then its Frobenius
    norm) of the models `ids` and the L layer names; ConfigError if a model is not a LoRA fine-tune or
    the models differ in adapted layers or rank."""
    feats, first = [], None
    for mid in ids:
        spec = zoo.lora_spec(mid)
        if spec is None:
            raise ConfigError(f"encoder=lora_spectrum reads LoRA adapters; model {mid} of {printable(zoo.path)} is not "
                              "a LoRA fine-tune (train the zoo with finetune=lora)")
        if first is None:
            first = spec
        elif (spec.layers, spec.rank) != (first.layers, first.rank):
            raise ConfigError(f"encoder=lora_spectrum: model {mid} adapts {spec.layers} at rank {spec.rank}, model "
                              f"{ids[0]} {first.layers} at rank {first.rank}; select models of one LoRA setup")
        ad = zoo.adapters(mid, epoch)
        rows = []
        for w in spec.layers:
            d = spec.scale * (ad[w + ".lora_B"].double() @ ad[w + ".lora_A"].double())
            s = torch.linalg.svdvals(d)[: spec.rank]
            rows.append(torch.cat([s, torch.linalg.matrix_norm(d).reshape(1)]).numpy())
        feats.append(np.stack(rows))
    return np.stack(feats), list(first.layers)


class LoRASpectrum:
    """Per-layer k-nearest-neighbour predictors on LoRA spectra, combined by a vote (see the module)."""

    def __init__(self, k: int = 5, classification: bool = True, log: bool = True):
        self.k, self.classification, self.log = int(k), bool(classification), bool(log)

    def _features(self, x: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(x, 1e-30)) if self.log else x

    def fit(self, x: np.ndarray, y: np.ndarray) -> "LoRASpectrum":
        """x [M, L, F] training features, y [M] labels (class indices) or values."""
        x = self._features(x)
        self.mean = x.mean(0, keepdims=True)
        self.std = np.where(x.std(0, keepdims=True) > 0, x.std(0, keepdims=True), 1.0)
        self.x, self.y = (x - self.mean) / self.std, np.asarray(y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """[N] predicted labels (classification) or values."""
        z = (self._features(x) - self.mean) / self.std  # [N, L, F]
        d = np.sqrt(((z[:, None] - self.x[None]) ** 2).sum(-1))  # [N, M, L]
        k = min(self.k, self.x.shape[0])
        near = np.argsort(d, axis=1, kind="stable")[:, :k]  # [N, k, L]
        labels = self.y[near]  # [N, k, L]
        if not self.classification:
            return np.median(labels.mean(1), axis=1)
        out = []
        for n in range(x.shape[0]):
            votes: dict = {}
            for layer in range(labels.shape[2]):  # each layer's k-NN majority (ties: its nearest neighbour's)
                vals, counts = np.unique(labels[n, :, layer], return_counts=True)
                best = vals[counts == counts.max()]
                label = labels[n, 0, layer] if labels[n, 0, layer] in best else best[0]
                dist = d[n, near[n, 0, layer], layer]
                c, s = votes.get(label, (0, 0.0))
                votes[label] = (c + 1, s + dist)
            out.append(min(votes, key=lambda v: (-votes[v][0], votes[v][1])))
        return np.asarray(out)

    def logits(self, x: np.ndarray, num_classes: int) -> torch.Tensor:
        """One-hot scores [N, C] of the predicted classes (what wsl.encoders.tasks.score reads)."""
        return torch.nn.functional.one_hot(torch.as_tensor(self.predict(x), dtype=torch.long), num_classes).float()


def run_spectrum(zoo, split: dict, task, targets, ids: list, k: int, log: bool, seeds: list,
                 epoch: int = -1) -> list[dict]:
    """One results row per seed (identical: the predictor is deterministic), with the same columns as a
    trained encoder's (wsl.encoders.experiment.train_one)."""
    from wsl.encoders.tasks import score

    t0 = time.perf_counter()
    x, layers = spectrum_features(zoo, ids, epoch)
    pos = {m: i for i, m in enumerate(ids)}
    part = {s: [pos[m] for m in split[s]] for s in ("train", "val", "test")}
    classification = not task.is_regression
    if not classification and len(targets.names) != 1:
        raise ConfigError(f"encoder=lora_spectrum predicts one column; task={task.name} has {targets.names}")
    y = targets.y.numpy() if classification else targets.y.numpy()[:, 0]
    model = LoRASpectrum(k, classification, log).fit(x[part["train"]], y[part["train"]])
    fit_s = time.perf_counter() - t0
    scores = {}
    for s in ("val", "test"):
        if classification:
            pred = model.logits(x[part[s]], len(targets.classes))
        else:
            pred = torch.as_tensor(model.predict(x[part[s]]), dtype=torch.float32).reshape(-1, 1)
        scores.update({f"{s}/{key}": v for key, v in score(task, targets.names, pred, targets.y[part[s]],
                                                            classes=targets.classes).items()})
    mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {"params": int(x[part["train"]].size), "best_epoch": 0, "epochs": 1, "fit_s": fit_s, "s_per_epoch": fit_s,
           "peak_mem_mb": mem, "mem_kind": "process_peak_rss", **scores}
    return [{"seed": s, **row} for s in seeds]
