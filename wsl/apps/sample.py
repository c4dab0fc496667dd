"""wsl-sample: draw networks from a trained generator and write them as a zoo.

    wsl-sample run=runs/train_generator/<date> n=1000 zoo.path=zoos/mlp_digits-gen
    wsl-sample run=... n=100 condition={val_acc:0.95} guidance=2 zoo.path=zoos/mlp_digits-gen-acc95
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from wsl.apps.common import CONF_DIR, fail_cleanly, preflight


@hydra.main(config_path=CONF_DIR, config_name="sample", version_base="1.3")
@fail_cleanly
def _main(cfg: DictConfig) -> None:
    from wsl.generators.sample import sample_run

    root = sample_run(cfg)
    print(f"zoo: {root}")


def main() -> None:
    preflight("sample")
    _main()


if __name__ == "__main__":
    main()
