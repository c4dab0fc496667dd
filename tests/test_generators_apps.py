"""wsl-train-generator and wsl-sample on a real (tiny) zoo, as a user runs them.

- a flow generator trained by the console script, sampled by the console script, gives a zoo that
  every zoo reader opens, whose checkpoints load with safetensors alone and run through the net,
  with provenance, and whose nets work (accuracy near the training zoo's);
- the other paths (diffusion, transformer over per-layer tokens, autoencoder latent, conditioning
  with guidance) train, save, reload and sample;
- bad input (another architecture's zoo as output, an unreadable checkpoint, unknown condition
  keys, conditioning on the test split, a missing zoo) is refused with a message naming it, before any work.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import run_cli, typed_gen
from wsl.errors import ConfigError, WslError, ZooFormatError
from wsl.generators.generator_run import load_run
from wsl.generators.sample import check_target_zoo, condition_tensor, sample_weights
from wsl.generators.train import train_generator
from wsl.nets import MLP, build_net
from wsl.zoo import ShardWriter, Zoo

QUIET = ["logger=none", "progress_refresh_rate=0", "trainer.accelerator=cpu"]


@pytest.fixture(scope="module")
def flow_run(tiny_zoo, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("gen") / "flow"
    r = run_cli("train_generator", f"zoo.path={tiny_zoo}", "generator=flow", "trainer.max_steps=150",
                "generator.denoiser.hidden=128", "generator.denoiser.depth=2", "spread.every_n_steps=75", "spread.n=64",
                "generator.optimizer.lr=3e-3", *QUIET, f"hydra.run.dir={run_dir}", check=True)
    assert "Tip" not in r.stdout + r.stderr and "LeafSpec" not in r.stderr  # Lightning's noise, dropped
    return run_dir


def _accuracy(arch, state_dicts, x, y) -> torch.Tensor:
    net = build_net(arch)
    accs = []
    for sd in state_dicts:
        net.load_state_dict(sd)
        with torch.no_grad():
            accs.append((net(x).argmax(-1) == y).float().mean())
    return torch.stack(accs)


def test_trained_flow_samples_a_zoo_of_working_nets(flow_run, tiny_zoo, tmp_path):
    desc = json.loads((flow_run / "generator.json").read_text())
    assert desc["zoo"]["path"] == str(Path(tiny_zoo).resolve()) and desc["zoo"]["dataset"]["name"] == "digits"
    assert desc["training"]["steps"] == 150 and [s for s, _ in desc["training"]["spread_history"]] == [75, 150]
    assert json.loads((flow_run / "config.json").read_text())["generator"]["method"]["prediction"] == "data"

    out = tmp_path / "gen"
    r = run_cli("sample", f"run={flow_run}", "n=24", "seed=3", f"zoo.path={out}", "batch_size=10",
                f"hydra.run.dir={tmp_path / 'srun'}", check=True)
    assert str(out) in r.stdout
    gen, ref = Zoo(out), Zoo(tiny_zoo)
    assert len(gen) == 24 and {gen.row(m).status for m in gen.ids} == {"sampled"}
    hp = gen.hparams(gen.ids[5])
    assert hp["sample_seed"] == 3 and hp["sample_index"] == 5 and hp["generator_run"] == str(flow_run.resolve())
    assert hp["generator_sha256"] == load_run(flow_run).sha256 and hp["generator_method"] == "flow"
    # the job's provenance names the generator's training nets (what wsl-evaluate audits against)
    src = gen.job_config(gen.ids[0])["source_zoo"]
    assert src["train_ids"] == desc["zoo"]["train_ids"] == Zoo(tiny_zoo).filter(status="trained")
    assert src["path"] == str(Path(tiny_zoo).resolve()) and src["epoch"] == -1
    task = gen.training_data()  # the sampled zoo knows the exact data splits of its source
    assert task.fingerprint() == ref.training_data().fingerprint()

    # every checkpoint loads with safetensors alone and runs through the net it names
    x, y = task.split("val")
    sds = []
    for m in gen.ids:
        path = gen.checkpoint_path(m)
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        arch = json.loads(meta["arch"])
        assert json.loads(meta["provenance"])["sample_index"] == int(m.rsplit("-", 1)[1])
        sd = load_file(str(path))
        net = MLP(**{k: v for k, v in arch.items() if k != "name"})
        net.load_state_dict(sd)
        assert net(x).shape == (len(x), 10)
        sds.append(sd)
    arch = gen.arch(gen.ids[0])
    acc = _accuracy(arch, sds, x, y)
    ref_acc = _accuracy(arch, [ref.state_dict(m) for m in ref.ids], x, y)
    assert acc.mean() > 0.8 * ref_acc.mean() > 0.1, (acc, ref_acc)  # far above chance (0.1): nets, not noise

    # the same seed reproduces the same nets (sampling is deterministic given seed and batch size)
    run = load_run(flow_run)
    again = sample_weights(run, 24, seed=3, batch_size=10)
    assert torch.allclose(again[7], gen.layout().flatten(gen.state_dict(gen.ids[7])), atol=1e-6)


def test_diffusion_transformer_latent_and_guidance_paths(tiny_zoo, tmp_path):
    job = typed_gen("train_generator", [
        f"zoo.path={tiny_zoo}", "generator=diffusion", "generator/denoiser=transformer",
        "generator.denoiser.d_model=16", "generator.denoiser.nhead=2", "generator.denoiser.layers=1",
        "generator.denoiser.max_token=64", "condition.columns=[val_acc]", "trainer.max_steps=20",
        "spread.every_n_steps=10", "spread.n=16", "generator.method.steps=5",
        "representation.latent={latent_dim:8,hidden:32,depth:1,steps:20}",
        *QUIET])
    run = train_generator(job, tmp_path / "run")
    again = load_run(tmp_path / "run")
    assert again.representation.dim == 8 and again.condition_keys == ["val_acc"] and again.method.name == "diffusion"
    assert again.denoiser.name == "transformer" and again.representation.segments() is None
    for a, b in zip(run.denoiser.state_dict().values(), again.denoiser.state_dict().values()):
        assert torch.equal(a, b)
    flat = sample_weights(again, 6, seed=0, condition={"val_acc": 0.9}, guidance=2.0)
    assert flat.shape == (6, again.representation.layout.numel) and torch.isfinite(flat).all()
    assert not torch.allclose(flat, sample_weights(again, 6, seed=0))  # the condition changes the samples


def _foreign_zoo(path: Path, dataset: dict) -> Path:
    """A real zoo of width-5 MLPs (another architecture than the tiny zoo's width 8)."""
    w = ShardWriter(path, "other", config={"dataset": dataset}, zoo_name="other")
    net = MLP([1, 8, 8], 10, width=5)
    for i in range(2):
        w.write_checkpoint(f"m{i}", 0, net.state_dict(), net.arch)
        w.add_model(f"m{i}", net.arch, {"seed_init": i}, status="trained")
    w.commit()
    return path


def test_bad_input_is_refused_before_any_work(flow_run, tiny_zoo, tmp_path):
    run = load_run(flow_run)
    foreign = _foreign_zoo(tmp_path / "foreign", run.zoo["dataset"])
    with pytest.raises(ConfigError, match="architecture mismatch.*width"):
        check_target_zoo(run, foreign)
    with pytest.raises(ConfigError, match="learned from"):
        check_target_zoo(run, tiny_zoo)
    with pytest.raises(ConfigError, match="trained unconditionally"):
        condition_tensor(run, {"val_acc": 0.9}, 1)
    # unreadable checkpoints name the file
    broken = tmp_path / "broken"
    shutil.copytree(flow_run, broken)
    ckpt = broken / "generator.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    with pytest.raises(ZooFormatError, match="generator.safetensors"):
        load_run(broken)
    (broken / "generator.safetensors").unlink()
    with pytest.raises(ZooFormatError, match="missing"):
        load_run(broken)
    # training refuses conditioning on the test split (its schema) and a missing zoo
    with pytest.raises(ConfigError, match="condition.columns: 'test_acc' is measured on the test split"):
        typed_gen("train_generator", [f"zoo.path={tiny_zoo}", "condition.columns=[test_acc]", *QUIET])
    with pytest.raises(WslError, match="not a"):
        train_generator(typed_gen("train_generator", [f"zoo.path={tmp_path / 'nowhere'}", *QUIET]), tmp_path / "r2")
    with pytest.raises(ConfigError, match="no_such_column"):
        train_generator(typed_gen("train_generator", [f"zoo.path={tiny_zoo}", "condition.columns=[no_such_column]",
                                                      *QUIET]), tmp_path / "r3")
    assert not any((tmp_path / r).exists() for r in ("r2", "r3"))


def test_wsl_sample_exits_with_one_line_on_a_mismatched_output_zoo(flow_run, tmp_path):
    run = load_run(flow_run)
    foreign = _foreign_zoo(tmp_path / "foreign", run.zoo["dataset"])
    before = sorted(p.name for p in foreign.rglob("*"))
    r = run_cli("sample", f"run={flow_run}", "n=4", f"zoo.path={foreign}", f"hydra.run.dir={tmp_path / 's'}")
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: architecture mismatch") and str(foreign) in last and "Traceback" not in r.stderr
    assert sorted(p.name for p in foreign.rglob("*")) == before  # nothing written


def test_a_zoo_of_two_architectures_needs_a_filter_and_the_hint_is_a_working_override(tmp_path):
    from wsl.generators.train import select_zoo

    dataset = {"name": "digits"}
    w = ShardWriter(tmp_path / "mixed", "mixed", config={"dataset": dataset}, zoo_name="mixed")
    for width in (5, 7):
        net = MLP([1, 8, 8], 10, width=width)
        for i in range(2):
            w.write_checkpoint(f"w{width}-{i}", 0, net.state_dict(), net.arch)
            w.add_model(f"w{width}-{i}", net.arch, {"width": width, "seed_init": i}, status="trained")
    w.commit()
    base = [f"zoo.path={tmp_path / 'mixed'}", *QUIET]
    with pytest.raises(ConfigError, match=r"holds 2 architectures.*\+zoo\.filter\.width=32") as e:
        select_zoo(typed_gen("train_generator", base).zoo)
    # the override the message suggests composes (the old hint zoo.filter={width:32} did not) and selects
    hint = str(e.value).split("(e.g. ", 1)[1].split(")", 1)[0].replace("32", "7")
    sel = select_zoo(typed_gen("train_generator", [*base, hint]).zoo)
    assert sel.train_ids == ["w7-0", "w7-1"] and sel.arch["width"] == 7


RESNET_NORM = "batch"  # the population program trains BatchNorm ResNets (wsl-zoo net=resnet)


@pytest.mark.slow  # four console scripts (about a minute on 2 busy cores); the same paths run in-process in
# test_generators.py::test_sampled_resnets_carry_train_split_statistics and test_evaluate.py (BatchNorm nets)
def test_resnet_zoo_through_train_generator_sample_and_evaluate(tmp_path):
    """A tiny ResNet-8 zoo made by wsl-zoo, then wsl-train-generator -> wsl-sample -> wsl-evaluate, each as a
    user runs it: the sampled checkpoints are whole state dicts (BatchNorm statistics re-estimated on the train
    split, the batches recorded with every net), and the report scores every set after the same re-estimation."""
    zoo, run, gen, rep = (tmp_path / n for n in ("zoo", "run", "gen", "report"))
    run_cli("zoo", f"zoo.path={zoo}", "net=resnet", "net.width=2", "net.depth=1", f"net.norm={RESNET_NORM}",
            "population.size=3", "train.epochs=2", "train.batch_size=128", "zoo.checkpoint_epochs=[]",
            "logger=none", "progress_refresh_rate=0", "trainer.accelerator=cpu",
            f"hydra.run.dir={tmp_path / 'zrun'}", check=True)
    run_cli("train_generator", f"zoo.path={zoo}", "trainer.max_steps=10", "spread.every_n_steps=10", "spread.n=8",
            "generator.denoiser.hidden=32", *QUIET, f"hydra.run.dir={run}", check=True)
    run_cli("sample", f"run={run}", "n=3", f"zoo.path={gen}", "batchnorm.batch_size=512", "logger=none",
            f"hydra.run.dir={tmp_path / 'srun'}", check=True)
    r = run_cli("evaluate", f"zoo.path={gen}", f"reference={zoo}", f"out={rep}", "novelty.top_k=1",
                "novelty.max_iter=5", "baselines.noise.sigmas=[0.1]", "baselines.noise.n=2", "~baselines.average",
                "baselines.gaussian.n=2", "batchnorm.batch_size=512", "logger=none",
                f"hydra.run.dir={tmp_path / 'erun'}", check=True)
    assert str(rep / "report.md") in r.stdout
    g, ref = Zoo(gen), Zoo(zoo)
    arch = g.arch(g.ids[0])
    assert arch["name"] == "resnet" and arch["norm"] == RESNET_NORM and len(g) == 3
    net = build_net(arch)
    summary = json.loads((rep / "summary.json").read_text())
    for m in g.ids:
        sd = load_file(str(g.checkpoint_path(m)))  # safetensors alone: every tensor of the net is there
        assert set(sd) == set(net.state_dict())
        net.load_state_dict(sd)
    if RESNET_NORM == "batch":
        n_train = len(ref.training_data().x_train)
        assert {k: g.hparams(g.ids[0])[k] for k in ("bn_split", "bn_inputs", "bn_batches", "bn_batch_size")} == \
            {"bn_split": "train", "bn_inputs": n_train, "bn_batches": -(-n_train // 512), "bn_batch_size": 512}
        assert summary["info"]["batchnorm_reestimation"]["split"] == "train"
        assert "re-estimated on all" in (rep / "report.md").read_text()
    accs = {s["method"]: s["acc_mean"] for s in summary["sets"]}
    assert {"generated", "training", "noise", "gaussian"} <= set(accs)
