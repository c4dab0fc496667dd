"""Encoder and generator training under Lightning's DDP strategy: two CPU processes (gloo), started
by the real console scripts exactly as a user would (`trainer.strategy=ddp trainer.devices=2`).

DDP averages gradients across processes, so both ranks end with the same parameters: each rank
logs what it computed from its own copy of the model, and those numbers must agree. Without the
synchronization the ranks would train on different halves of the data and disagree.

Slow (about a minute per app on 2 busy cores: every rank imports torch and reads the zoo)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

DDP = ["trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]


def run_app(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), WANDB_MODE="disabled", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", f"wsl.apps.{module}", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    """24 digits MLPs: 6 learning rates x 4 seed replicas (6 cells), 2 epochs."""
    d = tmp_path_factory.mktemp("ddp")
    r = run_app("zoo", "net.width=8", "population.size=24", "train.lr=[0.3,0.1,0.03,0.01,0.003,0.001]",
                "train.epochs=2", f"zoo.path={d / 'zoo'}", "progress_refresh_rate=0", "logger=none",
                f"hydra.run.dir={d / 'run'}", cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    return d / "zoo"


def rank_logs(run_dir: Path) -> tuple[str, str]:
    """Rank 0 logs to <app>.log, Lightning's launcher gives rank 1 train_ddp_process_1.log."""
    rank1 = run_dir / "train_ddp_process_1.log"
    assert rank1.is_file(), f"no second DDP process: {sorted(p.name for p in run_dir.iterdir())}"
    rank0 = [p for p in run_dir.glob("*.log") if p != rank1]
    assert len(rank0) == 1, rank0
    return rank0[0].read_text(), rank1.read_text()


def test_encoder_trains_with_ddp_on_two_cpu_processes(zoo, tmp_path):
    run = tmp_path / "run"
    # 3 epochs: each rank picks its best validation epoch from the logged val/loss, which must be the
    # same number on both ranks (sync_dist) or the ranks would keep different models
    r = run_app("train_encoder", f"zoo.path={zoo}", "encoder=deepsets", "task=test_acc", "seeds=[0]",
                "trainer.max_epochs=3", "split.fractions=[0.5,0.25,0.25]", "batch_size=4", *DDP,
                f"hydra.run.dir={run}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Starting with 2 processes" in r.stdout + r.stderr
    df = pd.read_csv(run / "results.csv")
    assert df["test/tau"].notna().all() and df["val/tau"].notna().all()
    assert not list(run.glob(".results.*")), "leftover temporary results files (two ranks writing?)"
    logs = rank_logs(run)
    taus = [re.findall(r"test/tau=(-?[\d.]+)", text) for text in logs]
    assert taus[0] and taus[0] == taus[1], f"ranks disagree (gradients or best epochs not synchronized?): {taus}"


def test_generator_trains_with_ddp_on_two_cpu_processes(zoo, tmp_path):
    from wsl.generators import load_run

    run = tmp_path / "run"
    # 24 nets, 12 per rank, and the default batch_size (128): the batch must be capped at a rank's
    # share (12), not at the zoo size (24: no full batch on any rank, so 0 steps)
    r = run_app("train_generator", f"zoo.path={zoo}", "trainer.max_steps=20", "spread.every_n_steps=10",
                "progress_refresh_rate=0", *DDP, f"hydra.run.dir={run}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Starting with 2 processes" in r.stdout + r.stderr
    logs = rank_logs(run)
    trained = [re.findall(r"spread ratio ([\d.]+), (\d+) steps", text) for text in logs]
    assert trained[0] and trained[0] == trained[1], f"ranks disagree (gradients not synchronized?): {trained}"
    assert int(trained[0][0][1]) == 20
    # only rank 0 writes the run
    assert "generator run saved to" in logs[0] and "generator run saved to" not in logs[1]
    assert not list(run.glob(".generator*.tmp")) and not list(run.glob(".config*.tmp"))
    g = load_run(run)
    assert g.training["steps"] == 20 and g.training["n_train"] == 24
