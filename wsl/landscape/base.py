"""What every landscape metric declares: its scope, its settings (checked up front), its columns."""

from __future__ import annotations

from wsl.errors import ConfigError

SPLITS = ("train", "val", "test")


class Metric:
    """One metric of the `landscape.metrics` list.

    scope "model": computed per member of a stacked population; scope "cell": computed on pairs of
    seed replicas of one hyperparameter cell and stored (mean over pairs) on every member's row.
    `defaults` lists every setting; `identity` the ones that define the value (they are stored
    with it and compared on resume), the rest only change speed or memory.
    """

    name: str = ""
    scope: str = "model"
    defaults: dict = {}
    identity: tuple = ()

    def settings(self, given: dict | None) -> dict:
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            raise ConfigError(f"landscape.{self.name}: unknown setting(s) {unknown}; valid: {sorted(self.defaults)}")
        s = {**self.defaults, **given}
        self.check(s)
        return s

    def check(self, s: dict) -> None:
        """Raise ConfigError naming `landscape.<metric>.<key>` for any impossible value."""

    def samples(self, s: dict) -> list[tuple[str, int | None, int]]:
        """(split, num_samples, seed) of every data sample set the metric reads."""
        return []

    # helpers for check()
    def _int(self, s: dict, key: str, lo: int, allow_none: bool = False) -> None:
        v = s[key]
        if allow_none and v is None:
            return
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"landscape.{self.name}.{key} must be an integer >= {lo}"
                              f"{' or null' if allow_none else ''}, got {v!r}")

    def _float(self, s: dict, key: str, lo: float, lo_open: bool = True) -> None:
        v = s[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (v <= lo if lo_open else v < lo):
            raise ConfigError(f"landscape.{self.name}.{key} must be a number {'>' if lo_open else '>='} {lo}, got {v!r}")

    def _bool(self, s: dict, key: str) -> None:
        if not isinstance(s[key], bool):
            raise ConfigError(f"landscape.{self.name}.{key} must be true or false, got {s[key]!r}")

    def _choice(self, s: dict, key: str, allowed) -> None:
        if s[key] not in allowed:
            raise ConfigError(f"landscape.{self.name}.{key}={s[key]!r} is not allowed; valid: {', '.join(allowed)}")

    def _splits(self, s: dict, key: str = "splits") -> None:
        v = s[key]
        if not isinstance(v, (list, tuple)) or not v or any(x not in SPLITS for x in v) or len(set(v)) != len(v):
            raise ConfigError(f"landscape.{self.name}.{key} must be a non-empty list of distinct splits from "
                              f"{', '.join(SPLITS)}, got {v!r}")
