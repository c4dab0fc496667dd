"""The datasets the zoo nets are trained on.

Embedded datasets (`digits`, `mnist1d`) need no network; `mnist`, `fashion_mnist` and `cifar10`
read the official files (IDX; CIFAR-10's binary version) the user already has on disk, with numpy
(wsl.data.files; no torchvision). `digits_inr` (INR_DATASETS) turns each digits image into a
coordinate -> intensity regression target, one per net of an INR zoo.
"""

from wsl.data.digits_inr import INRData
from wsl.data.registry import DATASETS, INR_DATASETS, load_dataset, load_inr_dataset
from wsl.data.classification import ClassificationData

__all__ = ["ClassificationData", "INRData", "load_dataset", "load_inr_dataset", "DATASETS", "INR_DATASETS"]
