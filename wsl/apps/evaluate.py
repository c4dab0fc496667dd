"""wsl-evaluate: accuracy, memorization audit, baselines and phases of a generated zoo.

    wsl-evaluate zoo.path=zoos/mlp_digits-gen reference=zoos/mlp_digits

The report goes to `out` (default <zoo>/report); the resolved config and the headline numbers of
every set of nets (generated, training zoo, each baseline setting) are logged (logger=csv by
default) in the run directory.
"""

from __future__ import annotations

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from wsl.apps.common import CONF_DIR, fail_cleanly, log, log_summary, preflight, to_container, without_logger
from wsl.errors import ConfigError


def settings_from(cfg: DictConfig):
    from wsl.evaluate.pipeline import Settings

    c = to_container(without_logger(cfg))
    return Settings(epoch=c["epoch"], reference_epoch=c["reference_epoch"], reference_ids=c["reference_ids"],
                    split=c["split"], max_nets=c["max_nets"], min_accuracy=c["failure"]["min_accuracy"],
                    min_gain=c["failure"]["min_gain"], align=c["novelty"]["align"], anchor=c["novelty"]["anchor"],
                    top_k=c["novelty"]["top_k"], max_iter=c["novelty"]["max_iter"],
                    memorized_below=c["novelty"]["memorized_below"], phase_thresholds=c.get("phases"),
                    seed=c["seed"], chunk=c["chunk"])


def _validate(cfg: DictConfig) -> None:
    from wsl.apps.validate import validate_evaluate
    from wsl.evaluate.report import report_dir

    validate_evaluate(cfg)
    report_dir(cfg.out, cfg.zoo.path)  # an existing out= must be this app's own earlier report


def summary_of(ev) -> dict:
    """The numbers logged at the end: every set's summary under its label, the ensemble, the timings."""
    sets = {}
    for s in ev.sets:
        key = s.method if not s.setting else f"{s.method}[{s.setting}]"
        sets[key] = {k: v for k, v in s.summary().items() if k not in ("method", "setting")}
    info = {k: v for k, v in ev.info.items() if not isinstance(v, (str, list))}
    return {"sets": sets, "ensemble": dict(ev.ensemble), "info": info}


@hydra.main(config_path=CONF_DIR, config_name="evaluate", version_base="1.3")
@fail_cleanly
def _main(cfg: DictConfig) -> None:
    from wsl.evaluate.pipeline import evaluate_zoo

    _validate(cfg)
    baselines = {}
    for name, node in (cfg.get("baselines") or {}).items():
        if node is None:
            continue
        try:
            baselines[name] = instantiate(node)
        except Exception as e:  # Hydra wraps the constructor's error: report it under its key
            msg = str(e.__cause__ or e)
            raise ConfigError(msg if msg.startswith(f"baselines.{name}") else f"baselines.{name}: {msg}") from e
    ev, report = evaluate_zoo(cfg.zoo.path, cfg.reference, settings_from(cfg), baselines, out=cfg.out)
    log.info("report: %s", report)
    print(report)
    log_summary(cfg, summary_of(ev))


def main() -> None:
    preflight("evaluate", _validate)  # bad values stop before either zoo is read
    _main()


if __name__ == "__main__":
    main()
