"""End to end: `wsl-landscape landscape=full` through its console script on a zoo of BatchNorm ResNets and
BatchNorm CNNs trained by the `wsl-zoo` console script: every metric computes (finite values) or its rows
say why not; nothing crashes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, make_zoo
from wsl.zoo import Zoo

SHRINK = ["landscape.num_samples=256", "landscape.hessian_eig.max_iters=40", "landscape.hessian_trace.samples=8",
          "landscape.mode_connectivity.steps=15", "landscape.mode_connectivity.points=7", "landscape.barrier.points=5"]
COMMON = ["population.size=4", "train.epochs=2", "logger=none", "progress_refresh_rate=0",
          "trainer.accelerator=cpu"]
# the value columns of each metric of landscape=full (finite wherever the row's note is empty)
# (spectra's note lists the layers too small to fit; its means are over the layers that fit)
VALUES = {"hessian_eig": ["train", "test"], "hessian_trace": ["train", "test"], "barrier": ["value"],
          "mode_connectivity": ["value"], "cka": ["value"]}


def console(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run an installed console script (wsl-zoo, wsl-landscape) the way a user types it."""
    exe = Path(sys.executable).with_name(script)
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", f"wsl.apps.{script.split('-', 1)[1]}"]
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    p = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert p.returncode == 0, f"{script} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="module")
def bn_zoo(tmp_path_factory):
    """ResNets (width 2, two stages: a projection shortcut) with BatchNorm, 2 learning rates x 2 seeds (wsl-zoo),
    and BatchNorm CNNs, 1 cell x 2 seeds (the same job code, in this process: one start-up less), in one zoo;
    then wsl-landscape landscape=full on all of it."""
    path = tmp_path_factory.mktemp("resnet_landscape") / "zoo"
    console("wsl-zoo", f"zoo.path={path}", "net=resnet", "net.width=2", "net.stages=2", "train.lr=[0.1,0.05]",
            *COMMON)
    make_zoo(path, ["net=cnn", "net.norm=batch", "net.width=4", "net.depth=2", "population.size=2"])  # in process
    run = console("wsl-landscape", f"zoo.path={path}", "landscape=full", *SHRINK, "logger=none")
    return path, run


def test_landscape_full_on_batchnorm_resnets_and_cnns(bn_zoo):
    path, run = bn_zoo
    assert "landscape: hessian_eig 6 rows" in run.stdout and "spectra 6 rows" in run.stdout
    assert "failed" not in run.stderr, run.stderr[-3000:]
    zoo = Zoo(path)
    t = zoo.table()
    assert set(t["norm"]) == {"batch"} and set(t["net"]) == {"resnet", "cnn"}
    assert (t.status == "trained").all()
    state = zoo.state_dict(t.index[0])
    assert any(k.endswith("running_var") for k in state)  # the statistics the eval-mode metrics use
    for metric, cols in VALUES.items():
        notes = t[f"{metric}/note"].fillna("").astype(str)
        for c in cols:
            vals = t[f"{metric}/{c}"].astype(float)
            ok = notes == ""
            assert np.isfinite(vals[ok]).all(), (metric, c, vals[ok])
    # BatchNorm in eval mode is affine: the trace is exact, and every curvature row converged
    assert (t["hessian_trace/train_exact"] == 1).all() and (t["hessian_trace/test_exact"] == 1).all()
    assert (t["hessian_eig/note"].fillna("") == "").all() and (t["hessian_eig/train"] > 0).all()
    for metric in ("barrier", "mode_connectivity", "cka"):  # every cell has two seeds: computed everywhere
        assert (t[f"{metric}/pairs"] == 1).all() and np.isfinite(t[f"{metric}/value"].astype(float)).all()
    for c in ("alpha_mean", "stable_rank_mean", "log_spectral_norm_mean"):
        assert np.isfinite(t[f"spectra/{c}"].astype(float)).all(), c
    res = t[t.net == "resnet"]
    assert (res["spectra/num_evals[stages.1.0.conv2.conv]"] == 9 * 4).all()  # 9 kernel positions of [4, 4]
    assert (res["spectra/num_evals[stages.1.0.shortcut.conv]"] == 2).all()  # the 1x1 shortcut: one [4, 2]
    assert not any("bn" in c for c in t.columns if c.startswith("spectra/"))  # BatchNorm γ, β: not matrices
    assert (res["spectra/layers_fit"] >= 3).all()
    assert t["phase/label"].notna().all()
