"""Schemas of the `dataset=` group (conf/dataset/*.yaml), chosen by `_target_`: classification datasets
(`wsl.data.load_dataset`: the same data for every net) and INR datasets (`wsl.data.load_inr_dataset`:
one image per net)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar, Optional

from wsl import schema
from wsl.schema import MAX_SEED, MISSING, fail, target_schema

# (input shape, outputs) of the nets each dataset trains: known before the data is loaded
SHAPES = {"digits": ((1, 8, 8), 10), "mnist1d": ((1, 40), 10), "mnist": ((1, 28, 28), 10),
          "fashion_mnist": ((1, 28, 28), 10), "cifar10": ((3, 32, 32), 10)}
INR_SHAPES = {"digits_inr": ((2,), 1, 1797, 10)}  # INR datasets: and their images, classes of images


@dataclass
class DatasetConfig:
    """What every `dataset:` node holds."""

    _target_: str = MISSING
    name: str = MISSING
    root: Optional[str] = None
    subset_seed: int = 0  # which train subset / images (kept apart from init and data-order seeds)
    kind: ClassVar[str] = "classification"  # or "inr": one image per net

    def __post_init__(self):
        own, other = (INR_SHAPES, SHAPES) if self.kind == "inr" else (SHAPES, INR_SHAPES)
        if self.name in other:
            fail(f"@name={self.name!r} is {'a classification' if self.kind == 'inr' else 'an INR'} dataset: "
                 f"choose it with dataset={self.name}")
        schema.choice(self, "name", sorted(own))
        schema.integer(self, "subset_seed", 0, MAX_SEED)

    def shape(self) -> tuple[tuple[int, ...], int]:
        """(input shape, outputs) of the nets that fit this data."""
        return (INR_SHAPES if self.kind == "inr" else SHAPES)[self.name][:2]

    def max_targets(self) -> int:
        """How many nets one member configuration becomes, at most (INR datasets: one per image)."""
        return 1

    def load(self):
        from wsl.data import registry

        load = registry.load_inr_dataset if self.kind == "inr" else registry.load_dataset
        return load(**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "_target_"})


@target_schema
@dataclass
class ClassificationDatasetConfig(DatasetConfig):
    _target_: str = "wsl.data.load_dataset"
    name: str = "digits"
    train_fraction: float = 1.0  # the "load" axis: fraction of the train split used
    split_seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.2

    def __post_init__(self):
        super().__post_init__()
        schema.number(self, "train_fraction", 0.0, 1.0, lo_open=True)
        schema.integer(self, "split_seed", 0, MAX_SEED)
        schema.number(self, "val_fraction", 0.0, 1.0, hi_open=True)
        schema.number(self, "test_fraction", 0.0, 1.0, lo_open=True, hi_open=True)
        if self.val_fraction + self.test_fraction >= 1.0:
            fail(f"@val_fraction + @test_fraction must be < 1, got {self.val_fraction} + {self.test_fraction}")


@target_schema
@dataclass
class INRDatasetConfig(DatasetConfig):
    _target_: str = "wsl.data.load_inr_dataset"
    name: str = "digits_inr"
    num_images: Optional[int] = None  # a random subset of this many images (null: all) ...
    per_class: Optional[int] = None  # ... or this many images of every class
    shared_init: bool = True  # every image's net starts from the same init (per seed replica)
    kind: ClassVar[str] = "inr"

    def __post_init__(self):
        super().__post_init__()
        schema.integer(self, "num_images", 1, INR_SHAPES[self.name][2], null=True)
        schema.integer(self, "per_class", 1, null=True)
        if self.num_images is not None and self.per_class is not None:
            fail("@num_images and @per_class are alternatives; set one of them (the other null)")

    def max_targets(self) -> int:
        _, _, images, classes = INR_SHAPES[self.name]
        return self.num_images or min(images, (self.per_class or images) * classes)
