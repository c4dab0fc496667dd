"""wsl-plot: phase diagrams of a zoo as image files in <zoo>/plots/.

    wsl-plot zoo.path=zoos/phase_mlp_digits
    wsl-plot zoo.path=zoos/phase_mlp_digits plot.x=width plot.y=lr plot.metrics=[train_loss,cka/value]
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from wsl.apps.common import CONF_DIR, fail_cleanly
from wsl.errors import ConfigError


@hydra.main(config_path=CONF_DIR, config_name="plot", version_base="1.3")
@fail_cleanly
def main(cfg: DictConfig) -> None:
    from wsl.landscape.phases import PhaseThresholds
    from wsl.landscape.plots import plot_zoo

    if OmegaConf.is_missing(cfg.zoo, "path"):
        raise ConfigError("zoo.path is required, e.g. wsl-plot zoo.path=zoos/<name>")
    p = cfg.plot
    files = plot_zoo(cfg.zoo.path, x=p.x, y=p.y, metrics=None if p.metrics is None else list(p.metrics),
                     out_dir=p.out_dir, thresholds=PhaseThresholds(**OmegaConf.to_container(cfg.phase)),
                     dpi=int(p.dpi), fmt=p.format)
    print(f"plot: {len(files)} files in {files[0].parent}")


if __name__ == "__main__":
    main()
