"""`pip install .` works: the wheel carries the configs, and every console script answers --help
from a directory outside the repository (so nothing is read from the checkout)."""

from __future__ import annotations

import ast
import configparser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT


def app_modules() -> list[str]:
    """wsl/apps modules that define a `main` (the Hydra entry points)."""
    out = []
    for f in sorted((ROOT / "wsl" / "apps").glob("*.py")):
        tree = ast.parse(f.read_text())
        if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body):
            out.append(f"wsl.apps.{f.stem}")
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The package built into a wheel from a copy of the sources and installed into a bare folder."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "wsl", src / "wsl", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    r = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(src), "-w", str(tmp / "dist")],
                       capture_output=True, text=True, timeout=300, cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    wheels = list((tmp / "dist").glob("wsl-*.whl"))
    assert len(wheels) == 1, wheels
    r = subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp / "site"), str(wheels[0])],
                       capture_output=True, text=True, timeout=300, cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    shutil.rmtree(src)  # nothing may come from the sources from here on
    return tmp


def console_scripts(installed: Path) -> dict[str, str]:
    """{script name: "module:function"} as the wheel declares them (entry_points.txt)."""
    wheel = next((installed / "dist").glob("wsl-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt"))
        ep = configparser.ConfigParser()
        ep.read_string(z.read(name).decode())
    return dict(ep["console_scripts"])


def env_for(installed: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return dict(env, PYTHONPATH=str(installed / "site"), WANDB_MODE="disabled", HYDRA_FULL_ERROR="0")


def test_wheel_carries_every_config(installed):
    wheel = next((installed / "dist").glob("wsl-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    confs = {str(p.relative_to(ROOT)) for p in (ROOT / "wsl" / "conf").rglob("*.yaml")}
    assert confs and not confs - names, sorted(confs - names)
    assert "wsl/conf/hydra/launcher/submitit_slurm_cpu.yaml" in names
    assert not [n for n in names if n.endswith((".pkl", ".pt", ".ckpt"))]


def test_every_app_has_a_console_script(installed):
    targets = {v.split(":")[0].strip() for v in console_scripts(installed).values()}
    missing = [m for m in app_modules() if m not in targets]
    assert not missing, f"apps without a [project.scripts] entry in pyproject.toml: {missing}"


def test_console_scripts_answer_help_outside_the_repository(installed, tmp_path):
    env = env_for(installed)
    where = subprocess.run([sys.executable, "-c", "import wsl, wsl.apps.common as c; print(wsl.__file__); "
                            "print(c.CONF_DIR)"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    lib, conf = where.stdout.split()
    assert Path(lib).is_relative_to(installed / "site") and Path(conf).is_relative_to(installed / "site"), where

    procs = {}
    for name in console_scripts(installed):
        exe = installed / "site" / "bin" / name
        assert exe.is_file(), f"pip did not install the console script {name}"
        procs[name] = subprocess.Popen([str(exe), "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, env=env, cwd=tmp_path)
    for name, p in procs.items():
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, f"{name} --help failed:\n{err[-2000:]}"
        assert "Powered by Hydra" in out and "== Config ==" in out, f"{name} --help:\n{out[-1500:]}"
        if name in ("wsl-zoo", "wsl-train-encoder", "wsl-train-generator"):
            # the config groups come from the installed package, launcher presets included
            assert "logger: csv, none, tensorboard, wandb" in out, out[:1500]
    hydra_help = subprocess.run([str(installed / "site" / "bin" / "wsl-zoo"), "--hydra-help"], capture_output=True,
                                text=True, env=env, cwd=tmp_path, timeout=120)
    launchers = next(ln for ln in hydra_help.stdout.splitlines() if ln.startswith("hydra/launcher:"))
    assert {"submitit_slurm_cpu", "submitit_slurm_gpu", "ray_cluster", "submitit_local"} <= {
        x.strip() for x in launchers.split(":", 1)[1].split(",")}, launchers
    assert not list(tmp_path.iterdir()), "--help must not write anything"
