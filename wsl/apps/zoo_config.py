"""Checks of the wsl-zoo config that must pass before any data is loaded or any net trained."""

from __future__ import annotations

from omegaconf import DictConfig, ListConfig

from wsl.errors import ConfigError
from wsl.population.optim import OPTIMIZERS
from wsl.population.schedules import SCHEDULES


def _int(cfg, key: str, minimum: int) -> None:
    v = cfg_get(cfg, key)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {v!r}")


def _num(cfg, key: str, lo: float, hi: float | None = None, lo_open=False, allow_list=False) -> None:
    v = cfg_get(cfg, key)
    vals = list(v) if allow_list and isinstance(v, (list, ListConfig)) else [v]
    if allow_list and not vals:
        raise ConfigError(f"{key} must not be an empty list")
    for x in vals:
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise ConfigError(f"{key} must be a number{' or a list of numbers' if allow_list else ''}, got {x!r}")
        if (x <= lo if lo_open else x < lo) or (hi is not None and x > hi):
            rng = f"{'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'}{']' if hi is not None else ')'}"
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
    _int(cfg, "dataset.subset_seed", 0)
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
    _choice(cfg, "dataset.name", sorted(DATASETS) + sorted(INR_DATASETS))
    inr = cfg.dataset.name in INR_DATASETS
    if inr:
        _validate_inr_dataset(cfg)
    else:
        _num(cfg, "dataset.train_fraction", 0.0, 1.0, lo_open=True)
        _int(cfg, "dataset.subset_seed", 0)
        _int(cfg, "dataset.split_seed", 0)
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
    _int(cfg, "population.seed", 0)
    _int(cfg, "train.epochs", 1)
    _int(cfg, "train.batch_size", 1)
    _num(cfg, "train.lr", 0.0, lo_open=True, allow_list=True)
    _num(cfg, "train.weight_decay", 0.0, allow_list=True)
    _choice(cfg, "train.optimizer", OPTIMIZERS)
    _choice(cfg, "train.schedule", SCHEDULES)
    _num(cfg, "train.momentum", 0.0, 1.0)
    _int(cfg, "train.warmup_epochs", 0)
    _int(cfg, "train.eval_batch_size", 1)
    _int(cfg, "zoo.checkpoint_every", 1)
    epochs = cfg_get(cfg, "zoo.checkpoint_epochs")
    if epochs is not None:
        if not isinstance(epochs, (list, ListConfig)) or not all(isinstance(e, int) and not isinstance(e, bool)
                                                                 and 0 <= e <= cfg.train.epochs for e in epochs):
            raise ConfigError(f"zoo.checkpoint_epochs must be null or a list of epochs in [0, train.epochs], "
                              f"got {epochs!r}")
    if cfg.get("landscape") and cfg.landscape.get("metrics"):
        from wsl.landscape.plan import make_plan

        make_plan(cfg.landscape)  # unknown metric names fail here, before any training
    from wsl.population.members import make_members

    make_members(cfg.population.size, cfg.train.lr, cfg.train.weight_decay, cfg.population.seed)  # grid check
