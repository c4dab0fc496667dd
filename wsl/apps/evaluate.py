"""wsl-evaluate: score, memorization audit, baselines and phases of a generated zoo.

    wsl-evaluate zoo.path=zoos/mlp_digits-gen reference=zoos/mlp_digits

The score is the domain's (wsl.evaluate.domains): accuracy for classification, bits per character for
a language model (dataset=text) and the relative L2 error for a PINN (dataset=convection); the last two
are lower-is-better, and the failure rule, the noise verdict and the plots follow that direction.

The report goes to `out` (default <zoo>/report); the resolved config and the headline numbers of
every set of nets (generated, training zoo, each baseline setting) are logged (logger=csv by
default) in the run directory.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from wsl.apps.common import CONF_DIR, fail_cleanly, log, log_summary, preflight
from wsl.apps.config import typed

EXAMPLE = "wsl-evaluate zoo.path=zoos/<name>-gen reference=zoos/<name>"
EXAMPLES = {"zoo.path": EXAMPLE, "reference": EXAMPLE}


def typed_config(cfg: DictConfig):
    """The typed config (wsl.evaluate.schema.EvaluateConfig); an existing out= must be this app's own
    earlier report."""
    from wsl.evaluate.report import report_dir
    from wsl.evaluate.schema import EvaluateConfig

    job = typed(cfg, EvaluateConfig, EXAMPLES)
    if job.finetune_steps:  # the fine-tuning comparison writes its own report (wsl.evaluate.finetune)
        from wsl.evaluate.finetune import finetune_dir

        finetune_dir(job.out, job.zoo.path)
    else:
        report_dir(job.out, job.zoo.path)
    return job


def summary_of(ev) -> dict:
    """The numbers logged at the end: every set's summary under its label, the ensemble, the timings."""
    sets = {s.method if not s.setting else f"{s.method}[{s.setting}]":
            {k: v for k, v in s.summary().items() if k not in ("method", "setting")} for s in ev.sets}
    info = {k: v for k, v in ev.info.items() if not isinstance(v, (str, list)) and k != "screening"}
    if ev.info.get("screening"):  # data-free screening: its numbers, not the per-net lists
        info["screening"] = {k: v for k, v in ev.info["screening"].items() if k in ("n", "tau", "spearman", "mae")}
    return {"sets": sets, "ensemble": dict(ev.ensemble), "info": info}


@hydra.main(config_path=CONF_DIR, config_name="evaluate", version_base="1.3")
@fail_cleanly
def _main(cfg: DictConfig) -> None:
    from wsl.evaluate.pipeline import evaluate_zoo

    job = typed_config(cfg)
    if job.finetune_steps:
        from wsl.evaluate.finetune import finetune_zoo

        result, report = finetune_zoo(job)
        log.info("report: %s", report)
        print(report)
        log_summary(job, {f"finetune_{s['set'].replace(' ', '_')}_{s['steps']}": s["acc_mean"]
                          for s in result["summary"]})
        return
    ev, report = evaluate_zoo(job)
    log.info("report: %s", report)
    print(report)
    log_summary(job, summary_of(ev))


def main() -> None:
    preflight("evaluate", typed_config)  # bad values stop before either zoo is read
    _main()


if __name__ == "__main__":
    main()
