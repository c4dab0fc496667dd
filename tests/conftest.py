"""Shared fixtures: real Hydra configs, shrunk, writing to tmp paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from wsl.apps.common import CONF_DIR

os.environ.setdefault("WANDB_MODE", "disabled")
# Tests run two at a time (pytest-xdist, -n 2): one thread each. Several threads per process
# spin-wait against each other on 2 cores and make tiny tensor ops 10x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test starts with one torch thread, and a test that changes it (e.g. an app's `threads=`
    setting) does not pass its setting on to the next."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


ROOT = Path(__file__).resolve().parent.parent


def compose_cfg(config_name: str, overrides: list[str]):
    """The app's real config, composed exactly as its console script would."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def typed_gen(app: str, overrides: list[str]):
    """The typed config of wsl-train-generator or wsl-sample (`app`), as the console script makes it."""
    import importlib

    return importlib.import_module(f"wsl.apps.{app}").typed_config(compose_cfg(app, overrides))


def fit_nets(make, x, y, n: int, steps: int, lr: float, seed: int) -> list:
    """n nets from `make()` (seeds seed, seed+1, ...) fitted with Adam to (x, y) by cross-entropy, in eval mode:
    Hessians far from zero for the curvature tests."""
    import torch.nn.functional as F

    nets = []
    for i in range(n):
        torch.manual_seed(seed + i)
        net = make()
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
        nets.append(net.eval())
    return nets


TINY_ZOO = ["net.width=8", "population.size=4", "train.epochs=2", "train.batch_size=64",
            "logger=none", "progress_refresh_rate=0", "trainer.accelerator=cpu"]


def typed_zoo(overrides: list[str]):
    """wsl-zoo's typed job config (ZooJobConfig) for `overrides`, as the app builds it."""
    from wsl.apps.zoo import typed_config

    return typed_config(compose_cfg("zoo", overrides))


def make_zoo(path: Path, extra: list[str] = ()) -> Path:
    from wsl.apps.zoo_job import run_zoo_job

    return run_zoo_job(typed_zoo([f"zoo.path={path}", *TINY_ZOO, *extra]))


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory) -> Path:
    """A small trained digits-MLP zoo (4 members, 2 epochs), built once per test session.
    Tests must not modify it: copy it first (shutil.copytree) if they corrupt or extend it."""
    return make_zoo(tmp_path_factory.mktemp("zoo") / "tiny")


def run_cli(module: str, *args: str, timeout: int = 300, cwd=None, check=False) -> subprocess.CompletedProcess:
    """Run an app the way a user does (python -m wsl.apps.<module> ...)."""
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", f"wsl.apps.{module}", *args], capture_output=True, text=True,
                       timeout=timeout, cwd=cwd or ROOT, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"{module} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


@pytest.fixture
def restore_hydra_and_logging():
    """Apps run in this process leave Hydra's global state and logging handlers behind: restore them."""
    import logging

    from hydra.core.global_hydra import GlobalHydra

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    GlobalHydra.instance().clear()
    root.handlers[:] = handlers
    root.setLevel(level)
