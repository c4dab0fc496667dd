"""BatchNorm in the population program: member k equals the same net trained alone with torch.optim,
parameters AND running statistics; eval mode reads the running statistics; a zoo of BatchNorm nets
stores them in every checkpoint, verifies, and reloads to its recorded accuracy."""

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from test_population import _fit_solo, _init
from wsl.data import load_dataset
from wsl.nets import CNN
from wsl.nets.resnet import ResNet
from wsl.population import (PopulationBatchSampler, PopulationModule, make_members,
                            stack_state_dicts)
from wsl.population.functional import population_forward, population_loss, population_outputs, skeleton
from wsl.population.sampler import IndexDataset

E, B = 2, 128
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits")


def resnet():
    return ResNet((1, 8, 8), 10, width=2, depth=1)


def cnn_bn():
    return CNN((1, 8, 8), 10, width=4, depth=2, norm="batch")


def _fit_population(factory, data, members, optimizer, schedule="cosine", init=None):
    nets = [_init(factory, m.seed_init) for m in members]
    state = stack_state_dicts([x.state_dict() for x in nets])
    if init is not None:
        init(state)
    n = data.x_train.shape[0]
    mod = PopulationModule(nets[0], state, data, [m.lr for m in members], [m.weight_decay for m in members],
                           optimizer=optimizer, schedule=schedule, epochs=E, steps_per_epoch=-(-n // B))
    dl = DataLoader(IndexDataset(), batch_size=None, sampler=PopulationBatchSampler(n, B, [m.seed_data for m in members]))
    L.Trainer(max_epochs=E, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, use_distributed_sampler=False, accelerator="cpu").fit(mod, dl)
    return mod


def _assert_member_equals(pop, k, solo):
    got = pop.member_state_dict(k)
    want = solo.state_dict()
    assert list(got) == list(want)  # parameters and buffers, in the net's order (what the zoo writer stores)
    for name, v in want.items():
        assert got[name].dtype == v.dtype and got[name].shape == v.shape, name
        torch.testing.assert_close(got[name], v, atol=2e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("optimizer,lrs,factory", [
    ("sgd", [0.1, 0.02], resnet),
    ("adam", [0.01], cnn_bn),
])
def test_member_equals_solo_training_buffers_included(data, optimizer, lrs, factory):
    members = make_members(2 * len(lrs), lrs, 1e-4, seed=3)
    pop = _fit_population(factory, data, members, optimizer)
    steps = E * -(-data.x_train.shape[0] // B)
    names = [n for n in pop.member_state_dict(0) if n.rsplit(".", 1)[-1] in BN_BUFFERS]
    assert names and set(names) == set(pop.buffer_names)
    assert not set(pop.buffer_names) & {n for n, _ in pop.named_parameters()}
    opt = pop.configure_optimizers()["optimizer"]  # the optimizer sees the parameters only
    assert sum(len(g["params"]) for g in opt.param_groups) == len(pop.names)
    for k in (0, len(members) - 1):
        solo = _fit_solo(factory, data, members[k], optimizer)
        _assert_member_equals(pop, k, solo)
        sd = pop.member_state_dict(k)
        assert all(int(sd[n]) == steps for n in names if n.endswith("num_batches_tracked"))
        # eval mode reads the running statistics: same loss and accuracy as the solo net in eval mode
        loss, acc = pop.evaluate("test")
        x, y = data.x_test, data.y_test
        with torch.no_grad():
            out = solo(x)
        torch.testing.assert_close(loss[k].float(), F.cross_entropy(out, y), atol=1e-4, rtol=1e-4)
        assert float(acc[k]) == pytest.approx(float((out.argmax(1) == y).float().mean()), abs=1.5 / len(y))
    assert bool(pop.alive.all())


def test_eval_uses_the_running_statistics_and_train_mode_updates_only_its_own_row(data):
    nets = [_init(resnet, s) for s in range(3)]
    x = data.x_train[:64]
    for i, net in enumerate(nets):  # different statistics per member
        with torch.no_grad():
            net.train()(x * (i + 1))
    state = stack_state_dicts([n.state_dict() for n in nets])
    params = {k: v for k, v in state.items() if k in dict(nets[0].named_parameters())}
    buffers = {k: v for k, v in state.items() if k not in params}
    sk = skeleton(nets[0]).eval()
    out = population_forward(sk, params, data.x_test, buffers=buffers)
    for i, net in enumerate(nets):
        net.eval()
        with torch.no_grad():
            torch.testing.assert_close(out[i], net(data.x_test), atol=1e-5, rtol=1e-5)
    # other statistics give other outputs: they are read, not recomputed from the batch
    fresh = {k: v.clone() for k, v in buffers.items()}
    for k, v in fresh.items():
        v.copy_(torch.zeros_like(v) if "mean" in k else torch.ones_like(v) if "var" in k else v)
    assert not torch.allclose(population_forward(sk, params, data.x_test, buffers=fresh), out, atol=1e-3)
    # the batched helpers take the buffers too
    torch.testing.assert_close(population_outputs(sk, params, data.x_test, batch_size=100, buffers=buffers), out)
    want = torch.stack([F.cross_entropy(o, data.y_test) for o in out]).double()
    torch.testing.assert_close(population_loss(sk, params, data.x_test, data.y_test, 100, buffers=buffers), want)
    # train mode: member i's row moves with member i's batch statistics, and only that row
    sk.train()
    before = {k: v.clone() for k, v in buffers.items()}
    xs = torch.stack([x, x * 0, x])  # member 1 sees constant input: its batch mean is the conv of zeros
    population_forward(sk, params, xs, shared_input=False, buffers=buffers)
    for i, net in enumerate(nets):
        net.train()
        with torch.no_grad():
            net(xs[i])
        for k, v in net.state_dict().items():
            if k in buffers:
                torch.testing.assert_close(buffers[k][i], v, atol=1e-6, rtol=1e-5)
    assert all(int(buffers[k][i]) == int(before[k][i]) + 1 for k in buffers if k.endswith("tracked") for i in range(3))


def test_diverged_member_keeps_its_buffers_and_does_not_poison_others(data):
    """Member 1 starts with a NaN weight: it diverges at the first step and is frozen, its running
    statistics with it (not NaN), while member 0 trains exactly as alone."""
    members = make_members(2, [0.05, 0.05], 0.0, seed=5)
    nets = [_init(resnet, m.seed_init) for m in members]

    def poison(state):
        state["stem.conv.weight"][1, 0, 0, 0, 0] = float("nan")

    pop = _fit_population(resnet, data, members, "sgd", schedule="constant", init=poison)
    assert pop.alive.tolist() == [True, False] and int(pop.diverged_epoch[1]) == 0
    _assert_member_equals(pop, 0, _fit_solo(resnet, data, members[0], "sgd", schedule="constant"))
    frozen, init = pop.member_state_dict(1), nets[1].state_dict()
    for name in pop.buffer_names:  # restored to their values before the step that diverged: the init's
        torch.testing.assert_close(frozen[name], init[name])
    loss, acc = pop.evaluate("test")
    assert torch.isnan(loss[1]) and torch.isfinite(loss[0]) and acc[0] > 0.2


def test_buffers_are_module_state_and_init_without_buffers_starts_fresh(data):
    nets = [_init(resnet, s) for s in range(2)]
    params_only = stack_state_dicts([dict(n.named_parameters()) for n in nets])
    pop = PopulationModule(nets[0], {k: v.detach() for k, v in params_only.items()}, data, 0.1, 0.0)
    sd = pop.state_dict()
    assert sum(k.startswith("stacked_buffers.") for k in sd) == len(pop.buffer_names) > 0
    member = pop.member_state_dict(1)
    for k, v in nets[1].state_dict().items():
        torch.testing.assert_close(member[k], v)


# ------------------------------------------------------------------------------ the real console script
def _wsl(app: str, *args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([str(Path(sys.executable).with_name(f"wsl-{app}")), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


QUIET = ["logger=none", "progress_refresh_rate=0", "trainer.accelerator=cpu", "train.epochs=1"]


@pytest.mark.parametrize("args", [
    ["net=resnet", "dataset=digits", "net.width=2", "net.depth=1", "population.size=3"],
    pytest.param(["net=cnn", "net.norm=batch", "dataset=mnist1d", "net.width=4", "net.depth=2", "population.size=2"],
                 marks=pytest.mark.slow),  # the same console path as the ResNet; CNN BatchNorm tested in process
], ids=["resnet-digits", "cnn-batch-mnist1d"])
def test_wsl_zoo_writes_batchnorm_zoo_that_verifies_and_reloads(tmp_path, args):
    from wsl.zoo import Zoo

    p = _wsl("zoo", "zoo.path=z", *args, *QUIET, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    zoo = Zoo(tmp_path / "z")
    assert len(zoo) == int(args[-1].split("=")[1])
    data = zoo.training_data()
    steps = -(-data.x_train.shape[0] // 32)  # train.batch_size default
    for mid in zoo.ids:
        assert zoo.checkpoint_epochs(mid) == [0, 1]
        for epoch, count in ((0, 0), (1, steps)):
            sd = zoo.state_dict(mid, epoch)
            tracked = [k for k in sd if k.endswith("num_batches_tracked")]
            assert tracked and all(sd[k].dtype == torch.int64 and int(sd[k]) == count for k in tracked)
            assert any(k.endswith("running_var") for k in sd)
        stats = [v for k, v in zoo.state_dict(mid).items() if k.endswith("running_mean")]
        assert any(float(v.abs().max()) > 0 for v in stats)  # trained statistics, not the init's zeros
        net = zoo.load_model(mid)
        with torch.no_grad():
            acc = float((net(data.x_test).argmax(1) == data.y_test).float().mean())
        assert acc == pytest.approx(zoo.history(mid)["test_acc"][-1], abs=1e-6)
    v = _wsl("verify", "zoo.path=z", cwd=tmp_path)
    assert v.returncode == 0 and "OK" in v.stdout + v.stderr, v.stdout + v.stderr
    assert "0 errors, 0 warnings" in v.stdout + v.stderr


def test_resnet_option_that_cannot_work_is_one_line_naming_the_key(tmp_path):
    p = _wsl("zoo", "zoo.path=z", "net=resnet", "dataset=digits", "net.stages=5", *QUIET, cwd=tmp_path)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr[-3000:]
    assert lines[0].startswith("error: net.stages=5") and "too small" in lines[0], lines[0]
    assert not (tmp_path / "z").exists() and not (tmp_path / "runs").exists()


def test_memory_estimate_counts_buffers_and_activations(restore_hydra_and_logging):
    from conftest import typed_zoo

    from wsl.population.schema import footprint

    fp = footprint({"name": "resnet", "in_shape": [1, 8, 8], "num_classes": 10, "width": 8, "depth": 1})
    assert fp.parameters == 19810  # ResNet-8 width 8 on digits
    assert fp.buffers == sum(2 * c + 1 for c in (8, 8, 8, 16, 16, 16, 32, 32, 32))  # one BatchNorm per conv
    assert fp.train_activations > 2 * 8 * 64 * 6 and fp.eval_activations >= 8 * 64  # stage 0 holds 8x8x8 maps
    base = ["zoo.path=z", "net=resnet", "net.width=2", "population.size=2"]
    with pytest.raises(Exception, match=r"train.batch_size=1000000000 samples per net.*memory.*train.batch_size") as e:
        typed_zoo([*base, "train.batch_size=1000000000"])
    assert "\n" not in str(e.value)
    typed_zoo([*base, "train.batch_size=1000"])  # a large but possible batch is fine
    # evaluation goes in chunks that stay in cache, whatever train.eval_batch_size says
    typed_zoo([*base, "train.eval_batch_size=1000000000"])


def test_evaluation_in_small_chunks_gives_the_same_numbers(data):
    nets = [_init(resnet, s) for s in range(3)]
    for i, net in enumerate(nets):
        with torch.no_grad():
            net.train()(data.x_train[:100] * (i + 1))
    pop = PopulationModule(nets[0], stack_state_dicts([n.state_dict() for n in nets]), data, 0.1, 0.0,
                           eval_batch_size=10**9)
    assert pop.eval_chunk == 2**21 // (3 * 2 * 8 * 8)  # 3 ResNets: the stem holds 2 channels of 8x8
    pop.eval_chunk = 50  # uneven chunks
    small = pop.evaluate("test")
    pop.eval_chunk = 10**9
    whole = pop.evaluate("test")
    for a, b in zip(small, whole):
        torch.testing.assert_close(a, b)


def test_experiment_phase_resnet_digits_composes_and_one_shrunk_job_trains(tmp_path, restore_hydra_and_logging):
    """The real experiment config: ResNet-8 on digits, lr varied inside the population (3 seeds per lr),
    width swept by the Hydra sweeper; one of its jobs, shrunk, trains and stores BatchNorm nets."""
    from hydra import compose, initialize_config_dir

    from conftest import typed_zoo

    from wsl.apps.common import CONF_DIR
    from wsl.apps.zoo_job import run_zoo_job
    from wsl.zoo import Zoo

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("zoo", ["experiment=phase_resnet_digits"], return_hydra_config=True)
    assert [int(w) for w in str(cfg.hydra.sweeper.params["net.width"]).split(",")] == [2, 4, 8]
    job = typed_zoo(["experiment=phase_resnet_digits", f"zoo.path={tmp_path / 'z'}"])
    assert (job.net.name, job.net.depth, job.net.norm, job.dataset.name) == ("resnet", 1, "batch", "digits")
    lrs = list(job.train.lr)
    assert len(lrs) == 4 and job.population.size == 3 * len(lrs)  # 3 seeds per (width, lr) cell
    # one job of the sweep, shrunk: the smallest width, one seed per lr, one epoch
    root = run_zoo_job(typed_zoo(["experiment=phase_resnet_digits", f"zoo.path={tmp_path / 'z'}", "net.width=2",
                                  "population.size=4", "train.epochs=1", "logger=none", "progress_refresh_rate=0",
                                  "trainer.accelerator=cpu"]))
    zoo = Zoo(root)
    assert sorted(zoo.hparams(m)["lr"] for m in zoo.ids) == sorted(lrs)
    for mid in zoo.ids:
        assert zoo.checkpoint_epochs(mid) == [0, 1]
        assert zoo.arch(mid)["name"] == "resnet" and zoo.arch(mid)["width"] == 2
        assert any(k.endswith("num_batches_tracked") for k in zoo.state_dict(mid))
