"""Schemas of the `dataset=` group (conf/dataset/*.yaml), chosen by `_target_`: classification datasets
(`wsl.data.load_dataset`: the same data for every net), INR datasets (`wsl.data.load_inr_dataset`:
one image per net), and the datasets with options of their own: modular arithmetic (`dataset=modular`,
token triples, classification), character-level text (`dataset=text`, kind "lm") and the convection
PDE (`dataset=convection`, kind "pinn")."""

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
    subset_seed: int = 0  # which train subset / images / points (kept apart from init and data-order seeds)
    kind: ClassVar[str] = "classification"  # or "inr": one image per net; "lm": next-token; "pinn": a PDE
    described: ClassVar[str] = "a classification"  # "<described> dataset" in messages

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The `name`s this schema reads."""
        return tuple(sorted(SHAPES))

    def __post_init__(self):
        if self.name not in self.names():
            owner = next((c for c in dataset_schemas() if self.name in c.names()), None)
            if owner is not None:
                fail(f"@name={self.name!r} is {owner.described} dataset: choose it with dataset={self.name}")
        schema.choice(self, "name", self.names())
        schema.integer(self, "subset_seed", 0, MAX_SEED)

    def shape(self) -> tuple[tuple[int, ...], int]:
        """(input shape, outputs) of the nets that fit this data."""
        return SHAPES[self.name]

    @property
    def vocab_size(self) -> int | None:
        """The number of token ids of the inputs (None: float inputs), known before the data is loaded
        (what wsl.nets.schema.data_info reads, as off the data object itself)."""
        return None

    @property
    def causal(self) -> bool:
        """Whether a net predicts at every position (next-token prediction)."""
        return False

    def hparams(self) -> dict:
        """The dataset's columns in every row of the zoo index (the load axis among them)."""
        return {"dataset": self.name, "subset_seed": self.subset_seed}

    def max_targets(self) -> int:
        """How many nets one member configuration becomes, at most (INR datasets: one per image)."""
        return 1

    def load(self):
        from wsl.data import registry

        return registry.load_dataset(**self._options())

    def _options(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_target_"}


def dataset_schemas() -> list[type]:
    """Every schema of the `dataset=` group (the direct subclasses of DatasetConfig)."""
    return DatasetConfig.__subclasses__()


@target_schema
@dataclass
class ClassificationDatasetConfig(DatasetConfig):
    _target_: str = "wsl.data.load_dataset"
    name: str = "digits"
    train_fraction: float = 1.0  # the "load" axis: fraction of the train split used
    split_seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    task: Optional[str] = None  # a class-pair task '<a>v<b>' (wsl.data.tasks): two classes, labels 0/1

    def __post_init__(self):
        super().__post_init__()
        if self.task is not None:
            from wsl.data.tasks import parse_task
            from wsl.errors import ConfigError

            try:
                parse_task(self.task, SHAPES[self.name][1], "@task")
            except ConfigError as e:
                fail(str(e))
        schema.number(self, "train_fraction", 0.0, 1.0, lo_open=True)
        schema.integer(self, "split_seed", 0, MAX_SEED)
        schema.number(self, "val_fraction", 0.0, 1.0, hi_open=True)
        schema.number(self, "test_fraction", 0.0, 1.0, lo_open=True, hi_open=True)
        if self.val_fraction + self.test_fraction >= 1.0:
            fail(f"@val_fraction + @test_fraction must be < 1, got {self.val_fraction} + {self.test_fraction}")

    def shape(self) -> tuple[tuple[int, ...], int]:
        if self.task is None:
            return SHAPES[self.name]
        from wsl.data.tasks import TASK_CLASSES

        return SHAPES[self.name][0], TASK_CLASSES

    def hparams(self) -> dict:
        task = {} if self.task is None else {"task": self.task}  # the index column of a multi-task zoo
        return {"dataset": self.name, "train_fraction": self.train_fraction, "subset_seed": self.subset_seed,
                "split_seed": self.split_seed, **task}


@target_schema
@dataclass
class INRDatasetConfig(DatasetConfig):
    _target_: str = "wsl.data.load_inr_dataset"
    name: str = "digits_inr"
    num_images: Optional[int] = None  # a random subset of this many images (null: all) ...
    per_class: Optional[int] = None  # ... or this many images of every class
    shared_init: bool = True  # every image's net starts from the same init (per seed replica)
    kind: ClassVar[str] = "inr"
    described: ClassVar[str] = "an INR"

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(sorted(INR_SHAPES))

    def shape(self) -> tuple[tuple[int, ...], int]:
        return INR_SHAPES[self.name][:2]

    def load(self):
        from wsl.data import registry

        return registry.load_inr_dataset(**self._options())

    def __post_init__(self):
        super().__post_init__()
        schema.integer(self, "num_images", 1, INR_SHAPES[self.name][2], null=True)
        schema.integer(self, "per_class", 1, null=True)
        if self.num_images is not None and self.per_class is not None:
            fail("@num_images and @per_class are alternatives; set one of them (the other null)")

    def max_targets(self) -> int:
        _, _, images, classes = INR_SHAPES[self.name]
        return self.num_images or min(images, (self.per_class or images) * classes)


@target_schema
@dataclass
class ModularDatasetConfig(DatasetConfig):
    """`dataset=modular`: every pair (a, b) labelled a op b mod p, as token triples (a, b, "=");
    `train_fraction` of all pairs is trained on (wsl.data.modular)."""

    _target_: str = "wsl.data.modular.modular"
    name: str = "modular"
    p: int = 97
    op: str = "add"
    train_fraction: float = 0.5  # the load axis: fraction of ALL pairs in the train split
    split_seed: int = 0  # which pairs are held out (val, test)
    val_fraction: float = 0.1
    test_fraction: float = 0.3
    described: ClassVar[str] = "the modular-arithmetic"

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return ("modular",)

    def __post_init__(self):
        super().__post_init__()
        from wsl.data.modular import MAX_P, OPS, is_prime

        schema.integer(self, "p", 2, MAX_P)
        if not is_prime(self.p):
            fail(f"@p={self.p} is not a prime (labels mod p; div needs every b != 0 to have an inverse)")
        schema.choice(self, "op", OPS)
        schema.number(self, "train_fraction", 0.0, 1.0, lo_open=True)
        schema.integer(self, "split_seed", 0, MAX_SEED)
        schema.number(self, "val_fraction", 0.0, 1.0, hi_open=True)
        schema.number(self, "test_fraction", 0.0, 1.0, lo_open=True, hi_open=True)
        if self.train_fraction + self.val_fraction + self.test_fraction > 1.0 + 1e-9:
            fail(f"@train_fraction={self.train_fraction} + @val_fraction={self.val_fraction} + "
                 f"@test_fraction={self.test_fraction} exceeds 1 (each is a fraction of all pairs)")

    def shape(self):
        return (3,), self.p

    @property
    def vocab_size(self) -> int:
        return self.p + 1

    def hparams(self) -> dict:
        return {"dataset": self.name, "p": self.p, "op": self.op, "train_fraction": self.train_fraction,
                "subset_seed": self.subset_seed, "split_seed": self.split_seed}

    def load(self):
        from wsl.data.modular import modular

        return modular(**{k: v for k, v in self._options().items() if k != "name"})


@target_schema
@dataclass
class TextDatasetConfig(DatasetConfig):
    """`dataset=text`: character-level next-token prediction on a corpus (CPython's pydoc topics by
    default, `path=` any UTF-8 file); contiguous train/val/test blocks (wsl.data.text)."""

    _target_: str = "wsl.data.text.text"
    name: str = "text"
    path: Optional[str] = None  # a UTF-8 text file (null: pydoc_data.topics, shipped with CPython)
    context: int = 64  # characters per sample (sequence length)
    max_chars: Optional[int] = None  # only the corpus's first max_chars characters (null: all)
    train_fraction: float = 1.0  # fraction of the train windows used (the load axis)
    val_fraction: float = 0.1  # the corpus's characters in the validation block
    test_fraction: float = 0.1  # ... and in the test block (the last one)
    kind: ClassVar[str] = "lm"
    described: ClassVar[str] = "the character-level text"

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return ("text",)

    def __post_init__(self):
        super().__post_init__()
        schema.text(self, "path", null=True)
        schema.integer(self, "context", 1)
        schema.integer(self, "max_chars", 2, null=True)
        schema.number(self, "train_fraction", 0.0, 1.0, lo_open=True)
        schema.number(self, "val_fraction", 0.0, 1.0, hi_open=True)
        schema.number(self, "test_fraction", 0.0, 1.0, lo_open=True, hi_open=True)
        if self.val_fraction + self.test_fraction >= 1.0:
            fail(f"@val_fraction + @test_fraction must be < 1, got {self.val_fraction} + {self.test_fraction}")
        from wsl.data.text import check_context, read_corpus

        # the corpus is read now (milliseconds): a file that is not UTF-8, or a context longer than a block,
        # stops the job before any work, and the vocabulary sizes the net
        corpus, source = read_corpus(self.path)
        corpus = corpus[:self.max_chars] if self.max_chars else corpus
        check_context(self.context, len(corpus), self.val_fraction, self.test_fraction, source)
        self._vocab_size = len(set(corpus))

    def shape(self):
        return (self.context,), self._vocab_size

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def causal(self) -> bool:
        return True

    def hparams(self) -> dict:
        return {"dataset": self.name, "context": self.context, "train_fraction": self.train_fraction,
                "subset_seed": self.subset_seed, "corpus": self.path or "pydoc_data.topics"}

    def load(self):
        from wsl.data.text import text

        return text(**{k: v for k, v in self._options().items() if k != "name"})


@target_schema
@dataclass
class ConvectionDatasetConfig(DatasetConfig):
    """`dataset=convection`: a physics-informed net for u_t + beta u_x = 0 on [0, 2 pi) x [0, 1],
    periodic, u(x, 0) = sin(x); `beta` is the load axis (wsl.data.convection)."""

    _target_: str = "wsl.data.convection.convection"
    name: str = "convection"
    beta: float = 1.0
    collocation: int = 1000  # interior points of the train (and of the val) split
    initial: int = 128  # points (x, 0)
    boundary: int = 128  # pairs (0, t), (2 pi, t)
    test_nx: int = 128  # test grid: x points in [0, 2 pi) ...
    test_nt: int = 64  # ... times t points in [0, 1]
    kind: ClassVar[str] = "pinn"
    described: ClassVar[str] = "the physics-informed (PDE)"

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return ("convection",)

    def __post_init__(self):
        super().__post_init__()
        from wsl.data.convection import MAX_BETA

        schema.number(self, "beta", 0.0, MAX_BETA)
        for name in ("collocation", "initial", "boundary", "test_nx"):
            schema.integer(self, name, 1)
        schema.integer(self, "test_nt", 2)

    def shape(self):
        return (2,), 1

    def hparams(self) -> dict:
        return {"dataset": self.name, "beta": float(self.beta), "collocation": self.collocation,
                "initial": self.initial, "boundary": self.boundary, "subset_seed": self.subset_seed}

    def load(self):
        from wsl.data.convection import convection

        return convection(**{k: v for k, v in self._options().items() if k != "name"})
