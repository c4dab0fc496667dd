"""Config checks of the apps that need nothing but the composed config (no zoo is read).

Each `validate_<app>(cfg)` raises `wsl.errors.ConfigError` naming the first key whose type or
value is impossible; `wsl.apps.common.preflight` runs it on every job of a sweep before Hydra
starts one, and the app's body runs it again (a config composed by other means is checked too).
Checks that already live in a room are reused, not repeated: `wsl.landscape.plan.make_plan`,
`wsl.landscape.phases.PhaseThresholds`, the generator and baseline constructors,
`wsl.evaluate.pipeline.Settings.check`, `wsl.encoders.experiment.check_config`.

Only omegaconf is imported here at module level: an app's `--help` must not wait for torch.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig, ListConfig, OmegaConf

from wsl.errors import ConfigError

_MISSING = object()


# ------------------------------------------------------------------------------------------ primitives
def get(cfg, key: str, default=_MISSING):
    """The value at a dotted key; a key the config lacks is a ConfigError (or `default`)."""
    node = cfg
    parts = key.split(".")
    for part in parts:
        if isinstance(node, DictConfig) and OmegaConf.is_missing(node, part):  # `???` (`in` says False)
            raise ConfigError(f"{key} is required (set {key}=...)")
        if not isinstance(node, DictConfig) or part not in node:
            if default is not _MISSING:
                return default
            raise ConfigError(f"{key} is missing from the config")
        node = node[part]
    return node


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _null(null: bool) -> str:
    return " or null" if null else ""


def integer(cfg, key: str, lo: int | None = None, hi: int | None = None, null: bool = False, extra=()) -> None:
    """An integer in [lo, hi] (or one of `extra`, or null when allowed)."""
    v = get(cfg, key)
    if (v is None and null) or (_is_int(v) and v in extra):
        return
    if not _is_int(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = (f" >= {lo}" if hi is None else f" in [{lo}, {hi}]") if lo is not None else \
            (f" <= {hi}" if hi is not None else "")
        alt = "".join(f" or {e}" for e in extra)
        raise ConfigError(f"{key} must be an integer{rng}{alt}{_null(null)}, got {v!r}")


def number(cfg, key: str, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False, null: bool = False) -> None:
    """A finite number in the interval (open or closed ends), or null when allowed."""
    v = get(cfg, key)
    if v is None and null:
        return
    bad = not _is_num(v) or not math.isfinite(v)
    if not bad and lo is not None:
        bad = v <= lo if lo_open else v < lo
    if not bad and hi is not None:
        bad = v >= hi if hi_open else v > hi
    if bad:
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        rng = f"{'(' if lo_open or lo is None else '['}{lo_s}, {hi_s}{')' if hi_open or hi is None else ']'}"
        what = "a finite number" if lo is None and hi is None else f"a number in {rng}"
        raise ConfigError(f"{key} must be {what}{_null(null)}, got {v!r}")


def boolean(cfg, key: str) -> None:
    v = get(cfg, key)
    if not isinstance(v, bool):
        raise ConfigError(f"{key} must be true or false, got {v!r}")


def choice(cfg, key: str, allowed, null: bool = False) -> None:
    v = get(cfg, key)
    if v is None and null:
        return
    if not isinstance(v, str) or v not in allowed:
        raise ConfigError(f"{key}={v!r} is not allowed; valid: {', '.join(map(str, allowed))}{_null(null)}")


def text(cfg, key: str, null: bool = False, hint: str = "") -> None:
    """A non-empty string (a path, a name)."""
    v = get(cfg, key)
    if v is None and null:
        return
    if not isinstance(v, str) or not v.strip():
        raise ConfigError(f"{key} must be a non-empty string{_null(null)}, got {v!r}{hint}")


def path(cfg, key: str, example: str) -> None:
    """A required path: `???` and blanks name the key and show an example command."""
    node, _, leaf = key.rpartition(".")
    parent = get(cfg, node) if node else cfg
    if isinstance(parent, DictConfig) and OmegaConf.is_missing(parent, leaf):
        raise ConfigError(f"{key} is required, e.g. {example}")
    text(cfg, key, hint=f"; e.g. {example}")


def strings(cfg, key: str, null: bool = False, empty: bool = True) -> None:
    """A list of non-empty strings (or null when allowed)."""
    v = get(cfg, key)
    if v is None and null:
        return
    if not isinstance(v, (list, ListConfig)) or not all(isinstance(s, str) and s for s in v) or (not empty and not v):
        raise ConfigError(f"{key} must be a{' non-empty' if not empty else ''} list of names{_null(null)}, got "
                          f"{_show(v)}")


def mapping(cfg, key: str, null: bool = False) -> None:
    v = get(cfg, key)
    if v is None and null:
        return
    if not isinstance(v, DictConfig):
        raise ConfigError(f"{key} must be a mapping{_null(null)}, got {_show(v)}")


def _show(v):
    return OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else repr(v)


def _phase(cfg, key: str) -> None:
    from wsl.landscape.phases import _thresholds

    node = get(cfg, key)
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{key} must be a mapping with keys loss, mc_tolerance, cka; got {_show(node)}")
    for k in node:
        if k in ("loss", "mc_tolerance", "cka"):
            number(cfg, f"{key}.{k}", 0.0)
    try:
        _thresholds(OmegaConf.to_container(node, resolve=True))
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(key) else f"{key}: {msg}") from None


def _signature_keys(target: str, node: dict, key: str, skip=()) -> None:
    """Options under `key` must be parameters of the class `target` names."""
    import inspect

    import hydra

    try:
        cls = hydra.utils.get_class(target)
    except Exception as e:  # hydra wraps import errors in several types
        raise ConfigError(f"{key}._target_={target!r} cannot be imported ({e})") from e
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    allowed = set(params) - {"self", *skip}
    unknown = sorted(set(node) - allowed - {"_target_"})
    if unknown:
        raise ConfigError(f"{key}: unknown option(s) {unknown} for {target}; valid: {sorted(allowed)}")


def _trainer(cfg, steps: bool = False) -> None:
    """The keys of a `trainer:` node that the app sets (Lightning checks the rest when it starts)."""
    if "trainer" not in cfg:
        return
    mapping(cfg, "trainer")
    t = cfg.trainer
    for k in ("accelerator", "strategy"):
        if k in t:
            text(cfg, f"trainer.{k}")
    if "devices" in t:
        v = t.devices
        if not (v == "auto" or (_is_int(v) and (v >= 1 or v == -1)) or
                (isinstance(v, ListConfig) and v and all(_is_int(d) and d >= 0 for d in v))):
            raise ConfigError(f"trainer.devices must be a positive integer, -1 (all), auto or a list of device "
                              f"indices, got {_show(v)}")
    if "accelerator" in t:
        _accelerator(str(t.accelerator), t.get("devices", "auto"))
    if "log_every_n_steps" in t:
        integer(cfg, "trainer.log_every_n_steps", 1)
    if "max_epochs" in t:
        integer(cfg, "trainer.max_epochs", -1, null=True)
        if t.max_epochs == 0:
            raise ConfigError("trainer.max_epochs must be >= 1, or -1 (no limit) with trainer.max_steps set, got 0")
    if steps or "max_steps" in t:
        integer(cfg, "trainer.max_steps", 1, extra=(-1,))
        if t.max_steps == -1 and t.get("max_epochs") in (-1, None):
            raise ConfigError("trainer.max_steps=-1 with trainer.max_epochs=-1 would train forever; set one of them")


ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def _accelerator(name: str, devices) -> None:
    """trainer.accelerator must exist on this machine (Lightning's own error is a traceback)."""
    import torch

    acc = name.lower()
    if acc not in ACCELERATORS:
        raise ConfigError(f"trainer.accelerator={name!r} is not supported; valid: {', '.join(ACCELERATORS)}")
    if acc in ("gpu", "cuda"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError(f"trainer.accelerator={name} but this machine has no CUDA GPU; use "
                              "trainer.accelerator=cpu (or auto)")
        wanted = len(devices) if isinstance(devices, ListConfig) else devices
        index = max(devices) if isinstance(devices, ListConfig) else -1
        if (_is_int(wanted) and wanted > n) or index >= n:
            raise ConfigError(f"trainer.devices={_show(devices)} asks for more GPUs than the {n} this machine has")
    if acc == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"trainer.accelerator={name} but MPS (Apple GPU) is not available here; use "
                          "trainer.accelerator=cpu (or auto)")


def device(cfg, key: str = "device") -> None:
    """A torch device name (cpu, cuda, cuda:1, mps) that exists on this machine."""
    import torch

    v = get(cfg, key)
    if not isinstance(v, str) or not v.strip():
        raise ConfigError(f"{key} must be a device name such as cpu or cuda, got {v!r}")
    try:
        dev = torch.device(v)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"{key}={v!r} is not a device name (cpu, cuda, cuda:1, ...)") from e
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError(f"{key}={v} but this machine has no CUDA GPU; use {key}=cpu")
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"{key}={v}: this machine has {n} CUDA GPU(s) (cuda:0 to cuda:{n - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key}={v} but MPS (Apple GPU) is not available here; use {key}=cpu")
    elif dev.type not in ("cpu", "cuda", "mps", "meta"):
        raise ConfigError(f"{key}={v!r}: device type {dev.type} is not supported here (cpu, cuda, mps)")


def _logger(cfg) -> None:
    """logger=<group option>: the node must name a factory (or be empty: logger=none)."""
    node = cfg.get("logger") if isinstance(cfg, DictConfig) else None
    if node is None or (isinstance(node, DictConfig) and not len(node)):
        return
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(f"logger must be a logger config (logger=csv|tensorboard|wandb|none), got {_show(node)}")
    import importlib.util

    target = str(node._target_)
    needs = {"wandb_logger": (("wandb",), "wandb"), "WandbLogger": (("wandb",), "wandb"),
             "TensorBoardLogger": (("tensorboard", "tensorboardX"), "tensorboard")}.get(target.rsplit(".", 1)[-1])
    if needs and not any(importlib.util.find_spec(m) for m in needs[0]):
        raise ConfigError(f"logger={needs[1]} needs the {needs[1]} package, which is not installed: "
                          f"pip install {needs[1]} (or logger=csv)")
    if "mode" in node and node.mode is not None:
        from wsl.tracking import WANDB_MODES, _MODE_ALIASES

        if str(node.mode).lower() not in (*WANDB_MODES, *_MODE_ALIASES):
            raise ConfigError(f"logger.mode={node.mode!r} is not a W&B mode; valid: {', '.join(WANDB_MODES)}")


def _threads(cfg) -> None:
    if "threads" in cfg:
        integer(cfg, "threads", 1, null=True)


# ------------------------------------------------------------------------------------------ apps
def validate_landscape(cfg: DictConfig) -> None:
    """wsl-landscape: zoo.path, model_ids, and the whole `landscape` node (make_plan)."""
    from wsl.landscape.plan import make_plan

    path(cfg, "zoo.path", "wsl-landscape zoo.path=zoos/<name>")
    strings(cfg, "model_ids", null=True, empty=False)
    node = get(cfg, "landscape")
    if not isinstance(node, DictConfig):
        raise ConfigError(f"landscape must be a mapping (landscape=basic|full|none), got {_show(node)}")
    for k in ("num_samples", "sample_seed"):
        if k in node:  # the shared defaults every metric interpolates
            integer(cfg, f"landscape.{k}", 1 if k == "num_samples" else 0, null=k == "num_samples")
    make_plan(node)
    _logger(cfg)


PLOT_FORMATS = ("png", "pdf", "svg")


def validate_plot(cfg: DictConfig) -> None:
    """wsl-plot: zoo.path, the axes, metrics, output and image settings, the phase thresholds."""
    path(cfg, "zoo.path", "wsl-plot zoo.path=zoos/<name>")
    mapping(cfg, "plot")
    text(cfg, "plot.x", null=True)
    text(cfg, "plot.y", null=True)
    strings(cfg, "plot.metrics", null=True, empty=False)
    text(cfg, "plot.out_dir", null=True)
    choice(cfg, "plot.format", PLOT_FORMATS)
    integer(cfg, "plot.dpi", 10, 2400)
    _phase(cfg, "phase")
    _logger(cfg)


SPLITS = ("train", "val", "test")


def validate_evaluate(cfg: DictConfig) -> None:
    """wsl-evaluate: both zoo paths, every knob of Settings (its own check reused), the phase
    thresholds and every baseline (built once: their constructors check their settings)."""
    from hydra.utils import instantiate

    path(cfg, "zoo.path", "wsl-evaluate zoo.path=zoos/<name>-gen reference=zoos/<name>")
    path(cfg, "reference", "wsl-evaluate zoo.path=zoos/<name>-gen reference=zoos/<name>")
    text(cfg, "out", null=True)
    integer(cfg, "epoch", -1)
    integer(cfg, "reference_epoch", -1, null=True)
    strings(cfg, "reference_ids", null=True, empty=False)
    choice(cfg, "split", SPLITS)
    integer(cfg, "max_nets", 1, null=True)
    integer(cfg, "chunk", 1)
    integer(cfg, "seed", 0)
    number(cfg, "failure.min_accuracy", 0.0, 1.0, null=True)
    number(cfg, "failure.min_gain", 0.0, 1.0)
    boolean(cfg, "novelty.align")
    integer(cfg, "novelty.anchor", 0)
    integer(cfg, "novelty.top_k", 0)
    integer(cfg, "novelty.max_iter", 1)
    number(cfg, "novelty.memorized_below", 0.0, lo_open=True)
    if cfg.get("phases") is not None:
        _phase(cfg, "phases")
    baselines = get(cfg, "baselines", None)
    if baselines is not None and not isinstance(baselines, DictConfig):
        raise ConfigError(f"baselines must be a mapping of name: baseline config, got {_show(baselines)}")
    for name, node in (baselines or {}).items():
        if node is None:
            continue
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ConfigError(f"baselines.{name} must be a baseline config with a _target_, got {_show(node)}")
        try:
            instantiate(node)
        except Exception as e:  # Hydra wraps the constructor's error: report it under its key
            msg = str(e.__cause__ or e).splitlines()[0]
            raise ConfigError(msg if msg.startswith(f"baselines.{name}") else f"baselines.{name}: {msg}") from e
    from wsl.apps.evaluate import settings_from

    settings_from(cfg).check()
    _logger(cfg)


def validate_sample(cfg: DictConfig) -> None:
    """wsl-sample: run directory, output zoo, draw size, seed, condition values, guidance, steps,
    batch size, device and threads (the condition keys are checked against the run when it is loaded)."""
    path(cfg, "run", "wsl-sample run=runs/train_generator/<date> zoo.path=zoos/<name>-gen")
    path(cfg, "zoo.path", "wsl-sample run=runs/train_generator/<date> zoo.path=zoos/<name>-gen")
    text(cfg, "zoo.name", null=True)
    text(cfg, "job_id", null=True)
    integer(cfg, "n", 1)
    integer(cfg, "seed", 0)
    mapping(cfg, "condition", null=True)  # null (the default): unconditional
    for k in cfg.condition or {}:
        number(cfg, f"condition.{k}")
    number(cfg, "guidance", 0.0)
    integer(cfg, "steps", 1, null=True)
    integer(cfg, "batch_size", 1)
    device(cfg)
    _threads(cfg)
    _logger(cfg)


def validate_train_generator(cfg: DictConfig) -> None:
    """wsl-train-generator: zoo selection, representation (incl. the latent autoencoder),
    conditioning, batch, seeds, spread monitor, trainer limits, and the generator group: the
    method is built (its constructor checks it), the denoiser's options are checked by name and value
    (it is built only when the zoo gives its size)."""
    from hydra.utils import instantiate

    path(cfg, "zoo.path", "wsl-train-generator zoo.path=zoos/<name>")
    integer(cfg, "zoo.epoch", -1)
    mapping(cfg, "zoo.filter", null=True)  # null (the default): every trained net
    number(cfg, "zoo.val_fraction", 0.0, 1.0, hi_open=True)
    integer(cfg, "zoo.split_seed", 0)
    boolean(cfg, "representation.align")
    integer(cfg, "representation.reference", 0)
    integer(cfg, "representation.iterations", 1)
    integer(cfg, "representation.max_iter", 1)
    latent = get(cfg, "representation.latent")
    if latent not in (None, False):
        from wsl.generators.train import LATENT_DEFAULTS, latent_settings

        lat = latent_settings(latent)
        for k, v in lat.items():
            default = LATENT_DEFAULTS[k]
            ok = (_is_int(v) and v >= 1) if isinstance(default, int) else (_is_num(v) and math.isfinite(v) and v >= 0)
            if not ok:
                kind = "a positive integer" if isinstance(default, int) else "a number >= 0"
                raise ConfigError(f"representation.latent.{k} must be {kind}, got {v!r}")
    strings(cfg, "condition.columns")
    for k in cfg.condition.columns:
        if k.startswith("test_") or k.endswith("/test_acc") or k.endswith("/test_loss"):
            raise ConfigError(f"condition.columns: {k!r} is measured on the test split; nothing may be fitted on it "
                              "(condition on val_acc or train_acc instead)")
    number(cfg, "condition.dropout", 0.0, 1.0, hi_open=True)
    integer(cfg, "batch_size", 1)
    integer(cfg, "seed", 0)
    _threads(cfg)
    integer(cfg, "spread.every_n_steps", 1)
    integer(cfg, "spread.n", 1)
    integer(cfg, "progress_refresh_rate", 0)
    _trainer(cfg, steps=True)
    # the generator group
    g = get(cfg, "generator")
    mapping(cfg, "generator.method")
    mapping(cfg, "generator.denoiser")
    for key in ("generator.method", "generator.denoiser"):
        if "_target_" not in get(cfg, key):
            raise ConfigError(f"{key}._target_ is missing; choose one with generator=flow|diffusion")
    den = OmegaConf.to_container(g.denoiser, resolve=True)
    _signature_keys(den["_target_"], den, "generator.denoiser", skip=("dim", "cond_dim", "segments"))
    for k, v in den.items():
        if k in ("hidden", "depth", "emb_dim", "d_model", "nhead", "layers"):
            integer(cfg, f"generator.denoiser.{k}", 1)
        elif k == "max_token":
            integer(cfg, "generator.denoiser.max_token", 1, null=True)
        elif k == "dropout":
            number(cfg, "generator.denoiser.dropout", 0.0, 1.0, hi_open=True)
    if "d_model" in den and "nhead" in den and den["d_model"] % den["nhead"]:
        raise ConfigError(f"generator.denoiser.d_model={den['d_model']} must be divisible by nhead={den['nhead']}")
    meth = OmegaConf.to_container(g.method, resolve=True)
    _signature_keys(meth["_target_"], meth, "generator.method")
    try:
        instantiate(g.method)
    except ConfigError:
        raise
    except Exception as e:  # Hydra wraps the constructor's ConfigError: hand on its one line
        cause = e.__cause__ or e
        msg = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise ConfigError(msg if msg.startswith("generator.") else f"generator.method: {msg}") from e
    mapping(cfg, "generator.optimizer")
    number(cfg, "generator.optimizer.lr", 0.0, lo_open=True)
    number(cfg, "generator.optimizer.weight_decay", 0.0)
    choice(cfg, "generator.optimizer.schedule", ("constant", "cosine"))
    number(cfg, "generator.ema", 0.0, 1.0, lo_open=True, hi_open=True, null=True)
    _logger(cfg)


def validate_train_encoder(cfg: DictConfig) -> None:
    """wsl-train-encoder: the encoder room's own check_config (zoo.path, seeds, batch sizes, epochs,
    task, encoder options), then the split, optimizer, augmentations, trainer and logger."""
    from wsl.encoders.experiment import check_config

    check_config(cfg)
    boolean(cfg, "zoo.pad")
    fr = get(cfg, "split.fractions")
    if not isinstance(fr, ListConfig) or len(fr) != 3 or not all(_is_num(f) and f >= 0 for f in fr) \
            or not math.isclose(sum(fr), 1.0):
        raise ConfigError(f"split.fractions must be three non-negative numbers summing to 1 (train, val, test), "
                          f"got {_show(fr)}")
    integer(cfg, "split.seed", 0)
    number(cfg, "optim.lr", 0.0, lo_open=True)
    number(cfg, "optim.weight_decay", 0.0)
    integer(cfg, "optim.warmup_epochs", 0)
    aug = get(cfg, "augment", None)
    if aug is not None:
        mapping(cfg, "augment")
        for name, node in aug.items():
            if node is not None and (not isinstance(node, DictConfig) or "_target_" not in node):
                raise ConfigError(f"augment.{name} must be null or an augmentation config with a _target_, got "
                                  f"{_show(node)}")
        if aug.get("noise") is not None and "sigma" in aug.noise:
            number(cfg, "augment.noise.sigma", 0.0)
        if aug.get("dropout") is not None and "p" in aug.dropout:
            number(cfg, "augment.dropout.p", 0.0, 1.0, hi_open=True)
    _trainer(cfg)
    _logger(cfg)
