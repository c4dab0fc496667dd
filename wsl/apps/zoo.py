"""wsl-zoo: train populations of networks from Hydra overrides and store them as a zoo.

    wsl-zoo                                           # quickstart zoo on embedded data
    wsl-zoo dataset=mnist1d net=mlp net.width=16 population.size=64 zoo.path=zoos/mlp16
    wsl-zoo -m experiment=phase_mlp_digits            # a phase-diagram sweep
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from wsl.apps.common import CONF_DIR, fail_cleanly, preflight

if TYPE_CHECKING:
    from wsl.population.schema import ZooJobConfig


def typed_config(cfg: DictConfig) -> ZooJobConfig:
    """The job's typed config; every value checked before any data is loaded or any net trained."""
    from wsl.apps.config import typed
    from wsl.population.schema import ZooJobConfig  # imports torch: not for --help

    return typed(cfg, ZooJobConfig)


@hydra.main(config_path=CONF_DIR, config_name="zoo", version_base="1.3")
@fail_cleanly
def _main(cfg: DictConfig) -> None:
    from wsl.apps.zoo_job import run_zoo_job

    job = typed_config(cfg)
    hc = HydraConfig.get()
    root = run_zoo_job(job, run_dir=Path(hc.runtime.output_dir), overrides=list(hc.overrides.task))
    print(f"zoo: {root}")


def main() -> None:
    preflight("zoo", typed_config)
    _main()


if __name__ == "__main__":
    main()
