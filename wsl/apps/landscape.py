"""wsl-landscape: compute loss-landscape metrics of an existing zoo and store them in its index.

    wsl-landscape zoo.path=zoos/phase_mlp_digits                   # landscape=basic
    wsl-landscape zoo.path=zoos/phase_mlp_digits landscape=full
    wsl-landscape zoo.path=... landscape.metrics=[cka,spectra] landscape.epoch=5

The resolved config and the rows written per annotation group are logged (logger=csv by default)
in the run directory.
"""

from __future__ import annotations

import time

import hydra
from omegaconf import DictConfig

from wsl.apps.common import CONF_DIR, fail_cleanly, log_summary, preflight
from wsl.apps.config import typed
from wsl.landscape.schema import LandscapeApp

EXAMPLES = {"zoo.path": "wsl-landscape zoo.path=zoos/<name>"}


def typed_config(cfg: DictConfig) -> LandscapeApp:
    return typed(cfg, LandscapeApp, EXAMPLES)


@hydra.main(config_path=CONF_DIR, config_name="landscape", version_base="1.3")
@fail_cleanly
def _main(cfg: DictConfig) -> None:
    from wsl.landscape import annotate_zoo

    job = typed_config(cfg)
    t = time.perf_counter()
    done = annotate_zoo(job.zoo.path, job.landscape, job.model_ids)
    print("landscape: " + (", ".join(f"{k} {v} rows" for k, v in done.items()) or "no metrics configured")
          + f" -> {job.zoo.path}")
    log_summary(job, {"rows": dict(done), "rows_total": sum(done.values()), "groups": len(done),
                      "seconds": time.perf_counter() - t})


def main() -> None:
    preflight("landscape", typed_config)  # bad values stop before any zoo is read
    _main()


if __name__ == "__main__":
    main()
