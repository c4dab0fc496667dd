"""Which checkpoint epoch a consumer reads: checked against the index before any checkpoint is loaded."""

from __future__ import annotations

from wsl.errors import ConfigError, printable


def _show(epochs: list) -> str:
    if not epochs:
        return "none common to them"
    if len(epochs) > 8:
        return f"{epochs[0]}, {epochs[1]}, ..., {epochs[-1]} ({len(epochs)} epochs)"
    return ", ".join(str(e) for e in epochs)


def check_epoch(zoo, ids: list, epoch: int, key: str) -> None:
    """Every model of `ids` has a checkpoint at `epoch` (-1: each model's last one), or one ConfigError that
    names `key`, how many models lack it (one of them by id) and the epochs they all have."""
    if epoch == -1 or not ids:
        return
    have = {m: zoo.checkpoint_epochs(m) for m in ids}
    missing = [m for m in ids if epoch not in have[m]]
    if not missing:
        return
    common = sorted(set.intersection(*(set(v) for v in have.values())))
    raise ConfigError(f"{key}={epoch}: {len(missing)} of {len(ids)} models of {printable(zoo.path)} have no checkpoint "
                      f"at that epoch (e.g. {printable(missing[0])}); epochs available: {_show(common)} "
                      "(or -1: each model's last)")
