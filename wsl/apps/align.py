"""wsl-align: a canonicalized copy of a zoo (every net weight-matched to a reference net).

    wsl-align zoo.path=zoos/x out=zoos/x-aligned
    wsl-align zoo.path=zoos/x out=zoos/x-global reference=global epoch=10

The resolved config and the copy's alignment record (mean loss and accuracy barriers to the
reference before and after, per numeric column, and the BatchNorm reset's batches) are logged
(logger=csv by default) in the run directory.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from wsl.apps.common import CONF_DIR, fail_cleanly, log_summary, preflight
from wsl.apps.config import typed
from wsl.zoo.safe_paths import check_zoo_output

EXAMPLES = {"zoo.path": "wsl-align zoo.path=zoos/x out=zoos/x-aligned"}


def typed_config(cfg: DictConfig):
    """The typed config (wsl.align.schema.AlignConfig); out= must not be a file, a link or a foreign directory."""
    from wsl.align.schema import AlignConfig

    job = typed(cfg, AlignConfig, EXAMPLES)
    check_zoo_output(job.out or f"{job.zoo.path.rstrip('/')}-aligned", "wsl-align", "out")
    return job


def summary_of(out) -> dict:
    """Model count, the mean of every numeric column of the copy's `alignment` record, and how BatchNorm
    statistics were set along the barriers' lines (the record's bn_reset* attributes)."""
    import numpy as np

    from wsl.align import GROUP
    from wsl.zoo import Zoo

    zoo = Zoo(out)
    table = zoo.table()
    means = {}
    for col in table.columns:
        if str(col).startswith(f"{GROUP}/"):
            try:
                v = table[col].to_numpy(dtype="float64")
            except (TypeError, ValueError):
                continue  # a text column (e.g. the reference id)
            means[str(col).split("/", 1)[1]] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
    attrs = zoo.annotation(GROUP)["attrs"]
    return {"models": len(table), GROUP: means, "batchnorm": {k: v for k, v in attrs.items() if k.startswith("bn_reset")}}


@hydra.main(config_path=CONF_DIR, config_name="align", version_base="1.3")
@fail_cleanly
def _main(cfg: DictConfig) -> None:
    from wsl.align import align_zoo

    job = typed_config(cfg)
    out = align_zoo(job)
    print(f"aligned zoo: {out}")
    log_summary(job, summary_of(out))


def main() -> None:
    preflight("align", typed_config)  # bad values stop before any zoo is read
    _main()


if __name__ == "__main__":
    main()
