"""wsl-plot: phase diagrams of a zoo as image files in <zoo>/plots/.

    wsl-plot zoo.path=zoos/phase_mlp_digits
    wsl-plot zoo.path=zoos/phase_mlp_digits plot.x=width plot.y=lr plot.metrics=[train_loss,cka/value]
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from wsl.apps.common import CONF_DIR, fail_cleanly, log_summary, preflight


def _validate(cfg: DictConfig) -> None:
    from wsl.apps.validate import validate_plot
    from wsl.landscape.plots import plot_dir

    validate_plot(cfg)
    plot_dir(cfg.plot.out_dir, cfg.zoo.path)  # not a file, a link, a zoo or a directory of other files


@hydra.main(config_path=CONF_DIR, config_name="plot", version_base="1.3")
@fail_cleanly
def _main(cfg: DictConfig) -> None:
    from wsl.landscape.phases import PhaseThresholds
    from wsl.landscape.plots import plot_zoo

    _validate(cfg)
    p = cfg.plot
    files = plot_zoo(cfg.zoo.path, x=p.x, y=p.y, metrics=None if p.metrics is None else list(p.metrics),
                     out_dir=p.out_dir, thresholds=PhaseThresholds(**OmegaConf.to_container(cfg.phase)),
                     dpi=int(p.dpi), fmt=p.format)
    print(f"plot: {len(files)} files in {files[0].parent}")
    log_summary(cfg, {"files": len(files)})


def main() -> None:
    preflight("plot", _validate)  # bad values stop before any zoo is read
    _main()


if __name__ == "__main__":
    main()
