"""wsl-align, a zoo-to-zoo job: a canonicalized copy of a zoo (every net weight-matched to a reference
net with wsl.symmetry, the loss barrier to it recorded before and after with wsl.landscape)."""

from wsl.align.job import GROUP, AlignmentPlan, align_zoo
from wsl.align.schema import AlignConfig, BarrierConfig, MatchingConfig

__all__ = ["align_zoo", "AlignmentPlan", "GROUP", "AlignConfig", "MatchingConfig", "BarrierConfig"]
