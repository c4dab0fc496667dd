"""Training many nets at once: stacked parameters, torch.func.vmap, per-member hyperparameters."""

from wsl.population.functional import population_forward, stack_state_dicts, unstack
from wsl.population.members import Member, make_members
from wsl.population.module import PopulationModule
from wsl.population.optim import PopulationOptimizer
from wsl.population.sampler import PopulationBatchSampler, member_epoch_order

__all__ = ["population_forward", "stack_state_dicts", "unstack", "Member", "make_members",
           "PopulationModule", "PopulationOptimizer", "PopulationBatchSampler", "member_epoch_order"]
