"""A torch Dataset over a zoo: (flat weights, properties) pairs."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from wsl.errors import ConfigError


class ZooDataset(Dataset):
    """Weights [N] and properties [K] (float32) of the selected models of one architecture.

    Loads everything once (zoos of small nets fit in memory); `properties` are columns of
    `Zoo.table()` (e.g. "test_acc", "lr", "landscape/hessian_trace"). The weights are the nets'
    parameters in `layout` (Zoo.weights: never BatchNorm running statistics); `spec` is their
    permutation spec, so a function-preserving permutation augmentation of the flat vectors is
    `ds.transform = PermutationAugment(spec=ds.spec, layout=ds.layout)`.
    """

    def __init__(self, zoo, ids=None, properties=("test_acc",), epoch: int = -1, transform=None):
        ids = list(zoo.ids if ids is None else ids)
        table = zoo.table()
        missing = [p for p in properties if p not in table.columns]
        if missing:
            raise ConfigError(f"{zoo.path}: column(s) {missing} not in the zoo index; have {sorted(table.columns)}")
        self.ids = ids
        self.weights, self.layout = zoo.weights(ids, epoch)
        self.spec = zoo.permutation_spec(ids[0]).parameters()
        props = table.loc[ids, list(properties)].to_numpy(dtype=np.float64)
        self.properties = torch.tensor(props, dtype=torch.float32)
        self.property_names = list(properties)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        w = self.weights[i]
        if self.transform is not None:
            w = self.transform(w)
        return w, self.properties[i]
