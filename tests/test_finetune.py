"""Fine-tuning from a zoo member: model references (init.from), full and LoRA fine-tunes."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch

from wsl.errors import ConfigError, ZooFormatError
from wsl.zoo import Zoo
from wsl.zoo.reference import LAST, ModelRef, load_model_ref, parse_model_ref, resolve_model_ref


# ---- references ----------------------------------------------------------------------------------
def test_parse_model_ref(tmp_path):
    r = parse_model_ref(f"{tmp_path}/a:b:digits-mlp-x-m000@7")
    assert r == ModelRef(tmp_path / "a:b", "digits-mlp-x-m000", 7) and r.text == f"{tmp_path}/a:b:digits-mlp-x-m000@7"
    assert parse_model_ref(f"{tmp_path}:m0").epoch == LAST
    assert parse_model_ref(str(tmp_path)) == ModelRef(tmp_path, "", LAST)  # the zoo's only model
    for bad in ["", "nozoo@3", f"{tmp_path}:", ":m0", f"{tmp_path}:m0@x", f"{tmp_path}:m 0", f"{tmp_path}:m0@-1"]:
        with pytest.raises(ConfigError, match="init.from="):
            parse_model_ref(bad)


def test_load_model_ref(tiny_zoo, tmp_path):
    zoo = Zoo(tiny_zoo)
    mid = zoo.ids[1]
    sd, arch, sha = load_model_ref(f"{tiny_zoo}:{mid}")
    last = zoo.checkpoint_epochs(mid)[-1]
    assert arch == zoo.arch(mid) and sha == hashlib.sha256(zoo.checkpoint_path(mid).read_bytes()).hexdigest()
    assert all(torch.equal(sd[k], v) for k, v in zoo.state_dict(mid).items())
    assert resolve_model_ref(parse_model_ref(f"{tiny_zoo}:{mid}")).text == f"{tiny_zoo}:{mid}@{last}"
    sd0, _, sha0 = load_model_ref(parse_model_ref(f"{tiny_zoo}:{mid}@0"))
    assert sha0 != sha and all(torch.equal(sd0[k], v) for k, v in zoo.state_dict(mid, 0).items())
    # one-line errors naming what is missing
    for text, what in [(f"{tmp_path}/nozoo:{mid}", "does not exist"), (str(tiny_zoo), "holds 4 models; name one"), (f"{tiny_zoo}:nomodel", "'nomodel' is not in"),
                       (f"{tiny_zoo}:{mid}@99", "no checkpoint at epoch 99")]:
        with pytest.raises(ConfigError, match=what) as e:
            load_model_ref(text)
        assert "\n" not in str(e.value)
    # a corrupted checkpoint: one line naming the file
    copy = tmp_path / "copy"
    shutil.copytree(tiny_zoo, copy)
    p = Zoo(copy).checkpoint_path(mid)
    b = bytearray(p.read_bytes())
    b[-3] ^= 0xFF
    p.write_bytes(bytes(b))
    with pytest.raises(ZooFormatError, match="sha256 does not match") as e:
        load_model_ref(f"{copy}:{mid}")
    assert str(p) in str(e.value) and "\n" not in str(e.value)


# ---- full fine-tunes (init.from) -----------------------------------------------------------------
FT = ["net.width=8", "train.epochs=2", "train.batch_size=64", "logger=none", "progress_refresh_rate=0",
      "trainer.accelerator=cpu", "zoo.checkpoint_epochs=[0,2]"]


def _run(path, extra):
    from wsl.apps.zoo_job import run_zoo_job
    from tests.conftest import typed_zoo

    return run_zoo_job(typed_zoo([f"zoo.path={path}", *FT, *extra]))


@pytest.fixture(scope="module")
def full_ft(tiny_zoo, tmp_path_factory):
    base = Zoo(tiny_zoo).ids[0]
    root = tmp_path_factory.mktemp("ft")
    ft = _run(root / "ft", [f"init.from={tiny_zoo}:{base}", "train.lr=[0.01,0.03]", "population.size=2",
                            "dataset.train_fraction=0.5"])
    return Zoo(tiny_zoo), base, Zoo(ft)


def test_full_finetune_starts_from_base_and_records_it(full_ft):
    zbase, base, ft = full_ft
    last = zbase.checkpoint_epochs(base)[-1]
    sha = [s for e, _, s in zbase.row(base).checkpoints if e == last][0]
    t = ft.table()
    assert (t["init_from"] == f"{zbase.path}:{base}@{last}").all() and (t["init_sha256"] == sha).all()
    assert (t["finetune"] == "full").all() and (t["train_samples"] == round(zbase.training_data(base).x_train.shape[0] / 2)).all()
    assert sorted(t["lr"]) == [0.01, 0.03] and "-ft-" in ft.ids[0]
    assert ft.job_config(ft.ids[0])["init"] == {"from": f"{zbase.path}:{base}@{last}", "sha256": sha}
    want = zbase.state_dict(base)
    for mid in ft.ids:
        assert all(torch.equal(v, want[k]) for k, v in ft.state_dict(mid, 0).items())  # every member starts there
    a, b = (ft.state_dict(m) for m in ft.ids)
    assert not torch.allclose(a["head.weight"] if "head.weight" in a else next(iter(a.values())),
                              b["head.weight"] if "head.weight" in b else next(iter(b.values())))


@pytest.mark.slow
def test_full_finetune_member_equals_the_same_run_alone(full_ft, tmp_path):
    zbase, base, ft = full_ft
    alone = Zoo(_run(tmp_path / "alone", [f"init.from={zbase.path}:{base}", "train.lr=0.01", "population.size=1",
                                         "dataset.train_fraction=0.5"]))
    (mid,) = alone.ids
    assert resolve_model_ref(parse_model_ref(str(alone.path))).text == f"{alone.path}:{mid}@2"  # its only model
    k = [m for m in ft.ids if ft.hparams(m)["lr"] == 0.01][0]
    got, want = ft.state_dict(k), alone.state_dict(mid)
    for name, v in want.items():
        torch.testing.assert_close(got[name], v, atol=2e-5, rtol=1e-4)


def test_job_identity_unchanged_without_init_from():
    from tests.conftest import typed_zoo
    from wsl.apps.zoo_job import job_identity, stored_config

    job = typed_zoo(["zoo.path=/tmp/zz"])
    assert job.init_from is None and "init" not in stored_config(job) and "finetune" not in stored_config(job)
    assert job_identity(job) == "digits-mlp-w32-d1-bs32-tf1-913279e0"


def test_bad_input_is_one_line_and_writes_nothing(tiny_zoo, tmp_path):
    base = Zoo(tiny_zoo).ids[0]
    with pytest.raises(ConfigError, match="finetune.mode=lora needs a base net"):  # at typing, before any work
        _run(tmp_path / "out", ["finetune=lora"])
    cases = [([f"init.from={tiny_zoo}:nomodel"], "'nomodel' is not in zoo"),
             ([f"init.from={tiny_zoo}:{base}", "net.width=16"], "another architecture.*width=8 .configured: 16"),
             ([f"init.from={tiny_zoo}:{base}", "finetune=lora", "finetune.rank=9"],
              r"finetune.rank=9 is above the size of layer hidden.0.weight \(8 x 64: rank at most 8\)")]
    for extra, what in cases:  # a corrupted base checkpoint: test_load_model_ref (the same check, before any write)
        out = tmp_path / "out"
        with pytest.raises(ConfigError, match=what) as e:
            _run(out, extra)
        assert "\n" not in str(e.value) and not out.exists(), extra


# ---- LoRA -----------------------------------------------------------------------------------------
def _nets():
    from wsl.nets import build_net

    torch.manual_seed(0)
    mlp = build_net({"name": "mlp", "in_shape": [64], "num_classes": 10, "width": 8, "depth": 2})
    cnn = build_net({"name": "cnn", "in_shape": [1, 8, 8], "num_classes": 10, "width": 4, "depth": 2})
    return [(mlp, torch.randn(5, 64)), (cnn, torch.randn(5, 1, 8, 8))]


def test_lora_merge_is_base_plus_scaled_BA_and_matches_the_unmerged_forward():
    from wsl.nets.lora import AdaptedForward, adaptable, init_adapters, make_spec, merge

    for net, x in _nets():
        spec = make_spec(net, rank=2, alpha=3.0)
        assert spec.layers == list(adaptable(net)) and spec.scale == 1.5
        ad = init_adapters(spec, seed=1)
        assert all((v == 0).all() for k, v in ad.items() if k.endswith("lora_B"))
        ad = {k: torch.randn_like(v) for k, v in ad.items()}  # B != 0: a trained adapter
        base = {k: v.clone() for k, v in net.state_dict().items()}
        merged = merge(spec, base, ad)
        for k, v in base.items():  # closed form, weight by weight
            if k in spec.shapes:
                want = v + 1.5 * (ad[k + ".lora_B"] @ ad[k + ".lora_A"]).view(v.shape)
                torch.testing.assert_close(merged[k], want)
            else:
                assert torch.equal(merged[k], v)
        with torch.no_grad(), AdaptedForward(net, spec, ad):
            unmerged = net(x)
        with torch.no_grad():
            plain = net(x)
            net.load_state_dict(merged)
            got = net(x)
        assert not torch.allclose(plain, unmerged)
        torch.testing.assert_close(got, unmerged, atol=1e-5, rtol=1e-5)


def test_lora_spec_bad_input():
    from wsl.nets.lora import make_spec

    mlp = _nets()[0][0]
    with pytest.raises(ConfigError, match=r"finetune.rank=9 is above the size of layer hidden.0.weight \(8 x 64: rank at most 8\)"):
        make_spec(mlp, rank=9)
    with pytest.raises(ConfigError, match=r"layer head.weight \(10 x 8: rank at most 8\)"):
        make_spec(mlp, rank=9, layers=["head"])
    with pytest.raises(ConfigError, match="finetune.layers: 'nolayer' is not a Linear or Conv layer"):
        make_spec(mlp, rank=2, layers=["nolayer"])
    assert make_spec(mlp, 2, layers=["head", "hidden.0.weight"]).layers == ["hidden.0.weight", "head.weight"]


@pytest.fixture(scope="module")
def lora_ft(tiny_zoo, tmp_path_factory):
    base = Zoo(tiny_zoo).ids[0]
    root = tmp_path_factory.mktemp("lora")
    common = [f"init.from={tiny_zoo}:{base}", "finetune=lora", "finetune.rank=2", "finetune.alpha=4",
              "dataset.train_fraction=0.3", "train.optimizer=adam"]
    ft = _run(root / "lora", [*common, "train.lr=[0.01,0.03]", "population.size=2"])
    alone = _run(root / "alone", [*common, "train.lr=0.01", "population.size=1"])
    return Zoo(tiny_zoo), base, Zoo(ft), Zoo(alone)


def test_lora_zoo_stores_adapters_and_reads_merged_nets(lora_ft):
    from wsl.nets.lora import AdaptedForward
    from wsl.zoo.reader import read_checkpoint_metadata
    from wsl.zoo.verify import verify_zoo

    zbase, base, ft, _ = lora_ft
    want = zbase.state_dict(base)
    t = ft.table()
    assert (t["finetune"] == "lora").all() and (t["lora_rank"] == 2).all() and (t["lora_scale"] == 2.0).all()
    assert (t["lora_layers"] == "hidden.0.weight,head.weight").all() and "-lora2-" in ft.ids[0]
    x = zbase.training_data(base).x_test[:16]
    for mid in ft.ids:
        spec, ad = ft.lora_spec(mid), ft.adapters(mid)
        assert sorted(ad) == sorted(spec.adapter_shapes()) and ad["head.weight.lora_B"].abs().sum() > 0
        meta = read_checkpoint_metadata(ft.checkpoint_path(mid))
        lora = __import__("json").loads(meta["lora"])
        assert lora["base_sha256"] == ft.hparams(mid)["init_sha256"] and lora["base_checkpoint"] == str(
            zbase.checkpoint_path(base))
        got = ft.state_dict(mid)
        for k, v in want.items():
            if k in spec.shapes:
                torch.testing.assert_close(got[k], v + 2.0 * (ad[k + ".lora_B"] @ ad[k + ".lora_A"]))
            else:
                assert torch.equal(got[k], v)  # the base is frozen: biases too
        assert all(torch.equal(v, want[k]) for k, v in ft.state_dict(mid, 0).items())  # B = 0 at the start
        with torch.no_grad(), AdaptedForward(zbase.load_model(base), spec, ad) as adapted:
            torch.testing.assert_close(ft.load_model(mid)(x), adapted(x), atol=1e-5, rtol=1e-5)
    assert verify_zoo(ft.path) == []
    w, layout = ft.weights()  # other stages see merged weights
    assert torch.equal(w[0], layout.flatten(ft.state_dict(ft.ids[0])))
    with pytest.raises(ZooFormatError, match="not a LoRA fine-tune"):
        zbase.adapters(base)


def test_lora_member_equals_the_same_run_alone(lora_ft):
    _, _, ft, alone = lora_ft
    (mid,) = alone.ids
    k = [m for m in ft.ids if ft.hparams(m)["lr"] == 0.01][0]
    got, want = ft.adapters(k), alone.adapters(mid)
    for name, v in want.items():
        torch.testing.assert_close(got[name], v, atol=2e-5, rtol=1e-4)


# ---- dataset-size recovery (DSiRe) -----------------------------------------------------------------
def test_lora_spectrum_features_and_vote(lora_ft):
    import numpy as np

    from wsl.encoders.lora_spectrum import LoRASpectrum, spectrum_features

    zbase, base, ft, _ = lora_ft
    x, layers = spectrum_features(ft, ft.ids)
    assert x.shape == (2, 2, 3) and layers == ["hidden.0.weight", "head.weight"]
    ad, spec = ft.adapters(ft.ids[1]), ft.lora_spec(ft.ids[1])
    d = spec.scale * ad["head.weight.lora_B"].double() @ ad["head.weight.lora_A"].double()
    np.testing.assert_allclose(x[1, 1], [*torch.linalg.svdvals(d)[:2].numpy(), float(d.norm())], rtol=1e-6)
    with pytest.raises(ConfigError, match="not a LoRA fine-tune"):
        spectrum_features(zbase, [base])
    # brute force on hand-made features: 3 layers, classes at 0 / 10; layer 2 is misleading
    train = np.array([[[0.0], [0.0], [10.0]], [[10.0], [10.0], [0.0]]])
    knn = LoRASpectrum(k=1, log=False).fit(train, np.array([0, 1]))
    assert knn.predict(np.array([[[1.0], [2.0], [9.0]], [[9.0], [8.0], [1.0]]])).tolist() == [0, 1]  # 2 layers of 3
    two = LoRASpectrum(k=1, log=False).fit(train[:, :2], np.array([0, 1]))  # a 1-1 tie: the nearer neighbour's label wins
    assert two.predict(np.array([[[1.0], [9.5]]])).tolist() == [1]
    reg = LoRASpectrum(k=1, classification=False, log=False).fit(train, np.array([5.0, 50.0]))
    assert reg.predict(np.array([[[1.0], [2.0], [9.0]]])).tolist() == [5.0]  # median of 5, 5, 5


def test_train_size_task_scores_mae_in_samples():
    from wsl.encoders.schema import TaskConfig
    from wsl.encoders.tasks import Task, score

    task = Task(**{k: v for k, v in vars(TaskConfig(name="train_size", kind="classification",
                                                     columns=["train_samples"])).items()})
    logits = torch.nn.functional.one_hot(torch.tensor([0, 2, 1, 1]), 3).float()
    out = score(task, ["train_samples"], logits, torch.tensor([0, 1, 1, 2]), classes=[11, 22, 43])
    assert out["acc"] == 0.5 and out["mae"] == pytest.approx((0 + 21 + 0 + 21) / 4)
    assert "mae" not in score(task, ["x"], logits, torch.tensor([0, 1, 1, 2]), classes=["a", "b", "c"])


def test_lora_zoo_without_its_base_says_so(lora_ft, tmp_path):
    _, _, ft, _ = lora_ft
    for key, value, what in [("init_sha256", "0" * 64, "is not the recorded init_sha256"),
                             ("init_from", f"{tmp_path}/gone:m@2", "needs its base .*not a directory")]:
        z = Zoo(ft.path)
        z.row(z.ids[0]).hparams[key] = value
        with pytest.raises(ZooFormatError, match=what) as e:
            z.load_model(z.ids[0])
        assert "\n" not in str(e.value)


@pytest.mark.slow
def test_dsire_console_run(tiny_zoo, tmp_path):
    """A small DSiRe zoo (2 sizes x 3 subsets x 2 seeds) from experiment=dsire_digits, then wsl-train-encoder
    encoder=lora_spectrum task=train_size as a user runs it: accuracy and MAE in samples in the table."""
    import pandas as pd

    from tests.conftest import run_cli

    base = _run(tmp_path / "base", ["population.size=1", "net.width=32"])
    for f in (0.01, 0.1):
        for s in range(3):
            _run(tmp_path / "dsire", ["experiment=dsire_digits", f"init.from={base}", "net.width=32", "population.size=2",
                                      f"dataset.train_fraction={f}", f"dataset.subset_seed={s}"])
    p = run_cli("train_encoder", f"zoo.path={tmp_path / 'dsire'}", "encoder=lora_spectrum", "task=train_size",
                "split.fractions=[0.34,0.33,0.33]", "logger=none", f"hydra.run.dir={tmp_path / 'run'}", check=True)
    assert "test mae" in p.stdout
    df = pd.read_csv(tmp_path / "run" / "results.csv")
    assert {"test/acc", "test/mae"} <= set(df.columns) and df["test/mae"].iloc[0] >= 0


@pytest.mark.slow
def test_lora_on_a_batchnorm_resnet(tmp_path):
    """Conv adapters inside the population, BatchNorm statistics stored with the adapters and merged back."""
    from wsl.nets.lora import AdaptedForward
    from wsl.zoo.verify import verify_zoo

    net = ["net=resnet", "net.width=4", "net.depth=1", "net.norm=batch", "train.epochs=1", "zoo.checkpoint_epochs=[0,1]"]
    base = Zoo(_run(tmp_path / "base", [*net, "population.size=1"]))
    ft = Zoo(_run(tmp_path / "lora", [*net, f"init.from={base.path}", "finetune=lora", "finetune.rank=2",
                                      "population.size=2", "train.lr=0.01"]))
    mid = ft.ids[0]
    spec, ad, sd = ft.lora_spec(mid), ft.adapters(mid), ft.state_dict(mid)
    assert any(sd_k.endswith("running_mean") for sd_k in sd) and any(len(s) == 4 for s in spec.shapes.values())
    stored = ft._stored_state(mid)
    for k, v in sd.items():
        if "running" in k or "num_batches" in k:
            assert torch.equal(v, stored[k])  # the fine-tune's own statistics, not the base's
    x = base.training_data().x_test[:8]
    adapted_net = base.load_model(base.ids[0])
    adapted_net.load_state_dict({**adapted_net.state_dict(), **{k: v for k, v in stored.items() if k in sd}})
    with torch.no_grad(), AdaptedForward(adapted_net, spec, ad) as adapted:
        torch.testing.assert_close(ft.load_model(mid)(x), adapted(x), atol=1e-5, rtol=1e-4)
    assert verify_zoo(ft.path) == []
