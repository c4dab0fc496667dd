"""What an evaluation produces: one entry per set of nets (the generated zoo, each baseline setting,
the training zoo itself) with per-net scores and audit, plus the ensemble reference."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wsl.evaluate.accuracy import Scores
from wsl.evaluate.novelty import Audit


@dataclass
class SetResult:
    """One set of nets: e.g. method="generated", or method="noise", setting="sigma=0.1"."""

    method: str
    setting: str
    value: float | None
    scores: Scores
    audit: Audit
    ids: list = field(default_factory=list)  # model ids (generated / training sets); empty for baselines

    @property
    def label(self) -> str:
        return self.method if not self.setting else f"{self.method} ({self.setting})"

    # Novelty is read over the nets that work (failed ones: nan): a broken net is trivially "new", and
    # counting it would reward failures. Failures still count fully in the score and failure rate.
    @property
    def weight_novelty(self) -> np.ndarray:  # [S] NN L2 over the training-to-training median
        return np.where(self.scores.failed, np.nan, self.audit.l2_ratio)

    @property
    def behaviour_novelty(self) -> np.ndarray:  # [S] 1 - max IoU of wrong-prediction sets (nan: not defined)
        if not self.audit.behavioural:
            return np.full(len(self.scores), np.nan)
        return np.where(self.scores.failed, np.nan, 1.0 - self.audit.wrong_iou)

    def summary(self) -> dict:
        return {"method": self.method, "setting": self.setting, **self.scores.summary(),
                **self.audit.summary(~self.scores.failed)}


@dataclass
class Evaluation:
    """Everything the report shows."""

    sets: list  # [SetResult], generated first, then the training zoo, then the baselines
    ensemble: dict  # score (the domain's), accuracy, loss, n_members, agreement (max with any training checkpoint)
    yardstick: dict  # training-to-training NN medians
    phases: list  # rows of the phase comparison (may be empty)
    info: dict  # zoo paths, arch, dataset, split, counts, settings, provenance, timings

    def by_method(self, method: str) -> list:
        return [s for s in self.sets if s.method == method]
