"""wsl-sample: draw networks from a trained generator and write them as a zoo.

    wsl-sample run=runs/train_generator/<date> n=1000 zoo.path=zoos/mlp_digits-gen
    wsl-sample run=... n=100 condition={val_acc:0.95} guidance=2 zoo.path=zoos/mlp_digits-gen-acc95

The resolved config and what was drawn (nets, seconds, the output zoo's size) are logged
(logger=csv by default) in the run directory.
"""

from __future__ import annotations

import time

import hydra
from omegaconf import DictConfig

from wsl.apps.common import CONF_DIR, fail_cleanly, log_summary, preflight


def _validate(cfg: DictConfig) -> None:
    from wsl.apps.validate import validate_sample

    validate_sample(cfg)


@hydra.main(config_path=CONF_DIR, config_name="sample", version_base="1.3")
@fail_cleanly
def _main(cfg: DictConfig) -> None:
    from wsl.generators.sample import sample_run
    from wsl.zoo import Zoo

    _validate(cfg)
    t = time.perf_counter()
    root = sample_run(cfg)  # it leaves the logger node (run-time paths) out of what the zoo stores
    seconds = time.perf_counter() - t
    print(f"zoo: {root}")
    log_summary(cfg, {"n": int(cfg.n), "zoo_models": len(Zoo(root).ids), "seconds": seconds,
                      "nets_per_minute": 60 * int(cfg.n) / max(seconds, 1e-9)})


def main() -> None:
    preflight("sample", _validate)  # bad values stop before the generator is loaded
    _main()


if __name__ == "__main__":
    main()
