"""wsl-align: a canonicalized copy of a zoo (every net weight-matched to a reference net).

    wsl-align zoo.path=zoos/x out=zoos/x-aligned
    wsl-align zoo.path=zoos/x out=zoos/x-global reference=global epoch=10
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from wsl.apps.common import CONF_DIR, fail_cleanly, preflight, to_container
from wsl.errors import ConfigError


def settings_from(cfg: DictConfig):
    from wsl.symmetry.canonical import AlignSettings

    if OmegaConf.is_missing(cfg.zoo, "path") or not str(cfg.zoo.path).strip():
        raise ConfigError("zoo.path is required (wsl-align zoo.path=zoos/x out=zoos/x-aligned)")
    c = to_container(cfg)
    m, b = c["matching"], c["barrier"]
    return AlignSettings(reference=c["reference"], reference_id=c["reference_id"], epoch=c["epoch"],
                         epochs=c["epochs"], annotations=c["annotations"], max_iter=m["max_iter"], seed=m["seed"],
                         restarts=m["restarts"], split=b["split"], samples=b["samples"], points=b["points"],
                         chunk=b["chunk"], name=c["name"])


@hydra.main(config_path=CONF_DIR, config_name="align", version_base="1.3")
@fail_cleanly
def _main(cfg: DictConfig) -> None:
    from wsl.symmetry.canonical import align_zoo

    settings = settings_from(cfg)
    out = align_zoo(cfg.zoo.path, cfg.out, settings, config=to_container(cfg))
    print(f"aligned zoo: {out}")


def main() -> None:
    preflight("align", validate=settings_from)  # bad values stop before any zoo is read
    _main()


if __name__ == "__main__":
    main()
