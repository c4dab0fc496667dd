"""wsl-train-encoder end to end, on real zoos trained in the test by wsl-zoo (MLPs; ResNets through both console
scripts; INR zoos and task=inr_class: tests/test_inr_zoo.py). Bad input (missing target column, unreadable nets, mixed widths) must
fail before training with a message naming the column or the model and layer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from wsl.apps.common import CONF_DIR
from wsl.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}  # tiny nets: threads only spin


def run(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def mlp_zoo(tmp_path_factory) -> Path:
    """48 digits MLPs: 6 learning rates x 2 weight decays x 4 seed replicas, 2 epochs (accuracies 0.1-0.9),
    trained by wsl-zoo's job function on its real config."""
    from wsl.apps.zoo import typed_config
    from wsl.apps.zoo_job import run_zoo_job

    d = tmp_path_factory.mktemp("zoo")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="zoo", overrides=[
            "dataset=digits", "net=mlp", "net.width=8", "population.size=48", "train.epochs=2",
            "train.lr=[0.3,0.1,0.03,0.01,0.003,0.001]", "train.weight_decay=[0,0.001]", f"zoo.path={d / 'mlp'}",
            "progress_refresh_rate=0", "logger=none", "trainer.accelerator=cpu"])
    return run_zoo_job(typed_config(cfg))


def config(*overrides: str):
    """wsl-train-encoder's typed config, as the app makes it from the command line."""
    from wsl.apps.train_encoder import typed_config

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return typed_config(compose(config_name="train_encoder", overrides=["logger=none", *overrides]))


def test_console_script_writes_the_results_table(mlp_zoo, tmp_path):
    r = run("wsl.apps.train_encoder", f"zoo.path={mlp_zoo}", "encoder=deepsets", "task=test_acc", "seeds=[0,1]",
            "trainer.max_epochs=3", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_csv(tmp_path / "run" / "results.csv")
    assert df["seed"].tolist() == ["0", "1", "mean", "std"]
    for col in ("test/tau", "test/r2", "val/tau", "params", "s_per_epoch", "fit_s", "peak_mem_mb"):
        assert col in df and df[col].notna().all(), col
    assert (df["encoder"] == "deepsets").all() and (df["task"] == "test_acc").all()
    md = (tmp_path / "run" / "results.md").read_text()
    assert "| deepsets | test_acc |" in md and "±" in md
    assert "| deepsets | test_acc |" in r.stdout


def test_encoder_learns_test_accuracy_on_held_out_cells(mlp_zoo, tmp_path):
    """Real learning: NFN ranks the test accuracy of nets from cells it never saw."""
    from wsl.encoders.experiment import run_experiment
    from wsl.zoo import Zoo

    cfg = config(f"zoo.path={mlp_zoo}", "encoder=nfn", "encoder.channels=16", "encoder.num_layers=2",
                 "seeds=[0]", "trainer.max_epochs=25", "split.fractions=[0.5,0.25,0.25]")
    df = run_experiment(cfg, tmp_path)
    zoo = Zoo(mlp_zoo)
    split = zoo.split((0.5, 0.25, 0.25), seed=0)
    cells = {s: {zoo.cell_key(m) for m in ids} for s, ids in split.items()}
    assert not cells["train"] & cells["test"], "seed replicas of a cell must not straddle splits"
    assert df.loc[0, "test/tau"] > 0.5, df.to_string()


def test_hparams_task_predicts_the_varied_hyperparameters(mlp_zoo, tmp_path):
    from wsl.encoders.experiment import run_experiment

    df = run_experiment(config(f"zoo.path={mlp_zoo}", "encoder=stats", "task=hparams", "seeds=[0]",
                               "trainer.max_epochs=2"), tmp_path)
    # lr and weight decay vary in this zoo; width and train fraction do not, so they are not predicted
    assert {"test/tau/lr", "test/r2/lr", "test/tau/weight_decay"} <= set(df.columns)
    assert not any("width" in c or "train_fraction" in c for c in df.columns)


def test_missing_target_column_fails_before_training(mlp_zoo, tmp_path):
    from wsl.encoders.experiment import run_experiment

    with pytest.raises(ConfigError, match=r"task=phase: column 'phase/label' is missing from the index of"):
        run_experiment(config(f"zoo.path={mlp_zoo}", "task=phase"), tmp_path)
    assert not (tmp_path / "results.csv").exists()


def _write_zoo(path: Path, nets: dict):
    """A zoo written through the zoo format's own writer: {model id: net}."""
    from wsl.zoo import ShardWriter

    w = ShardWriter(path, "job0", config={"test": True})
    for i, (mid, net) in enumerate(nets.items()):
        w.write_checkpoint(mid, 1, net.state_dict(), net.arch)
        w.add_model(mid, net.arch, {"lr": 0.1 * (i + 1), "seed_init": i}, "trained",
                    {"train_acc": [0.1, 0.5 + i / 20], "test_acc": [0.1, 0.4 + i / 20]})
    w.commit()


def test_unreadable_nets_are_named_before_training(tmp_path):
    from test_encoders import ScaledNet  # registered net with a scalar parameter

    from wsl.encoders.experiment import run_experiment
    from wsl.nets import MLP

    torch.manual_seed(0)
    _write_zoo(tmp_path / "scaled", {f"s{i}": ScaledNet() for i in range(6)})
    with pytest.raises(ConfigError, match=r"model s0: layer 'temperature' is a scalar parameter, an unsupported layer"):
        run_experiment(config(f"zoo.path={tmp_path / 'scaled'}", "encoder=stats"), tmp_path / "out1")
    nets = {f"w{i}": MLP([4], 3, width=4 if i < 3 else 6) for i in range(8)}
    _write_zoo(tmp_path / "mixed", nets)
    with pytest.raises(ConfigError, match=r"model w3: layer 'hidden\.0\.weight' has 6 units.*zoo\.pad=true"):
        run_experiment(config(f"zoo.path={tmp_path / 'mixed'}", "encoder=nfn"), tmp_path / "out2")
    # with the padding option the same zoo trains (predicting width from padded nets)
    df = run_experiment(config(f"zoo.path={tmp_path / 'mixed'}", "encoder=graph", "zoo.pad=true", "seeds=[0]",
                               "trainer.max_epochs=2", "split.fractions=[0.5,0.25,0.25]"), tmp_path / "out3")
    assert df.loc[0, "params"] > 0 and (tmp_path / "out3" / "results.csv").exists()


@pytest.mark.parametrize("encoder", ["nfn", "transformer"])
def test_cnn_zoo_is_read_with_kernels_as_edge_features(tmp_path, encoder):
    from wsl.encoders.experiment import read_space, run_experiment
    from wsl.nets import CNN
    from wsl.zoo import Zoo

    torch.manual_seed(0)
    _write_zoo(tmp_path / "cnn", {f"c{i}": CNN([1, 8, 8], 10, width=4, depth=2) for i in range(8)})
    space = read_space(Zoo(tmp_path / "cnn"), [f"c{i}" for i in range(8)])
    assert space.kernel_numels == [9, 9, 1] and space.sizes == [1, 4, 4, 10]
    df = run_experiment(config(f"zoo.path={tmp_path / 'cnn'}", f"encoder={encoder}", "seeds=[0]",
                               "trainer.max_epochs=1", "split.fractions=[0.5,0.25,0.25]"), tmp_path / "out")
    assert df.loc[0, "params"] > 0 and pd.notna(df.loc[0, "test/r2"])


@pytest.mark.parametrize("override, message", [
    ("encoder.channels=0", r"^encoder\.channels must be an integer >= 1, got 0$"),
    ("encoder.mode=xx", r"^encoder\.mode='xx' is not allowed; valid: hnp, np$"),
    ("encoder._target_=my.Encoder", r"^encoder\._target_='my\.Encoder' is not an encoder of wsl"),
    ("+encoder.width=3", r"^unknown config key 'encoder\.width'; valid keys under encoder: _target_, channels"),
    ("task.columns=[]", r"^task=test_acc: task\.columns is empty"),
    ("task.kind=ranking", r"^task\.kind='ranking' is not allowed"),
    ("encoder.norm=batch", r"^encoder\.norm='batch' is not allowed"),
    ("split.fractions=[0.5,0.6,0.1]", r"^split\.fractions must be three non-negative numbers summing to 1"),
    ("optim.lr=0", r"^optim\.lr must be a number in \(0, inf\)"),
    ("augment.noise.sigma=-1", r"^augment\.noise\.sigma must be a number in \[0, inf\)"),
    ("augment.dropout.p=1", r"^augment\.dropout\.p must be a number in \[0, 1\)"),
    ("augment.mixup=3", r"^augment\.mixup must be null or an augmentation config with a _target_"),
    ("trainer.max_epochs=-1", r"^trainer\.max_epochs must be an integer >= 1, got -1$"),
    ("seeds=[0,true]", r"^seeds must be a non-empty list of integers"),
])
def test_the_schema_names_the_key_of_a_bad_option(override, message):
    with pytest.raises(ConfigError, match=message):
        config("zoo.path=x", override)


def test_every_encoder_and_task_is_typed_by_its_schema():
    from wsl.encoders.schema import ENCODER_SCHEMAS, TaskConfig

    for enc in ("deepsets", "flat", "graph", "nfn", "stats", "transformer"):
        job = config("zoo.path=x", f"encoder={enc}", "task=hparams", "encoder.num_layers=0" if enc in
                     ("graph", "nfn", "transformer") else "encoder.dropout=0.5")
        assert isinstance(job.encoder, ENCODER_SCHEMAS) and job.encoder.name == enc
        assert isinstance(job.task, TaskConfig) and job.task.log == ["lr", "weight_decay"] and job.task.drop_constant
    assert config("zoo.path=x", "augment=null").augment is None
    assert set(config("zoo.path=x", "~augment.noise").augment) == {"permutation", "dropout", "mixup"}


# ------------------------------------------------------------------------------------------ ResNet zoos
def console(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run an installed console script (wsl-zoo, wsl-train-encoder) with this checkout's code first on the path."""
    exe = Path(sys.executable).with_name(script)
    module = "wsl.apps." + script.removeprefix("wsl-").replace("-", "_")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", module]
    return subprocess.run([*cmd, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


RESNET_ZOO = ["dataset=digits", "net=resnet", "net.width=2", "net.depth=1", "population.size=12",
              "train.lr=[0.3,0.1,0.03,0.01,0.003,0.001]", "train.epochs=1", "progress_refresh_rate=0", "logger=none",
              "trainer.accelerator=cpu"]


@pytest.fixture(scope="module")
def resnet_zoo(tmp_path_factory) -> Path:
    """12 ResNet-8s (width 2) with BatchNorm on digits, 6 learning rates x 2 replicas, 1 epoch, made by `wsl-zoo`."""
    d = tmp_path_factory.mktemp("resnet")
    r = console("wsl-zoo", *RESNET_ZOO, f"zoo.path={d / 'zoo'}", f"hydra.run.dir={d / 'run'}", cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    return d / "zoo"


def test_console_script_trains_graph_on_a_resnet_zoo(resnet_zoo, tmp_path):
    r = console("wsl-train-encoder", f"zoo.path={resnet_zoo}", "encoder=graph", "task=test_acc", "seeds=[0]",
                "trainer.max_epochs=2", "split.fractions=[0.5,0.25,0.25]", f"hydra.run.dir={tmp_path / 'run'}",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    df = pd.read_csv(tmp_path / "run" / "results.csv")
    assert df["seed"].tolist() == ["0", "mean", "std"] and df["test/r2"].notna().all()
    assert "| graph | test_acc |" in r.stdout


def test_every_encoder_reads_a_resnet_zoo(resnet_zoo, tmp_path):
    """The residual structure from the zoo's own nets: one set per stream and block, BatchNorm scale and shift
    as per-unit features, running statistics only with zoo.bn_stats; every encoder trains on it (flat with the
    permutation augmentation of the ResNet's spec)."""
    from wsl.encoders.experiment import read_space, run_experiment
    from wsl.zoo import Zoo

    zoo = Zoo(resnet_zoo)
    space = read_space(zoo, zoo.ids)
    assert [s.name for s in space.sets] == ["in", "S0", "B0.0", "B1.0", "S1", "B2.0", "S2", "out"]
    assert space.sizes == [1, 2, 2, 4, 4, 8, 8, 10] and space.numel == sum(p.numel() for p in zoo.load_model(
        zoo.ids[0]).parameters())
    stats = read_space(zoo, zoo.ids, bn_stats=True)
    assert {n.name for n in stats.nodes} - {n.name for n in space.nodes} == {
        k for k in zoo.state_dict(zoo.ids[0]) if k.endswith(("running_mean", "running_var"))}
    for enc in ("flat", "stats", "deepsets", "nfn", "transformer"):  # (graph: the console script above)
        df = run_experiment(config(f"zoo.path={resnet_zoo}", f"encoder={enc}", "seeds=[0]", "trainer.max_epochs=1",
                                   "split.fractions=[0.5,0.25,0.25]", "batch_size=4",
                                   f"zoo.bn_stats={enc == 'stats'}"), tmp_path / enc)
        assert df.loc[0, "params"] > 0 and pd.notna(df.loc[0, "test/r2"]), enc


def test_flat_resnet_weights_are_augmented_by_permutation(resnet_zoo):
    """ZooDataset's flat vectors (parameters only) permuted with the zoo's spec: the same function (train mode:
    batch statistics; the flat vector carries no running ones to move)."""
    from wsl.symmetry import PermutationAugment
    from wsl.zoo import Zoo, ZooDataset

    zoo = Zoo(resnet_zoo)
    ds = ZooDataset(zoo)
    assert ds.weights.shape[1] == ds.layout.numel and not ds.spec.buffers
    x0, _ = ds[0]
    ds.transform = PermutationAugment(spec=ds.spec, layout=ds.layout, seed=0)
    x1, _ = ds[0]
    assert not torch.equal(x0, x1)
    net = zoo.load_model(ds.ids[0])
    moved = zoo.load_model(ds.ids[0])
    moved.load_state_dict({**net.state_dict(), **ds.layout.unflatten(x1)})
    x = torch.randn(16, 1, 8, 8)
    net.train(), moved.train()
    with torch.no_grad():
        torch.testing.assert_close(moved(x), net(x), atol=1e-5, rtol=1e-4)
