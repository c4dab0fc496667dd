"""wsl-train-encoder: predict properties of the nets in a zoo from their weights.

    wsl-train-encoder zoo.path=zoos/phase_cnn_mnist1d encoder=nfn task=test_acc
    wsl-train-encoder -m zoo.path=zoos/x encoder=flat,stats,deepsets,nfn,graph,transformer task=test_acc,hparams

Writes results.csv and results.md (mean ± std over `seeds`) to the run directory, and each seed's model
(its best validation epoch) as encoders/seed<k>.safetensors (+ .json, the description it is rebuilt from
without pickle; config.json: the resolved config), which wsl-embed and wsl-evaluate encoder_run= read. Each
seed's trainer logs its epochs (logger=csv by default: <run dir>/encoder/seed<k>/); the resolved config and
the table's mean and std rows are logged last (<run dir>/logs/ with logger=csv).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from wsl.apps.common import CONF_DIR, fail_cleanly, log_summary, preflight, run_dir
from wsl.apps.config import typed

if TYPE_CHECKING:
    from wsl.encoders.schema import TrainEncoderConfig

EXAMPLES = {"zoo.path": "wsl-train-encoder zoo.path=zoos/<name> encoder=nfn task=test_acc"}


def typed_config(cfg: DictConfig) -> TrainEncoderConfig:
    from wsl.encoders.schema import TrainEncoderConfig  # registers the encoder, task and augment schemas

    return typed(cfg, TrainEncoderConfig, EXAMPLES)


def summary_of(df) -> dict:
    """The mean and std rows of a results table, and the number of seeds."""
    seed = df["seed"].astype(str)
    out = {label: {str(k): v for k, v in df[seed == label].iloc[0].items() if k != "seed"} for label in ("mean", "std")}
    return {**out, "seeds": int((~seed.isin(["mean", "std"])).sum())}


@hydra.main(config_path=CONF_DIR, config_name="train_encoder", version_base="1.3")
@fail_cleanly
def _main(cfg: DictConfig) -> None:
    from wsl.encoders.experiment import run_experiment

    out_dir = run_dir()
    job = typed_config(cfg)
    df = run_experiment(job, out_dir)
    print((out_dir / "results.md").read_text(), end="")
    print(f"results: {out_dir / 'results.csv'}")
    log_summary(job, summary_of(df), out_dir)


def main() -> None:
    preflight("train_encoder", typed_config)  # bad values stop before any zoo is read, in every job of a sweep
    _main()


if __name__ == "__main__":
    main()
