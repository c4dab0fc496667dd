"""wsl-sample (conf/sample.yaml, with its examples): draw networks from a trained generator and write them as
a zoo. The resolved config and what was drawn (nets, seconds, the output zoo's size) are logged (logger=csv by
default) in the run directory."""

from __future__ import annotations

import time

import hydra
from omegaconf import DictConfig

from wsl.apps.common import CONF_DIR, fail_cleanly, log_summary, preflight
from wsl.apps.config import stored, typed
from wsl.generators.schema import SampleConfig

_EXAMPLE = "wsl-sample run=runs/train_generator/<date> zoo.path=zoos/<name>-gen"
EXAMPLES = {"run": _EXAMPLE, "zoo.path": _EXAMPLE}


def typed_config(cfg: DictConfig) -> SampleConfig:
    return typed(cfg, SampleConfig, EXAMPLES)


@hydra.main(config_path=CONF_DIR, config_name="sample", version_base="1.3")
@fail_cleanly
def _main(cfg: DictConfig) -> None:
    from wsl.generators.sample import sample_zoo
    from wsl.zoo import Zoo

    job = typed_config(cfg)
    t = time.perf_counter()
    root = sample_zoo(job, config=stored(job))  # the zoo stores the settings without the logger (run-time paths)
    seconds = time.perf_counter() - t
    print(f"zoo: {root}")
    log_summary(job, {"n": job.n, "zoo_models": len(Zoo(root).ids), "seconds": seconds,
                      "nets_per_minute": 60 * job.n / max(seconds, 1e-9)})


def main() -> None:
    preflight("sample", typed_config)  # bad values stop before the generator is loaded
    _main()


if __name__ == "__main__":
    main()
