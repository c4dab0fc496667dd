"""One way to build a Lightning Trainer for every app, the checks of a `trainer:` node, the device
checks of `device=` options, and the DDP rank helpers.

Imports neither torch nor Lightning at module level: schemas call the checks while an app's
`--help` must stay fast.
"""

from __future__ import annotations

from pathlib import Path

from wsl.schema import FieldError, is_int

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def check_trainer(t: dict, steps: bool = False) -> None:
    """The options of a `trainer:` node that wsl sets or reads (Lightning checks the rest when it
    starts). Messages name `@trainer.<option>`. `steps`: max_steps must be given (a step budget)."""
    for k in ("accelerator", "strategy"):
        if k in t and (not isinstance(t[k], str) or not t[k].strip()):
            raise FieldError(f"@trainer.{k} must be a non-empty string, got {t[k]!r}")
    if "devices" in t:
        v = t["devices"]
        if not (v == "auto" or (is_int(v) and (v >= 1 or v == -1)) or
                (isinstance(v, list) and v and all(is_int(d) and d >= 0 for d in v))):
            raise FieldError(f"@trainer.devices must be a positive integer, -1 (all), auto or a list of device "
                             f"indices, got {v!r}")
    if "accelerator" in t:
        _accelerator(str(t["accelerator"]), t.get("devices", "auto"))
    if "log_every_n_steps" in t and (not is_int(t["log_every_n_steps"]) or t["log_every_n_steps"] < 1):
        raise FieldError(f"@trainer.log_every_n_steps must be an integer >= 1, got {t['log_every_n_steps']!r}")
    if "max_epochs" in t:
        v = t["max_epochs"]
        if v is not None and (not is_int(v) or v < -1):
            raise FieldError(f"@trainer.max_epochs must be an integer >= -1 or null, got {v!r}")
        if v == 0:
            raise FieldError("@trainer.max_epochs must be >= 1, or -1 (no limit) with @trainer.max_steps set, got 0")
    if steps or "max_steps" in t:
        v = t.get("max_steps")
        if not is_int(v) or (v < 1 and v != -1):
            raise FieldError(f"@trainer.max_steps must be an integer >= 1 or -1, got {v!r}")
        if v == -1 and t.get("max_epochs") in (-1, None):
            raise FieldError("@trainer.max_steps=-1 with @trainer.max_epochs=-1 would train forever; set one of them")


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _accelerator(name: str, devices) -> None:
    """trainer.accelerator must exist on this machine (Lightning's own error is a traceback)."""
    import torch

    acc = name.lower()
    if acc not in ACCELERATORS:
        raise FieldError(f"@trainer.accelerator={name!r} is not supported; valid: {', '.join(ACCELERATORS)}")
    if acc in ("gpu", "cuda"):
        n = _cuda_devices()
        if n == 0:
            raise FieldError(f"@trainer.accelerator={name} but this machine has no CUDA GPU; use "
                             "@trainer.accelerator=cpu (or auto)")
        wanted = len(devices) if isinstance(devices, list) else devices
        index = max(devices) if isinstance(devices, list) else -1
        if (is_int(wanted) and wanted > n) or index >= n:
            raise FieldError(f"@trainer.devices={devices!r} asks for more GPUs than the {n} this machine has")
    if acc == "mps" and not torch.backends.mps.is_available():
        raise FieldError(f"@trainer.accelerator={name} but MPS (Apple GPU) is not available here; use "
                         "@trainer.accelerator=cpu (or auto)")


def check_device(obj, name: str = "device") -> None:
    """obj.name is a torch device name (cpu, cuda, cuda:1, mps) that exists on this machine."""
    import torch

    v = getattr(obj, name)
    if not isinstance(v, str) or not v.strip():
        raise FieldError(f"@{name} must be a device name such as cpu or cuda, got {v!r}")
    try:
        dev = torch.device(v)
    except (RuntimeError, ValueError):
        raise FieldError(f"@{name}={v!r} is not a device name (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda":
        n = _cuda_devices()
        if n == 0:
            raise FieldError(f"@{name}={v} but this machine has no CUDA GPU; use @{name}=cpu")
        if dev.index is not None and dev.index >= n:
            raise FieldError(f"@{name}={v}: this machine has {n} CUDA GPU(s) (cuda:0 to cuda:{n - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise FieldError(f"@{name}={v} but MPS (Apple GPU) is not available here; use @{name}=cpu")
    elif dev.type not in ("cpu", "cuda", "mps", "meta"):
        raise FieldError(f"@{name}={v!r}: device type {dev.type} is not supported here (cpu, cuda, mps)")


def make_trainer(options: dict | None = None, *, logger=False, callbacks=(), progress_refresh_rate: int = 0,
                 run_dir: str | Path | None = None, **fixed):
    """A lightning.Trainer: the user's `trainer:` options, then what the app fixes (`fixed` wins),
    a progress bar refreshed every `progress_refresh_rate` steps (0: none), no checkpointing and no
    model summary unless asked, Lightning's console output quieted (wsl.tracking.quiet_lightning)."""
    import lightning as L
    from lightning.pytorch.callbacks import TQDMProgressBar

    from wsl.tracking import quiet_lightning

    kw = dict(options or {})
    kw.update(fixed)
    callbacks = list(callbacks)
    if progress_refresh_rate > 0:
        callbacks.append(TQDMProgressBar(refresh_rate=progress_refresh_rate))
    kw.setdefault("enable_progress_bar", progress_refresh_rate > 0)
    kw.setdefault("enable_model_summary", False)
    kw.setdefault("enable_checkpointing", False)
    if run_dir is not None:
        kw.setdefault("default_root_dir", str(run_dir))
    quiet_lightning()
    return L.Trainer(logger=logger, callbacks=callbacks, **kw)


def global_rank(trainer=None) -> int:
    """This process's rank under Lightning's DDP (0 without it)."""
    if trainer is not None:
        return int(trainer.global_rank)
    from lightning.pytorch.utilities import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def barrier() -> None:
    """Wait for every DDP rank (no-op without a process group)."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
