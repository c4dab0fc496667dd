"""The phase taxonomy of loss landscapes (Yang et al. 2021), as a labelling rule per cell.

| phase | train loss | Hessian | mode connectivity | CKA   |
| I     | high       | large   | negative          |  —    |
| II    | high       | large   | positive          |  —    |
| III   | small      | small   | negative          |  —    |
| IV-A  | small      | small   | ≈ 0               | small |
| IV-B  | small      | small   | ≈ 0               | large |

Train loss splits {I, II} from {III, IV}; the sign of mode connectivity (with a tolerance band
for "≈ 0") splits I/II and III/IV; CKA splits IV-A/IV-B. The Hessian follows the loss in this
table, so it is drawn but not needed to decide. A missing metric leaves the label coarse
("I/II", "III/IV", "IV") rather than guessed. The thresholds are settings (plot.yaml `phase:`),
not universal constants: they depend on the task's loss scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from wsl.errors import ConfigError

PHASES = ("I", "II", "III", "IV-A", "IV-B")


@dataclass(frozen=True)
class PhaseThresholds:
    loss: float = 0.1  # train loss above this is "high"
    mc_tolerance: float = 0.05  # |mc| <= this is "≈ 0"
    cka: float = 0.9  # CKA at or above this is "large"

    def __post_init__(self):
        for k in ("loss", "mc_tolerance", "cka"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"phase.{k} must be a finite number >= 0, got {v!r}")


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def phase_label(train_loss, mc=None, cka=None, t: PhaseThresholds = PhaseThresholds()) -> str:
    """The taxonomy phase of one cell from its (seed-averaged) metrics; '?' without a train loss."""
    if _nan(train_loss):
        return "?"
    if train_loss > t.loss:  # underfitted: I or II
        if _nan(mc) or abs(mc) <= t.mc_tolerance:
            return "I/II"
        return "I" if mc < 0 else "II"
    if _nan(mc):
        return "III/IV"
    if mc < -t.mc_tolerance:  # a barrier between well-fit replicas
        return "III"
    # |mc| small, or positive (the curve dips below well-fit endpoints: no barrier either)
    if _nan(cka):
        return "IV"
    return "IV-B" if cka >= t.cka else "IV-A"
