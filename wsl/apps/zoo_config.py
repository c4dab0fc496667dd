"""Checks of the wsl-zoo config that must pass before any data is loaded or any net trained."""

from __future__ import annotations

import math
import os
from pathlib import Path

from omegaconf import DictConfig, ListConfig

from wsl.errors import ConfigError
from wsl.population.optim import OPTIMIZERS
from wsl.population.schedules import SCHEDULES

from wsl.zoo.format import MAX_SEED


def _int(cfg, key: str, minimum: int, maximum: int | None = None) -> None:
    v = cfg_get(cfg, key)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum or (maximum is not None and v > maximum):
        rng = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ConfigError(f"{key} must be an integer {rng}, got {v!r}")


def _seed(cfg, key: str) -> None:
    _int(cfg, key, 0, MAX_SEED)


def _num(cfg, key: str, lo: float, hi: float | None = None, lo_open=False, allow_list=False, hi_open=False) -> None:
    """A finite number (or, with allow_list, a non-empty list of them) in the interval: nan and inf
    are refused (a non-finite learning rate would commit a population of diverged nets)."""
    v = cfg_get(cfg, key)
    vals = list(v) if allow_list and isinstance(v, (list, ListConfig)) else [v]
    if allow_list and not vals:
        raise ConfigError(f"{key} must not be an empty list")
    for x in vals:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise ConfigError(f"{key} must be a finite number{' or a list of them' if allow_list else ''}, got "
                              f"{v if allow_list and isinstance(v, ListConfig) else x!r}")
        if (x <= lo if lo_open else x < lo) or (hi is not None and (x >= hi if hi_open else x > hi)):
            close = "]" if hi is not None and not hi_open else ")"
            rng = f"{'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'}{close}"
            raise ConfigError(f"{key} must be in {rng}, got {x!r}")


def _choice(cfg, key: str, allowed) -> None:
    v = cfg_get(cfg, key)
    if v not in allowed:
        raise ConfigError(f"{key}={v!r} is not allowed; valid: {', '.join(map(str, allowed))}")


def cfg_get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            raise ConfigError(f"{key} is missing from the config")
        node = node[part]
    return node


# what each net reads: class-labelled samples (classification datasets) and/or coordinates with one
# target image per net (INR datasets, e.g. digits_inr)
NET_DATA_KINDS = {"mlp": ("classification", "inr"), "cnn": ("classification",), "siren": ("inr",)}


def _check_net_fits_dataset(net_name: str, dataset_name: str, inr: bool) -> None:
    kind = "inr" if inr else "classification"
    allowed = NET_DATA_KINDS.get(net_name, ("classification",))
    if kind in allowed:
        return
    fits = sorted(n for n, kinds in NET_DATA_KINDS.items() if kind in kinds)
    if net_name == "siren":
        raise ConfigError(f"net=siren with dataset={dataset_name}: a SIREN is an implicit neural representation "
                          f"(coordinates -> values) and is fitted to an INR dataset (dataset=digits_inr); "
                          f"dataset={dataset_name} is a classification dataset (nets: {', '.join(fits)})")
    if inr:
        raise ConfigError(f"net={net_name} with dataset={dataset_name}: an INR dataset feeds coordinates (one image "
                          f"per net), which net={net_name} cannot read; use net={' or net='.join(fits)}")
    raise ConfigError(f"net={net_name} with dataset={dataset_name}: net={net_name} is not trained on classification "
                      f"datasets; use net={' or net='.join(fits)}")


def _optional_int(cfg, key: str, minimum: int, maximum: int | None = None) -> None:
    v = cfg_get(cfg, key)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum or (maximum is not None and v > maximum):
        rng = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ConfigError(f"{key} must be null or an integer {rng}, got {v!r}")


def _validate_inr_dataset(cfg) -> None:
    _optional_int(cfg, "dataset.num_images", 1)
    _optional_int(cfg, "dataset.per_class", 1)
    if cfg_get(cfg, "dataset.num_images") is not None and cfg_get(cfg, "dataset.per_class") is not None:
        raise ConfigError("dataset.num_images and dataset.per_class are alternatives; set one of them (the other null)")
    _seed(cfg, "dataset.subset_seed")
    if not isinstance(cfg_get(cfg, "dataset.shared_init"), bool):
        raise ConfigError(f"dataset.shared_init must be true or false, got {cfg.dataset.shared_init!r}")
    if cfg.get("landscape") and cfg.landscape.get("metrics"):
        raise ConfigError(f"landscape.metrics with dataset={cfg.dataset.name}: landscape metrics need a classification "
                          "dataset (cross-entropy, accuracy, held-out splits); use landscape=none for an INR zoo")


def validate_zoo_config(cfg: DictConfig) -> None:
    from wsl.data import DATASETS, INR_DATASETS
    from wsl.nets import NETS

    path = cfg_get(cfg, "zoo.path")
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(f"zoo.path must be a non-empty directory path, got {path!r}")
    check_zoo_path(path)
    _choice(cfg, "dataset.name", sorted(DATASETS) + sorted(INR_DATASETS))
    inr = cfg.dataset.name in INR_DATASETS
    if inr:
        _validate_inr_dataset(cfg)
    else:
        _num(cfg, "dataset.train_fraction", 0.0, 1.0, lo_open=True)
        _seed(cfg, "dataset.subset_seed")
        _seed(cfg, "dataset.split_seed")
    net_name = str(cfg_get(cfg, "net._target_")).rsplit(".", 1)[-1].lower()
    _choice(cfg, "net._target_", [f"wsl.nets.{c.__name__}" for c in NETS.values()])
    _check_net_fits_dataset(net_name, cfg.dataset.name, inr)
    _int(cfg, "net.width", 1)
    _int(cfg, "net.depth", 1)
    if net_name == "cnn":
        _int(cfg, "net.kernel", 1)
    if net_name == "siren":
        _num(cfg, "net.w0", 0.0, lo_open=True)
        if cfg_get(cfg, "net.w0_initial") is not None:
            _num(cfg, "net.w0_initial", 0.0, lo_open=True)
    _int(cfg, "population.size", 1)
    _seed(cfg, "population.seed")
    _int(cfg, "train.epochs", 1)
    _int(cfg, "train.batch_size", 1)
    _num(cfg, "train.lr", 0.0, lo_open=True, allow_list=True)
    _num(cfg, "train.weight_decay", 0.0, allow_list=True)
    _choice(cfg, "train.optimizer", OPTIMIZERS)
    _choice(cfg, "train.schedule", SCHEDULES)
    _num(cfg, "train.momentum", 0.0, 1.0)
    if not isinstance(cfg_get(cfg, "train.nesterov"), bool):
        raise ConfigError(f"train.nesterov must be true or false, got {cfg.train.nesterov!r}")
    betas = cfg_get(cfg, "train.betas")
    if not isinstance(betas, ListConfig) or len(betas) != 2 or not all(
            not isinstance(b, bool) and isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas):
        raise ConfigError(f"train.betas must be two numbers in [0, 1), got {betas!r}")
    _num(cfg, "train.eps", 0.0, lo_open=True)
    _int(cfg, "train.step_epochs", 1)
    _num(cfg, "train.gamma", 0.0, lo_open=True)
    _int(cfg, "train.warmup_epochs", 0)
    _int(cfg, "train.eval_batch_size", 1)
    _int(cfg, "zoo.checkpoint_every", 1)
    epochs = cfg_get(cfg, "zoo.checkpoint_epochs")
    if epochs is not None:
        if not isinstance(epochs, (list, ListConfig)) or not all(isinstance(e, int) and not isinstance(e, bool)
                                                                 and 0 <= e <= cfg.train.epochs for e in epochs):
            raise ConfigError(f"zoo.checkpoint_epochs must be null or a list of epochs in [0, train.epochs], "
                              f"got {epochs!r}")
    check_zoo_trainer(cfg)
    if cfg.get("landscape") and cfg.landscape.get("metrics"):
        from wsl.landscape.schema import landscape_config

        landscape_config(cfg.landscape)  # unknown metric names fail here, before any training
    shape = DATASET_SHAPES.get(cfg.dataset.name, ((1,), 2))
    images = 1
    if inr:  # every member is fitted to every image: at least this many nets
        images = cfg.dataset.num_images or (cfg.dataset.per_class or 0) * 10 or 1
    check_population_fits(cfg, *shape, n_models=cfg.population.size * images)  # before any list of members
    from wsl.population.members import make_members

    make_members(cfg.population.size, cfg.train.lr, cfg.train.weight_decay, cfg.population.seed)  # grid check


def check_zoo_path(path: str) -> None:
    """zoo.path must be a directory or creatable as one: a file there, or a parent that is a file
    or cannot be written, stops the job before any data is loaded (not after training)."""
    p = Path(os.path.abspath(Path(path).expanduser()))
    show = path  # the apps print every message through wsl.errors.printable (escapes control characters)
    if p.exists() or p.is_symlink():
        if not p.is_dir():
            raise ConfigError(f"zoo.path={show} is {'a dangling link' if not p.exists() else 'a file'}, "
                              "not a zoo directory")
        return  # an existing zoo: whether it must be written is known once the job knows what to train
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"zoo.path={show} cannot be created: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"zoo.path={show} cannot be created: {parent} is not writable")


def check_zoo_writable(root: Path) -> None:
    """An existing zoo that the job must add to has to be writable (checked before training)."""
    if not os.access(root, os.W_OK | os.X_OK):
        raise ConfigError(f"zoo.path={root} is read-only; this job has models to train and commit")


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


def check_zoo_trainer(cfg) -> None:
    """Only ZOO_TRAINER_KEYS may be given under `trainer:` (a shorter run committed as `trained`
    would contradict the epochs the zoo records); devices and accelerator must exist here."""
    from wsl.apps.validate import _trainer

    t = cfg_get(cfg, "trainer")
    if not isinstance(t, DictConfig):
        raise ConfigError(f"trainer must be a mapping of lightning.Trainer options, got {t!r}")
    for k in t:
        if k in ZOO_TRAINER_KEYS:
            continue
        use = _TRAINER_HINTS.get(k, "train.epochs, train.batch_size or dataset.train_fraction")
        raise ConfigError(f"trainer.{k} cannot be set in wsl-zoo: it would change what is trained while the zoo "
                          f"records train.* as the recipe" + (f"; use {use} instead" if use else "; the job sets it")
                          + f" (trainer options wsl-zoo takes: {', '.join(ZOO_TRAINER_KEYS)})")
    _trainer(cfg)


# (input shape, classes) of each dataset: enough to size its nets before the data is loaded
DATASET_SHAPES = {"digits": ((1, 8, 8), 10), "mnist1d": ((1, 40), 10), "mnist": ((1, 28, 28), 10),
                  "fashion_mnist": ((1, 28, 28), 10), "cifar10": ((3, 32, 32), 10), "digits_inr": ((2,), 1)}
_LAYER_BYTES = 4096  # Python objects of one layer (module, parameters, hooks): a lower bound


def memory_bytes() -> int:
    """Memory this process may use: physical memory, or its cgroup's limit where that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = int(Path(f).read_text().strip())
        except (OSError, ValueError):  # absent, or "max"
            continue
        total = min(total, limit)
    return total


def _gb(n: float) -> str:
    return f"{n / 1e12:.1f} TB" if n >= 1e12 else f"{n / 1e9:.1f} GB"


def check_population_fits(cfg, in_shape, num_classes: int, n_models: int) -> None:
    """The population must fit in memory: every net's weights and gradients (float32) are held at
    once. A net too large for the machine stops here naming net.width / net.depth / population.size,
    before the data is loaded (preflight) and before any net is built (the job)."""
    import torch
    from hydra.utils import instantiate

    mem = memory_bytes()
    width, depth = int(cfg.net.width), int(cfg.net.depth)
    sizes = f"net.width={width} net.depth={depth} population.size={cfg.population.size}"
    copies = 2 * 4  # weights and gradients, 4 bytes each
    floor = depth * (width * n_models * copies + _LAYER_BYTES)  # biases alone: no net has fewer parameters
    if floor > mem:
        raise ConfigError(f"{sizes}: {n_models} nets need more than {_gb(floor)}, more than this machine's "
                          f"{_gb(mem)} of memory; lower net.width, net.depth or population.size")
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated
            net = instantiate(cfg.net)(in_shape=in_shape, num_classes=num_classes)
    except ConfigError:
        raise
    except Exception:  # an init the meta device cannot run: the job's own probe reports any real problem
        return
    n = sum(p.numel() for p in net.parameters())
    need = n * n_models * copies
    if need > mem:
        raise ConfigError(f"{sizes}: {n} parameters per net x {n_models} nets need {_gb(need)} (weights and "
                          f"gradients, float32), more than this machine's {_gb(mem)} of memory; lower net.width, "
                          "net.depth or population.size")
