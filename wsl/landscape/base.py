"""What every landscape metric declares: its scope, which settings define its value, the data it reads."""

from __future__ import annotations


class Metric:
    """One metric of the `landscape.metrics` list (its settings: wsl.landscape.schema.SETTINGS[name]).

    scope "model": computed per member of a stacked population; scope "cell": computed on pairs of
    seed replicas of one hyperparameter cell and stored (mean over pairs) on every member's row.
    `identity` lists the settings that define the value (they are stored with it and compared on
    resume); the others only change speed or memory.
    """

    name: str = ""
    scope: str = "model"
    identity: tuple = ()

    def samples(self, s: dict) -> list[tuple[str, int | None, int]]:
        """(split, num_samples, seed) of every data sample set the metric reads."""
        return []
