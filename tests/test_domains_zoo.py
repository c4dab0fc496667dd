"""Zoos beyond images through the real wsl-zoo console script: a PINN zoo (dataset=convection), a
transformer on modular arithmetic and a character-level transformer language model (dataset=text).
The index stores each domain's metrics under their own names, the data rebuild from the record, and
the checkpoints reproduce the stored metrics."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, make_zoo, typed_zoo
from wsl.errors import ConfigError
from wsl.zoo import Zoo

QUIET = ["population.size=2", "train.epochs=2", "logger=none", "progress_refresh_rate=0", "trainer.accelerator=cpu"]
TINY_TRANSFORMER = ["net=transformer", "net.width=8", "net.depth=1", "net.heads=2"]
TINY_CONVECTION = ["dataset=convection", "dataset.collocation=64", "dataset.initial=16", "dataset.boundary=16",
                   "dataset.test_nx=16", "dataset.test_nt=8", "train.batch_size=32"]


def wsl_zoo(*args, cwd) -> subprocess.CompletedProcess:
    """Run the installed `wsl-zoo` console script (this checkout's code first on the path)."""
    script = Path(sys.executable).with_name("wsl-zoo")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "wsl.apps.zoo"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    return subprocess.run([*cmd, *args, f"hydra.run.dir={cwd / 'run'}"], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)


def test_wsl_zoo_trains_a_pinn_zoo_on_convection(tmp_path):
    """The issue's `wsl-zoo net=mlp net.activation=tanh dataset=convection dataset.beta=10`, shrunk."""
    zoo = tmp_path / "zoo"
    p = wsl_zoo("net=mlp", "net.activation=tanh", "dataset.beta=10", "net.width=8", *TINY_CONVECTION, *QUIET,
                f"zoo.path={zoo}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    z = Zoo(zoo)
    t = z.table()
    assert len(t) == 2 and set(t["status"]) == {"trained"} and set(t["beta"]) == {10.0}
    for split in ("train", "val", "test"):
        for m in ("loss", "residual", "ic", "bc", "rel_l2"):
            assert np.isfinite(t[f"{split}_{m}"]).all(), f"{split}_{m}"
        assert np.isnan(t[f"{split}_acc"]).all()  # never an accuracy: the PINN's is rel_l2, under its own name
    np.testing.assert_allclose(t["test_loss"], t["test_residual"] + t["test_ic"] + t["test_bc"], rtol=1e-5)
    assert z.history(z.ids[0])["test_rel_l2"].shape == (3,)  # epochs 0, 1, 2
    data = z.training_data()
    assert data.kind == "pinn" and data.beta == 10.0 and data.split("test")[0].shape == (128, 2)
    # the final checkpoint reproduces the stored relative L2 error on the test grid
    from wsl.nets import build_net

    mid = z.ids[0]
    net = build_net(z.arch(mid))
    net.load_state_dict(z.state_dict(mid))
    x, exact = data.split("test")
    with torch.no_grad():
        rel = float((net(x) - exact).norm() / exact.norm())
    assert math.isclose(rel, float(t.loc[mid, "test_rel_l2"]), rel_tol=1e-5)


def test_wsl_zoo_trains_a_transformer_on_modular_arithmetic(tmp_path):
    zoo = tmp_path / "zoo"
    p = wsl_zoo(*TINY_TRANSFORMER, "dataset=modular", "dataset.p=11", "train.batch_size=32", *QUIET,
                f"zoo.path={zoo}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    z = Zoo(zoo)
    t = z.table()
    assert len(t) == 2 and set(t["p"]) == {11} and set(t["op"]) == {"add"} and set(t["train_fraction"]) == {0.5}
    assert np.isfinite(t["test_acc"]).all() and np.isfinite(t["val_loss"]).all()
    arch = z.arch(z.ids[0])
    assert arch["name"] == "transformer" and arch["vocab"] == 12 and not arch["causal"] and arch["num_classes"] == 11
    d = z.training_data()
    from wsl.data import load_task_dataset

    assert d.fingerprint() == load_task_dataset("modular", p=11).fingerprint()
    from wsl.nets import build_net

    net = build_net(arch)
    net.load_state_dict(z.state_dict(z.ids[0]))
    with torch.no_grad():
        acc = float((net(d.x_test).argmax(-1) == d.y_test).double().mean())
    assert math.isclose(acc, float(t.loc[z.ids[0], "test_acc"]), abs_tol=1e-9)


@pytest.mark.slow  # the console path is the modular test's; LM populations are tested in process
def test_wsl_zoo_trains_a_character_level_transformer(tmp_path):
    zoo = tmp_path / "zoo"
    p = wsl_zoo(*TINY_TRANSFORMER, "dataset=text", "dataset.context=8", "dataset.max_chars=3000", *QUIET,
                f"zoo.path={zoo}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    z = Zoo(zoo)
    t = z.table()
    for split in ("train", "val", "test"):
        np.testing.assert_allclose(t[f"{split}_bpc"], t[f"{split}_loss"] / math.log(2), rtol=1e-6)
        assert ((t[f"{split}_acc"] >= 0) & (t[f"{split}_acc"] <= 1)).all()
    h = z.history(z.ids[0])
    assert h["train_loss"][-1] < h["train_loss"][0]  # it learns
    d = z.training_data()
    assert d.kind == "lm" and t["characters"].iloc[0] == d.vocab
    assert t["corpus_sha256"].iloc[0] == d.info["corpus_sha256"]
    arch = z.arch(z.ids[0])
    assert arch["causal"] and arch["vocab"] == d.vocab_size == len(d.vocab) and arch["in_shape"] == [8]


def test_pinn_zoo_marks_a_diverged_member_and_keeps_the_others(tmp_path):
    zoo = make_zoo(tmp_path / "zoo", ["net.activation=tanh", *TINY_CONVECTION, "train.lr=[0.01,1.0e+12]",
                                      "train.optimizer=sgd", "train.schedule=constant"])
    t = Zoo(zoo).table().sort_values("lr")
    assert list(t["status"]) == ["trained", "trained", "diverged", "diverged"]
    assert np.isfinite(t["test_rel_l2"].iloc[:2]).all() and np.isnan(t["test_rel_l2"].iloc[2:]).all()


@pytest.mark.parametrize("overrides,match", [
    (["dataset=convection", "dataset.beta=1000"], "^dataset.beta must be a number in \\[0, 100\\], got 1000"),
    (["dataset=modular", "net=transformer", "dataset.p=12"], "^dataset.p=12 is not a prime"),
    (["dataset=modular", "net=transformer", "dataset.train_fraction=0.9"], "^dataset.train_fraction=0.9 \\+ dataset"),
    (["dataset=text", "net=transformer", "dataset.context=1000", "dataset.max_chars=2000"],
     "^dataset.context=1000 is longer than the corpus allows: the val block of pydoc_data.topics"),
    (["dataset=modular", "net=mlp"], "^net=mlp reads float inputs; dataset=modular gives token ids: use "
                                     "net=transformer"),
    (["dataset=convection", "net=cnn"], "^net=cnn with dataset=convection: a physics-informed net maps "
                                        "coordinates"),
    (["dataset=text", "net=mlp"], "^net=mlp with dataset=text: next-token prediction needs a causal sequence "
                                  "model"),
    (["dataset=digits", "dataset.name=text"], "^dataset.name='text' is the character-level text dataset: choose "
                                               "it with dataset=text"),
])
def test_bad_values_are_one_line_naming_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match) as e:
        typed_zoo(["zoo.path=unused", *overrides])
    assert "\n" not in str(e.value)


def test_a_text_file_that_is_not_utf8_is_named(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_bytes(b"plain \xff\xfe text")
    with pytest.raises(ConfigError, match=f"^dataset.path={f} is not UTF-8 text \\(byte 6"):
        typed_zoo(["zoo.path=unused", "dataset=text", "net=transformer", f"dataset.path={f}"])


@pytest.mark.parametrize("name,axis,values,inside", [
    ("phase_pinn_convection", "dataset.beta", [1.0, 5.0, 10.0, 20.0, 40.0], "lr"),
    ("phase_transformer_modular", "dataset.train_fraction", [0.2, 0.4, 0.6], "weight_decay"),
])
def test_phase_experiments_compose_and_one_shrunk_job_trains(tmp_path, restore_hydra_and_logging, name, axis, values,
                                                              inside):
    """The real experiment configs: the load axis swept by Hydra's sweeper, the temperature (lr; weight
    decay) varied inside each population with the same seeds per cell; one job, shrunk, trains."""
    from hydra import compose, initialize_config_dir

    from wsl.apps.common import CONF_DIR
    from wsl.apps.zoo_job import run_zoo_job

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("zoo", [f"experiment={name}"], return_hydra_config=True)
    assert [float(v) for v in str(cfg.hydra.sweeper.params[axis]).split(",")] == values
    for v in values:  # every job of the sweep is a valid job
        job = typed_zoo([f"experiment={name}", f"zoo.path={tmp_path / 'z'}", f"{axis}={v}"])
    grid = list(getattr(job.train, inside))
    assert len(grid) >= 3 and job.population.size % len(grid) == 0 and job.population.size // len(grid) >= 2
    shrink = ["population.size=" + str(len(grid)), "train.epochs=2", "zoo.checkpoint_epochs=[0]", "logger=none",
              "progress_refresh_rate=0", "trainer.accelerator=cpu"]
    shrink += (["dataset.collocation=50", "dataset.test_nx=8", "dataset.test_nt=4", "net.width=4"]
               if name == "phase_pinn_convection" else ["net.width=8", "net.heads=2"])
    z = Zoo(run_zoo_job(typed_zoo([f"experiment={name}", f"zoo.path={tmp_path / 'z'}", *shrink])))
    t = z.table()
    assert sorted(t[inside]) == sorted(grid) and set(t["status"]) == {"trained"}
    key = "test_rel_l2" if name == "phase_pinn_convection" else "test_acc"
    assert np.isfinite(t[key]).all()
    assert all(z.checkpoint_epochs(m) == [0, 2] for m in z.ids)
