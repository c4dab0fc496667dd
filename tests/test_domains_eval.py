"""Encoders, generators and wsl-evaluate on zoos beyond images, through the real code on tiny zoos made by
wsl-zoo's job function: a PINN zoo (MLP tanh on dataset=convection, two betas), a transformer on modular
arithmetic and a character-level transformer language model (dataset=text).

- wsl-train-encoder reads all three with the flat, stats, graph and transformer encoders; task=test_acc on a
  PINN zoo is one line naming the column to predict instead;
- wsl-train-generator / wsl-sample write zoos of these nets that load and run; train_split rebuilds any
  domain's data;
- wsl-evaluate scores each domain by its own metric, and reproduces what the population program stored
  (test_rel_l2 and the loss terms, test_bpc and the next-character accuracy); copies of training nets are
  found memorized in weights and agree in behaviour (PINNs: described, no behavioural novelty); the
  ensembles and the overlaps equal hand computations; failure and the noise comparison respect the
  direction of the score.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, make_zoo, typed_gen
from wsl.errors import ConfigError
from wsl.evaluate.baselines import AverageBaseline, GaussianFitBaseline, NoiseBaseline
from wsl.evaluate.domains import BPC, REL_L2, judge_for
from wsl.evaluate.novelty import one_thread, prediction_overlap
from wsl.evaluate.pipeline import evaluate_zoo
from wsl.evaluate.report import compare_with_noise
from wsl.evaluate.schema import EvaluateConfig, FailureConfig, NoveltyConfig
from wsl.nets import build_net
from wsl.zoo import ShardWriter, Zoo
from wsl.zoo.schema import ZooPath

QUIET = ["logger=none", "progress_refresh_rate=0", "trainer.accelerator=cpu"]
LRS = "train.lr=[0.003,0.01,0.03,0.1]"
TINY_TRANSFORMER = ["net=transformer", "net.width=8", "net.depth=1", "net.heads=2", "population.size=8",
                    "train.epochs=3", "train.optimizer=adam", LRS]
TINY_CONVECTION = ["net=mlp", "net.activation=tanh", "dataset=convection", "dataset.collocation=64",
                   "dataset.initial=16", "dataset.boundary=16", "dataset.test_nx=16", "dataset.test_nt=8",
                   "train.batch_size=32", "population.size=8", "train.epochs=3", "train.optimizer=adam", LRS]


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def pinn_zoo(tmp_path_factory):
    """16 PINNs: two jobs (beta 1 and 5) of 4 learning rates x 2 seeds, in one zoo."""
    path = tmp_path_factory.mktemp("pinn") / "zoo"
    for beta in (1, 5):
        make_zoo(path, [*TINY_CONVECTION, f"dataset.beta={beta}"])
    return Zoo(path)


@pytest.fixture(scope="module")
def modular_zoo(tmp_path_factory):
    return Zoo(make_zoo(tmp_path_factory.mktemp("mod") / "zoo", [*TINY_TRANSFORMER, "dataset=modular", "dataset.p=11",
                                                                 "train.batch_size=32"]))


@pytest.fixture(scope="module")
def text_zoo(tmp_path_factory):
    return Zoo(make_zoo(tmp_path_factory.mktemp("text") / "zoo", [*TINY_TRANSFORMER, "dataset=text",
                                                                  "dataset.context=8", "dataset.max_chars=3000"]))


def _zoo(request, name):
    return request.getfixturevalue(f"{name}_zoo")


# ------------------------------------------------------------------------------------------ encoders
def _encoder_config(*overrides):
    from test_encoders_app import config

    return config(*overrides, "seeds=[0]", "trainer.max_epochs=2", "trainer.accelerator=cpu",
                  "split.fractions=[0.5,0.25,0.25]")


@pytest.mark.parametrize("zoo,task", [("pinn", ["task=test_rel_l2"]),
                                      ("pinn", ["task=hparams", "task.columns=[lr,beta]", "task.log=[lr]"]),
                                      ("modular", ["task=test_acc"]), ("text", ["task=test_bpc"])])
@pytest.mark.parametrize("encoder", ["flat", "stats", "graph", "transformer"])
def test_encoders_read_every_domain(request, tmp_path, zoo, task, encoder):
    from wsl.encoders.experiment import run_experiment

    z = _zoo(request, zoo)
    df = run_experiment(_encoder_config(f"zoo.path={z.path}", f"encoder={encoder}", *task), tmp_path)
    assert df.loc[0, "params"] > 0 and np.isfinite(df.loc[0, "val/r2"]) and np.isfinite(df.loc[0, "test/r2"])
    target = {"task=test_rel_l2": "test_rel_l2", "task=hparams": "beta", "task=test_acc": "test_acc",
              "task=test_bpc": "test_bpc"}[task[0]]
    assert f"tau/{target}" in [c.split("/", 1)[1] for c in df.columns if c.startswith("test/")]
    assert (tmp_path / "results.md").read_text().count(f"| {encoder} |") == 1


def test_accuracy_tasks_on_a_pinn_zoo_name_the_column_to_predict(pinn_zoo, tmp_path):
    """wsl-train-encoder's default task (test_acc) on a PINN zoo: one line pointing to test_rel_l2, through the
    console script, before any training."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "wsl.apps.train_encoder", f"zoo.path={pinn_zoo.path}", "encoder=flat",
                        "logger=none", f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, env=env,
                       timeout=120, cwd=tmp_path)
    err = p.stderr.strip().splitlines()
    assert p.returncode != 0 and len(err) == 1, p.stderr[-2000:]
    assert err[0] == (f"error: task=test_acc: column 'test_acc' has no finite value in the index of {pinn_zoo.path} "
                      "(a PINN zoo (dataset=convection) has no accuracy: its accuracy-like column is the relative L2 "
                      "error 'test_rel_l2', lower is better: use task=test_rel_l2)")
    assert not (tmp_path / "run" / "results.csv").exists()
    from wsl.encoders.experiment import run_experiment

    for task, words in ((["task=gen_gap"], "column 'generalization_gap' has no finite value"),
                        (["task=test_acc", "task.columns=[val_acc]"], "use task.columns=[val_rel_l2])")):
        with pytest.raises(ConfigError, match=f"^task=.*{re.escape(words)}") as e:
            run_experiment(_encoder_config(f"zoo.path={pinn_zoo.path}", "encoder=flat", *task), tmp_path)
        assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ generators
def _generate(zoo, tmp_path, extra=(), n=6):
    from wsl.generators.sample import sample_zoo
    from wsl.generators.train import train_generator

    job = typed_gen("train_generator", [f"zoo.path={zoo.path}", *extra, "generator=flow", "trainer.max_steps=30",
                                        "generator.denoiser.hidden=32", "generator.denoiser.depth=1",
                                        "spread.every_n_steps=15", "spread.n=8", *QUIET])
    run = train_generator(job, tmp_path / "run")
    out = sample_zoo(typed_gen("sample", [f"run={tmp_path / 'run'}", f"n={n}", f"zoo.path={tmp_path / 'gen'}"]))
    return run, Zoo(out)


def _evaluate(gen, ref, tmp_path, **kw):
    job = EvaluateConfig(zoo=ZooPath(str(gen.path)), reference=str(ref.path), out=str(tmp_path / "report"),
                         novelty=NoveltyConfig(top_k=2, max_iter=20), **kw)
    baselines = {"noise": NoiseBaseline([0.0, 0.1, 1.0], n=4), "average": AverageBaseline([2], n=3),
                 "gaussian": GaussianFitBaseline(n=3)}
    return evaluate_zoo(job, baselines)


def _stored(zoo, ids, column):
    return zoo.table().loc[list(ids), column].to_numpy(float)


def test_pinn_generator_samples_working_nets_and_wsl_evaluate_scores_their_rel_l2(pinn_zoo, tmp_path):
    """A generator of the beta=1 PINNs (zoo.filter): sampled nets load and run on the test grid; wsl-evaluate
    scores them by relative L2 error (lower is better) and reproduces the training nets' stored test_rel_l2
    and test_loss; the mixed-beta zoo without a filter is refused in one line."""
    from wsl.generators.sample import train_split
    from wsl.generators.train import select_zoo
    from wsl.generators.schema import TrainZoo

    with pytest.raises(ConfigError, match="trained on different data .* select one dataset with zoo.filter"):
        select_zoo(TrainZoo(path=str(pinn_zoo.path)))
    run, gen = _generate(pinn_zoo, tmp_path, ["+zoo.filter.beta=1"])
    data = train_split(run)  # rebuild_dataset: the convection points, checked against the run's fingerprint
    assert data.kind == "pinn" and data.beta == 1.0
    x, exact = data.split("test")
    for m in gen.ids:
        with torch.no_grad():
            u = gen.load_model(m)(x)
        assert u.shape == exact.shape and torch.isfinite(u).all()
    ev, report = _evaluate(gen, pinn_zoo, tmp_path)
    g, t = ev.by_method("generated")[0], ev.by_method("training")[0]
    assert g.scores.metric is REL_L2 and t.ids == run.zoo["train_ids"] and len(g.scores) == 6
    for col, got in (("test_rel_l2", t.scores.score), ("test_loss", t.scores.loss),
                     ("test_residual", t.scores.extra["residual"]), ("test_ic", t.scores.extra["ic"])):
        np.testing.assert_allclose(got, _stored(pinn_zoo, t.ids, col), rtol=1e-5, err_msg=col)
    assert np.isnan(g.scores.accuracy).all()  # a PINN has no accuracy, under any name
    thr = ev.info["threshold"]
    assert 0.85 < thr < 0.95 and ev.info["metric"] == "rel_l2" and not ev.info["higher_is_better"]
    np.testing.assert_array_equal(g.scores.failed, ~g.scores.finite | (g.scores.score > thr))
    # no behavioural novelty for PINNs (one target function): the overlaps are described, the weight axis judges
    assert all(np.isnan(s.behaviour_novelty).all() for s in ev.sets) and np.isfinite(g.audit.agreement).all()
    assert [c["axis"] for c in compare_with_noise(ev)] == ["weight"]
    text = report.read_text()
    assert "scored by their **relative L2 error** (lower is better)" in text
    assert "relative L2 error is above" in text and "max error-field similarity" in text
    assert "no behavioural novelty is given" in text and "behavioural novelty =" not in text
    summary = (tmp_path / "report" / "sets.csv").read_text()
    assert "rel_l2_mean" in summary and "residual_mean" in summary


def test_text_lm_generator_and_wsl_evaluate_score_bits_per_character(text_zoo, tmp_path):
    from wsl.generators.sample import train_split

    run, gen = _generate(text_zoo, tmp_path)
    data = train_split(run)
    assert data.kind == "lm" and data.fingerprint() == text_zoo.training_data().fingerprint()
    for m in gen.ids:
        with torch.no_grad():
            out = gen.load_model(m)(data.x_test)
        assert out.shape == (*data.y_test.shape, data.vocab_size) and torch.isfinite(out).all()
    ev, report = _evaluate(gen, text_zoo, tmp_path)
    g, t = ev.by_method("generated")[0], ev.by_method("training")[0]
    assert g.scores.metric is BPC and t.audit.behavioural and g.audit.behavioural
    assert [c["axis"] for c in compare_with_noise(ev)] == ["weight", "behavioural"]
    np.testing.assert_allclose(t.scores.score, _stored(text_zoo, t.ids, "test_bpc"), rtol=1e-5)
    np.testing.assert_allclose(t.scores.accuracy, _stored(text_zoo, t.ids, "test_acc"), atol=1e-9)
    np.testing.assert_allclose(t.scores.loss, _stored(text_zoo, t.ids, "test_loss"), rtol=1e-5)
    assert g.scores.predictions.shape == (6, data.y_test.numel())  # a prediction per position
    text = report.read_text()
    assert "scored by their **bits per character** (lower is better)" in text and "next-character accuracy" in text
    assert f"{data.y_test.shape[0]} windows of 8 characters" in text


def _copy_zoo(src: Zoo, ids, path):
    """The given training nets written again as a 'sampled' zoo (same dataset record): perfect memorization."""
    w = ShardWriter(path, "copies", config={"dataset": src.job_config(ids[0])["dataset"]}, zoo_name="copies")
    for i, m in enumerate(ids):
        w.write_checkpoint(f"c{i}", 0, src.state_dict(m), src.arch(m))
        w.add_model(f"c{i}", src.arch(m), {"copy_of": m}, "sampled", {})
    w.commit()
    return Zoo(path)


@pytest.mark.parametrize("name,metric", [("pinn", "rel_l2"), ("text", "bpc"), ("modular", "acc")])
def test_copies_of_training_nets_reproduce_stored_scores_and_are_memorized(request, tmp_path, name, metric):
    """Evaluating copies of training nets: each copy's score is its original's stored test_<metric>, and the
    audit finds every copy memorized in weights (novelty 0) and in behaviour (agreement 1, the same errors)."""
    ref = _zoo(request, name)
    ids = [m for m in ref.ids if ref.row(m).status == "trained" and ref.hparams(m).get("beta", 1.0) == 1.0]
    copies = _copy_zoo(ref, ids[:3], tmp_path / "copies")
    ev, _ = _evaluate(copies, ref, tmp_path, reference_ids=ids)
    g = ev.by_method("generated")[0]
    np.testing.assert_allclose(g.scores.score, _stored(ref, ids[:3], f"test_{metric}"), rtol=1e-5)
    assert (g.audit.l2 < 1e-4).all() and g.audit.memorized.all()
    fin = ~g.scores.failed
    np.testing.assert_allclose(g.audit.agreement, 1.0, atol=1e-6)
    np.testing.assert_allclose(g.audit.wrong_iou[fin], 1.0, atol=1e-6)
    sigma0 = next(s for s in ev.by_method("noise") if s.setting == "sigma=0")  # training nets again
    assert sigma0.audit.memorized.all() and set(np.round(sigma0.scores.score, 6)) <= set(np.round(ev.by_method(
        "training")[0].scores.score, 6))


# ------------------------------------------------------------------------------------------ definitions
def test_pinn_ensemble_overlap_and_failure_equal_hand_computations(pinn_zoo):
    ids = pinn_zoo.filter(status="trained", beta=1.0)
    data = pinn_zoo.training_data(ids[0])
    net = build_net(pinn_zoo.arch(ids[0]))
    sds = [pinn_zoo.state_dict(m) for m in ids]
    judge = judge_for(data, net, chunk=3)
    x, exact = data.split("test")
    with torch.no_grad():
        u = []
        for sd in sds:
            net.load_state_dict(sd)
            u.append(net(x)[:, 0].double())
    u, e = torch.stack(u), exact[:, 0].double()
    ens = judge.ensemble(sds, "test")
    assert ens["n_members"] == len(sds)
    assert ens["rel_l2"] == pytest.approx(float((u.mean(0) - e).norm() / e.norm()), rel=1e-9)
    sc = judge.scores(sds, "test")
    np.testing.assert_allclose(sc.predictions, u.numpy(), rtol=1e-5, atol=1e-6)
    # the ensemble's physics loss is that of the mean field: its derivatives by central differences (float64)
    ref64 = build_net(pinn_zoo.arch(ids[0])).double()

    def mean_u(pts):
        out = []
        with torch.no_grad():
            for sd in sds:
                ref64.load_state_dict({k: v.double() for k, v in sd.items()})
                out.append(ref64(pts.double())[:, 0])
        return torch.stack(out).mean(0)

    h = 1e-4
    dx, dt = torch.tensor([[h, 0.0]], dtype=torch.float64), torch.tensor([[0.0, h]], dtype=torch.float64)
    xd = x.double()
    fd = ((mean_u(xd + dt) - mean_u(xd - dt)) + data.beta * (mean_u(xd + dx) - mean_u(xd - dx))) / (2 * h)
    ic_x, ic_u = data.initial("test")
    left, right = data.boundary("test")
    hand = {"residual": float(fd.pow(2).mean()), "ic": float((mean_u(ic_x) - ic_u[:, 0].double()).pow(2).mean()),
            "bc": float((mean_u(left) - mean_u(right)).pow(2).mean())}
    for k, v in hand.items():
        assert ens[k] == pytest.approx(v, rel=1e-3), k
    assert ens["loss"] == pytest.approx(sum(hand.values()), rel=1e-3)
    # overlap by explicit loops over pairs
    ov = judge.overlap(u.numpy()[:3], u.numpy(), "test", exclude=np.array([0, -1, 2]))
    for s in range(3):
        agree = [1 - float((u[s] - u[t]).norm() / e.norm()) for t in range(len(u)) if t != [0, -1, 2][s]]
        cos = [float(torch.nn.functional.cosine_similarity(u[s] - e, u[t] - e, dim=0)) for t in range(len(u))
               if t != [0, -1, 2][s]]
        assert ov.agreement[s] == pytest.approx(max(agree), abs=1e-9)
        assert ov.wrong_iou[s] == pytest.approx(max(cos), abs=1e-9)
    # failure: the zero field scores exactly 1, above the default threshold (0.9 x the best constant's ~1)
    zero = {k: torch.zeros_like(v) for k, v in sds[0].items()}
    z = judge.scores([zero, sds[0]], "test")
    assert z.score[0] == pytest.approx(1.0) and z.failed[0]
    assert judge.threshold("test") == pytest.approx(0.9 * float((e - e.mean()).norm() / e.norm()))
    fixed = judge_for(data, net, failure=FailureConfig(max_rel_l2=2.0))
    assert not fixed.scores([zero], "test").failed[0] and fixed.threshold("test") == 2.0


def test_lm_scores_ensemble_and_overlap_equal_hand_computations(text_zoo):
    ids = text_zoo.ids[:4]
    data = text_zoo.training_data()
    net = build_net(text_zoo.arch(ids[0]))
    sds = [text_zoo.state_dict(m) for m in ids]
    judge = judge_for(data, net, chunk=3)
    with torch.no_grad():
        logits = []
        for sd in sds:
            net.load_state_dict(sd)
            logits.append(net(data.x_test).double())
    logits, y = torch.stack(logits), data.y_test
    ce = torch.stack([torch.nn.functional.cross_entropy(lg.flatten(0, 1), y.flatten()) for lg in logits])
    sc = judge.scores(sds, "test")
    np.testing.assert_allclose(sc.score, (ce / math.log(2)).numpy(), rtol=1e-5)
    np.testing.assert_array_equal(sc.predictions, logits.argmax(-1).flatten(1).numpy())
    probs = logits.softmax(-1).mean(0)
    ens = judge.ensemble(sds, "test")
    assert ens["bpc"] == pytest.approx(float(-probs.gather(-1, y[..., None]).log().mean() / math.log(2)), rel=1e-6)
    assert ens["accuracy"] == pytest.approx(float((probs.argmax(-1) == y).double().mean()))
    # the unigram rule: (1 - min_gain) x the entropy of the split's next characters (the best constant bpc)
    freq = torch.bincount(y.flatten(), minlength=data.vocab_size).double() / y.numel()
    h = float(-(freq[freq > 0] * freq[freq > 0].log2()).sum())
    assert judge.threshold("test") == pytest.approx(0.9 * h)


def test_prediction_overlap_loops_over_checkpoints_when_classes_outnumber_them():
    """Both ways of counting agreement (class by class; checkpoint by checkpoint when there are more classes, a
    vocabulary) equal explicit loops; -1 (no prediction) never agrees."""
    rng = np.random.default_rng(0)
    pred, ref, y = rng.integers(-1, 50, (4, 300)), rng.integers(-1, 50, (60, 300)), rng.integers(0, 50, 300)
    pred[1] = -1
    ref[2] = -1
    for r in (ref, ref[:3]):  # 60 checkpoints >= 50 classes: the class loop; 3 < 50: the checkpoint loop
        ov = prediction_overlap(pred, r, y, 50)
        agree = np.array([[np.mean((p == q) & (p >= 0)) for q in r] for p in pred])
        wrong = [[((p != y) & (q != y)).sum() / max(1, ((p != y) | (q != y)).sum()) for q in r] for p in pred]
        np.testing.assert_allclose(ov.agreement, agree.max(1))
        np.testing.assert_allclose(ov.wrong_iou, np.max(wrong, 1))


def test_failure_knobs_of_another_domain_and_unscored_kinds_are_one_line(pinn_zoo, text_zoo, tmp_path):
    from wsl.evaluate.domains import check_kind

    for zoo, failure, words in ((pinn_zoo, FailureConfig(min_accuracy=0.5), "failure.min_accuracy=0.5 does not apply "
                                 "to this zoo (pinn data, dataset=convection); its nets are judged by their relative "
                                 "L2 error: set failure.max_rel_l2"),
                                (text_zoo, FailureConfig(max_rel_l2=1.0), "failure.max_rel_l2=1.0 does not apply to "
                                 "this zoo (lm data, dataset=text); its nets are judged by their bits per character: "
                                 "set failure.max_bpc")):
        with pytest.raises(ConfigError) as e:
            check_kind(zoo.training_data(), failure)
        assert str(e.value) == words
    copies = _copy_zoo(text_zoo, text_zoo.ids[:2], tmp_path / "copies")
    with pytest.raises(ConfigError, match="^failure.max_rel_l2=0.5 does not apply"):
        _evaluate(copies, text_zoo, tmp_path, failure=FailureConfig(max_rel_l2=0.5))
    assert not (tmp_path / "report").exists()

    class INR:
        kind, name = "inr", "digits_inr"

    with pytest.raises(ConfigError, match="^wsl-evaluate scores classification, language-model .* kind 'inr'"):
        check_kind(INR())


def test_noise_comparison_respects_a_lower_is_better_score():
    """A generator whose rel_l2 is clearly *below* the noise curve is better, above it worse."""
    from wsl.evaluate.accuracy import Scores
    from wsl.evaluate.novelty import Audit
    from wsl.evaluate.results import Evaluation, SetResult

    def one(method, values, novelty):
        s = len(values)
        col = np.full(s, float(novelty))
        sc = Scores(np.full(s, np.nan), np.zeros(s), np.zeros((s, 1)), np.ones(s, bool), np.zeros(s, bool), 0.9,
                    score=np.asarray(values, float), metric=REL_L2)
        return SetResult(method, "", None, sc, Audit(col, col, col, col, np.zeros(s, np.int64), np.zeros(s), 1 - col,
                                                     col < 0.5))

    rng = np.random.default_rng(0)
    noise = [one("noise", 0.10 + 0.005 * rng.standard_normal(64), 0.2),
             one("noise", 0.50 + 0.01 * rng.standard_normal(64), 1.2)]

    def verdict(values):
        ev = Evaluation([one("generated", values, 0.7), *noise], {}, {}, [], {})
        return {c["axis"]: c for c in compare_with_noise(ev)}["weight"]

    good, bad = verdict(0.05 + 0.005 * rng.standard_normal(64)), verdict(0.8 + 0.005 * rng.standard_normal(64))
    assert good["verdict"] == "better" and good["difference"] > 0
    assert good["noise_score"] == pytest.approx(0.3, abs=0.01)
    assert bad["verdict"] == "worse" and "accuracy" not in good
