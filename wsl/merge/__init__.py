"""Merging nets of a zoo (a zoo-to-zoo job): uniform and greedy soups, Model Stock, TIES, DARE and the
aligned average, as pure functions on state dicts (wsl.merge.methods), and wsl-merge's job over a zoo
(wsl.merge.job): groups, scoring, the merged zoo, the comparison table and plot."""

from wsl.merge.methods import (Merged, aligned_soup, dare, greedy_soup, mean_pairwise_cos, model_stock, stock_ratio,
                               ties, uniform_soup, weighted_average)

METHODS = ("uniform", "greedy", "stock", "ties", "dare", "aligned")
BASE_METHODS = ("stock", "ties", "dare")  # need the pretrained net the ingredients were fine-tuned from

__all__ = ["Merged", "aligned_soup", "dare", "greedy_soup", "mean_pairwise_cos", "model_stock", "stock_ratio", "ties",
           "uniform_soup", "weighted_average", "METHODS", "BASE_METHODS"]
