"""Judging sampled nets: accuracy of every net, the memorization audit against the training zoo,
the plain baselines a generator has to beat, phases, plots and the report (`wsl-evaluate`)."""

from wsl.evaluate.accuracy import Scores, ensemble_scores, reestimate_batchnorm, score_nets
from wsl.evaluate.baselines import AverageBaseline, GaussianFitBaseline, NoiseBaseline, generate_baselines
from wsl.evaluate.novelty import AlignedReference, Audit, audit, prediction_overlap, training_yardstick
from wsl.evaluate.phases import compare_phases
from wsl.evaluate.pipeline import EvaluationPlan, evaluate_zoo, plan_evaluation
from wsl.evaluate.report import compare_with_noise, write_report
from wsl.evaluate.results import Evaluation, SetResult
from wsl.evaluate.schema import EvaluateConfig

__all__ = ["Scores", "score_nets", "ensemble_scores", "reestimate_batchnorm", "NoiseBaseline", "AverageBaseline",
           "GaussianFitBaseline", "generate_baselines", "AlignedReference", "Audit", "audit", "prediction_overlap",
           "training_yardstick", "compare_phases", "EvaluateConfig", "EvaluationPlan", "evaluate_zoo",
           "plan_evaluation", "compare_with_noise", "write_report", "Evaluation", "SetResult"]
