"""Per-member data order: every member draws its own shuffled minibatches."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


def member_epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order in which a member with data seed `seed` visits the n training samples in `epoch`."""
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) % (2**63 - 1))
    return torch.randperm(n, generator=g)


class PopulationBatchSampler(Sampler):
    """Yields index tensors [P, B]: row k is member k's minibatch. The last batch of an epoch may be
    smaller (same size for every member). Lightning calls `set_epoch` before each epoch."""

    def __init__(self, n: int, batch_size: int, data_seeds: list[int]):
        self.n, self.batch_size, self.seeds, self.epoch = n, batch_size, list(data_seeds), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self):
        order = torch.stack([member_epoch_order(s, self.epoch, self.n) for s in self.seeds])  # [P, n]
        for start in range(0, self.n, self.batch_size):
            yield order[:, start : start + self.batch_size]


class IndexDataset(torch.utils.data.Dataset):
    """Returns the index it is given: the module gathers the data on its own device."""

    def __len__(self):  # pragma: no cover - never iterated without the sampler
        return 0

    def __getitem__(self, idx):
        return idx
