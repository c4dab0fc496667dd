"""The datasets the zoo nets are trained on.

Embedded datasets (`digits`, `mnist1d`) need no network; `mnist`, `fashion_mnist` and `cifar10`
read the official files (IDX; CIFAR-10's binary version) the user already has on disk, with numpy
(wsl.data.files; no torchvision). `digits_inr` (INR_DATASETS) turns each digits image into a
coordinate -> intensity regression target, one per net of an INR zoo. TASK_DATASETS have options of
their own: `modular` (a op b mod p as token triples), `text` (character-level next-token prediction,
kind "lm"), `convection` (a physics-informed PDE problem, kind "pinn").
"""

from wsl.data.convection import PINNData
from wsl.data.digits_inr import INRData
from wsl.data.registry import (DATASETS, INR_DATASETS, TASK_DATASETS, load_dataset, load_inr_dataset,
                               load_task_dataset, rebuild_dataset)
from wsl.data.classification import ClassificationData
from wsl.data.text import LMData

__all__ = ["ClassificationData", "INRData", "LMData", "PINNData", "load_dataset", "load_inr_dataset",
           "load_task_dataset", "rebuild_dataset", "DATASETS", "INR_DATASETS", "TASK_DATASETS"]
