"""Loss-landscape metrics of trained nets (curvature, connectivity, similarity, spectra), and phase diagrams.

Estimators are pure functions over stacked populations ({name: Tensor[P, ...]}); `annotate_zoo`
computes the ones a `landscape:` config (schema.LandscapeConfig) lists over a zoo and stores them in its index.
"""

from wsl.landscape.annotate import annotate_zoo
from wsl.landscape.batchnorm import has_batchnorm, reset_bn_stats
from wsl.landscape.cka import linear_cka
from wsl.landscape.connectivity import linear_barrier, mode_connectivity
from wsl.landscape.hessian import hutchinson_trace, top_eigenvalue
from wsl.landscape.metrics import METRICS
from wsl.landscape.schema import LandscapeConfig, PhaseThresholds
from wsl.landscape.spectra import fit_power_law, layer_spectrum

__all__ = ["annotate_zoo", "LandscapeConfig", "PhaseThresholds", "METRICS", "top_eigenvalue", "hutchinson_trace",
           "linear_barrier", "mode_connectivity", "linear_cka", "fit_power_law", "layer_spectrum", "reset_bn_stats",
           "has_batchnorm"]
