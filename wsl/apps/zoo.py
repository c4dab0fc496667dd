"""wsl-zoo: train populations of networks from Hydra overrides and store them as a zoo.

    wsl-zoo                                           # quickstart zoo on embedded data
    wsl-zoo dataset=mnist1d net=mlp net.width=16 population.size=64 zoo.path=zoos/mlp16
    wsl-zoo -m experiment=phase_mlp_digits            # a phase-diagram sweep
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from wsl.apps.common import CONF_DIR, fail_cleanly, preflight


@hydra.main(config_path=CONF_DIR, config_name="zoo", version_base="1.3")
@fail_cleanly
def _main(cfg: DictConfig) -> None:
    from wsl.apps.zoo_job import run_zoo_job

    hc = HydraConfig.get()
    root = run_zoo_job(cfg, run_dir=Path(hc.runtime.output_dir), overrides=list(hc.overrides.task))
    print(f"zoo: {root}")


def _validate(cfg: DictConfig) -> None:
    from wsl.apps.zoo_config import validate_zoo_config  # imports torch: not for --help

    validate_zoo_config(cfg)


def main() -> None:
    preflight("zoo", _validate)
    _main()


if __name__ == "__main__":
    main()
