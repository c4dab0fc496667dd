"""wsl-evaluate: accuracy, memorization audit, baselines and phases of a generated zoo.

    wsl-evaluate zoo.path=zoos/mlp_digits-gen reference=zoos/mlp_digits
"""

from __future__ import annotations

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from wsl.apps.common import CONF_DIR, fail_cleanly, log, to_container
from wsl.errors import ConfigError


def settings_from(cfg: DictConfig):
    from wsl.evaluate.pipeline import Settings

    c = to_container(cfg)
    return Settings(epoch=c["epoch"], reference_epoch=c["reference_epoch"], reference_ids=c["reference_ids"],
                    split=c["split"], max_nets=c["max_nets"], min_accuracy=c["failure"]["min_accuracy"],
                    min_gain=c["failure"]["min_gain"], align=c["novelty"]["align"], anchor=c["novelty"]["anchor"],
                    top_k=c["novelty"]["top_k"], max_iter=c["novelty"]["max_iter"],
                    memorized_below=c["novelty"]["memorized_below"], phase_thresholds=c.get("phases"),
                    seed=c["seed"], chunk=c["chunk"])


@hydra.main(config_path=CONF_DIR, config_name="evaluate", version_base="1.3")
@fail_cleanly
def main(cfg: DictConfig) -> None:
    from wsl.evaluate.pipeline import evaluate_zoo

    if OmegaConf.is_missing(cfg.zoo, "path"):
        raise ConfigError("zoo.path=<the generated zoo> is required")
    if OmegaConf.is_missing(cfg, "reference"):
        raise ConfigError("reference=<the zoo the generator was trained on> is required")
    baselines = {}
    for name, node in (cfg.get("baselines") or {}).items():
        if node is None:
            continue
        try:
            baselines[name] = instantiate(node)
        except Exception as e:  # Hydra wraps the constructor's error: report it under its key
            msg = str(e.__cause__ or e)
            raise ConfigError(msg if msg.startswith(f"baselines.{name}") else f"baselines.{name}: {msg}") from e
    _, report = evaluate_zoo(cfg.zoo.path, cfg.reference, settings_from(cfg), baselines, out=cfg.out)
    log.info("report: %s", report)
    print(report)


if __name__ == "__main__":
    main()
