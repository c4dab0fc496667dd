"""What every app shares: turning wsl errors into one clear line, and Hydra's search path."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from wsl.errors import WslError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("wsl")


def fail_cleanly(fn):
    """Run an app body; a WslError becomes one line on stderr and exit status 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except WslError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def to_container(cfg: DictConfig) -> dict:
    """The resolved config as plain Python types (what is stored next to every output)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
