"""wsl-train-generator (conf/train_generator.yaml, with its examples): learn a generator of network weights
from a zoo. The run directory receives generator.safetensors (+ generator.json, config.json); the trainer's
logger (logger=csv by default) gets the per-step losses, then the resolved config and the final metrics
(losses, spread ratio, steps, timings) as its last entry."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from wsl.apps.common import CONF_DIR, fail_cleanly, log_summary, preflight, run_dir
from wsl.apps.config import stored, typed
from wsl.generators.schema import TrainGeneratorConfig

EXAMPLES = {"zoo.path": "wsl-train-generator zoo.path=zoos/<name>"}


def typed_config(cfg: DictConfig) -> TrainGeneratorConfig:
    return typed(cfg, TrainGeneratorConfig, EXAMPLES)


@hydra.main(config_path=CONF_DIR, config_name="train_generator", version_base="1.3")
@fail_cleanly
def _main(cfg: DictConfig) -> None:
    from wsl.generators.train import train_generator

    job = typed_config(cfg)
    out = run_dir()
    run = train_generator(job, run_dir=out, config=stored(job))
    print(f"generator run: {run.path} (spread ratio {run.training['spread_ratio']:.3f})")
    # the trainer's logger writes where this one does (same logger config, same run directory): the
    # final entry follows its per-step rows, and the job's W&B run is the one the trainer used; the spread
    # history is left out (the logger has it)
    log_summary(job, {k: v for k, v in run.training.items() if k != "spread_history"}, out)


def main() -> None:
    preflight("train_generator", typed_config)  # bad values stop before any zoo is read
    _main()


if __name__ == "__main__":
    main()
