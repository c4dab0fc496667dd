"""Task datasets the zoo nets are trained on.

Embedded datasets (`digits`, `mnist1d`) need no network; `mnist`, `fashion_mnist` and `cifar10`
read torchvision files that the user already has on disk.
"""

from wsl.data.registry import DATASETS, load_dataset
from wsl.data.task import TaskData

__all__ = ["TaskData", "load_dataset", "DATASETS"]
