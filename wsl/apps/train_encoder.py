"""wsl-train-encoder: predict properties of the nets in a zoo from their weights.

    wsl-train-encoder zoo.path=zoos/phase_cnn_mnist1d encoder=nfn task=test_acc
    wsl-train-encoder -m zoo.path=zoos/x encoder=flat,stats,deepsets,nfn,graph,transformer task=test_acc,hparams

Writes results.csv and results.md (mean ± std over `seeds`) to the run directory.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from wsl.apps.common import CONF_DIR, fail_cleanly, preflight


@hydra.main(config_path=CONF_DIR, config_name="train_encoder", version_base="1.3")
@fail_cleanly
def _main(cfg: DictConfig) -> None:
    from wsl.encoders.experiment import run_experiment

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    run_experiment(cfg, out_dir)
    print((out_dir / "results.md").read_text(), end="")
    print(f"results: {out_dir / 'results.csv'}")


def main() -> None:
    from wsl.encoders.experiment import check_config

    preflight("train_encoder", check_config)
    _main()


if __name__ == "__main__":
    main()
