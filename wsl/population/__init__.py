"""Training many nets at once: stacked parameters, torch.func.vmap, per-member hyperparameters.

Exports are lazy: `wsl.population.functional` (used by landscape, symmetry, evaluation) does not
pay for importing Lightning.
"""

import importlib

_EXPORTS = {
    "population_forward": "functional", "stack_state_dicts": "functional", "unstack": "functional", "psnr": "functional",
    "Member": "members", "make_members": "members", "PopulationModule": "module",
    "PopulationOptimizer": "optim", "PopulationBatchSampler": "sampler", "member_epoch_order": "sampler",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"wsl.population.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'wsl.population' has no attribute {name!r}")
