"""wsl-align: a canonicalized copy of a zoo (every net weight-matched to a reference net).

    wsl-align zoo.path=zoos/x out=zoos/x-aligned
    wsl-align zoo.path=zoos/x out=zoos/x-global reference=global epoch=10

The resolved config and the copy's alignment record (mean barrier to the reference before and
after, per numeric column) are logged (logger=csv by default) in the run directory.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from wsl.apps.common import CONF_DIR, fail_cleanly, log_summary, preflight, to_container, without_logger
from wsl.errors import ConfigError
from wsl.zoo.safe_paths import check_zoo_output


def settings_from(cfg: DictConfig):
    from wsl.symmetry.canonical import AlignSettings

    if OmegaConf.is_missing(cfg.zoo, "path") or not isinstance(cfg.zoo.path, str) or not cfg.zoo.path.strip():
        raise ConfigError("zoo.path is required (wsl-align zoo.path=zoos/x out=zoos/x-aligned)")
    for key in ("out", "name"):
        v = cfg.get(key)
        if v is not None and (not isinstance(v, str) or not v.strip()):
            raise ConfigError(f"{key} must be a non-empty string or null, got {v!r}")
    check_zoo_output(cfg.out or f"{str(cfg.zoo.path).rstrip('/')}-aligned", "wsl-align", "out")  # not a file
    c = to_container(without_logger(cfg))
    m, b = c["matching"], c["barrier"]
    return AlignSettings(reference=c["reference"], reference_id=c["reference_id"], epoch=c["epoch"],
                         epochs=c["epochs"], annotations=c["annotations"], max_iter=m["max_iter"], seed=m["seed"],
                         restarts=m["restarts"], split=b["split"], samples=b["samples"], points=b["points"],
                         chunk=b["chunk"], name=c["name"])


def summary_of(out) -> dict:
    """Model count and the mean of every numeric column of the copy's `alignment` record."""
    import numpy as np

    from wsl.symmetry.canonical import GROUP
    from wsl.zoo import Zoo

    table = Zoo(out).table()
    means = {}
    for col in table.columns:
        if str(col).startswith(f"{GROUP}/"):
            try:
                v = table[col].to_numpy(dtype="float64")
            except (TypeError, ValueError):
                continue  # a text column (e.g. the reference id)
            means[str(col).split("/", 1)[1]] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
    return {"models": len(table), GROUP: means}


@hydra.main(config_path=CONF_DIR, config_name="align", version_base="1.3")
@fail_cleanly
def _main(cfg: DictConfig) -> None:
    from wsl.symmetry.canonical import align_zoo

    settings = settings_from(cfg)
    out = align_zoo(cfg.zoo.path, cfg.out, settings, config=to_container(without_logger(cfg)))
    print(f"aligned zoo: {out}")
    log_summary(cfg, summary_of(out))


def main() -> None:
    preflight("align", validate=settings_from)  # bad values stop before any zoo is read
    _main()


if __name__ == "__main__":
    main()
