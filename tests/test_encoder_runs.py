"""Saved encoders (wsl.encoders.encoder_run), wsl-embed and split.by, on real digits MLPs.

- every encoder of the registry, saved and reloaded from its safetensors file alone, gives bitwise the
  predictions of the module in memory; so does a run trained by wsl-train-encoder's experiment;
- the embedding is the input of the last linear layer (output = last_linear(embedding));
- wsl-embed (console script) writes an annotation group that Zoo.table() / Zoo.annotation() read, with the
  mean of the seeds' predictions; a zoo drawn by wsl-sample is embedded too;
- bad input (another architecture, other widths without zoo.pad, missing task columns with score=true, a
  truncated encoder file) is one line naming what differs or the file, and nothing is written;
- split.by=model warns that replicas straddle the split; split.by=cell on too few cells names split.by=model.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import compose_cfg, run_cli
from wsl.errors import ConfigError, WslError, ZooFormatError
from wsl.nets import build_net
from wsl.zoo import ShardWriter, Zoo

ARCH = {"activation": "relu", "depth": 1, "in_shape": [1, 8, 8], "init": "default", "name": "mlp",
        "num_classes": 10, "width": 8}
DATASET = {"_target_": "wsl.data.load_dataset", "name": "digits", "root": None, "train_fraction": 1.0,
           "subset_seed": 0, "split_seed": 0, "val_fraction": 0.2, "test_fraction": 0.2}
STEPS = (0, 3, 8, 30)  # 4 cells (training steps) x 3 seed replicas


def _digits_nets(arch: dict, steps: tuple, replicas: int) -> list:
    """Real digits MLPs: Adam full batch for `s` steps (accuracies from chance to ~0.9); (hparams, state dict,
    test accuracy)."""
    from wsl.data import load_dataset

    d = load_dataset("digits")
    (xt, yt) = d.split("test")
    out = []
    for s in steps:
        for r in range(replicas):
            torch.manual_seed(100 * s + r)
            net = build_net(arch)
            opt = torch.optim.Adam(net.parameters(), lr=0.02)
            for _ in range(s):
                opt.zero_grad()
                F.cross_entropy(net(d.x_train), d.y_train).backward()
                opt.step()
            with torch.no_grad():
                acc = float((net(xt).argmax(-1) == yt).float().mean())
            out.append(({"steps": s, "seed_init": r}, net.state_dict(), acc))
    return out


def _write(path: Path, nets: list, arch: dict = ARCH, metrics: bool = True) -> Path:
    w = ShardWriter(path, "job0", config={"dataset": dict(DATASET)}, zoo_name=path.name)
    for i, (hp, sd, acc, *own) in enumerate(nets):  # a net may carry its own arch
        mid, a = f"m{i:02d}", own[0] if own else arch
        w.write_checkpoint(mid, 1, sd, a)
        w.add_model(mid, a, hp, "trained", {"train_acc": [acc], "test_acc": [acc]} if metrics else {})
    w.commit()
    return path


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("enc") / "digits", _digits_nets(ARCH, STEPS, 3))


def _job(zoo_path, *overrides):
    from wsl.apps.train_encoder import typed_config

    return typed_config(compose_cfg("train_encoder", [f"zoo.path={zoo_path}", "logger=none", *overrides]))


@pytest.fixture(scope="module")
def run(zoo, tmp_path_factory):
    """A wsl-train-encoder run (deepsets, two seeds, split.by=model) and its modules in memory."""
    from wsl.encoders.experiment import run_experiment

    out, modules = tmp_path_factory.mktemp("run"), {}
    job = _job(zoo, "encoder=deepsets", "encoder.hidden=8", "encoder.head_hidden=16", "seeds=[0,1]",
               "trainer.max_epochs=4", "split.by=model", "split.fractions=[0.5,0.25,0.25]", "batch_size=4")
    run_experiment(job, out, modules=modules)
    return out, modules


def _weights(zoo_path, space):
    from wsl.encoders.experiment import load_weights
    from wsl.encoders.module import WeightSet

    z = Zoo(zoo_path)
    return WeightSet(*load_weights(z, z.ids, space), torch.zeros(len(z.ids)))


# ------------------------------------------------------------------------------------------ saving
def test_trained_run_is_saved_and_reloads_to_the_same_predictions(run, zoo):
    from wsl.encoders.encoder_run import load_run

    out, modules = run
    assert sorted(p.name for p in (out / "encoders").iterdir()) == ["run.json", "seed0.json", "seed0.safetensors",
                                                                   "seed1.json", "seed1.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["encoder"]["name"] == "deepsets" and cfg["split"]["by"] == "model"
    encs = load_run(out)
    assert [e.seed for e in encs] == [0, 1]
    desc = encs[0].desc
    assert desc["encoder"] == {"name": "deepsets", "kwargs": {"hidden": 8, "head_hidden": 16, "dropout": 0.0,
                                                         "norm_readout": True},
                               "label": "deepsets"}
    assert desc["space"]["archs"] == [ARCH] and desc["task"]["columns"] == ["test_acc"]
    assert sorted(desc["zoo"]["train_ids"] + desc["zoo"]["val_ids"] + desc["zoo"]["test_ids"]) == Zoo(zoo).ids
    data = _weights(zoo, encs[0].space)
    for enc in encs:
        mem = modules[enc.seed].predict_set(data)
        pred, emb = enc.predict(data)
        assert torch.equal(pred, mem)  # bitwise: the same module rebuilt from the file alone
        last = enc.module.encoder.rho[-1]  # the embedding is the input of the output layer
        assert torch.allclose(enc.module.to_target_units(last(emb)), pred, atol=1e-5)
    assert not torch.equal(encs[0].predict(data)[0], encs[1].predict(data)[0])  # two seeds, two encoders


RESNET = {"name": "resnet", "in_shape": [1, 8, 8], "num_classes": 10, "width": 4, "depth": 1, "stages": 3,
          "norm": "batch", "activation": "relu", "init": "default"}


@pytest.mark.parametrize("name, resnet", [("flat", False), ("stats", False), ("deepsets", False), ("graph", False),
                                          ("nfn", False), ("transformer", False), ("graph", True)])
def test_every_encoder_round_trips_through_its_file(zoo, tmp_path, name, resnet):
    """Each registry encoder (random weights, scale and BatchNorm statistics: nothing is left at its
    default) saved and rebuilt from the file alone predicts exactly as the module in memory; also on
    ResNets read with their BatchNorm running statistics (zoo.bn_stats=true: the space is rebuilt from the
    recorded architecture)."""
    from wsl.encoders import ENCODERS
    from wsl.encoders.encoder_run import describe, load_encoder, save_encoder
    from wsl.encoders.experiment import read_space
    from wsl.encoders.module import PropertyPredictor
    from wsl.encoders.schema import ENCODER_SCHEMAS
    from wsl.encoders.tasks import Targets, Task

    z = Zoo(_write(tmp_path / "resnets", _untrained(RESNET), RESNET)) if resnet else Zoo(zoo)
    arch = RESNET if resnet else ARCH
    space = read_space(z, z.ids, bn_stats=resnet)
    schema = next(c for c in ENCODER_SCHEMAS if c.name == name)
    small = {"hidden": 8, "head_hidden": 8, "channels": 4, "num_layers": 1, "dim": 8, "heads": 2, "edge_dim": 4,
             "layers": 2}
    kwargs = {f: small.get(f, getattr(schema(), f)) for f in schema.__dataclass_fields__ if f not in ("name", "_target_")}
    torch.manual_seed(0)
    data = _weights(z.path, space)
    data.y = torch.rand(len(data), 2)
    task = Task(name="two", columns=["test_acc", "train_acc"])
    module = PropertyPredictor(ENCODERS[name](space=space, out_dim=2, **kwargs), space, task, ["test_acc", "train_acc"],
                               data)
    with torch.no_grad():
        for k, v in module.state_dict().items():
            if v.is_floating_point():
                v.copy_(torch.rand_like(v) + 0.5)
    module.eval()
    desc = describe(encoder={"name": name, "kwargs": kwargs}, out_dim=2, task=task,
                    targets=Targets(data.y, ["test_acc", "train_acc"]), archs=[arch], space=space, pad=False,
                    bn_stats=resnet, zoo={"path": str(z.path)}, seed=3, training={})
    enc = load_encoder(save_encoder(tmp_path, 3, module, desc))
    assert torch.equal(enc.predict(data)[0], module.predict_set(data))


# ------------------------------------------------------------------------------------------ wsl-embed
def test_wsl_embed_writes_an_annotation_group_read_through_zoo(run, zoo, tmp_path):
    from wsl.encoders.encoder_run import load_run

    out, _ = run
    target = tmp_path / "zoo"
    shutil.copytree(zoo, target)
    r = run_cli("embed", f"run={out}", f"zoo.path={target}", "logger=none", f"hydra.run.dir={tmp_path / 'r'}",
                check=True)
    assert "annotation group embed_deepsets_test_acc" in r.stdout and "tau" in r.stdout, r.stdout
    z = Zoo(target)
    t = z.table()
    encs = load_run(out)
    data = _weights(target, encs[0].space)
    preds = [e.predict(data) for e in encs]
    mean = torch.stack([p for p, _ in preds]).mean(0)[:, 0].double().numpy()
    np.testing.assert_allclose(t["embed_deepsets_test_acc/pred_test_acc"].to_numpy(), mean, rtol=1e-6)
    np.testing.assert_allclose(t["embed_deepsets_test_acc/pred_test_acc_seed1"].to_numpy(),
                               preds[1][0][:, 0].double().numpy(), rtol=1e-6)
    ann = z.annotation("embed_deepsets_test_acc")
    emb = np.asarray(ann["columns"]["embedding_seed0"])
    assert emb.shape == (len(z.ids), 16) and np.allclose(emb, preds[0][1].numpy(), atol=1e-6)
    assert ann["attrs"]["seeds"] in ([0, 1], "[0, 1]")


def test_a_generated_zoo_is_embedded_and_screened(run, zoo, tmp_path):
    """A zoo drawn by wsl-sample (no accuracies recorded) gets predictions; wsl-evaluate given the encoder
    run reports Kendall tau of predicted against measured accuracy and draws the scatter plot."""
    from conftest import typed_gen
    from wsl.encoders.embed import embed_zoo
    from wsl.encoders.schema import EmbedConfig, EmbedZoo
    from wsl.evaluate.pipeline import evaluate_zoo
    from wsl.evaluate.schema import EvaluateConfig, NoveltyConfig
    from wsl.generators.sample import sample_zoo
    from wsl.generators.train import train_generator
    from wsl.zoo.schema import ZooPath

    out, _ = run
    quiet = ["logger=none", "progress_refresh_rate=0", "trainer.accelerator=cpu"]
    train_generator(typed_gen("train_generator", [f"zoo.path={zoo}", "generator=flow", "trainer.max_steps=30",
                                                  "generator.denoiser.hidden=32", "generator.denoiser.depth=1",
                                                  "spread.every_n_steps=30", "spread.n=8", *quiet]), tmp_path / "g")
    gen = sample_zoo(typed_gen("sample", [f"run={tmp_path / 'g'}", "n=8", f"zoo.path={tmp_path / 'gen'}",
                                          "logger=none"]))
    summary = embed_zoo(EmbedConfig(run=str(out), zoo=EmbedZoo(path=str(gen)), seed=1))
    assert summary["group"] == "embed_deepsets_test_acc_seed1" and "scores" not in summary  # nothing to score
    col = Zoo(gen).table()["embed_deepsets_test_acc_seed1/pred_test_acc"]
    assert len(col) == 8 and col.notna().all()
    # the encoder's own zoo: scored on all its nets and, apart, on the run's held-out test split
    summary = embed_zoo(EmbedConfig(run=str(out), zoo=EmbedZoo(path=str(zoo)), group="own"))
    assert summary["scores"]["n"] == 12 and summary["scores_test_split"]["n"] == 3

    ev, report = evaluate_zoo(EvaluateConfig(zoo=ZooPath(str(gen)), reference=str(zoo), encoder_run=str(out),
                                             baselines=None, novelty=NoveltyConfig(top_k=2, max_iter=5)),
                              baselines={})
    sc = ev.info["screening"]
    assert sc["n"] == 8 and -1 <= sc["tau"] <= 1 and sc["column"] == "test_acc"
    measured = ev.by_method("generated")[0].scores.score
    np.testing.assert_allclose(sc["measured"], measured)
    text = report.read_text()
    assert "Data-free screening" in text and "screening.png" in text
    assert (report.parent / "screening.png").stat().st_size > 1000


# ------------------------------------------------------------------------------------------ bad input
def _untrained(arch: dict, n: int = 3) -> list:
    out = []
    for i in range(n):
        torch.manual_seed(i)
        out.append(({"seed_init": i}, build_net(arch).state_dict(), 0.1, arch))
    return out


@pytest.mark.parametrize("arch, metrics, score, message", [
    ({**ARCH, "width": 16}, True, None, r"layer 'hidden.0.weight' has 16 units, more than the 8 encoder run .* reads"),
    ({**ARCH, "width": 4}, True, None, r"layer 'hidden.0.weight' has 4 units, the nets encoder run .* was trained "
                                       r"on have 8; reading other widths needs an encoder trained with zoo.pad=true"),
    ({**ARCH, "depth": 2}, True, None, r"its nets \(.*depth=2.*\) differ from those encoder run .* was trained on "
                                       r"\(.*depth=1.*\) at layer"),
    ({**ARCH, "in_shape": [1, 4, 4]}, True, None, r"has 16 inputs, the nets encoder run .* have 64"),
    (ARCH, False, True, r"task=test_acc: column 'test_acc' has no finite value in the index of .* \(score=true\)"),
])
def test_a_zoo_the_encoder_cannot_read_is_refused_and_nothing_written(run, tmp_path, arch, metrics, score, message):
    from wsl.encoders.embed import embed_zoo
    from wsl.encoders.schema import EmbedConfig, EmbedZoo

    out, _ = run
    target = _write(tmp_path / "other", _untrained(arch), arch, metrics)
    before = sorted(p.relative_to(target) for p in target.rglob("*"))
    with pytest.raises(ConfigError, match=message) as e:
        embed_zoo(EmbedConfig(run=str(out), zoo=EmbedZoo(path=str(target)), score=score))
    assert "\n" not in str(e.value)
    assert sorted(p.relative_to(target) for p in target.rglob("*")) == before


def test_a_damaged_encoder_file_is_named(run, zoo, tmp_path):
    from wsl.encoders.encoder_run import load_run

    out, _ = run
    bad = tmp_path / "run"
    shutil.copytree(out, bad)
    f = bad / "encoders" / "seed1.safetensors"
    f.write_bytes(f.read_bytes()[:-40])  # truncated
    with pytest.raises(ZooFormatError, match=rf"{f}: .*damaged or truncated") as e:
        load_run(bad)
    assert "\n" not in str(e.value)
    blob = json.loads((out / "encoders" / "seed0.json").read_text())
    blob["encoder"]["kwargs"]["hidden"] = 9  # description and weights disagree
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(out / "encoders" / "seed0.safetensors")), str(f),
              metadata={"format": "wsl-encoder", "format_version": "1", "wsl_encoder": json.dumps(blob)})
    with pytest.raises(ZooFormatError, match=rf"{f}: tensor 'encoder\..*' is F32 \[.*9.*\]|{f}: tensor .* implies"):
        load_run(bad, seed=1)
    with pytest.raises(ConfigError, match=r"seed=5: run=.* has no encoder of that seed; seeds: 0, 1"):
        load_run(bad, seed=5)
    with pytest.raises(WslError, match=r"holds no saved encoder"):
        load_run(tmp_path)
    stale = tmp_path / "stale"  # a later run in the same directory that saved nothing yet
    shutil.copytree(out, stale)
    (stale / "encoders" / "run.json").write_text(json.dumps({"token": "new", "seeds": [0, 1]}))
    with pytest.raises(ConfigError, match=r"seed0.safetensors, seed1.safetensors were left by an earlier run"):
        load_run(stale)


# ------------------------------------------------------------------------------------------ split.by
def test_split_by_cell_on_too_few_cells_names_split_by_model(zoo, tmp_path):
    from wsl.encoders.experiment import run_experiment

    with pytest.raises(ConfigError, match=r"the val split has 0 models \(12 usable, 4 cells, split.by=cell\); .*"
                                          r"or split.by=model"):
        run_experiment(_job(zoo, "encoder=stats", "split.fractions=[0.9,0.05,0.05]"), tmp_path)
    assert not any(tmp_path.iterdir())


def test_split_by_model_warns_that_replicas_straddle_the_split(zoo, caplog):
    from wsl.encoders.experiment import split_models
    from wsl.encoders.schema import Split

    z = Zoo(zoo)
    with caplog.at_level(logging.WARNING, logger="wsl.encoders"):
        parts = split_models(z, Split(fractions=[0.5, 0.25, 0.25], by="model"), z.ids)
    assert [len(parts[s]) for s in ("train", "val", "test")] == [6, 3, 3]
    assert sorted(sum(parts.values(), [])) == z.ids
    warnings = [r for r in caplog.records if "split.by=model" in r.getMessage()]
    assert len(warnings) == 1 and "of 4 cells sit on both sides" in warnings[0].getMessage()
    with pytest.raises(WslError, match=r"split.by=.net. is not allowed; valid: cell, model"):
        _job(zoo, "split.by=net")


def test_an_encoder_trained_with_padding_reads_narrower_nets(zoo, tmp_path):
    """zoo.pad=true: the encoder's space is the widest net's; a zoo of narrower nets fits (zero padding,
    masked), and its predictions are those of the module in memory on the same padded nets."""
    from wsl.encoders import DeepSets
    from wsl.encoders.embed import check_zoo, encode_state_dicts
    from wsl.encoders.encoder_run import describe, load_encoder, save_encoder
    from wsl.encoders.experiment import load_weights, read_space
    from wsl.encoders.module import PropertyPredictor, WeightSet
    from wsl.encoders.tasks import Targets, Task

    wide = {**ARCH, "width": 16}
    mixed = _write(tmp_path / "mixed", _untrained(ARCH, 2) + _untrained(wide, 2))
    z = Zoo(mixed)
    space = read_space(z, z.ids, pad=True)
    assert space.padded and space.sizes[1] == 16
    task = Task(name="test_acc", columns=["test_acc"])
    data = WeightSet(*load_weights(z, z.ids, space), torch.rand(4, 1))
    module = PropertyPredictor(DeepSets(space, 1, hidden=8, head_hidden=8), space, task, ["test_acc"], data).eval()
    desc = describe(encoder={"name": "deepsets", "kwargs": {"hidden": 8, "head_hidden": 8, "dropout": 0.0}},
                    out_dim=1, task=task, targets=Targets(data.y, ["test_acc"]),
                    archs=[z.arch(m) for m in (z.ids[0], z.ids[2])], space=space, pad=True, bn_stats=False,
                    zoo={"path": str(z.path)}, seed=0, training={})
    enc = load_encoder(save_encoder(tmp_path / "run", 0, module, desc))
    narrow = Zoo(_write(tmp_path / "narrow", _untrained(ARCH, 3)))
    check_zoo([enc], narrow, narrow.ids, -1)  # fits: narrower than the space, and it was trained padded
    out = encode_state_dicts([enc], [narrow.state_dict(m) for m in narrow.ids])
    mem = module.predict_set(WeightSet(*load_weights(narrow, narrow.ids, space), torch.zeros(3)))
    assert torch.equal(out.preds[0].float(), mem)
    with pytest.raises(ConfigError, match=r"has 32 units, more than the 16 encoder run"):
        w32 = {**ARCH, "width": 32}
        wider = Zoo(_write(tmp_path / "w32", _untrained(w32, 2), w32))
        check_zoo([enc], wider, wider.ids, -1)
