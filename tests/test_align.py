"""wsl-align on a real zoo (digits MLPs of two widths trained here by wsl-zoo, one cell diverged):
the copy is in the same format, every net computes what it computed before at every checkpoint,
replicas end up aligned to their cell's reference (a fixed point of weight matching), and the
barriers recorded in the index are the real ones and drop after alignment."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import compose_cfg, make_zoo, run_cli
from wsl.align import AlignConfig, align_zoo
from wsl.align.schema import BarrierConfig
from wsl.apps.align import typed_config
from wsl.errors import ConfigError
from wsl.landscape.connectivity import linear_barrier
from wsl.population.functional import stack_state_dicts
from wsl.symmetry import identity_permutations, permute, weight_matching
from wsl.zoo import Zoo, read_checkpoint_metadata, write_annotation
from wsl.zoo.schema import ZooPath


def _job(source, out, **kw) -> AlignConfig:
    return AlignConfig(zoo=ZooPath(str(source.path)), out=str(out), **kw)


def _norm(sd):
    return float(sum(v.double().pow(2).sum() for v in sd.values()))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Two wsl-zoo jobs in one zoo: width-8 MLPs in cells lr=0.1 and lr=0.03 (3 seed replicas
    each) that train and lr=1000 that diverges; width-4 MLPs (2 replicas). Plus an annotation
    group the copy must carry over."""
    path = tmp_path_factory.mktemp("align") / "src"
    make_zoo(path, ["population.size=9", "train.lr=[0.1,0.03,1000.0]"])
    make_zoo(path, ["population.size=2", "net.width=4"])
    zoo = Zoo(path)
    write_annotation(path, "weights", zoo.ids, {"sq_norm": [_norm(zoo.state_dict(m)) for m in zoo.ids]},
                     {"what": "sum of squared weights of the last checkpoint"})
    return Zoo(path)


def test_wsl_align_writes_canonical_copy(source, tmp_path):
    out = tmp_path / "aligned"
    r = run_cli("align", f"zoo.path={source.path}", f"out={out}", f"hydra.run.dir={tmp_path / 'run'}", check=True)
    assert f"aligned zoo: {out}" in r.stdout
    assert (tmp_path / "run" / ".hydra" / "config.yaml").exists()

    new = Zoo(out)  # the same format: the reader opens it and verifies every checksum below
    assert new.ids == source.ids
    src_t, new_t = source.table(), new.table()
    for col in ("status", "lr", "weight_decay", "seed_init", "test_acc", "diverged_epoch", "n_checkpoints"):
        assert new_t[col].equals(src_t[col]), col
    for m in source.ids:
        assert source.hparams(m) == new.hparams(m)
        for k, h in source.history(m).items():
            np.testing.assert_array_equal(new.history(m)[k], h)
    assert new.cells().keys() == source.cells().keys()
    assert new.training_data(new.ids[0]).fingerprint() == source.training_data(source.ids[0]).fingerprint()

    ann = new.annotation("alignment")
    cols = {k: (np.asarray(v) if not isinstance(v, list) else v) for k, v in ann["columns"].items()}
    row = {m: i for i, m in enumerate(new.ids)}
    x = source.training_data().x_test
    aligned = []
    for cell in source.cells().values():
        statuses = {source.row(m).status for m in cell}
        if statuses == {"diverged"}:  # copied as they are, nothing recorded
            for m in cell:
                assert cols["reference"][row[m]] == "" and np.isnan(cols["barrier_before"][row[m]])
                assert torch.equal(new.state_dict(m)["head.weight"], source.state_dict(m)["head.weight"])
            continue
        ref = cell[0]
        assert cols["is_reference"][row[ref]] == 1 and cols["barrier_after"][row[ref]] == 0
        for m in cell:
            assert cols["reference"][row[m]] == ref
            spec = source.permutation_spec(m)
            for e in source.checkpoint_epochs(m):
                a, b = source.load_model(m, e), new.load_model(m, e)
                with torch.no_grad():  # every checkpoint computes what it computed
                    assert torch.allclose(a(x), b(x), atol=1e-5, rtol=0), (m, e)
                meta = read_checkpoint_metadata(new.checkpoint_path(m, e))["alignment"]
                perms = {p: torch.tensor(v) for p, v in (json.loads(meta)["permutation"] or {}).items()}
                moved = permute(source.state_dict(m, e), spec, perms)  # the recorded permutation is the one applied
                assert all(torch.equal(moved[k], v) for k, v in new.state_dict(m, e).items())
            if m == ref:
                continue
            aligned.append(m)
            # canonical: weight matching finds nothing left to permute against the reference
            found = weight_matching(new.state_dict(ref), new.state_dict(m), spec)
            assert all(torch.equal(found[p], q) for p, q in identity_permutations(spec).items())
            assert cols["l2_after"][row[m]] < cols["l2_before"][row[m]]
            assert cols["barrier_after"][row[m]] < cols["barrier_before"][row[m]]
    assert len(aligned) == 5  # 2 + 2 replicas of the width-8 cells, 1 of the width-4 cell
    before = cols["barrier_before"][[row[m] for m in aligned]]
    after = cols["barrier_after"][[row[m] for m in aligned]]
    assert before.mean() > 0.1 and after.mean() < 0.5 * before.mean(), (before, after)

    # the recorded barriers are the real ones: recompute one pair on the recorded data (first 2000 train)
    m = aligned[0]
    ref = cols["reference"][row[m]]
    data = source.training_data(m)
    xs, ys = data.x_train[:2000], data.y_train[:2000]
    pair = lambda u, v: (stack_state_dicts([u]), stack_state_dicts([v]))  # noqa: E731
    net = source.skeleton(m)
    b0 = float(linear_barrier(net, *pair(source.state_dict(ref), source.state_dict(m)), xs, ys).barrier[0])
    b1 = float(linear_barrier(net, *pair(source.state_dict(ref), new.state_dict(m)), xs, ys).barrier[0])
    # wsl-align evaluates a chunk of pairs in one vmapped pass, this one pair alone: float32 losses of order 1 then
    # differ in their last bits (eps 1.2e-7), and a barrier is a difference of such losses
    assert cols["barrier_before"][row[m]] == pytest.approx(b0, rel=1e-6, abs=1e-6)
    assert cols["barrier_after"][row[m]] == pytest.approx(b1, rel=1e-6, abs=1e-6)
    assert ann["attrs"]["barrier_split"] == "train" and ann["attrs"]["barrier_points"] == 11

    # the source's annotations travel, marked; this one is permutation invariant, so still true
    w = new.annotation("weights")
    assert w["attrs"]["copied_from"] == str(source.path)
    assert np.allclose(w["columns"]["sq_norm"], [_norm(new.state_dict(m)) for m in new.ids], rtol=1e-5)

    # bad input: one line, exit status 2, nothing written
    r = run_cli("align", f"zoo.path={source.path}", f"out={source.path}", f"hydra.run.dir={tmp_path / 'run2'}")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "out=" in r.stderr and "source zoo itself" in r.stderr


def test_global_reference_and_matched_epoch(source, tmp_path):
    # one reference per architecture (the first trained net of it); only the matched epoch is written
    out = align_zoo(_job(source, tmp_path / "global", reference="global", epoch=1, epochs="matched",
                         annotations="drop"))
    new = Zoo(out)
    cols = new.annotation("alignment")["columns"]
    trained = source.filter(status="trained")
    first = {}
    for m in trained:
        first.setdefault(source.arch(m)["width"], m)
    assert len(first) == 2
    x = source.training_data().x_test
    for i, m in enumerate(new.ids):
        if m in trained:
            assert cols["reference"][i] == first[source.arch(m)["width"]]
            assert new.checkpoint_epochs(m) == [1] and cols["matched_epoch"][i] == 1
            with torch.no_grad():
                assert torch.allclose(source.load_model(m, 1)(x), new.load_model(m, 1)(x), atol=1e-5)
        else:  # diverged: copied, its only checkpoint kept
            assert cols["reference"][i] == "" and new.checkpoint_epochs(m) == source.checkpoint_epochs(m)
    assert not any(c.startswith("weights/") for c in new.table().columns)  # annotations=drop


def test_bad_settings_name_the_key(source, tmp_path):
    def typed(*overrides):
        return typed_config(compose_cfg("align", [f"zoo.path={source.path}", f"out={tmp_path / 'x'}", *overrides]))

    assert typed().matching.restarts == 1 and typed("barrier.samples=null").barrier.samples is None
    with pytest.raises(ConfigError, match="^reference_id is only used with reference=global"):
        typed("reference_id=x")
    with pytest.raises(ConfigError, match="reference_id is only used with reference=global"):
        AlignConfig(reference_id="x")
    with pytest.raises(ConfigError, match=r"^matching\.restarts must be an integer >= 1, got 0"):
        typed("matching.restarts=0")
    with pytest.raises(ConfigError, match=r"^barrier\.split='holdout' is not allowed"):
        typed("barrier.split=holdout")
    with pytest.raises(ConfigError, match=r"^barrier\.points must be an integer >= 2, got 1"):
        typed("barrier.points=1")
    assert typed().barrier.bn_reset is True and typed("barrier.bn_reset=false").barrier.bn_reset is False
    with pytest.raises(ConfigError, match=r"^barrier\.bn_reset must be true or false, got 'maybe'"):
        typed("barrier.bn_reset=maybe")
    with pytest.raises(ConfigError, match=r"^barrier\.bn_batch_size must be an integer >= 2 or null, got 1"):
        typed("barrier.bn_batch_size=1")
    with pytest.raises(ConfigError, match="^zoo.path is required, e.g. wsl-align"):
        typed_config(compose_cfg("align", []))
    with pytest.raises(ConfigError, match="epoch=9: model .* has no checkpoint there"):
        align_zoo(_job(source, tmp_path / "a", epoch=9))
    with pytest.raises(ConfigError, match="reference_id='nope' is not a model"):
        align_zoo(_job(source, tmp_path / "b", reference="global", reference_id="nope"))
    with pytest.raises(ConfigError, match="has another architecture"):  # one reference for two widths
        align_zoo(_job(source, tmp_path / "d", reference="global", reference_id=source.ids[0]))
    diverged = source.filter(status="diverged")[0]
    with pytest.raises(ConfigError, match="diverged"):
        align_zoo(_job(source, tmp_path / "c", reference="global", reference_id=diverged))
    with pytest.raises(ConfigError, match="inside the source zoo"):
        align_zoo(_job(source, source.path / "copy"))
    assert not any((tmp_path / d).exists() for d in ("a", "b", "c", "d"))


# ---- ResNets with BatchNorm -----------------------------------------------------------------
RESNET = ["net=resnet", "net.width=4", "net.depth=1", "population.size=3", "train.epochs=3", "train.lr=0.02",
          "train.optimizer=adam"]


@pytest.fixture(scope="module")
def resnets(tmp_path_factory):
    """A real wsl-zoo ResNet-8 zoo (width 4, BatchNorm: running statistics in every checkpoint), 3 seed replicas."""
    return Zoo(make_zoo(tmp_path_factory.mktemp("align-resnet") / "src", RESNET))


def test_wsl_align_on_a_batchnorm_resnet_zoo(resnets, tmp_path):
    from wsl.landscape.batchnorm import has_batchnorm

    source = resnets
    assert has_batchnorm(source.load_model(source.ids[0]))
    out = tmp_path / "aligned"
    r = run_cli("align", f"zoo.path={source.path}", f"out={out}", "barrier.bn_batch_size=400", "logger=none",
                f"hydra.run.dir={tmp_path / 'run'}", check=True)
    assert f"aligned zoo: {out}" in r.stdout
    assert "BatchNorm statistics reset at every point on" in r.stdout + r.stderr  # the log says it too
    new = Zoo(out)
    ann = new.annotation("alignment")
    cols, attrs = ann["columns"], ann["attrs"]
    data = source.training_data()
    x, n_train = data.x_test, data.x_train.shape[0]
    ref = source.ids[0]
    for m in source.ids:
        spec = source.permutation_spec(m)
        assert spec.buffers  # BatchNorm statistics are declared, so permuted along
        for e in source.checkpoint_epochs(m):
            a, b = source.load_model(m, e), new.load_model(m, e)  # eval mode, each with its own stored statistics
            with torch.no_grad():
                assert torch.allclose(a(x), b(x), atol=1e-5, rtol=0), (m, e)
                assert torch.allclose(a.train()(x), b.train()(x), atol=1e-5, rtol=0), (m, e)  # batch statistics
            meta = json.loads(read_checkpoint_metadata(new.checkpoint_path(m, e))["alignment"])
            perms = {p: torch.tensor(v) for p, v in (meta["permutation"] or {}).items()}
            moved = permute(source.state_dict(m, e), spec, perms)  # weights and buffers alike
            assert moved.keys() == new.state_dict(m, e).keys()
            assert all(torch.equal(moved[k], v) for k, v in new.state_dict(m, e).items())
        if m != ref:  # matched on the weights alone: canonical against the reference
            found = weight_matching(new.state_dict(ref), new.state_dict(m), spec)
            assert all(torch.equal(found[p], q) for p, q in identity_permutations(spec).items())
    row = {m: i for i, m in enumerate(new.ids)}
    others = [row[m] for m in source.ids[1:]]
    before, after = np.asarray(cols["barrier_before"])[others], np.asarray(cols["barrier_after"])[others]
    assert after.mean() <= before.mean() + 1e-9, (before, after)
    assert np.isfinite(np.asarray(cols["acc_barrier_after"])[others]).all()

    # the reset is recorded: where (train), how many examples, batches and their size
    n = min(2000, n_train)
    assert attrs["bn_reset"] == 1 and attrs["bn_reset_split"] == "train"
    assert (attrs["bn_reset_samples"], attrs["bn_reset_batch_size"], attrs["bn_reset_batches"]) == (n, 400, -(-n // 400))
    record = new.job_config(ref)["align"]
    assert record["barrier"]["bn_reset"] is True
    assert record["batchnorm"] == [{"arch": "resnet", "models": 2, "reset": True, "samples": n, "batch_size": 400,
                                    "batches": -(-n // 400), "split": "train"}]

    # the recorded barrier is the one computed by hand: statistics reset on the first n train inputs
    m = source.ids[1]
    xs, ys = data.x_train[:2000], data.y_train[:2000]
    pair = lambda u, v: (stack_state_dicts([u]), stack_state_dicts([v]))  # noqa: E731
    b1 = linear_barrier(source.skeleton(m), *pair(source.state_dict(ref), new.state_dict(m)), xs, ys,
                        bn_x=data.x_train[:n], bn_batch_size=400)
    assert cols["barrier_after"][row[m]] == pytest.approx(float(b1.barrier[0]), rel=1e-6, abs=1e-9)

    # without the reset: recorded as such, and other barriers (the stored statistics' collapse)
    stale = Zoo(align_zoo(_job(source, tmp_path / "stale", barrier=BarrierConfig(bn_reset=False),
                               annotations="drop")))
    s_ann = stale.annotation("alignment")
    assert s_ann["attrs"]["bn_reset"] == 0 and "bn_reset_batches" not in s_ann["attrs"]
    assert stale.job_config(ref)["align"]["batchnorm"] == [{"arch": "resnet", "models": 2, "reset": False}]
    assert not np.allclose(np.asarray(s_ann["columns"]["barrier_before"])[others], before)
