"""Experiment tracking: the `logger=` group's factories and what every app logs at the end of a job.

    logger=csv          Lightning's CSVLogger (default; always on disk in the run directory)
    logger=tensorboard  Lightning's TensorBoardLogger
    logger=wandb        `wandb_logger` below: Lightning's WandbLogger that never waits on a login prompt
    logger=none         no experiment logger

Apps build the logger from `cfg.logger` with `save_dir` set to their run directory, pass it to their
Lightning Trainer, and end the job with `log_run(logger, resolved_config, final_metrics)`.

W&B rules kept here (REFERENCES.md, pitfalls): one W&B run per Hydra job, finished with
`wandb.finish()` when the job ends; `WANDB_MODE=offline|disabled` needs no network; with no
credentials the run is written offline (with a warning) instead of prompting for a login.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
import netrc
import numbers
import os
import warnings
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

from wsl.errors import ConfigError
from wsl.schema import FieldError, target_schema

log = logging.getLogger("wsl.tracking")

WANDB_MODES = ("online", "offline", "disabled")
_MODE_ALIASES = {"dryrun": "offline", "run": "online", "shared": "online"}


# Lines Lightning logs on every run that say nothing about it: its litlogger advert and the
# accelerator banners (the device a job ran on is in its resolved config: trainer.accelerator).
_NOISE = ("💡 Tip", "GPU available: ", "TPU available: ", "HPU available: ", "IPU available: ")
# Lightning's own console handlers (lightning/__init__.py, lightning/pytorch/__init__.py, ...)
_LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_NOISE)


_DropAdvert = _DropNoise  # its first name (tests look filters up by it)


def quiet_lightning() -> None:
    """One line per event from a Lightning Trainer; call it before building one.

    - Under a logging config (Hydra's job_logging: root has handlers), Lightning's records go to
      the root's handlers only: Lightning adds its own stderr handler to the `lightning` logger on
      import, so each INFO line was printed twice (once bare, once by Hydra's console handler).
      With no logging config (a plain script, a notebook) Lightning keeps its handler: the lines
      are printed once, by it.
    - Its litlogger advert and the GPU/TPU/... banners are dropped (warnings such as "GPU available
      but not used" are warnings, not these INFO lines, and still show).
    - Three warnings that ask nothing of the user are ignored: torch's LeafSpec deprecation raised
      inside Lightning's own pytree code; "the number of training batches is smaller than the
      logging interval" (Lightning counts `log_every_n_steps` in global steps across epochs, so
      short epochs lose no logged rows); "a `validation_step` but no `val_dataloader`" (the
      generator validates only when zoo.val_fraction > 0, and its log line says so)."""
    if logging.getLogger().handlers:
        for name in _LIGHTNING_LOGGERS:
            if name not in logging.root.manager.loggerDict:
                continue  # never create a logger (pytorch_lightning may not be installed)
            lg = logging.getLogger(name)
            for h in [h for h in lg.handlers if type(h) is logging.StreamHandler]:  # Lightning's, not a user's
                lg.removeHandler(h)
            lg.propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in lg.filters):
            lg.addFilter(_DropNoise())
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging "
                            r"interval", category=UserWarning)
    warnings.filterwarnings("ignore", message=r"You defined a `validation_step` but have no `val_dataloader`",
                            category=UserWarning)


# ------------------------------------------------------------------------------------------ schemas
# The `logger=` group (conf/logger/*.yaml). `save_dir` is given by the app (its run directory).
def _needs(package: str, option: str, *modules: str) -> None:
    if not any(importlib.util.find_spec(m) for m in modules or (package,)):
        raise FieldError(f"logger={option} needs the {package} package, which is not installed: "
                         f"pip install {package} (or logger=csv)")


@target_schema
@dataclasses.dataclass
class CSVLoggerConfig:
    _target_: str = "lightning.pytorch.loggers.CSVLogger"
    save_dir: Optional[str] = None
    name: str = "logs"
    version: str = ""


@target_schema
@dataclasses.dataclass
class TensorBoardLoggerConfig:
    _target_: str = "lightning.pytorch.loggers.TensorBoardLogger"
    save_dir: Optional[str] = None
    name: str = "tb"
    version: str = ""
    default_hp_metric: bool = False

    def __post_init__(self):
        _needs("tensorboard", "tensorboard", "tensorboard", "tensorboardX")


@target_schema
@dataclasses.dataclass
class WandbLoggerConfig:
    _target_: str = "wsl.tracking.wandb_logger"
    save_dir: Optional[str] = None
    project: str = "wsl"
    entity: Optional[str] = None
    name: Optional[str] = None
    group: Optional[str] = None
    job_type: Optional[str] = None
    tags: list[str] = dataclasses.field(default_factory=list)
    mode: Optional[str] = None
    log_model: Any = False

    def __post_init__(self):
        _needs("wandb", "wandb")
        if self.mode is not None and str(self.mode).lower() not in (*WANDB_MODES, *_MODE_ALIASES):
            raise FieldError(f"@mode={self.mode!r} is not a W&B mode; valid: {', '.join(WANDB_MODES)}")


# ------------------------------------------------------------------------------------------ W&B
def wandb_credentials() -> str | None:
    """Where W&B would find an API key without asking (env var, token file or netrc), or None.

    Read with the standard library so that checking never starts W&B's interactive login."""
    if os.environ.get("WANDB_API_KEY"):
        return "WANDB_API_KEY"
    if os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return "WANDB_IDENTITY_TOKEN_FILE"
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    candidates = [os.environ["NETRC"]] if os.environ.get("NETRC") else [
        str(Path.home() / ".netrc"), str(Path.home() / "_netrc")]
    for path in candidates:
        try:
            if netrc.netrc(path).authenticators(host):
                return path
        except (OSError, netrc.NetrcParseError):
            continue  # a missing or unreadable netrc means: no credentials from it
    return None


def resolve_wandb_mode(mode: str | None = None) -> str:
    """The W&B mode a job runs in: `mode` if given, else $WANDB_MODE, else online when credentials
    exist. An online mode without credentials falls back to offline with a warning (never a prompt)."""
    source = "logger.mode"
    if mode is None:
        mode, source = os.environ.get("WANDB_MODE") or None, "WANDB_MODE"
    if mode is None:
        mode, source = "online", None
    mode = _MODE_ALIASES.get(str(mode).lower(), str(mode).lower())
    if mode not in WANDB_MODES:
        where = "logger.mode" if source == "logger.mode" else "the environment variable WANDB_MODE"
        raise ConfigError(f"{where}={mode!r} is not a W&B mode; valid: {', '.join(WANDB_MODES)}")
    if mode == "online" and wandb_credentials() is None:
        msg = ("logger=wandb: no W&B credentials (WANDB_API_KEY, ~/.netrc from `wandb login`)"
               + (f" although {source}=online" if source else " and WANDB_MODE is unset")
               + "; logging offline instead (upload later with `wandb sync <run dir>/wandb/offline-run-*`)")
        warnings.warn(msg, stacklevel=2)
        log.warning(msg)
        mode = "offline"
    return mode


def _hydra_job():
    """(job name, sweep dir name or None) of the running Hydra job; (None, None) outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return None, None
    multirun = str(hc.mode) == "RunMode.MULTIRUN"
    return hc.job.name, (Path(hc.sweep.dir).name if multirun else None)


def _inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    try:
        return Path(path).resolve().is_relative_to(Path(root).resolve())
    except (OSError, ValueError):
        return False


def wandb_logger(save_dir: str, project: str = "wsl", name: str | None = None, version: str | None = None,
                 mode: str | None = None, entity: str | None = None, group: str | None = None,
                 job_type: str | None = None, tags=None, log_model: bool | str = False, **kwargs):
    """Lightning's WandbLogger for one Hydra job, writing under `<save_dir>/wandb/`.

    `version` is accepted so that apps can pass the same arguments to every logger, but it never
    becomes the W&B run id (ids must be unique in a project; a job's several trainers share its
    one run). `group` defaults to the multirun sweep (jobs of a sweep side by side), `job_type` to
    the app. A run left open by an earlier job in this process is finished first; a run of this
    job (same save_dir) is reused."""
    try:
        import wandb
        from lightning.pytorch.loggers import WandbLogger
    except ImportError as e:
        raise ConfigError("logger=wandb needs the wandb package: pip install wandb "
                          "(or pip install 'wsl[tracking]')") from e
    del version  # see above: never a run id
    mode = resolve_wandb_mode(mode)
    if log_model and mode != "online":
        log.warning("logger.log_model=%s ignored: W&B runs in %s mode", log_model, mode)
        log_model = False
    app, sweep = _hydra_job()
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    run = wandb.run
    if run is not None and not _inside(run.dir, save_dir):
        log.warning("finishing W&B run %s left open by an earlier job", run.id)
        wandb.finish()
        run = None
    return WandbLogger(save_dir=str(save_dir), project=project, name=name, log_model=log_model, experiment=run,
                       mode=mode, entity=entity, group=group or sweep, job_type=job_type or app,
                       tags=list(tags) if tags else None, **kwargs)


# ------------------------------------------------------------------------------------------ any logger
def make_logger(node, save_dir: str | os.PathLike, **kwargs):
    """The one way every app builds its `logger=` node (a schema below, or a mapping with a
    `_target_`): `save_dir` set to the run directory, plus any other constructor arguments (e.g.
    name/version); False when the node is empty (logger=none)."""
    from hydra.utils import instantiate

    from wsl.errors import WslError

    if dataclasses.is_dataclass(node):
        node = dataclasses.asdict(node)
    if not node or "_target_" not in node:
        return False
    cfg = dict(node)
    cfg.update(save_dir=str(save_dir), **kwargs)  # the group's default names Hydra's run dir
    try:
        return instantiate(cfg)
    except Exception as e:  # Hydra wraps a factory's ConfigError: hand it on as it is (one clear line)
        if isinstance(e.__cause__, WslError):
            raise e.__cause__ from None
        raise


def _flat_numbers(d: dict, prefix: str = "") -> dict[str, float]:
    """{'a': {'b': 1}} -> {'a/b': 1.0}; only finite-or-not real scalars (0-d tensors, numpy too).
    Strings and lists are no metrics: they belong in the config or in the app's own outputs."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_numbers(v, f"{key}/"))
            continue
        if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:
            v = v.item()
        if isinstance(v, numbers.Real) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def _loggers(logger) -> list:
    if not logger:
        return []
    return list(logger) if isinstance(logger, (list, tuple)) else [logger]


def log_run(logger, config: dict, final_metrics: dict, prefix: str = "final/") -> dict[str, float]:
    """End a job's tracking: log the resolved config and the final metrics, flush, finish.

    `logger`: what `make_logger` / the trainer got (a Lightning logger, a list of them, or
    False/None: nothing to do). `config`: the resolved config as plain types. `final_metrics`:
    nested dicts of numbers; each is logged as `<prefix><key>` (non-numbers are skipped).
    W&B: the metrics also go into the run summary, then `wandb.finish()` closes the job's run, so
    call this once, last. Returns the flat metrics that were logged."""
    flat = {f"{prefix}{k}": v for k, v in _flat_numbers(final_metrics).items()}
    for lg in _loggers(logger):
        kind = type(lg).__name__
        if kind == "TensorBoardLogger":
            # one call: the HParams tab pairs the config with the finite metrics (it refuses NaN)
            finite = {k: v for k, v in flat.items() if math.isfinite(v)}
            lg.log_hyperparams(config, metrics=finite or None)
            rest = {k: v for k, v in flat.items() if k not in finite}
            if rest:
                lg.log_metrics(rest)
        else:
            lg.log_hyperparams(config)
            if flat:
                lg.log_metrics(flat, step=_csv_next_step(lg) if kind == "CSVLogger" else None)
        if kind == "WandbLogger":
            _finish_wandb(lg, flat)
        else:
            lg.save()
            lg.finalize("success")
    return flat


def keep_csv_rows(logger) -> None:
    """Open a CSVLogger's writer without losing the rows already on disk.

    Lightning's CSV writer deletes `metrics.csv` when it starts in a directory that holds one. An
    app that logs its summary where the job's trainer logged its steps (same logger config, same
    run directory) calls this first: the rows are put back and the final row goes after them."""
    import csv

    from lightning.pytorch.utilities import rank_zero_only

    if getattr(rank_zero_only, "rank", 0):  # DDP: rank 0 alone writes (another rank would rewrite its rows)
        return
    for lg in _loggers(logger):
        if type(lg).__name__ != "CSVLogger":
            continue
        path = Path(lg.log_dir) / "metrics.csv"
        text = path.read_text() if path.is_file() else None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
            writer = lg.experiment  # starts the writer (which removes metrics.csv)
        if text:
            path.write_text(text)
            header = next(csv.reader(text.splitlines()), [])
            writer.metrics_keys = sorted(set(writer.metrics_keys) | set(header))


def _csv_next_step(lg) -> int:
    """CSVLogger rows are keyed by step: the final row goes after every row logged so far
    (those still in memory and those already flushed to metrics.csv)."""
    import csv

    writer = lg.experiment
    steps = [m.get("step", -1) for m in writer.metrics]
    path = Path(writer.metrics_file_path)
    if path.is_file():
        with path.open(newline="") as f:
            steps += [float(r["step"]) for r in csv.DictReader(f) if r.get("step") not in (None, "")]
    return int(max(steps, default=-1)) + 1


def _finish_wandb(lg, flat: dict) -> None:
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:
        return  # only rank 0 holds a W&B run
    import wandb

    run = lg.experiment
    if flat and getattr(run, "summary", None) is not None:
        run.summary.update(flat)
    lg.finalize("success")
    if wandb.run is not None:
        wandb.finish()
