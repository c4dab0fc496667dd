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

from wsl.apps.common import CONF_DIR, fail_cleanly


@hydra.main(config_path=CONF_DIR, config_name="train_encoder", version_base="1.3")
@fail_cleanly
def main(cfg: DictConfig) -> None:
    from wsl.encoders.experiment import markdown_table, run_experiment

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    table = run_experiment(cfg, out_dir)
    from hydra.utils import instantiate

    print(markdown_table(table, instantiate(cfg.task, _convert_="all")), end="")
    print(f"results: {out_dir / 'results.csv'}")


if __name__ == "__main__":
    main()
