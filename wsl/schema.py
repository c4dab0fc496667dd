"""The vocabulary every room's config schema checks its values with (plain Python: the config
library itself stays in wsl/apps).

A room describes its config group as a dataclass (`wsl/<room>/schema.py`); the apps' typing checks the
types when the app turns the composed config into that dataclass (`wsl.apps.config.typed`), and
the dataclass's `__post_init__` checks ranges and cross-field rules with the functions below.
They raise `FieldError` with the field written as `@name`; `typed` replaces `@name` by the key the
user wrote (`net.width`), so a message reads `net.width must be an integer >= 1, got 0` wherever the
schema is used. Library code that is handed a typed object never checks its values again.
"""

from __future__ import annotations

import math
import re

from wsl.errors import ConfigError

MISSING = "???"  # a required value (`???`: what the config library reads as missing)
MAX_SEED = 2**63 - 1  # seeds are int64: what torch's generators take and the zoo index stores

_KEY = re.compile(r"@([A-Za-z_][\w.]*)")


class FieldError(ConfigError):
    """A value a schema refuses; `@name` in the message is a field of the failing dataclass."""

    def at(self, prefix: str) -> ConfigError:
        """The message with every `@name` written as the user's key `<prefix>.name`."""
        msg = _KEY.sub(lambda m: f"{prefix}.{m.group(1)}" if prefix else m.group(1), str(self))
        return ConfigError(msg)


def fail(msg: str) -> None:
    """Refuse a cross-field rule; name the fields as `@name` (e.g. `@num_images and @per_class ...`)."""
    raise FieldError(msg)


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _null(null: bool) -> str:
    return " or null" if null else ""


def integer(obj, name: str, lo: int | None = None, hi: int | None = None, null: bool = False, extra=()) -> None:
    """obj.name is an integer in [lo, hi] (or one of `extra`, or None when `null`)."""
    v = getattr(obj, name)
    if (v is None and null) or (is_int(v) and v in extra):
        return
    if not is_int(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = (f" >= {lo}" if hi is None else f" in [{lo}, {hi}]") if lo is not None else \
            (f" <= {hi}" if hi is not None else "")
        alt = "".join(f" or {e}" for e in extra)
        raise FieldError(f"@{name} must be an integer{rng}{alt}{_null(null)}, got {v!r}")


def number(obj, name: str, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False, null: bool = False, many: bool = False) -> None:
    """obj.name is a finite number in the interval (or None when `null`; with `many`, also a
    non-empty list of such numbers: a grid swept inside one population)."""
    v = getattr(obj, name)
    if v is None and null:
        return
    values = list(v) if many and isinstance(v, (list, tuple)) else [v]
    if many and not values:
        raise FieldError(f"@{name} must not be an empty list")
    for x in values:
        bad = not is_num(x) or not math.isfinite(x)
        if not bad and lo is not None:
            bad = x <= lo if lo_open else x < lo
        if not bad and hi is not None:
            bad = x >= hi if hi_open else x > hi
        if bad:
            lo_s = "-inf" if lo is None else f"{lo:g}"
            hi_s = "inf" if hi is None else f"{hi:g}"
            rng = f"{'(' if lo_open or lo is None else '['}{lo_s}, {hi_s}{')' if hi_open or hi is None else ']'}"
            what = "a finite number" if lo is None and hi is None else f"a number in {rng}"
            what += " or a list of them" if many else ""
            raise FieldError(f"@{name} must be {what}{_null(null)}, got {v!r}")


def choice(obj, name: str, allowed, null: bool = False) -> None:
    v = getattr(obj, name)
    if v is None and null:
        return
    if not isinstance(v, str) or v not in allowed:
        raise FieldError(f"@{name}={v!r} is not allowed; valid: {', '.join(map(str, allowed))}{_null(null)}")


def text(obj, name: str, null: bool = False, hint: str = "") -> None:
    """obj.name is a non-empty string (a path, a name)."""
    v = getattr(obj, name)
    if v is None and null:
        return
    if not isinstance(v, str) or not v.strip():
        raise FieldError(f"@{name} must be a non-empty string{_null(null)}, got {v!r}{hint}")


def names(obj, name: str, null: bool = False, empty: bool = True) -> None:
    """obj.name is a list of non-empty strings (or None when `null`)."""
    v = getattr(obj, name)
    if v is None and null:
        return
    if not isinstance(v, (list, tuple)) or not all(isinstance(s, str) and s for s in v) or (not empty and not v):
        raise FieldError(f"@{name} must be a{' non-empty' if not empty else ''} list of names{_null(null)}, got {v!r}")


def positive(name: str, v, what: str = "") -> int:
    """A positive integer argument of a library function (not a config field): `name` is the
    parameter; the message is the same as a schema's."""
    if not is_int(v) or v < 1:
        raise ConfigError(f"{name} must be an integer >= 1{what}, got {v!r}")
    return v


# ------------------------------------------------------------------------------------------ targets
# `_target_` -> the dataclass describing that class's options: a node of a config group that
# chooses a class (net=mlp, encoder=nfn, logger=csv, ...) is typed by the schema of what it names.
TARGETS: dict[str, type] = {}


def target_schema(cls: type) -> type:
    """Class decorator: register a dataclass whose `_target_` field default names the class it configures."""
    target = cls.__dataclass_fields__["_target_"].default
    TARGETS[target] = cls
    return cls
