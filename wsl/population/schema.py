"""Schemas of the `population=` and `train=` groups, and of a wsl-zoo job (conf/zoo.yaml): one
population of `net` trained on `dataset`, stored as a zoo. `ZooJobConfig` checks what only the whole
job knows, before any data is loaded: the net reads the dataset, the lr x weight_decay grid divides
the population, `trainer:` leaves what is trained alone, the zoo can be written, the population fits
in this machine's memory."""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from wsl import schema
from wsl.data.schema import MAX_SEED, ClassificationDatasetConfig, DatasetConfig
from wsl.errors import ConfigError
from wsl.landscape.schema import LandscapeConfig
from wsl.nets.schema import NETS, MLPConfig, NetConfig, data_info
from wsl.schema import fail

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "linear", "step")


def grid(lr, weight_decay) -> list[tuple[float, float]]:
    """The (lr, weight_decay) cells of a population: each may be a number or a list of them."""
    def values(v):
        return [float(x) for x in v] if isinstance(v, (list, tuple)) else [float(v)]

    return list(itertools.product(values(lr), values(weight_decay)))


@dataclass
class PopulationConfig:
    """One population = one vmapped program (conf/population/default.yaml)."""

    size: int = 8
    seed: int = 0  # base of every member's init and data-order seeds
    # nets trained together, one group after another (the same nets): auto sizes groups to the CPU cache
    chunk: Any = "auto"
    # keep freed memory in the process while training (glibc malloc; wsl.population.allocator): no page
    # faults on the buffers every step allocates again
    retain_memory: bool = True

    def __post_init__(self):
        schema.integer(self, "size", 1)
        schema.integer(self, "seed", 0, MAX_SEED)
        if self.chunk != "auto" and not (schema.is_int(self.chunk) and self.chunk >= 1):
            fail(f"@chunk must be auto or an integer >= 1 (nets trained together), got {self.chunk!r}")


@dataclass
class TrainConfig:
    """How every member is trained (conf/train/default.yaml). `lr` and `weight_decay` are a number
    or a list of them: the members cover the grid lr x weight_decay."""

    epochs: int = 10
    batch_size: int = 32
    lr: Any = 0.05
    weight_decay: Any = 0.0
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    schedule: str = "cosine"
    warmup_epochs: int = 0
    step_epochs: int = 1
    gamma: float = 0.1
    eval_batch_size: int = 4096

    def __post_init__(self):
        for name in ("epochs", "batch_size", "step_epochs", "eval_batch_size"):
            schema.integer(self, name, 1)
        schema.integer(self, "warmup_epochs", 0)
        # a non-finite learning rate would commit a population of diverged nets
        schema.number(self, "lr", 0.0, lo_open=True, many=True)
        schema.number(self, "weight_decay", 0.0, many=True)
        for name in ("eps", "gamma"):
            schema.number(self, name, 0.0, lo_open=True)
        schema.number(self, "momentum", 0.0, 1.0)
        schema.choice(self, "optimizer", OPTIMIZERS)
        schema.choice(self, "schedule", SCHEDULES)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            fail(f"@betas must be two numbers in [0, 1), got {list(self.betas)!r}")


@dataclass
class ZooOutputConfig:
    """wsl-zoo's `zoo:` node: the zoo the job adds its models to, and which epochs are checkpointed."""

    name: str = "quickstart"
    path: str = "zoos/quickstart"
    checkpoint_every: int = 1  # every n-th epoch; epoch 0 (init) and the final epoch always
    checkpoint_epochs: Optional[list[int]] = None  # or an explicit list; overrides checkpoint_every

    def __post_init__(self):
        schema.text(self, "path")
        schema.integer(self, "checkpoint_every", 1)


# lightning.Trainer options wsl-zoo passes on from `trainer:`: where and how precisely it runs, and
# what it reports. Every other option changes what is trained (max_steps, limit_train_batches, ...)
# while the zoo records train.epochs, or is set by the job itself (max_epochs, logger, callbacks).
ZOO_TRAINER_KEYS = ("accelerator", "devices", "strategy", "num_nodes", "precision", "enable_model_summary",
                    "deterministic", "benchmark", "profiler", "detect_anomaly", "default_root_dir")
_TRAINER_HINTS = {"max_epochs": "train.epochs", "min_epochs": "train.epochs", "max_steps": "train.epochs",
                  "min_steps": "train.epochs", "max_time": "train.epochs",
                  "enable_progress_bar": "progress_refresh_rate", "logger": "logger=csv|tensorboard|wandb|none",
                  "callbacks": None, "log_every_n_steps": None, "enable_checkpointing": None,
                  "use_distributed_sampler": None}


@dataclass
class ZooJobConfig:
    """One wsl-zoo job (conf/zoo.yaml). `landscape`: the metrics computed after training
    (wsl.landscape.annotate_zoo). `dataset` and `net` are typed Any: the typing (wsl.apps.config) would
    hold a field typed by one dataset (net) class to that class; None is the YAML's default
    (dataset=digits, net=mlp)."""

    dataset: Any = None
    net: Any = None
    population: PopulationConfig = field(default_factory=PopulationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    zoo: ZooOutputConfig = field(default_factory=ZooOutputConfig)
    progress_refresh_rate: int = 10  # progress bar update every n steps (0: no bar)
    trainer: dict[str, Any] = field(default_factory=lambda: {"accelerator": "auto", "devices": 1,
                                                             "enable_model_summary": False})
    logger: Any = None
    landscape: LandscapeConfig = field(default_factory=LandscapeConfig)
    # fine-tuning (wsl.population.lora): init.from=<zoo>:<model_id>[@epoch] starts every member from
    # that net ("from" is a Python keyword: a mapping, checked in __post_init__); finetune=full|lora
    init: dict[str, Any] = field(default_factory=lambda: {"from": None})
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig())

    def __post_init__(self):
        self.dataset = ClassificationDatasetConfig() if self.dataset is None else self.dataset
        self._check_init()
        self.net = MLPConfig() if self.net is None else self.net
        check_zoo_path(self.zoo.path)
        for key, node, base, valid in (("dataset", self.dataset, DatasetConfig, DatasetConfig.__subclasses__()),
                                       ("net", self.net, NetConfig, NETS)):
            if not isinstance(node, base):
                target = node.get("_target_") if isinstance(node, dict) else node
                fail(f"@{key}._target_={target!r} is not allowed; valid: {', '.join(c._target_ for c in valid)}")
        self._check_net_reads_dataset()
        schema.integer(self, "progress_refresh_rate", 0)
        epochs = self.zoo.checkpoint_epochs
        if epochs is not None and not all(0 <= e <= self.train.epochs for e in epochs):
            fail(f"@zoo.checkpoint_epochs must be null or a list of epochs in [0, @train.epochs], got {epochs!r}")
        self._check_trainer()
        if self.dataset.kind == "inr" and self.landscape.metrics:
            fail(f"@landscape.metrics with dataset={self.dataset.name}: landscape metrics need a classification "
                 "dataset (cross-entropy, accuracy, held-out splits); use landscape=none for an INR zoo")
        chunk, nets = self.population.chunk, self.population.size * self.dataset.max_targets()
        if chunk != "auto" and chunk > nets:
            raise ConfigError(f"population.chunk={chunk} is more than the {nets} nets of the population "
                              f"(population.size={self.population.size}"
                              + (f" x {nets // self.population.size} images" if nets != self.population.size else "")
                              + "); use auto or a number in [1, " + f"{nets}]")
        self._check_population_fits()
        cells = len(grid(self.train.lr, self.train.weight_decay))
        if self.population.size % cells:
            fail(f"@population.size={self.population.size} must be a multiple of the {cells} (@train.lr × "
                 "@train.weight_decay) combinations, so every combination gets the same seeds")

    @property
    def init_from(self):
        """init.from as a wsl.zoo.reference.ModelRef (syntax checked), or None (training from scratch)."""
        from wsl.zoo.reference import parse_model_ref

        text = self.init.get("from")
        return None if text is None else parse_model_ref(str(text), "init.from")

    def _check_init(self) -> None:
        unknown = sorted(set(self.init) - {"from"})
        if unknown:
            fail(f"unknown config key 'init.{unknown[0]}'; valid keys under init: from")
        text = self.init.get("from")
        if text is not None and not isinstance(text, str):
            fail(f"@init.from must be '<zoo path>:<model_id>[@epoch]' or null, got {text!r}")
        self.init_from  # noqa: B018  (syntax check: a ConfigError naming init.from)
        if self.finetune.mode == "lora" and text is None:
            fail("@finetune.mode=lora needs a base net: set init.from=<zoo path>:<model_id>[@epoch]")

    def _check_net_reads_dataset(self) -> None:
        net, data, kind = self.net.name, self.dataset.name, self.dataset.kind
        if kind in type(self.net).reads:
            self.net.arch(*self.dataset.shape(), data_info(self.dataset))  # token ids: a transformer only
            return
        fits = sorted(n.name for n in NETS if kind in n.reads)
        use = f"use net={' or net='.join(fits)}" if fits else "no net reads it yet"
        if kind == "lm":
            fail(f"net={net} with dataset={data}: next-token prediction needs a causal sequence model that "
                 f"reads token ids; {use}")
        if kind == "pinn":
            fail(f"net={net} with dataset={data}: a physics-informed net maps coordinates (x, t) to u; {use}")
        if net == "siren":
            fail(f"net=siren with dataset={data}: a SIREN is an implicit neural representation (coordinates -> "
                 f"values) and is fitted to an INR dataset (dataset=digits_inr); dataset={data} is a "
                 f"classification dataset (nets: {', '.join(fits)})")
        if kind == "inr":
            fail(f"net={net} with dataset={data}: an INR dataset feeds coordinates (one image per net), which "
                 f"net={net} cannot read; use net={' or net='.join(fits)}")
        fail(f"net={net} with dataset={data}: net={net} is not trained on classification datasets; "
             f"use net={' or net='.join(fits)}")

    def _check_trainer(self) -> None:
        """Only ZOO_TRAINER_KEYS may be given under `trainer:`; devices and accelerator must exist here."""
        from wsl.trainer import check_trainer

        for k in self.trainer:
            if k not in ZOO_TRAINER_KEYS:
                use = _TRAINER_HINTS.get(k, "train.epochs, train.batch_size or dataset.train_fraction")
                fail(f"@trainer.{k} cannot be set in wsl-zoo: it would change what is trained while the zoo "
                     "records train.* as the recipe" + (f"; use {use} instead" if use else "; the job sets it")
                     + f" (trainer options wsl-zoo takes: {', '.join(ZOO_TRAINER_KEYS)})")
        check_trainer(self.trainer)

    def _check_population_fits(self) -> None:
        """Every net's weights, gradients and buffers (float32) are held at once, and so are the
        activations of one training step (train.batch_size samples per net) or of one evaluation chunk
        (train.eval_batch_size samples per net): a population too large for this machine stops here,
        before any data is loaded."""
        mem, width, depth, size = memory_bytes(), self.net.width, self.net.depth, self.population.size
        nets = size * self.dataset.max_targets()
        floor = depth * (width * nets + 512) * 8  # its biases' weights and gradients, ~4 kB of objects per layer
        where = f"@net.width={width} @net.depth={depth} @population.size={size}"
        fix = "lower @net.width, @net.depth or @population.size"
        if floor > mem:
            fail(f"{where}: {nets} nets need more than {gb(floor)}, more than this machine's {gb(mem)} of memory; {fix}")
        fp = footprint(self.net.arch(*self.dataset.shape(), data_info(self.dataset)))
        if fp is None:
            return
        weights = fp.parameters * 8 + fp.buffers * 4
        if weights * nets > mem:
            fail(f"{where}: {fp.parameters} parameters per net x {nets} nets need {gb(weights * nets)} (weights and "
                 f"gradients, float32), more than this machine's {gb(mem)} of memory; {fix}")
        if self.dataset.kind == "inr":  # inputs are an image's pixels, not train.batch_size samples
            return
        t = self.train
        chunk = eval_chunk(t.eval_batch_size, nets, fp.largest_activation)
        train_acts, eval_acts = t.batch_size * fp.train_activations * 4, chunk * fp.eval_activations * 4
        need = nets * (weights + max(train_acts, eval_acts))
        if need > mem:
            step, key = (("a training step", "@train.batch_size") if train_acts >= eval_acts
                         else ("an evaluation chunk", "@train.eval_batch_size"))
            fail(f"{where}: {nets} nets need about {gb(need)} ({fp.parameters} parameters per net, and the "
                 f"activations of {step} of {key}={getattr(t, key[7:])} samples per net), more than this machine's "
                 f"{gb(mem)} of memory; {fix}, or {key}")


def memory_bytes() -> int:
    """Memory this process may use: physical memory, or its cgroup's limit where that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            total = min(total, int(Path(f).read_text().strip()))
        except (OSError, ValueError):  # absent, or "max"
            continue
    return total


def parameter_count(arch: dict) -> int | None:
    """Parameters of the net `arch` describes, counted on the meta device (nothing is allocated);
    None where its init cannot run there (building it for real then reports any problem)."""
    fp = footprint(arch)
    return None if fp is None else fp.parameters


# Activation memory per sample as a multiple of what the meta forward counts, measured on ResNets and
# MLPs under vmap (scripts/bench_zoo.py's machine): a training step keeps about twice the leaf modules'
# outputs (saved for backward, their gradients); evaluation (no graph) about five of the largest.
TRAIN_ACTIVATION_FACTOR, EVAL_ACTIVATION_FACTOR = 2, 5
# Evaluation chunks hold at most this many numbers in their largest activation (all members together,
# ~8 MB): a chunk that stays in cache. Measured on 2 CPU cores: 32 ResNet-8s (width 8) on 1,079 digits
# took 6.0 s in one chunk of 4096 samples, 2.3 s in chunks of 128; 64 MLPs 40-128-128-10 on 3,000
# samples 1.07 s in chunks of 4096, 0.52 s in chunks of 256; never slower in smaller chunks.
EVAL_CHUNK_NUMBERS = 2**21
MIN_EVAL_CHUNK = 16


def eval_chunk(eval_batch_size: int, members: int, largest_activation: int) -> int:
    """Samples per evaluation chunk: train.eval_batch_size at most, fewer where the members'
    largest activation over the chunk would leave the cache (MIN_EVAL_CHUNK at least)."""
    fit = EVAL_CHUNK_NUMBERS // max(1, members * largest_activation)
    return max(1, min(int(eval_batch_size), max(MIN_EVAL_CHUNK, fit)))


# samples per evaluation chunk below which batched matmuls lose efficiency (a wide net's weights read
# for few rows): there, members are evaluated in groups, each over larger chunks (eval_plan)
MIN_EVAL_SAMPLES = 256


def eval_plan(eval_batch_size: int, members: int, largest_activation: int, parameters: int = 0,
              cache: int | None = None) -> tuple[int, int]:
    """(members per group, samples per chunk) of an evaluation: every member together over chunks of
    eval_chunk samples, unless those chunks hold fewer than MIN_EVAL_SAMPLES (and eval_batch_size) samples
    while the members' weights (`parameters` per member, float32) do not fit in the cache (`cache` bytes,
    default this machine's last level, wsl.population.chunks): then every chunk reads every member's weights
    from memory for few rows. There, equal groups of members, each over chunks of MIN_EVAL_SAMPLES or more,
    with the activations of a chunk as small as before. Measured (one thread, loaded machine): 64 MLPs
    40-512-512-10, 64 members x 64 samples per chunk 19.0 GFLOP/s, 16 x 256 22.0, 8 x 512 22.5; 64 CNNs of
    width 16 (1,018 parameters, weights in cache), 22 x 297 7% slower than 64 x 102: not grouped."""
    from wsl.population.chunks import cache_bytes

    chunk = eval_chunk(eval_batch_size, members, largest_activation)
    if (members <= 1 or chunk >= min(MIN_EVAL_SAMPLES, eval_batch_size)
            or 4 * members * parameters <= (cache if cache is not None else cache_bytes())):
        return max(1, members), chunk
    group = max(1, EVAL_CHUNK_NUMBERS // (MIN_EVAL_SAMPLES * max(1, largest_activation)))
    group = math.ceil(members / math.ceil(members / group))  # equal groups
    return group, eval_chunk(eval_batch_size, group, largest_activation)


@dataclass
class Footprint:
    """Sizes of one net, in float32 numbers: parameters, buffers (BatchNorm statistics), the largest
    activation of one input sample, and the activations per sample of a training step and of an
    evaluation (estimates)."""

    parameters: int
    buffers: int
    largest_activation: int
    train_activations: int
    eval_activations: int


def footprint(arch: dict) -> Footprint | None:
    """The net `arch` describes, built and run on one sample on the meta device (nothing is
    allocated); None where its init cannot run there (building it for real then reports any problem).
    A ConfigError of the net's own checks (e.g. an input too small for its strides) is raised."""
    import torch

    from wsl.nets import build_net

    try:
        with torch.device("meta"):
            net = build_net(arch)
    except ConfigError:
        raise
    except Exception:
        return None
    return net_footprint(net, arch["in_shape"])


def net_footprint(net, in_shape) -> Footprint:
    """`net`'s footprint (see Footprint), its activations counted by running a copy of it on one
    sample on the meta device (nothing is allocated; activations 0 where that copy cannot run)."""
    import copy

    import torch

    params = sum(p.numel() for p in net.parameters())
    buffers = sum(b.numel() for b in net.buffers())
    outputs: list[int] = []
    vocab = getattr(net, "vocab", None)  # token ids (a transformer on text): integer inputs
    x = (torch.zeros(1, *in_shape, dtype=torch.long, device="meta") if vocab is not None
         else torch.empty(1, *in_shape, device="meta"))
    try:
        meta = copy.deepcopy(net).to("meta").eval()
        for m in meta.modules():
            if not any(True for _ in m.children()):
                m.register_forward_hook(lambda _m, _i, o: outputs.append(o.numel() if torch.is_tensor(o) else 0))
        with torch.no_grad():
            meta(x)
    except Exception:  # a net the meta device cannot run: its weights are still counted
        outputs = []
    largest = max(outputs + [x.numel()])
    return Footprint(params, buffers, largest, TRAIN_ACTIVATION_FACTOR * (sum(outputs) + x.numel()),
                     EVAL_ACTIVATION_FACTOR * largest)


def gb(n: float) -> str:
    return f"{n / 1e12:.1f} TB" if n >= 1e12 else f"{n / 1e9:.1f} GB"


def check_zoo_path(path: str) -> None:
    """zoo.path must be a directory or creatable as one: a file there, or a parent that is a file
    or cannot be written, stops the job before any data is loaded (not after training). (A
    ConfigError, not a schema error: the message holds the user's path as it is.)"""
    p = Path(os.path.abspath(Path(path).expanduser()))
    if p.exists() or p.is_symlink():
        if not p.is_dir():
            raise ConfigError(f"zoo.path={path} is {'a dangling link' if not p.exists() else 'a file'}, "
                              "not a zoo directory")
        return  # an existing zoo: whether it must be written is known once the job knows what to train
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"zoo.path={path} cannot be created: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"zoo.path={path} cannot be created: {parent} is not writable")


FINETUNE_MODES = ("full", "lora")


@dataclass
class FinetuneConfig:
    """How members fine-tune the net named by `init.from` (conf/finetune/full.yaml, lora.yaml).

    full: every weight trains (the default; without init.from it is training from scratch). lora:
    the base net is frozen and each adapted weight W [out, in(, kh, kw)] trains a low-rank update
    W + (alpha / rank) B A, with A [rank, in*kh*kw] (Kaiming-uniform init from the member's seed_init)
    and B [out, rank] (zeros), as in Hu et al. 2021 (wsl.nets.lora, wsl.population.lora)."""

    mode: str = "full"
    rank: int = 4
    alpha: Optional[float] = None  # scaling alpha / rank; null: alpha = rank (scaling 1)
    layers: Optional[list[str]] = None  # weight or module names (e.g. layers.0.weight, layers.0); null: every Linear/Conv weight

    def __post_init__(self):
        schema.choice(self, "mode", FINETUNE_MODES)
        schema.integer(self, "rank", 1)
        schema.number(self, "alpha", 0.0, lo_open=True, null=True)
        schema.names(self, "layers", null=True, empty=False)
