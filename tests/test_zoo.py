"""The zoo format, end to end: written by wsl-zoo, read back with h5py + safetensors alone."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import TINY_ZOO, make_zoo, run_cli, typed_zoo, ROOT
from wsl.errors import ConfigError, ZooFormatError
from wsl.nets import build_net
from wsl.zoo import ShardWriter, Zoo, merge_index
from wsl.zoo.table import seal_file


def test_format_is_readable_with_h5py_and_safetensors_only(tiny_zoo):
    with h5py.File(tiny_zoo / "index.h5", "r") as f:
        assert f.attrs["format"] == "wsl-zoo" and f.attrs["format_version"] == 2
        assert len(f.attrs["content_sha256"]) == 64 and "/metrics/test_acc" in f["integrity/path"].asstr()[()]
        config = json.loads(f.attrs["config"])
        assert config["net"]["width"] == 8 and config["dataset"]["name"] == "digits"
        ids = f["models/model_id"].asstr()[()]
        assert len(ids) == 4 and len(set(ids)) == 4
        assert set(f["models/status"].asstr()[()]) == {"trained"}
        hp = f["models/hparams"]
        for col in ("lr", "weight_decay", "width", "depth", "batch_size", "seed_init", "seed_data", "subset_seed",
                    "train_fraction", "optimizer", "dataset"):
            assert col in hp, col
        assert len(set(hp["seed_init"][()])) == 4
        epochs = f["metrics/epochs"][()]
        assert list(epochs) == [0, 1, 2]
        for m in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"):
            assert f[f"metrics/{m}"].shape == (4, 3) and np.isfinite(f[f"metrics/{m}"][()]).all()
        assert (f["metrics/test_acc"][:, -1] > f["metrics/test_acc"][:, 0]).all()  # training helped
        paths = f["checkpoints/path"].asstr()[()]
        shas = f["checkpoints/sha256"].asstr()[()]
        ck_epochs = f["checkpoints/epoch"][()]
    assert (ck_epochs == [0, 1, 2]).all()
    import hashlib

    for i, mid in enumerate(ids):
        for j in range(3):
            p = tiny_zoo / paths[i, j]
            assert hashlib.sha256(p.read_bytes()).hexdigest() == shas[i, j]
            with safe_open(str(p), "pt") as sf:
                meta = sf.metadata()
            assert meta["model_id"] == mid and int(meta["epoch"]) == ck_epochs[i, j]
            arch = json.loads(meta["arch"])
            assert arch["name"] == "mlp" and arch["width"] == 8
    # the final checkpoint reproduces the recorded test accuracy
    z = Zoo(tiny_zoo)
    data = z.training_data(ids[0])
    net = build_net(arch)
    net.load_state_dict(load_file(str(tiny_zoo / paths[0, -1])))
    acc = (net(data.x_test).argmax(1) == data.y_test).double().mean().item()
    assert acc == pytest.approx(z.history(ids[0])["test_acc"][-1], abs=1e-9)


def test_reader_api(tiny_zoo):
    z = Zoo(tiny_zoo)
    t = z.table()
    assert len(t) == 4 and (t.status == "trained").all() and t.test_acc.between(0, 1).all()
    assert z.filter(status="trained", width=8) == z.ids
    assert z.filter(lr=lambda v: v > 1) == []
    with pytest.raises(ConfigError, match="not a column"):
        z.filter(colour="red")
    w, layout = z.weights()
    assert w.shape == (4, layout.numel) and layout.numel == 8 * 64 + 8 + 10 * 8 + 10
    sd = layout.unflatten(w[2])
    for k, v in z.state_dict(z.ids[2]).items():
        assert torch.equal(sd[k], v)
    w0, _ = z.weights(epoch=0)
    assert not torch.equal(w0, w)
    m = z.load_model(z.ids[0])
    assert not m.training
    cells = z.cells()
    assert len(cells) == 1 and sorted(next(iter(cells.values()))) == sorted(z.ids)
    from wsl.zoo import ZooDataset

    ds = ZooDataset(z, properties=("test_acc", "lr"))
    x, y = ds[1]
    assert x.shape == (layout.numel,) and y.shape == (2,)
    with pytest.raises(ConfigError, match="generalization"):
        ZooDataset(z, properties=("generalization",))


def test_split_keeps_seed_replicas_of_a_cell_together(tmp_path):
    root = tmp_path / "z"
    # 4 lrs x 2 seeds in one population: 4 cells of 2 replicas
    make_zoo(root, ["population.size=8", "train.lr=[0.1,0.05,0.02,0.01]", "train.epochs=1"])
    z = Zoo(root)
    assert len(z.cells()) == 4 and all(len(v) == 2 for v in z.cells().values())
    for seed in range(5):
        s = z.split((0.5, 0.25, 0.25), seed=seed)
        assert sorted(s["train"] + s["val"] + s["test"]) == sorted(z.ids)
        where = {m: k for k, ids in s.items() for m in ids}
        for members in z.cells().values():
            assert len({where[m] for m in members}) == 1


def test_rerun_resumes_without_retraining_and_growing_trains_only_new(tmp_path, tiny_zoo):
    root = tmp_path / "z"
    shutil.copytree(tiny_zoo, root)
    before = {p: p.stat().st_mtime_ns for p in (root / "models").rglob("*.safetensors")}
    shard = next((root / "shards").glob("*.h5"))
    shard_mtime = shard.stat().st_mtime_ns
    make_zoo(root)  # identical command: nothing to do
    assert shard.stat().st_mtime_ns == shard_mtime
    assert {p: p.stat().st_mtime_ns for p in before} == before
    make_zoo(root, ["population.size=6"])  # two more seeds: only those are trained
    z = Zoo(root)
    assert len(z) == 6 and len(set(z.ids)) == 6
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert len(list((root / "shards").glob("*.h5"))) == 1


def _commit_job(root, job, n, barrier):
    w = ShardWriter(root, job, config={"job": job}, zoo_name="c")
    for i in range(n):
        mid = f"{job}-m{i}"
        w.write_checkpoint(mid, 0, {"w": torch.full((3,), float(i))}, {"name": "mlp"})
        w.add_model(mid, {"name": "mlp"}, {"i": i, "job": job}, "trained", {"test_acc": [0.5]})
    barrier.wait()  # all processes commit at the same moment
    w.commit()


def test_concurrent_shard_commits_produce_one_consistent_index(tmp_path):
    root = tmp_path / "c"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_commit_job, args=(root, f"job{j}", 5, barrier)) for j in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with h5py.File(root / "index.h5", "r") as f:
        ids = list(f["models/model_id"].asstr()[()])
        jobs = set(f["jobs/job_id"].asstr()[()])
    assert sorted(ids) == sorted(f"job{j}-m{i}" for j in range(4) for i in range(5))
    assert jobs == {f"job{j}" for j in range(4)}
    assert not list(root.rglob("*.tmp"))


def test_killed_run_leaves_nothing_that_looks_complete_and_rerun_completes(tmp_path):
    root = tmp_path / "k"
    args = [f"zoo.path={root}", *TINY_ZOO, "train.epochs=200", "population.size=2"]
    import os

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-m", "wsl.apps.zoo", *args], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not list(root.rglob("epoch_0003.safetensors")):
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert list(root.rglob("epoch_0003.safetensors")), "training never reached epoch 3"
    assert not (root / "index.h5").exists() and not list((root / "shards").glob("*.h5")) if (root / "shards").exists() else True
    with pytest.raises(ZooFormatError, match="index.h5"):
        Zoo(root)
    make_zoo(root, ["population.size=2", "train.epochs=3"])  # a rerun (here shorter) completes the zoo
    z = Zoo(root)
    assert len(z) == 2 and all(z.checkpoint_epochs(m) == [0, 1, 2, 3] for m in z.ids)


def test_bad_overrides_fail_before_any_work_with_one_line(tmp_path):
    from wsl.apps.common import preflight
    from wsl.apps.zoo import typed_config

    cases = {
        "net.widht=3": "unknown config key 'net.widht'; valid keys under net: .*width",
        "dataset=foo": "dataset/foo.*valid: .*digits.*mnist1d",
        "net.width=0": "net.width must be an integer >= 1, got 0",
        "population.size=-1": "population.size must be an integer >= 1, got -1",
        "train.optimizer=rmsprop": "valid: sgd, adam, adamw",
        "dataset.train_fraction=0": r"dataset.train_fraction must be a number in \(0, 1\], got 0",
        "net.width=8,0": "net.width must be an integer >= 1, got 0",  # any job of a sweep
    }
    import re

    for override, pattern in cases.items():
        with pytest.raises(SystemExit) as e:
            import contextlib
            import io

            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                preflight("zoo", typed_config, argv=["-m", f"zoo.path={tmp_path / 'x'}", override])
        assert e.value.code == 2
        msg = err.getvalue().strip()
        assert "\n" not in msg and re.search(pattern, msg), (override, msg)
    assert not (tmp_path / "x").exists()
    # and the real console script, end to end
    p = run_cli("zoo", f"zoo.path={tmp_path / 'y'}", "net.width=0")
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == "error: net.width must be an integer >= 1, got 0"
    assert not (tmp_path / "y").exists()


def _copy(tiny_zoo, tmp_path):
    root = tmp_path / "z"
    shutil.copytree(tiny_zoo, root)
    return root, Zoo(root)


def test_corrupted_checkpoint_and_missing_file_are_named(tmp_path, tiny_zoo):
    root, z = _copy(tiny_zoo, tmp_path)
    mid = z.ids[0]
    path = z.checkpoint_path(mid)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # flip bits inside a tensor
    path.write_bytes(bytes(data))
    with pytest.raises(ZooFormatError, match=f"{path}.*sha256"):
        z.state_dict(mid)
    path.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(ZooFormatError, match=str(path)):
        z.state_dict(mid)
    path.unlink()
    with pytest.raises(ZooFormatError, match=f"{path}.*missing"):
        z.load_model(mid)


def test_untrusted_index_is_refused(tmp_path, tiny_zoo):
    root, _ = _copy(tiny_zoo, tmp_path)
    with pytest.raises(ZooFormatError, match="not a zoo"):
        Zoo(tmp_path)
    for bad in ("../../etc/passwd", "/etc/passwd"):
        with h5py.File(root / "index.h5", "r+") as f:
            paths = f["checkpoints/path"].asstr()[()]
            paths[0, 0] = bad
            del f["checkpoints/path"]
            f.create_dataset("checkpoints/path", data=paths.astype(object), dtype=h5py.string_dtype())
        with pytest.raises(ZooFormatError, match=r"index.h5: /checkpoints/path: content does not match its checksum"):
            Zoo(root)
        seal_file(root / "index.h5")  # a consistent lie: the paths are still refused
        with pytest.raises(ZooFormatError, match="escapes the zoo"):
            Zoo(root)
    shutil.rmtree(root)
    root, _ = _copy(tiny_zoo, tmp_path)
    with h5py.File(root / "index.h5", "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(ZooFormatError, match="format version 99 is newer"):
        Zoo(root)
    (root / "index.h5").write_bytes(b"not hdf5")
    with pytest.raises(ZooFormatError, match="index.h5.*cannot be opened"):
        Zoo(root)
    merge_index(root)  # the index is derived from shards: rebuilding it repairs it
    assert len(Zoo(root)) == 4


def test_a_rerun_with_nothing_to_train_does_not_import_lightning(tiny_zoo, tmp_path):
    """Resumed sweeps rerun finished jobs: those should cost seconds less than Lightning's import."""
    path = tmp_path / "z"
    shutil.copytree(tiny_zoo, path)
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "wsl.apps.zoo", f"zoo.path={path}", *TINY_ZOO,
                        f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "nothing to train" in p.stdout + p.stderr and f"zoo: {path}" in p.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" in imported and "lightning" not in imported


# job ids and stored configs as the wsl-zoo of before typed configs computed them: existing zoos resume
OLD_JOB_IDS = {(): "digits-mlp-w32-d1-bs32-tf1-913279e0",
               ("net=cnn", "dataset=mnist1d", "net.width=4"): "mnist1d-cnn-w4-d3-bs32-tf1-9e6cc414",
               ("experiment=inr_digits",): "digits_inr-siren-w32-d2-bs64-14c46379",
               ("experiment=phase_mlp_digits", "train.batch_size=8"): "digits-mlp-w32-d1-bs8-tf1-24be85ee",
               ("dataset.train_fraction=0.5", "zoo.checkpoint_epochs=[0,2]", "train.lr=[0.1,0.01]"):
                   "digits-mlp-w32-d1-bs32-tf0.5-b3cfa4e1",
               ("landscape=basic",): "digits-mlp-w32-d1-bs32-tf1-913279e0"}
OLD_STORED_DEFAULT = {
    "dataset": {"_target_": "wsl.data.load_dataset", "name": "digits", "root": None, "train_fraction": 1.0,
                "subset_seed": 0, "split_seed": 0, "val_fraction": 0.2, "test_fraction": 0.2},
    "net": {"_target_": "wsl.nets.MLP", "_partial_": True, "width": 32, "depth": 1, "activation": "relu",
            "init": "default"},
    "population": {"size": 8, "seed": 0},
    "train": {"epochs": 10, "batch_size": 32, "lr": 0.05, "weight_decay": 0.0, "optimizer": "sgd", "momentum": 0.9,
              "nesterov": False, "betas": [0.9, 0.999], "eps": 1e-08, "schedule": "cosine", "warmup_epochs": 0,
              "step_epochs": 1, "gamma": 0.1, "eval_batch_size": 4096},
    "landscape": {"metrics": []},
    "zoo": {"name": "quickstart", "path": "/tmp/zz", "checkpoint_every": 1, "checkpoint_epochs": None},
    "progress_refresh_rate": 10,
    "trainer": {"accelerator": "auto", "devices": 1, "enable_model_summary": False}}


def test_job_ids_and_stored_config_are_those_of_existing_zoos():
    from wsl.apps.zoo_job import job_identity, stored_config

    for overrides, job_id in OLD_JOB_IDS.items():
        job = typed_zoo(["zoo.path=/tmp/zz", *overrides])
        assert job_identity(job) == job_id, overrides
    assert stored_config(typed_zoo(["zoo.path=/tmp/zz"])) == OLD_STORED_DEFAULT
