"""wsl-plot: phase diagrams of a zoo as image files in <zoo>/plots/.

    wsl-plot zoo.path=zoos/phase_mlp_digits
    wsl-plot zoo.path=zoos/phase_mlp_digits plot.x=width plot.y=lr plot.metrics=[train_loss,cka/value]
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from wsl.apps.common import CONF_DIR, fail_cleanly, log_summary, preflight
from wsl.apps.config import typed
from wsl.landscape.schema import PlotApp

EXAMPLES = {"zoo.path": "wsl-plot zoo.path=zoos/<name>"}


def typed_config(cfg: DictConfig) -> PlotApp:
    from wsl.landscape.plots import plot_dir

    job = typed(cfg, PlotApp, EXAMPLES)
    plot_dir(job.plot.out_dir, job.zoo.path)  # not a file, a link, a zoo or a directory of other files
    return job


@hydra.main(config_path=CONF_DIR, config_name="plot", version_base="1.3")
@fail_cleanly
def _main(cfg: DictConfig) -> None:
    from wsl.landscape.plots import plot_zoo

    job = typed_config(cfg)
    p = job.plot
    files = plot_zoo(job.zoo.path, x=p.x, y=p.y, metrics=p.metrics, out_dir=p.out_dir, thresholds=job.phase,
                     dpi=p.dpi, fmt=p.format)
    # a zoo of per-cell merges (wsl-merge merge.by=cell): the merge gain per cell next to the source's phase map
    from wsl.merge.plots import plot_merge_phases

    files += plot_merge_phases(job.zoo.path, files[0].parent, x=p.x, y=p.y, thresholds=job.phase, dpi=p.dpi,
                               fmt=p.format)
    print(f"plot: {len(files)} files in {files[0].parent}")
    log_summary(job, {"files": len(files)})


def main() -> None:
    preflight("plot", typed_config)  # bad values stop before any zoo is read
    _main()


if __name__ == "__main__":
    main()
