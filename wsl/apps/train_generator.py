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


def alias_condition_list(argv: list[str]) -> list[str]:
    """`condition=[val_acc]` (the list of columns) means `condition.columns=[val_acc]`: `condition` is a group
    of settings (columns, dropout, categorical, set encoder), which Hydra cannot merge a list into."""
    return ["condition.columns=" + a[len("condition="):] if a.startswith("condition=[") else a for a in argv]


def main() -> None:
    import sys

    sys.argv[1:] = alias_condition_list(sys.argv[1:])
    preflight("train_generator", typed_config)  # bad values stop before any zoo is read
    _main()


if __name__ == "__main__":
    main()
