"""wsl-merge: merge the nets of a zoo (per hyperparameter cell, or all of them) and write the merged nets as a zoo.

    wsl-merge zoo.path=zoos/ft method=greedy out=zoos/ft-merged
    wsl-merge zoo.path=zoos/phase method=aligned merge.by=cell out=zoos/phase-merged

Prints the comparison table (each merge's test score against its best ingredient and the ensemble, per group),
also written with a plot to <out>/merge_report/; the resolved config and a summary are logged (logger=csv).
"""

from __future__ import annotations

import time

import hydra
from omegaconf import DictConfig

from wsl.apps.common import CONF_DIR, fail_cleanly, log_summary, preflight
from wsl.apps.config import stored, typed
from wsl.merge.schema import MergeConfig

_EXAMPLE = "wsl-merge zoo.path=zoos/<name> method=uniform|greedy|stock|ties|dare|aligned out=zoos/<name>-merged"
EXAMPLES = {"zoo.path": _EXAMPLE, "method": _EXAMPLE, "out": _EXAMPLE}


def typed_config(cfg: DictConfig) -> MergeConfig:
    from wsl.merge.job import check_output

    job = typed(cfg, MergeConfig, EXAMPLES)
    check_output(job)  # out= is a new zoo (not the input, a file, a link or a foreign directory)
    return job


@hydra.main(config_path=CONF_DIR, config_name="merge", version_base="1.3")
@fail_cleanly
def _main(cfg: DictConfig) -> None:
    from wsl.merge.job import merge_zoo
    from wsl.merge.report import table_text

    job = typed_config(cfg)
    t = time.perf_counter()
    out, rows = merge_zoo(job, config=stored(job))
    seconds = time.perf_counter() - t
    print(table_text(rows, job.method))
    print(f"zoo: {out}")
    gains = [r["gain_vs_best"] for r in rows]
    log_summary(job, {"groups": len(rows), "seconds": seconds, "mean_gain_vs_best": sum(gains) / len(gains),
                      "mean_gain_vs_ensemble": sum(r["gain_vs_ensemble"] for r in rows) / len(rows)})


def main() -> None:
    preflight("merge", typed_config)  # bad values stop before any zoo is read
    _main()


if __name__ == "__main__":
    main()
