"""wsl-landscape: compute loss-landscape metrics of an existing zoo and store them in its index.

    wsl-landscape zoo.path=zoos/phase_mlp_digits                   # landscape=basic
    wsl-landscape zoo.path=zoos/phase_mlp_digits landscape=full
    wsl-landscape zoo.path=... landscape.metrics=[cka,spectra] landscape.epoch=5
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from wsl.apps.common import CONF_DIR, fail_cleanly
from wsl.errors import ConfigError


@hydra.main(config_path=CONF_DIR, config_name="landscape", version_base="1.3")
@fail_cleanly
def main(cfg: DictConfig) -> None:
    from wsl.landscape import annotate_zoo

    if OmegaConf.is_missing(cfg.zoo, "path"):
        raise ConfigError("zoo.path is required, e.g. wsl-landscape zoo.path=zoos/<name>")
    ids = None if cfg.model_ids is None else list(cfg.model_ids)
    done = annotate_zoo(cfg.zoo.path, cfg.landscape, ids)
    print("landscape: " + (", ".join(f"{k} {v} rows" for k, v in done.items()) or "no metrics configured")
          + f" -> {cfg.zoo.path}")


if __name__ == "__main__":
    main()
