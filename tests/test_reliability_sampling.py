"""Reliability of the generator and its consumers on untrusted input (issue 12), through the console scripts:

- wsl-sample never writes into a zoo of other nets (a copy of the training zoo, a directory of a user's files):
  one line, exit 2, every byte left as it was; a zoo of the run's own samples is still extended;
- an absurd n (or a batch that cannot fit in memory) is one line before anything is written, under a
  memory limit (it used to grow to 24 GB);
- a generator run whose description was edited (arch width, sampler steps, denoiser width) is refused with
  one line naming the checkpoint and the key, before anything is allocated;
- a training zoo holding a net with NaN weights (written by the real ShardWriter): wsl-train-encoder and
  wsl-train-generator exclude it with a warning naming it and go on; wsl-evaluate excludes it from the
  reference without a traceback, and refuses (one line) when fewer than two finite ones are left;
- an epoch the zoo does not have is one line naming the key and the epochs it has, in every app.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, make_zoo, typed_gen
from wsl.errors import ConfigError, ZooFormatError
from wsl.generators.limits import MAX_SAMPLES
from wsl.generators.generator_run import load_run
from wsl.generators.sample import condition_tensor
from wsl.zoo import ShardWriter, Zoo

QUIET = ["logger=none", "progress_refresh_rate=0", "trainer.accelerator=cpu"]
MEMORY_LIMIT = 6 << 30  # address space of each app run here: the bounded apps need well under it


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def cli(module: str, *args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    """An app run as a user runs it, under an address-space limit (an unbounded allocation fails, never
    swaps the shared machine)."""
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", f"wsl.apps.{module}", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env, preexec_fn=_limit_memory)


def one_line_error(r: subprocess.CompletedProcess) -> str:
    """The app failed cleanly: exit 2, no traceback, its last stderr line is the `error:` line. Returns it."""
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), r.stderr[-3000:]
    return last


def snapshot(root: Path) -> dict:
    """Every file under `root` with its bytes (and every directory), to compare before and after."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def poison(root: Path, model_id: str) -> None:
    """Give `model_id` NaN weights at its last checkpoint, rewritten by the real ShardWriter (new checksums,
    the rest of its job's shard kept): a zoo that passes every checksum, holding a non-finite net."""
    zoo = Zoo(root)
    row = zoo.row(model_id)
    job = zoo._table.jobs[row.job_id]
    w = ShardWriter(root, row.job_id, config=job["config"], zoo_name=zoo.attrs.get("zoo_name"),
                    overrides=job.get("overrides"))
    last = row.checkpoints[-1][0]
    for epoch, _, _ in row.checkpoints:
        sd = {k: v.clone() for k, v in zoo.state_dict(model_id, epoch).items()}
        if epoch == last:
            sd["hidden.0.weight"][0, 0] = float("nan")
        w.write_checkpoint(model_id, epoch, sd, row.arch)
    w.add_model(model_id, row.arch, row.hparams, row.status, row.history, row.diverged_epoch)
    w.commit()


@pytest.fixture(scope="module")
def flow_run(tiny_zoo, tmp_path_factory) -> Path:
    """A small flow generator trained on the tiny zoo."""
    from wsl.generators.train import train_generator

    run_dir = tmp_path_factory.mktemp("rel-gen") / "flow"
    train_generator(typed_gen("train_generator", [
        f"zoo.path={tiny_zoo}", "generator=flow", "trainer.max_steps=30", "generator.denoiser.hidden=64",
        "generator.denoiser.depth=1", "spread.every_n_steps=15", "spread.n=8", *QUIET]), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def cells_zoo(tmp_path_factory) -> Path:
    """12 digits MLPs in 6 cells (learning rates), 2 epochs: enough cells for an encoder's three splits."""
    return make_zoo(tmp_path_factory.mktemp("rel-cells") / "cells",
                    ["population.size=12", "train.lr=[0.3,0.1,0.03,0.01,0.003,0.001]"])


# ---- wsl-sample: where it writes, how much --------------------------------------------------------------------
def test_sample_refuses_a_zoo_of_trained_nets_and_a_directory_of_other_files(flow_run, tiny_zoo, tmp_path):
    copy = tmp_path / "copy-of-training-zoo"  # the training zoo under another path (a download, a backup)
    shutil.copytree(tiny_zoo, copy)
    before = snapshot(copy)
    line = one_line_error(cli("sample", f"run={flow_run}", "n=4", f"zoo.path={copy}", f"hydra.run.dir={tmp_path / 's1'}"))
    assert str(copy) in line and "not samples of this generator run" in line and "'trained'" in line, line
    assert snapshot(copy) == before  # byte-identical: nothing added, nothing removed

    mine = tmp_path / "thesis"  # a user's directory
    mine.mkdir()
    (mine / "thesis.tex").write_text("\\documentclass{article}")
    line = one_line_error(cli("sample", f"run={flow_run}", "n=4", f"zoo.path={mine}", f"hydra.run.dir={tmp_path / 's2'}"))
    assert "not a zoo" in line and "thesis.tex" in line, line
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]

    # a zoo of this run's own samples is extended (another seed; resuming a draw: test_reliability_drill)
    out = tmp_path / "gen"
    for seed in (0, 1):
        r = cli("sample", f"run={flow_run}", f"zoo.path={out}", "n=2", f"seed={seed}", f"hydra.run.dir={tmp_path / 's3'}")
        assert r.returncode == 0, r.stderr[-3000:]
    assert len(Zoo(out)) == 4 and {Zoo(out).row(m).status for m in Zoo(out).ids} == {"sampled"}


def test_absurd_n_and_batches_are_refused_before_anything_is_written(flow_run, tmp_path):
    out = tmp_path / "gen"
    line = one_line_error(cli("sample", f"run={flow_run}", "n=1000000000000", f"zoo.path={out}",
                              f"hydra.run.dir={tmp_path / 's'}", timeout=120))
    assert "n=1000000000000" in line and f"{MAX_SAMPLES:,}" in line and "free" in line, line
    assert not out.exists()
    # a batch holds its nets in memory: one of 10^6 nets would need gigabytes
    line = one_line_error(cli("sample", f"run={flow_run}", "n=1000000", "batch_size=1000000", f"zoo.path={out}",
                              f"hydra.run.dir={tmp_path / 's'}", timeout=120))
    assert "batch_size=1000000" in line and "in memory" in line, line
    assert not out.exists()


# ---- a generator run's description is untrusted ---------------------------------------------------------------
def _tamper(run, what: str) -> None:
    if what == "arch width":
        run.arch = dict(run.arch, width=20000)  # the tensors stay those of width 8
    elif what == "sampler steps":
        run.method.steps = 10**9
    elif what == "denoiser hidden":
        run.denoiser.kwargs = dict(run.denoiser.kwargs, hidden=10**9)
    elif what == "denoiser parameters":  # under the width cap, but 10^11 parameters
        run.denoiser.kwargs = dict(run.denoiser.kwargs, hidden=100_000)
    elif what == "denoiser shape":  # plausible, and contradicted by the weights
        run.denoiser.kwargs = dict(run.denoiser.kwargs, hidden=65)


@pytest.mark.parametrize("what,key", [("arch width", "key arch"), ("sampler steps", "key method.kwargs"),
                                      ("denoiser hidden", "key denoiser.kwargs")])
def test_an_edited_generator_run_is_refused_before_allocating(flow_run, tmp_path, what, key):
    run = load_run(flow_run)
    _tamper(run, what)
    edited = tmp_path / "edited"
    run.save(edited)  # the real writer: a well-formed checkpoint whose description lies
    out = tmp_path / "gen"
    line = one_line_error(cli("sample", f"run={edited}", "n=4", f"zoo.path={out}", f"hydra.run.dir={tmp_path / 's'}",
                              timeout=120))
    assert str(edited / "generator.safetensors") in line and key in line, line
    assert not out.exists()


@pytest.mark.parametrize("what", ["denoiser parameters", "denoiser shape"])
def test_a_denoiser_description_is_checked_against_the_tensors(flow_run, tmp_path, what):
    run = load_run(flow_run)
    _tamper(run, what)
    run.save(tmp_path / "edited")
    with pytest.raises(ZooFormatError, match="generator.safetensors: .*key denoiser.kwargs") as e:
        load_run(tmp_path / "edited")
    assert ("parameters; at most" if what == "denoiser parameters" else "has shape [64, 610]") in str(e.value)


def test_condition_must_be_a_mapping_of_the_runs_keys(flow_run):
    run = load_run(flow_run)
    with pytest.raises(ConfigError, match="condition must be a mapping"):
        condition_tensor(run, 5, 1)
    with pytest.raises(ConfigError, match="trained unconditionally"):
        condition_tensor(run, {"val_acc": 0.9}, 1)


# ---- non-finite weights in a training zoo ----------------------------------------------------------------------
def test_encoder_and_generator_exclude_a_nan_net_with_a_warning(cells_zoo, tmp_path):
    zoo = tmp_path / "nan"
    shutil.copytree(cells_zoo, zoo)
    bad = Zoo(zoo).ids[3]
    poison(zoo, bad)
    r = cli("train_encoder", f"zoo.path={zoo}", "encoder=flat", "task=test_acc", "seeds=[0]", "trainer.max_epochs=2",
            "split.fractions=[0.34,0.33,0.33]", "logger=none", f"hydra.run.dir={tmp_path / 'enc'}")
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "excluding 1 of 12 models" in out and bad in out and "non-finite" in out, out[-3000:]
    df = pd.read_csv(tmp_path / "enc" / "results.csv")
    assert math.isfinite(float(df.loc[0, "test/tau"])), df.to_string()

    r = cli("train_generator", f"zoo.path={zoo}", "trainer.max_steps=10", "generator.denoiser.hidden=32",
            "generator.denoiser.depth=1", "spread.every_n_steps=5", "spread.n=4", *QUIET,
            f"hydra.run.dir={tmp_path / 'gen'}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "excluding 1 of 12 nets" in r.stdout + r.stderr and bad in r.stdout + r.stderr
    recorded = json.loads((tmp_path / "gen" / "generator.json").read_text())["zoo"]
    assert bad not in recorded["train_ids"] + recorded["val_ids"] and len(recorded["train_ids"]) == 11


def test_evaluate_excludes_a_nan_training_net_and_refuses_when_too_few_are_left(flow_run, tiny_zoo, tmp_path):
    gen = tmp_path / "gen"
    r = cli("sample", f"run={flow_run}", "n=6", f"zoo.path={gen}", f"hydra.run.dir={tmp_path / 's'}")
    assert r.returncode == 0, r.stderr[-3000:]
    ref = tmp_path / "ref"
    shutil.copytree(tiny_zoo, ref)
    ids = Zoo(ref).ids
    poison(ref, ids[1])
    args = [f"zoo.path={gen}", f"reference={ref}", "baselines.average.ks=[2]", "novelty.top_k=1"]
    r = cli("evaluate", *args, f"out={tmp_path / 'report'}", f"hydra.run.dir={tmp_path / 'e'}")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "excluding 1 of 4 training checkpoints" in r.stdout + r.stderr and ids[1] in r.stdout + r.stderr
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["info"]["n_reference"] == 3 and summary["info"]["n_generated"] == 6

    for m in ids[2:]:
        poison(ref, m)
    line = one_line_error(cli("evaluate", *args, f"out={tmp_path / 'report2'}", f"hydra.run.dir={tmp_path / 'e2'}"))
    assert "non-finite" in line and "at least 2" in line and str(ref) in line, line


# ---- an epoch the zoo does not have ----------------------------------------------------------------------------
def test_an_epoch_the_zoo_lacks_is_one_line_in_every_app(flow_run, tiny_zoo, tmp_path):
    for app, args, key in [
        ("train_encoder", [f"zoo.path={tiny_zoo}", "zoo.epoch=99", "encoder=flat", "logger=none"], "zoo.epoch=99"),
        ("train_generator", [f"zoo.path={tiny_zoo}", "zoo.epoch=99", *QUIET], "zoo.epoch=99"),
    ]:
        line = one_line_error(cli(app, *args, f"hydra.run.dir={tmp_path / app}"))
        assert key in line and "epochs available: 0, 1, 2" in line, line
    gen = tmp_path / "gen"
    r = cli("sample", f"run={flow_run}", "n=3", f"zoo.path={gen}", f"hydra.run.dir={tmp_path / 's'}")
    assert r.returncode == 0, r.stderr[-3000:]
    for extra, key, have in [("epoch=99", "epoch=99", "epochs available: 0 "),
                             ("reference_epoch=99", "reference_epoch=99", "epochs available: 0, 1, 2")]:
        line = one_line_error(cli("evaluate", f"zoo.path={gen}", f"reference={tiny_zoo}", extra,
                                  f"out={tmp_path / 'report'}", f"hydra.run.dir={tmp_path / 'e'}"))
        assert line.startswith(f"error: {key}:") and have in line, line
    assert not (tmp_path / "report").exists()
