"""One line per event: the console scripts a user runs, run here on a tiny zoo the way a user runs
them, print every log line once (Lightning's own stderr handler and Hydra's console handler used to
print each Lightning INFO line twice), and none of Lightning's boilerplate: the GPU/TPU banners,
the litlogger advert, "the number of training batches is smaller than the logging interval".
Errors and real warnings still show."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from conftest import ROOT

BIN = Path(sys.executable).parent
# Hydra's job_logging format "[time][logger][LEVEL] - msg" and Lightning's own "LEVEL: msg": the
# same event printed by both handlers is the same message once these prefixes are gone.
HYDRA_PREFIX = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,.]+\]\[[^\]]*\]\[[A-Z]+\] - ")
BARE_PREFIX = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL): ")
NOISE = ("GPU available: ", "TPU available: ", "smaller than the logging interval", "💡 Tip", "LeafSpec",
         "but have no `val_dataloader`")


def run_script(name: str, *args: str, cwd: Path) -> str:
    """Run the console script `name` (the venv's entry point, this checkout's code); stdout + stderr."""
    exe = BIN / name
    assert exe.is_file(), f"console script {exe} missing: pip install -e ."
    env = dict(os.environ, PYTHONPATH=str(ROOT), WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    p = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)
    assert p.returncode == 0, f"{name} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout + p.stderr


def messages(text: str) -> list[str]:
    return [BARE_PREFIX.sub("", HYDRA_PREFIX.sub("", line)).rstrip() for line in text.splitlines() if line.strip()]


def assert_quiet(text: str) -> None:
    twice = [m for m, n in Counter(messages(text)).items() if n > 1]
    assert not twice, f"printed more than once: {twice}\n{text}"
    noise = [n for n in NOISE if n in text]
    assert not noise, f"Lightning boilerplate reached the user: {noise}\n{text}"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("quiet")


@pytest.fixture(scope="module")
def zoo_run(work) -> tuple[Path, str]:
    """wsl-zoo with its defaults (csv logger), tiny: 8 width-8 digits MLPs, 4 lr cells x 2 replicas, one
    epoch at batch size 128 (9 steps: fewer than any logging interval)."""
    zoo = work / "zoo"
    out = run_script("wsl-zoo", f"zoo.path={zoo}", "net.width=8", "population.size=8", "train.lr=[0.1,0.03,0.01,0.003]",
                     "train.epochs=1", "train.batch_size=128", "progress_refresh_rate=0", "trainer.accelerator=cpu",
                     f"hydra.run.dir={work / 'zoo-run'}", cwd=work)
    return zoo, out


@pytest.fixture(scope="module")
def generator_run(work, zoo_run) -> tuple[Path, str]:
    run = work / "gen-run"
    out = run_script("wsl-train-generator", f"zoo.path={zoo_run[0]}", "trainer.max_steps=3",
                     "generator.denoiser.hidden=32", "generator.denoiser.depth=1", "spread.n=8",
                     "progress_refresh_rate=0", "trainer.accelerator=cpu", "threads=1", f"hydra.run.dir={run}",
                     cwd=work)
    return run, out


def test_wsl_zoo_prints_each_line_once(zoo_run, work):
    _, out = zoo_run
    assert_quiet(out)
    assert sum("`Trainer.fit` stopped" in m for m in messages(out)) == 1  # Lightning's own news still shows
    assert "`Trainer.fit` stopped" in (work / "zoo-run" / "zoo.log").read_text()  # and reaches the job's log file


def test_wsl_train_encoder_prints_each_line_once(zoo_run, work):
    run = work / "enc-run"
    out = run_script("wsl-train-encoder", f"zoo.path={zoo_run[0]}", "encoder=stats", "seeds=[0]",
                     "trainer.max_epochs=2", "split.fractions=[0.5,0.25,0.25]", "trainer.accelerator=cpu",
                     f"hydra.run.dir={run}", cwd=work)
    assert_quiet(out)
    assert "| stats | test_acc |" in out
    # Lightning's lines go through Hydra's handlers: into the job's log file, formatted like the rest
    assert "`Trainer.fit` stopped" in (run / "train_encoder.log").read_text()


def test_wsl_train_generator_sample_evaluate_print_each_line_once(generator_run, zoo_run, work):
    run, out = generator_run
    assert_quiet(out)
    assert "generator run:" in out
    gen = work / "generated"
    assert_quiet(run_script("wsl-sample", f"run={run}", "n=4", f"zoo.path={gen}", f"hydra.run.dir={work / 's-run'}",
                            cwd=work))
    assert_quiet(run_script("wsl-evaluate", f"zoo.path={gen}", f"reference={zoo_run[0]}", "baselines.noise.n=2",
                            "baselines.noise.sigmas=[0.1]", "baselines.average.n=2", "baselines.average.ks=[2]",
                            "baselines.gaussian.n=2", f"hydra.run.dir={work / 'e-run'}", cwd=work))


def test_errors_and_real_warnings_still_show(tmp_path):
    """Under a logging config (as Hydra sets one up) after quiet_lightning: Lightning's info, warning
    and error lines each print once, through the root's handler; a real Lightning warning still shows."""
    script = textwrap.dedent("""\
        import logging, sys
        logging.basicConfig(stream=sys.stdout, format="[%(name)s][%(levelname)s] - %(message)s", level=logging.INFO)
        from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
        from wsl.tracking import quiet_lightning
        quiet_lightning()
        rank_zero_info("GPU available: False, used: False")
        rank_zero_info("an event")
        logging.getLogger("lightning.pytorch.core").warning("a logged warning")
        logging.getLogger("lightning.fabric").error("an error")
        rank_zero_warn("a real warning")
        """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    out = p.stdout + p.stderr
    assert_quiet(out)
    for line in ("[lightning.pytorch.utilities.rank_zero][INFO] - an event",
                 "[lightning.pytorch.core][WARNING] - a logged warning", "[lightning.fabric][ERROR] - an error"):
        assert p.stdout.count(line) == 1, out
    assert p.stderr.count("a real warning") == 1, out
