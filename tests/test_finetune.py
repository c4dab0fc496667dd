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
    for bad in ["", "nozoo", f"{tmp_path}:", ":m0", f"{tmp_path}:m0@x", f"{tmp_path}:m 0", f"{tmp_path}:m0@-1"]:
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
    for text, what in [(f"{tmp_path}/nozoo:{mid}", "does not exist"), (f"{tiny_zoo}:nomodel", "'nomodel' is not in"),
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
    alone = _run(root / "alone", [f"init.from={tiny_zoo}:{base}", "train.lr=0.01", "population.size=1",
                                  "dataset.train_fraction=0.5"])
    return Zoo(tiny_zoo), base, Zoo(ft), Zoo(alone)


def test_full_finetune_starts_from_base_and_records_it(full_ft):
    zbase, base, ft, _ = full_ft
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


def test_full_finetune_member_equals_the_same_run_alone(full_ft):
    _, _, ft, alone = full_ft
    (mid,) = alone.ids
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


def test_init_from_bad_input_writes_nothing(tiny_zoo, tmp_path):
    zoo = Zoo(tiny_zoo)
    base = zoo.ids[0]
    cases = [([f"init.from={tiny_zoo}:nomodel"], ConfigError, "'nomodel' is not in zoo"),
             ([f"init.from={tiny_zoo}:{base}", "net.width=16"], ConfigError, "another architecture.*width=8"),
             ([f"init.from={tiny_zoo}:{base}@7"], ConfigError, "no checkpoint at epoch 7"),
             (["finetune=lora"], ConfigError, "finetune.mode=lora needs a base net")]
    for extra, err, what in cases:
        out = tmp_path / "out"
        with pytest.raises(err, match=what) as e:
            _run(out, extra)
        assert "\n" not in str(e.value) and not out.exists(), extra
    copy = tmp_path / "copy"
    shutil.copytree(tiny_zoo, copy)
    p = Zoo(copy).checkpoint_path(base)
    p.write_bytes(p.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ZooFormatError, match="sha256 does not match") as e:
        _run(tmp_path / "out", [f"init.from={copy}:{base}"])
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()
