"""Schemas of the zoo room's own app (wsl-verify) and the `zoo:` node every app reads a zoo through."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wsl import schema
from wsl.schema import MISSING


@dataclass
class ZooPath:
    """`zoo: {path: ...}`: the zoo an app reads."""

    path: str = MISSING

    def __post_init__(self):
        schema.text(self, "path")


@dataclass
class VerifyConfig:
    """wsl-verify (conf/verify.yaml)."""

    zoo: ZooPath = field(default_factory=ZooPath)
    checksums: bool = True
    strict: bool = False
    repair: bool = False
    logger: Any = None
