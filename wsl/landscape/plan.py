"""The `landscape:` config node, checked in full before any work: which metrics, with which settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from wsl.errors import ConfigError
from wsl.landscape.base import Metric
from wsl.landscape.metrics import METRICS
from wsl.landscape.phases import PhaseThresholds, _thresholds

TOP_KEYS = {"metrics", "epoch", "chunk_size", "num_samples", "sample_seed", "phase"}


@dataclass
class Plan:
    metrics: list = field(default_factory=list)  # [(Metric, settings dict)] in the configured order
    epochs: list = field(default_factory=lambda: [-1])  # checkpoint epochs; -1 = each model's final one
    chunk_size: int = 64  # models per committed chunk
    phase: PhaseThresholds | None = field(default_factory=PhaseThresholds)  # None: no `phase` group

    @property
    def names(self) -> list[str]:
        return [m.name for m, _ in self.metrics]


def _plain(cfg) -> dict:
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, dict):
        raise ConfigError(f"landscape must be a mapping, got {type(cfg).__name__}")
    return dict(cfg)


def group_name(metric: str, epoch: int) -> str:
    """Annotation group of a metric at an epoch: '<metric>' at the final checkpoint, else '<metric>_epoch<E>'."""
    return metric if epoch == -1 else f"{metric}_epoch{epoch}"


def make_plan(cfg) -> Plan:
    """Validate a `landscape` config node (DictConfig or dict). Unknown metrics fail with the valid names."""
    c = _plain(cfg)
    names = c.get("metrics") or []
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"landscape.metrics must be a list of metric names, got {names!r}; "
                          f"valid: {', '.join(METRICS)}")
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ConfigError(f"landscape.metrics: unknown metric(s) {', '.join(map(repr, unknown))}; "
                          f"valid: {', '.join(METRICS)}")
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise ConfigError(f"landscape.metrics lists {', '.join(dups)} more than once")
    extra = sorted(set(c) - TOP_KEYS - set(METRICS))
    if extra:
        raise ConfigError(f"landscape: unknown key(s) {extra}; valid: {sorted(TOP_KEYS | set(METRICS))}")
    epoch = c.get("epoch", -1)
    epochs = list(epoch) if isinstance(epoch, (list, tuple)) else [epoch]
    if not epochs or any(isinstance(e, bool) or not isinstance(e, int) or e < -1 for e in epochs) \
            or len(set(epochs)) != len(epochs):
        raise ConfigError(f"landscape.epoch must be -1 (each model's final checkpoint), an epoch >= 0, or a list of "
                          f"distinct such values, got {epoch!r}")
    chunk = c.get("chunk_size", 64)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ConfigError(f"landscape.chunk_size must be a positive integer, got {chunk!r}")
    phase = c.get("phase", {})
    if phase is not None and phase is not False:
        try:
            phase = _thresholds(phase)
        except ConfigError as e:
            raise ConfigError(f"landscape.{e}") from None
    else:
        phase = None
    metrics: list[tuple[Metric, dict]] = []
    for n in names:
        node = c.get(n) or {}
        if not isinstance(node, dict):
            raise ConfigError(f"landscape.{n} must be a mapping of settings, got {node!r}")
        metrics.append((METRICS[n], METRICS[n].settings(node)))
    return Plan(metrics, epochs, chunk, phase)
