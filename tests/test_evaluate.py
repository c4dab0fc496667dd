"""Evaluation of generated nets, checked against definitions: BatchNorm statistics equal the train
split's, vmapped scores equal net-by-net forwards, overlaps equal explicit loops, aligned
nearest-neighbour distances equal a brute-force search over every permutation, baselines add what
they claim; and the audit ranks a copy (also a permuted one) of a training checkpoint as memorized
and independently trained nets as novel. Nets are real digits MLPs trained here in a second."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap

from wsl.data import load_dataset
from wsl.errors import ConfigError
from wsl.evaluate.accuracy import ensemble_scores, failure_threshold, reestimate_batchnorm, score_nets
from wsl.evaluate.baselines import AverageBaseline, GaussianFitBaseline, NoiseBaseline
from wsl.evaluate.novelty import AlignedReference, one_thread, prediction_overlap
from wsl.evaluate.phases import compare_phases
from wsl.evaluate.pipeline import evaluate_zoo, plan_evaluation
from wsl.evaluate.schema import BatchNormConfig, EvaluateConfig, NoiseBaselineConfig, NoveltyConfig
from wsl.nets import MLP
from wsl.symmetry import align, permute, random_permutations
from wsl.zoo import Layout, ShardWriter, Zoo, write_annotation
from wsl.zoo.schema import ZooPath

ROOT = Path(__file__).resolve().parent.parent
DATASET = {"_target_": "wsl.data.load_dataset", "name": "digits", "root": None, "train_fraction": 1.0,
           "subset_seed": 0, "split_seed": 0, "val_fraction": 0.2, "test_fraction": 0.2}
WIDTH = 16


def _job(zoo, reference, **kw) -> EvaluateConfig:
    return EvaluateConfig(zoo=ZooPath(str(zoo)), reference=str(reference), **kw)


@pytest.fixture(autouse=True)
def _one_thread():
    """Nets this small only lose time to thread synchronization on a shared machine."""
    with one_thread():
        yield


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _train(data, seeds, width=WIDTH, steps=80, lr=0.02):
    """Independently initialized MLPs trained together (full-batch Adam; Adam is per-coordinate, so
    one optimizer over the stacked parameters trains each member exactly as on its own)."""
    with one_thread():  # module-scoped fixtures run before the autouse one
        return _train_population(data, seeds, width, steps, lr)


def _train_population(data, seeds, width, steps, lr):
    nets = []
    for s in seeds:
        torch.manual_seed(s)
        nets.append(MLP(list(data.input_shape), data.num_classes, width=width))
    params = {k: torch.stack([n.state_dict()[k] for n in nets]).requires_grad_() for k in nets[0].state_dict()}
    opt = torch.optim.Adam(params.values(), lr=lr)
    fwd = vmap(lambda p, x: functional_call(nets[0], p, (x,)), in_dims=(0, None))
    with torch.enable_grad():
        for _ in range(steps):
            out = fwd(params, data.x_train)  # [P, n, C]
            loss = nn.functional.cross_entropy(out.flatten(0, 1), data.y_train.repeat(len(nets)), reduction="sum")
            opt.zero_grad()
            (loss / len(data.y_train)).backward()
            opt.step()
    return [{k: v[i].detach().clone() for k, v in params.items()} for i in range(len(nets))], nets[0].arch


def _write_zoo(path, sds, arch, status="trained", hparams=None, dataset=DATASET, job="job0", config=None):
    w = ShardWriter(path, job, config={"dataset": dict(dataset), **(config or {})}, zoo_name=Path(path).name)
    for i, sd in enumerate(sds):
        mid = f"m{i:03d}"
        w.write_checkpoint(mid, 0, sd, arch)
        w.add_model(mid, arch, dict(hparams[i]) if hparams else {"seed_init": i, "lr": 0.01}, status, {})
    w.commit()
    return Path(path)


@pytest.fixture(scope="module")
def trained(digits):
    """10 training-zoo nets and 3 fresh, independently trained nets of the same recipe."""
    sds, arch = _train(digits, range(13))
    return {"ref": sds[:10], "fresh": sds[10:], "arch": arch}


def _spec():
    return MLP([1, 8, 8], 10, width=WIDTH).permutation_spec()


def _permuted(sd, seed):
    return permute(sd, _spec(), random_permutations(_spec(), torch.Generator().manual_seed(seed)))


@pytest.fixture(scope="module")
def zoos(tmp_path_factory, trained):
    """A training zoo and a 'generated' zoo holding: exact copies of training checkpoints 0 and 1,
    a permuted copy of checkpoint 2, the three fresh nets, and a net with a NaN weight."""
    root = tmp_path_factory.mktemp("zoos")
    ref = _write_zoo(root / "train", trained["ref"], trained["arch"])
    nan = {k: v.clone() for k, v in trained["ref"][3].items()}
    nan["head.bias"][0] = float("nan")
    gen_sds = [trained["ref"][0], trained["ref"][1], _permuted(trained["ref"][2], 7), *trained["fresh"], nan]
    kinds = ["copy", "copy", "permuted copy", "fresh", "fresh", "fresh", "nan"]
    gen = _write_zoo(root / "gen", gen_sds, trained["arch"], status="sampled",
                     hparams=[{"generator_run": "runs/x", "sample_seed": i, "kind": k} for i, k in enumerate(kinds)])
    return {"ref": ref, "gen": gen, "kinds": kinds, "root": root}


# ---- accuracy ---------------------------------------------------------------------------------
def test_batchnorm_statistics_are_those_of_the_train_split(digits):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 10))
    bn = net[2]
    bn.running_mean.fill_(5.0)
    bn.running_var.fill_(9.0)  # stale statistics that must not survive
    x = digits.x_train
    reestimate_batchnorm(net, x, batch_size=len(x))  # one batch: exactly the split's statistics
    h = net[1](net[0](x)).detach()
    assert torch.allclose(bn.running_mean, h.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, h.var(0, unbiased=True), atol=1e-4)
    assert bn.momentum == 0.1 and not net.training
    # equal batches: the cumulative average of batch means is the split mean
    reestimate_batchnorm(net, x[:1000], batch_size=250)
    assert torch.allclose(bn.running_mean, net[1](net[0](x[:1000])).detach().mean(0), atol=1e-5)
    # and scoring a BatchNorm net uses train statistics, not the stale ones stored in its state dict
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    sd["2.running_mean"].fill_(5.0)
    sc = score_nets(net, [sd], digits.x_test, digits.y_test, 10, x_train=x)
    reestimate_batchnorm(net, x)
    expect = (net(digits.x_test).argmax(1) == digits.y_test).double().mean().item()
    assert sc.accuracy[0] == pytest.approx(expect)
    with pytest.raises(ConfigError, match="BatchNorm"):
        score_nets(net, [sd], digits.x_test, digits.y_test, 10)


def test_scores_equal_net_by_net_forwards_and_failures_are_flagged(digits, trained):
    net = MLP([1, 8, 8], 10, width=WIDTH)
    nan = {k: v.clone() for k, v in trained["ref"][0].items()}
    nan["hidden.0.weight"][0, 0] = float("inf")
    zero = {k: torch.zeros_like(v) for k, v in trained["ref"][0].items()}  # a constant predictor
    sds = trained["ref"][:4] + [nan, zero]
    sc = score_nets(net, sds, digits.x_test, digits.y_test, 10, chunk=3)  # chunks of 3 nets
    for i, sd in enumerate(sds[:4]):
        net.load_state_dict(sd)
        out = net(digits.x_test)
        assert sc.accuracy[i] == pytest.approx((out.argmax(1) == digits.y_test).double().mean().item())
        assert sc.loss[i] == pytest.approx(nn.functional.cross_entropy(out, digits.y_test).item(), rel=1e-5)
    assert sc.failed.tolist() == [False] * 4 + [True, True]
    assert not sc.finite[4] and math.isnan(sc.loss[4]) and sc.accuracy[4] == 0.0 and (sc.predictions[4] == -1).all()
    majority = torch.bincount(digits.y_test).max().item() / len(digits.y_test)
    assert sc.min_accuracy == pytest.approx(majority + 0.1 * (1 - majority))
    assert failure_threshold(digits.y_test, 10, 0.5, 0.1) == 0.5
    s = sc.summary()  # mean ± std over all nets, failures included
    assert s["acc_mean"] == pytest.approx(sc.accuracy.mean()) and s["failure_rate"] == pytest.approx(2 / 6)
    ens = ensemble_scores(net, sds, digits.x_test, digits.y_test)
    assert ens["n_members"] == 5  # the non-finite net is left out
    probs = []
    for sd in sds[:4] + [zero]:
        net.load_state_dict(sd)
        probs.append(net(digits.x_test).softmax(-1))
    assert ens["accuracy"] == pytest.approx((torch.stack(probs).mean(0).argmax(1) == digits.y_test).double().mean().item())


# ---- novelty ----------------------------------------------------------------------------------
def test_prediction_overlap_equals_explicit_loops():
    g = np.random.default_rng(0)
    y = g.integers(0, 4, 50)
    pred = np.where(g.random((6, 50)) < 0.7, y, g.integers(0, 4, (6, 50)))
    pred[5] = y  # a perfect net: empty error set
    ref = np.where(g.random((5, 50)) < 0.7, y, g.integers(0, 4, (5, 50)))
    ref[4] = y
    ov = prediction_overlap(pred, ref, y, 4)
    for s in range(6):
        agree = [np.mean(pred[s] == ref[t]) for t in range(5)]
        ious = []
        for t in range(5):
            a, b = set(np.flatnonzero(pred[s] != y)), set(np.flatnonzero(ref[t] != y))
            ious.append(len(a & b) / len(a | b) if a | b else 1.0)
        assert ov.agreement[s] == pytest.approx(max(agree)) and ov.wrong_iou[s] == pytest.approx(max(ious))
    assert ov.wrong_iou[5] == 1.0 and ov.agreement[5] == 1.0
    ex = prediction_overlap(ref, ref, y, 4, exclude=np.arange(5))  # never matches itself
    assert (ex.agreement_index != np.arange(5)).all() and (ex.agreement < 1).all()


def test_aligned_nearest_neighbour_equals_brute_force_over_all_permutations(digits):
    """Width-4 MLPs: 4! hidden permutations, so the true aligned distance is a brute-force minimum."""
    sds, arch = _train(digits, range(5), width=4, steps=40)
    spec = MLP([1, 8, 8], 10, width=4).permutation_spec()
    layout = Layout.from_state_dict(sds[0])
    copy = permute(sds[1], spec, random_permutations(spec, torch.Generator().manual_seed(3)))
    refs, queries = sds[:3], [sds[3], sds[4], copy]

    def true_nn(q):
        best = math.inf
        for r in refs:
            for p in itertools.permutations(range(4)):
                moved = permute(q, spec, {"P0": torch.tensor(p)})
                best = min(best, (layout.flatten(moved) - layout.flatten(r)).double().norm().item())
        return best

    ref = AlignedReference(refs, layout.flatten, lambda a, b: align(a, b, spec), anchor=0, top_k=3)
    nb = ref.nearest(queries)
    for s, q in enumerate(queries):
        assert nb.l2[s] == pytest.approx(true_nn(q), abs=1e-5)
    assert nb.l2[2] == pytest.approx(0.0, abs=1e-5) and nb.l2_index[2] == 1  # the permuted copy of ref 1
    raw = AlignedReference(refs, layout.flatten, None).nearest(queries)
    assert raw.l2[2] > 1.0  # without alignment the permuted copy looks like another net
    flat_q = torch.stack([layout.flatten(q) for q in queries]).double()
    flat_r = torch.stack([layout.flatten(r) for r in refs]).double()
    assert np.allclose(raw.l2, torch.cdist(flat_q, flat_r).min(1).values.numpy())
    cos = 1 - (flat_q / flat_q.norm(dim=1, keepdim=True)) @ (flat_r / flat_r.norm(dim=1, keepdim=True)).T
    assert np.allclose(raw.cosine, cos.min(1).values.numpy())


# ---- baselines --------------------------------------------------------------------------------
def test_baselines_add_what_they_claim(trained):
    spec = _spec()
    layout = Layout.from_state_dict(trained["ref"][0])
    al = lambda a, b: align(a, b, spec)  # noqa: E731
    ref = AlignedReference(trained["ref"], layout.flatten, al)
    g = torch.Generator().manual_seed(0)
    (noise,) = NoiseBaseline([0.2], n=20).generate(ref, al, g)
    assert len(noise.state_dicts) == 20 and noise.value == 0.2
    # each tensor got noise of std 0.2 × its own RMS: recover the source as the nearest aligned checkpoint
    rel = []
    for sd in noise.state_dicts:
        src = min(ref.state_dicts, key=lambda r: (layout.flatten(sd) - layout.flatten(r)).norm())
        for k in sd:
            d = sd[k] - src[k]
            if d.numel() >= 100:
                rel.append((d.std() / src[k].pow(2).mean().sqrt()).item())
    assert np.mean(rel) == pytest.approx(0.2, rel=0.1)
    (again,) = NoiseBaseline([0.2], n=20).generate(ref, al, g)
    assert not torch.equal(layout.flatten(again.state_dicts[0]), layout.flatten(noise.state_dicts[0]))
    # averaging a checkpoint with a permuted copy of itself gives the checkpoint back: alignment comes first
    twin = AlignedReference([trained["ref"][0], _permuted(trained["ref"][0], 1)], layout.flatten, al)
    (avg,) = AverageBaseline([2], n=3).generate(twin, al, g)
    for sd in avg.state_dicts:
        assert (layout.flatten(sd) - layout.flatten(twin.state_dicts[0])).abs().max() < 1e-5
    with pytest.raises(ConfigError, match="k=11"):
        AverageBaseline([11], n=2).generate(ref, al, g)
    # the per-coordinate Gaussian reproduces the aligned zoo's mean and std
    (gauss,) = GaussianFitBaseline(n=3000).generate(ref, al, g)
    draws = torch.stack([layout.flatten(sd) for sd in gauss.state_dicts])
    assert torch.allclose(draws.mean(0), ref.flat.float().mean(0), atol=0.1 * ref.flat.std(0).max().item())
    assert torch.allclose(draws.std(0), ref.flat.float().std(0), rtol=0.1, atol=1e-6)
    for bad in ([], [-0.1], [float("nan")]):
        with pytest.raises(ConfigError, match="sigmas"):
            NoiseBaselineConfig(sigmas=bad)


def test_phase_comparison_against_the_nearest_cell():
    ref_cols = {"mode_connectivity/value": np.array([0.0, 0.01, -0.5, -0.4]), "cka/value": np.array([0.95] * 4),
                "hessian_eig/train": np.array([1.0, 2.0, 10.0, 50.0]), "hessian_eig/train_iters": np.array([5, 6, 7, 8])}
    cells = np.array(["a", "a", "b", "b"], dtype=object)
    ref_loss = np.array([0.01, 0.02, 0.05, 0.03])  # cell a: IV-B (mc ≈ 0, CKA large); cell b: III (barrier)
    gen_cols = {"hessian_eig/train": np.array([1.5, 7.0, 60.0, 3.0]), "only_generated/x": np.array([1, 2, 3, 4])}
    gen_loss = np.array([0.02, 0.9, 0.04, 0.01])  # nets 0, 2, 3 fit (coarse "III/IV"), net 1 underfits ("I/II")
    nearest = np.array([0, 1, 3, -1])  # net 3 has no neighbour (non-finite weights)
    rows = {r["column"]: r for r in compare_phases(gen_cols, ref_cols, nearest, cells, gen_loss, ref_loss)}
    assert set(rows) == {"phase", "hessian_eig/train"}  # bookkeeping columns (_iters) and one-sided ones skipped
    ph = rows["phase"]
    assert ph["training"] == {"IV-B": 1, "III": 1}
    assert ph["generated"] == {"III/IV": 2, "I/II": 1} and ph["n"] == 3
    assert ph["same_as_cell"] == pytest.approx(2 / 3)  # the underfitting net left its cell's phase
    assert rows["hessian_eig/train"]["inside_cell_range"] == pytest.approx(1 / 3)  # 1.5 in [1, 2] only
    assert compare_phases(gen_cols, {}, nearest, cells, gen_loss, ref_loss) == []


# ---- the audit, end to end on zoos ----------------------------------------------------------------
def test_audit_ranks_copies_as_memorized_and_fresh_nets_as_novel(zoos):
    baselines = {"noise": NoiseBaseline([0.01, 0.3, 1.0], n=10), "average": AverageBaseline([2], n=10),
                 "gaussian": GaussianFitBaseline(n=10)}
    # landscape annotations on both zoos (as wsl-landscape writes them): the phase tables appear
    Zg, Zr = Zoo(zoos["gen"]), Zoo(zoos["ref"])
    write_annotation(zoos["ref"], "mode_connectivity", Zr.ids, {"value": np.zeros(len(Zr.ids))})
    write_annotation(zoos["ref"], "hessian_eig", Zr.ids, {"train": np.arange(len(Zr.ids), dtype=float)})
    write_annotation(zoos["gen"], "hessian_eig", Zg.ids, {"train": np.full(len(Zg.ids), 100.0)})
    ev, report = evaluate_zoo(_job(zoos["gen"], zoos["ref"], out=str(zoos["root"] / "report")), baselines)
    gen = ev.sets[0]
    assert gen.method == "generated" and gen.ids == Zg.ids
    a, kinds = gen.audit, zoos["kinds"]
    for i, kind in enumerate(kinds):
        if kind in ("copy", "permuted copy"):  # fully memorized: distance 0 after alignment, same predictions
            assert a.l2[i] < 1e-4 and a.cosine[i] < 1e-6 and a.l2_ratio[i] < 1e-4
            assert a.agreement[i] == 1.0 and a.wrong_iou[i] == 1.0 and a.memorized[i]
        if kind == "fresh":  # as far from the zoo as its members are from each other
            assert 0.7 < a.l2_ratio[i] < 1.5 and not a.memorized[i] and a.agreement[i] < 1.0
    assert a.nearest[:3].tolist() == [0, 1, 2]
    raw = np.linalg.norm((Layout.from_state_dict(Zg.state_dict(Zg.ids[2])).flatten(Zg.state_dict(Zg.ids[2]))
                          - Layout.from_state_dict(Zr.state_dict(Zr.ids[2])).flatten(Zr.state_dict(Zr.ids[2]))).numpy())
    assert raw > 0.5 * ev.yardstick["l2_median"]  # the permuted copy is far apart before alignment
    assert gen.scores.failed.tolist() == [False] * 6 + [True] and np.isnan(a.l2[6])
    summ = gen.summary()
    assert summ["n"] == 7 and summ["n_audited"] == 6 and summ["failure_rate"] == pytest.approx(1 / 7)
    assert summ["acc_mean"] == pytest.approx(gen.scores.accuracy.mean())  # all nets, never the best
    # the training zoo against itself (leave-one-out) is the yardstick: novelty about 1, nothing memorized
    train = ev.by_method("training")[0]
    assert np.median(train.audit.l2_ratio) == pytest.approx(1.0) and not train.audit.memorized.any()
    # every baseline setting is there (nothing picked), and noise novelty grows with σ
    assert [s.label for s in ev.sets[2:]] == ["noise (sigma=0.01)", "noise (sigma=0.3)", "noise (sigma=1)",
                                             "average (k=2)", "gaussian (per-coordinate)"]
    nov = [np.nanmean(s.weight_novelty) for s in ev.by_method("noise")]
    assert nov[0] < 0.05 < nov[1] < nov[2]
    assert ev.ensemble["n_members"] == 10 and ev.ensemble["accuracy"] > 0.9
    phases = {r["column"]: r for r in ev.phases}
    assert phases["phase"]["training"] == {"IV": 1}  # one cell (seed replicas), well fit, no barrier, no CKA: "IV"
    assert phases["phase"]["n"] == 6 and phases["phase"]["same_as_cell"] == 1.0  # all six working nets fit
    assert phases["hessian_eig/train"]["inside_cell_range"] == 0.0  # 100 lies outside every cell
    # the report: markdown with tables and plots, CSVs, JSON
    files = {p.name for p in report.parent.iterdir()}
    assert {"report.md", "accuracy_novelty.png", "nn_distances.png", "sets.csv", "nets.csv", "summary.json"} <= files
    md = report.read_text()
    assert "| generated | 7 |" in md and "noise (sigma=0.3)" in md and "hessian_eig/train" in md
    summary = json.loads((report.parent / "summary.json").read_text())
    assert summary["info"]["n_generated"] == 7 and len(summary["sets"]) == len(ev.sets)
    assert (report.parent / "nets.csv").read_text().count("\n") == 1 + sum(len(s.scores) for s in ev.sets)


def test_conditioned_samples_and_the_generators_own_training_nets(zoos, trained, tmp_path, digits):
    """wsl-sample records the source zoo (with the generator's training ids) and each net's condition
    ("cond_<key>"): the audit then uses exactly those training nets, and the report groups nets by
    condition with the conditioned metric measured on its split."""
    ids = Zoo(zoos["ref"]).ids
    sds = trained["fresh"] + trained["ref"][:1]
    gen = _write_zoo(tmp_path / "cond", sds, trained["arch"], status="sampled",
                     hparams=[{"cond_val_acc": v, "generator_run": "r"} for v in (0.9, 0.9, 0.95, 0.95)],
                     config={"source_zoo": {"path": str(zoos["ref"]), "train_ids": ids[:8], "epoch": 0}})
    p = plan_evaluation(_job(gen, zoos["ref"]))
    assert p.ref_ids == ids[:8] and p.reference_epoch == 0 and "generator" in p.reference_source
    assert plan_evaluation(_job(gen, zoos["ref"], reference_ids=ids[2:6])).ref_ids == ids[2:6]
    ev, _ = evaluate_zoo(_job(gen, zoos["ref"], out=str(tmp_path / "report")), {})
    assert ev.info["n_reference"] == 8 and [s.method for s in ev.sets] == ["generated", "training"]
    rows = ev.info["conditions"]
    assert [(r["target"], r["n"], r["metric"]) for r in rows] == [(0.9, 2, "val_acc"), (0.95, 2, "val_acc")]
    net = MLP([1, 8, 8], 10, width=WIDTH)
    val = []
    for sd in sds:
        net.load_state_dict(sd)
        val.append((net(digits.x_val).argmax(1) == digits.y_val).double().mean().item())
    assert rows[0]["achieved_mean"] == pytest.approx(np.mean(val[:2]))
    assert rows[1]["achieved_mean"] == pytest.approx(np.mean(val[2:]))
    assert "## Conditions" in (tmp_path / "report" / "report.md").read_text()


def test_mismatches_are_refused_before_any_work(zoos, tmp_path, digits):
    torch.manual_seed(0)
    wide = MLP([1, 8, 8], 10, width=8)
    other_arch = _write_zoo(tmp_path / "w8", [wide.state_dict()] * 2, wide.arch)
    with pytest.raises(ConfigError, match="architecture mismatch") as e:
        plan_evaluation(_job(other_arch, zoos["ref"]))
    assert str(other_arch) in str(e.value) and str(zoos["ref"]) in str(e.value) and '"width": 8' in str(e.value)
    net = MLP([1, 8, 8], 10, width=WIDTH)
    other_data = _write_zoo(tmp_path / "split1", [net.state_dict()] * 2, net.arch, dataset={**DATASET, "split_seed": 1})
    with pytest.raises(ConfigError, match="dataset mismatch") as e:
        plan_evaluation(_job(other_data, zoos["ref"]))
    assert str(other_data) in str(e.value) and "split_seed=1" in str(e.value)
    with pytest.raises(ConfigError, match="same zoo"):
        plan_evaluation(_job(zoos["ref"], zoos["ref"]))
    with pytest.raises(ConfigError, match="split"):
        plan_evaluation(_job(zoos["gen"], zoos["ref"], split="holdout"))
    with pytest.raises(ConfigError, match="k=50 but the training zoo holds only 10"):
        evaluate_zoo(_job(zoos["gen"], zoos["ref"], out=str(tmp_path / "r")), {"average": AverageBaseline([2, 50])})
    assert not (tmp_path / "r").exists() and not (tmp_path / "w8" / "report").exists()


def test_config_is_typed_once_and_errors_name_the_key(tmp_path):
    from conftest import compose_cfg
    from wsl.apps.evaluate import typed_config
    from wsl.evaluate.baselines import build_baselines
    from wsl.evaluate.schema import AverageBaselineConfig

    def typed(*overrides):
        return typed_config(compose_cfg("evaluate", [f"zoo.path={tmp_path / 'g'}", f"reference={tmp_path / 'r'}",
                                                     *overrides]))

    job = typed("~baselines.gaussian", "baselines.average.ks=[2,4]", "phases=null")
    assert job.novelty.top_k == 5 and job.failure.min_gain == 0.1 and job.phases is None
    assert job.baselines["average"] == AverageBaselineConfig(ks=[2, 4], n=100)
    built = build_baselines(job.baselines)
    assert set(built) == {"noise", "average"} and built["average"].ks == [2, 4] and built["noise"].n == 100
    for bad, msg in [("baselines.noise.sigmas=[]", r"^baselines\.noise\.sigmas must be a non-empty list"),
                     ("baselines.average.ks=[1]", r"^baselines\.average\.ks must be a non-empty list of integers >= 2"),
                     ("baselines.gaussian.n=0", r"^baselines\.gaussian\.n must be an integer >= 1, got 0"),
                     ("+baselines.mine=3", r"^baselines\.mine must be a baseline config with a _target_"),
                     ("phases.cka=-1", r"^phases\.cka must be a number in \[0, inf\)"),
                     ("+phases.colour=1", r"unknown config key 'phases\.colour'"),
                     ("failure.min_accuracy=2", r"^failure\.min_accuracy must be a number in \[0, 1\]"),
                     ("novelty.memorized_below=0", r"^novelty\.memorized_below must be a number in \(0, inf\)"),
                     ("novelty.max_iter=0", r"^novelty\.max_iter must be an integer >= 1, got 0"),
                     ("reference_epoch=-2", r"^reference_epoch must be an integer >= -1 or null, got -2"),
                     ("reference_ids=[]", r"^reference_ids must be a non-empty list")]:
        with pytest.raises(ConfigError, match=msg):
            typed(bad)
    with pytest.raises(ConfigError, match="^reference is required, e.g. wsl-evaluate"):
        typed_config(compose_cfg("evaluate", [f"zoo.path={tmp_path / 'g'}"]))
    with pytest.raises(ConfigError, match="not a baseline"):  # a _target_ without check/generate
        from wsl.evaluate.baselines import check_baselines

        check_baselines(build_baselines({"x": {"_target_": "builtins.dict"}}), 10)


# ---- the console script -----------------------------------------------------------------------
def test_wsl_evaluate_console_script(zoos, tmp_path):
    out = tmp_path / "cli-report"
    cmd = [sys.executable, "-m", "wsl.apps.evaluate", f"zoo.path={zoos['gen']}", f"reference={zoos['ref']}",
           f"out={out}", "baselines.noise.sigmas=[0.1,1.0]", "baselines.noise.n=4", "baselines.average.ks=[2]",
           "baselines.average.n=4", "~baselines.gaussian", f"hydra.run.dir={tmp_path / 'run'}"]
    # and a reference of another architecture: one clear line naming both zoos, exit status 2
    torch.manual_seed(0)
    wide = MLP([1, 8, 8], 10, width=8)
    other = _write_zoo(tmp_path / "w8", [wide.state_dict()] * 2, wide.arch)
    bad = cmd[:4] + [f"reference={other}", f"hydra.run.dir={tmp_path / 'run2'}"]
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
             for c in (cmd, bad)]  # both at once: most of each is interpreter start-up
    (ok_out, ok_err), (bad_out, bad_err) = (p.communicate(timeout=300) for p in procs)
    assert procs[0].returncode == 0, ok_err[-3000:]
    assert str(out / "report.md") in ok_out
    md = (out / "report.md").read_text()
    assert "noise (sigma=1)" in md and "average (k=2)" in md and "gaussian (per-coordinate)" not in md  # ~baselines.gaussian
    assert (tmp_path / "run" / ".hydra" / "config.yaml").exists()  # the resolved config is kept with the run
    assert procs[1].returncode == 2, bad_err[-3000:]
    err = bad_err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: architecture mismatch") and str(other) in err[0]


def _set(method: str, setting: str, acc: np.ndarray, novelty: float) -> "SetResult":
    from wsl.evaluate.accuracy import Scores
    from wsl.evaluate.novelty import Audit
    from wsl.evaluate.results import SetResult

    s = len(acc)
    col = np.full(s, float(novelty))
    scores = Scores(acc, np.zeros(s), np.zeros((s, 1), np.int64), np.ones(s, bool), np.zeros(s, bool), 0.1)
    audit = Audit(col, col, col, col, np.zeros(s, np.int64), np.zeros(s), 1.0 - col, col < 0.5)
    return SetResult(method, setting, None, scores, audit)


def test_noise_comparison_calls_better_only_beyond_two_standard_errors():
    from wsl.evaluate.report import compare_with_noise, noise_at_equal_novelty
    from wsl.evaluate.results import Evaluation

    rng = np.random.default_rng(0)
    noise = [_set("noise", "sigma=0.1", 0.96 + 0.005 * rng.standard_normal(64), 0.2),
             _set("noise", "sigma=1", 0.80 + 0.05 * rng.standard_normal(64), 1.2)]

    def verdict(gen_acc, novelty):
        ev = Evaluation([_set("generated", "", gen_acc, novelty), *noise], {}, {}, [], {})
        return {c["axis"]: c for c in compare_with_noise(ev)}["weight"]

    ref = noise_at_equal_novelty(Evaluation(noise, {}, {}, [], {}), 0.7)
    assert ref == pytest.approx(float(np.mean([noise[0].scores.accuracy.mean(), noise[1].scores.accuracy.mean()])))
    far = verdict(0.95 + 0.005 * rng.standard_normal(256), 0.7)  # clearly above the interpolated noise curve
    assert far["verdict"] == "better" and far["better"] and far["difference"] > 2 * far["stderr"] > 0
    tie = verdict(ref + 0.002 * rng.standard_normal(256), 0.7)  # on the curve: a tiny difference is no win
    assert tie["verdict"] == "indistinguishable" and tie["better"] is False
    below = verdict(0.70 + 0.005 * rng.standard_normal(256), 0.7)
    assert below["verdict"] == "worse" and below["better"] is False
    outside = verdict(np.full(8, 0.97), 0.05)  # less novel than the smallest σ: no comparison
    assert outside["verdict"] is None and outside["better"] is None and outside["noise_accuracy"] is None


def test_batchnorm_nets_are_scored_after_train_split_reestimation_in_every_set(tmp_path, digits):
    """wsl-evaluate on BatchNorm ResNets: the accuracy of every generated net, every training net, every
    baseline net (noise σ=0: the training nets again) and the ensemble equals the hand computation
    (statistics re-estimated on the train split with reset_bn_stats, then the test split), whatever
    statistics the checkpoints hold; the report says what was used."""
    from test_generators import bn_resnet_zoo

    from wsl.landscape.batchnorm import reset_bn_stats
    from wsl.nets import build_net

    ref = bn_resnet_zoo(tmp_path / "train", n=3, steps=15)
    src = bn_resnet_zoo(tmp_path / "other", n=2, steps=15, seed=10)
    stale = []
    for m in Zoo(src).ids:  # 'generated' nets whose stored statistics are wrong on purpose
        sd = Zoo(src).state_dict(m)
        sd = {k: (v + 3.0 if "running_mean" in k else v) for k, v in sd.items()}
        stale.append(sd)
    arch = Zoo(ref).arch(Zoo(ref).ids[0])
    gen = _write_zoo(tmp_path / "gen", stale, arch, status="sampled",
                     hparams=[{"generator_run": "x", "sample_seed": i} for i in range(2)])
    job = _job(gen, ref, out=str(tmp_path / "report"), novelty=NoveltyConfig(top_k=1, max_iter=5),
               batchnorm=BatchNormConfig(batch_size=400))
    ev, report = evaluate_zoo(job, {"noise": NoiseBaseline([0.0], n=3)})
    net = build_net(arch)

    def logits(sd, on=digits.x_train):
        net.load_state_dict(sd)
        reset_bn_stats(net, on, 400)
        with torch.no_grad():
            return net(digits.x_test)

    def by_hand(sd, on=digits.x_train):
        return (logits(sd, on).argmax(1) == digits.y_test).double().mean().item()

    ref_sds = [Zoo(ref).state_dict(m) for m in Zoo(ref).ids]
    expect = {"generated": [by_hand(sd) for sd in stale], "training": [by_hand(sd) for sd in ref_sds]}
    got = {s.method: s.scores.accuracy for s in ev.sets}
    assert np.allclose(got["generated"], expect["generated"]) and np.allclose(got["training"], expect["training"])
    assert set(np.round(got["noise"], 6)) <= set(np.round(expect["training"], 6))
    ens = torch.stack([logits(sd).double().softmax(-1) for sd in ref_sds]).mean(0)
    assert ev.ensemble["accuracy"] == pytest.approx((ens.argmax(1) == digits.y_test).double().mean().item())
    # the stored statistics and the test split's would give other results
    assert any(by_hand(sd, digits.x_test) != a for sd, a in zip(stale + ref_sds, expect["generated"] + expect["training"]))
    with torch.no_grad():
        net.load_state_dict(stale[0])
        assert (net.eval()(digits.x_test).argmax(1) == digits.y_test).double().mean().item() != expect["generated"][0]
    info = ev.info["batchnorm_reestimation"]
    assert info == {"split": "train", "inputs": len(digits.x_train), "split_size": len(digits.x_train),
                    "batch_size": 400, "batches": 3, "subset_seed": None}
    assert "re-estimated on all 1079 inputs of the train split, in 3 batch(es) of at most 400" in report.read_text()
