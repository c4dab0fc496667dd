"""wsl-train-generator: learn a diffusion or flow-matching generator of network weights from a zoo.

    wsl-train-generator zoo.path=zoos/mlp_digits generator=flow        # or generator=diffusion
    wsl-train-generator zoo.path=zoos/mlp_digits generator/denoiser=transformer condition.columns=[val_acc]

The run directory (hydra.run.dir) receives generator.safetensors, generator.json and config.json.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from wsl.apps.common import CONF_DIR, fail_cleanly, preflight


@hydra.main(config_path=CONF_DIR, config_name="train_generator", version_base="1.3")
@fail_cleanly
def _main(cfg: DictConfig) -> None:
    from wsl.generators.train import train_generator

    run = train_generator(cfg, run_dir=Path(HydraConfig.get().runtime.output_dir))
    print(f"generator run: {run.path} (spread ratio {run.training['spread_ratio']:.3f})")


def main() -> None:
    preflight("train_generator")
    _main()


if __name__ == "__main__":
    main()
