"""Scale-out through Hydra launchers: a real multirun zoo sweep through submitit's local executor
(each job its own process, as on SLURM) merging into one complete zoo; the SLURM and Ray presets;
and a launcher whose plugin is not installed stopping at once with the package to install."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import ROOT
from wsl.apps.common import CONF_DIR

PRESETS = ("submitit_slurm_cpu", "submitit_slurm_gpu", "ray_cluster")


def run_zoo(*args: str, cwd: Path, env_extra: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), WANDB_MODE="disabled", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "wsl.apps.zoo", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def hydra_cfg(launcher: str, app: str = "zoo"):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=app, overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)


# ------------------------------------------------------------------------------------------ the real sweep
def test_submitit_local_sweep_merges_a_complete_zoo(tmp_path):
    from wsl.zoo import Zoo
    from wsl.zoo.verify import verify_zoo

    zoo_path = tmp_path / "zoo"
    p = run_zoo("-m", "hydra/launcher=submitit_local", "net.width=4,8", "population.size=2", "train.epochs=1",
                "train.batch_size=128", "logger=none", "progress_refresh_rate=0", "trainer.accelerator=cpu",
                f"zoo.path={zoo_path}", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path, timeout=400)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "Submitit 'local' sweep" in p.stdout + p.stderr  # it really went through submitit

    # every job ran as a submitit job (its own process), each with its result and log
    jobs = sorted(d for d in (tmp_path / "sweep" / ".submitit").iterdir() if d.name.isdigit())
    assert len(jobs) == 2, jobs
    for d in jobs:
        assert list(d.glob("*_result.pkl")) and list(d.glob("*_log.out")), sorted(d.iterdir())
        assert int(d.name) != os.getpid()

    # the merged index holds both jobs' populations: 2 widths x 2 members, all trained, all loadable
    problems = verify_zoo(zoo_path)
    assert not [q for q in problems if q.level == "error"], problems
    zoo = Zoo(zoo_path)
    table = zoo.table()
    assert len(table) == 4 and (table["status"] == "trained").all(), table
    assert sorted(table["width"].tolist()) == [4, 4, 8, 8]
    assert len(list((zoo_path / "shards").glob("*.h5"))) == 2  # one shard per job, nothing overwritten
    for mid in zoo.ids:
        assert zoo.checkpoint_epochs(mid) == [0, 1]
        net = zoo.load_model(mid)  # sha256-verified checkpoint, rebuilt architecture
        assert net.arch["width"] == zoo.hparams(mid)["width"]


# ------------------------------------------------------------------------------------------ presets
@pytest.mark.parametrize("preset,gpus,cpus", [("submitit_slurm_cpu", 0, 8), ("submitit_slurm_gpu", 1, 8)])
def test_slurm_presets_make_a_valid_sbatch_script(preset, gpus, cpus, tmp_path):
    """The preset's fields are submitit's SLURM parameters: the sbatch script submitit would submit
    asks for what the preset says (built by submitit itself; no cluster needed)."""
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from submitit.slurm import slurm

    cfg = hydra_cfg(preset)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"].endswith("SlurmLauncher")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    names = slurm.SlurmExecutor._equivalence_dict()  # plugin base names -> sbatch parameter names
    valid = set(slurm._get_default_parameters())
    params = {}
    for k, v in launcher.items():
        if k in ("_target_", "submitit_folder", "max_num_timeout", "name"):
            continue
        key = names.get(k, k) if k in base else k
        assert key in valid, f"{preset}: {k} is no submitit SLURM parameter"
        if v is not None:
            params[key] = v
    params["mem"] = slurm._convert_mem(params["mem"])
    script = slurm._make_sbatch_string(command="python -m wsl.apps.zoo", folder=tmp_path, job_name="wsl", **params)
    assert f"#SBATCH --cpus-per-task={cpus}" in script
    assert ("#SBATCH --gpus-per-node=1" in script) == (gpus == 1)
    assert f"#SBATCH --time={launcher['timeout_min']}" in script
    assert "export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK" in script


@pytest.mark.parametrize("preset", PRESETS)
def test_cluster_presets_throttle_progress_bars(preset, monkeypatch):
    """Cluster logs are files: every preset sets TQDM_MINITERS for its jobs, which Lightning's bar obeys."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    path = Path(CONF_DIR) / "hydra" / "launcher" / f"{preset}.yaml"
    env = OmegaConf.load(path).hydra.job.env_set  # read from the file: ray_cluster needs its plugin to compose
    assert int(env.TQDM_MINITERS) >= 100 and float(env.TQDM_MININTERVAL) >= 10
    monkeypatch.setenv("TQDM_MINITERS", env.TQDM_MINITERS)
    assert TQDMProgressBar(refresh_rate=10).refresh_rate == int(env.TQDM_MINITERS)
    if preset != "ray_cluster":
        assert dict(hydra_cfg(preset).hydra.job.env_set) == dict(env)


def test_presets_compose_for_every_app():
    for app in ("zoo", "train_encoder", "train_generator"):
        cfg = hydra_cfg("submitit_slurm_gpu", app)
        assert cfg.hydra.launcher.gpus_per_node == 1, app


# ------------------------------------------------------------------------------------------ bad input
def preflight_error(capsys, *argv: str) -> str:
    """What `wsl-zoo <argv>` says before any work: one line on stderr, exit status 2."""
    from wsl.apps.common import preflight
    from wsl.apps.zoo import typed_config

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        preflight("zoo", typed_config, argv=list(argv))
    assert e.value.code == 2
    return capsys.readouterr().err.strip()


def test_launcher_without_its_plugin_names_the_package(tmp_path, capsys):
    z = f"zoo.path={tmp_path / 'z'}"
    assert preflight_error(capsys, "-m", "hydra/launcher=ray_cluster", "net.width=4,8", z) == (
        "error: hydra/launcher=ray_cluster needs the hydra-ray-launcher plugin, which is not installed: "
        "pip install hydra-ray-launcher")
    assert "pip install hydra-ray-launcher" in preflight_error(capsys, "-m", "hydra/launcher=ray", z)
    assert not (tmp_path / "z").exists()

    # hide the installed submitit plugin: a regular package `hydra_plugins` shadows the namespace one
    shadow = tmp_path / "shadow" / "hydra_plugins"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    code = ("import sys\nfrom wsl.apps.common import preflight\n"
            "for launcher in ('submitit_local', 'submitit_slurm_cpu'):\n"
            "    try:\n        preflight('zoo', argv=['-m', 'hydra/launcher=' + launcher, 'net.width=4,8'])\n"
            "    except SystemExit as e:\n        print('exit', e.code, file=sys.stderr)\n")
    env = dict(os.environ, PYTHONPATH=f"{shadow.parent}{os.pathsep}{ROOT}")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    lines = p.stderr.strip().splitlines()
    assert lines == [
        "error: hydra/launcher=submitit_local needs the hydra-submitit-launcher plugin, which is not installed: "
        "pip install hydra-submitit-launcher", "exit 2",
        "error: hydra/launcher=submitit_slurm_cpu needs the hydra-submitit-launcher plugin, which is not installed: "
        "pip install hydra-submitit-launcher", "exit 2"], p.stderr[-3000:]


def test_slurm_launcher_off_a_cluster_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch/srun here
    err = preflight_error(capsys, "-m", "hydra/launcher=submitit_slurm_cpu", "net.width=4,8")
    assert "sbatch/srun are not on PATH" in err and "hydra/launcher=submitit_local" in err
    # a single run uses no launcher: the preset is not in the way
    from wsl.apps.common import preflight

    preflight("zoo", argv=["hydra/launcher=submitit_slurm_cpu", f"zoo.path={tmp_path / 'z'}"])
