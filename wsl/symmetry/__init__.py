"""Permutation symmetry of hidden units: function-preserving permutations, weight-space
augmentations and weight matching (Git Re-Basin); the pure math (canonicalized copies of zoos,
wsl-align, are a job over it: wsl.align). Everything is driven by a net's declared
`permutation_spec()` (wsl.nets.PermutationSpec)."""

from wsl.symmetry.augment import (AlignedMixUp, Compose, GaussianNoiseAugment, PermutationAugment,
                                  WeightDropoutAugment)
from wsl.symmetry.matching import MatchResult, align, brute_force_matching, match, objective, weight_matching
from wsl.symmetry.permute import (check_state_dict, compose, flat_permutation_index, identity_permutations,
                                  inverse, permute, random_permutations)

__all__ = [
    "permute", "random_permutations", "identity_permutations", "inverse", "compose", "flat_permutation_index",
    "check_state_dict", "weight_matching", "align", "match", "MatchResult", "objective", "brute_force_matching",
    "PermutationAugment", "GaussianNoiseAugment", "WeightDropoutAugment", "AlignedMixUp", "Compose",
]
