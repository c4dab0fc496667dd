"""Judging sampled nets: the score of every net (accuracy; bits per character; relative L2 error: one
judge per data kind, wsl.evaluate.domains), the memorization audit against the training zoo,
the plain baselines a generator has to beat, phases, plots and the report (`wsl-evaluate`).

The names below are imported on first use: the schema (wsl.evaluate.schema, also used by wsl-sample's)
and an app's `--help` need no torch.
"""

import importlib

_EXPORTS = {"Scores": "accuracy", "score_nets": "accuracy", "ensemble_scores": "accuracy",
            "reestimate_batchnorm": "accuracy", "BatchNormInputs": "accuracy", "Metric": "accuracy",
            "judge_for": "domains", "Judge": "domains", "LanguageModelJudge": "domains", "PINNJudge": "domains",
            "NoiseBaseline": "baselines", "AverageBaseline": "baselines", "GaussianFitBaseline": "baselines",
            "generate_baselines": "baselines", "AlignedReference": "novelty", "Audit": "novelty", "audit": "novelty",
            "prediction_overlap": "novelty", "training_yardstick": "novelty", "compare_phases": "phases",
            "EvaluateConfig": "schema", "BatchNormConfig": "schema", "EvaluationPlan": "pipeline",
            "evaluate_zoo": "pipeline", "plan_evaluation": "pipeline", "compare_with_noise": "report",
            "write_report": "report", "Evaluation": "results", "SetResult": "results"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"wsl.evaluate.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'wsl.evaluate' has no attribute {name!r}")
