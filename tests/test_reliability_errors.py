"""One line, exit status 2, nothing left behind: errors that used to end in a traceback (exit 1), a
crash, a committed but wrong zoo, or an empty run directory.

Every case runs the real console scripts in a subprocess, with the test's tmp_path as the working
directory, and checks: exit status 2, exactly one stderr line starting with `error:` that names the
key (or file), no `runs/` directory and no zoo left behind. Full disks and read-only targets are real:
a small tmpfs or a read-only bind mount in a private mount namespace (`unshare -m`; skipped where
the machine does not allow it).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# small and quick: what the old code trained before failing
TINY = ["net.width=8", "population.size=2", "train.epochs=1", "logger=none", "progress_refresh_rate=0",
        "trainer.accelerator=cpu"]
LIGHTNING_INFO = re.compile(r"^INFO: ")  # Lightning's own lines during a training that then fails


def script(app: str) -> str:
    return str(Path(sys.executable).with_name(f"wsl-{app}"))


def env() -> dict:
    return dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def run_app(app: str, *args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([script(app), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env())


def assert_one_line(p: subprocess.CompletedProcess, pattern: str, cwd: Path, trained: bool = False) -> str:
    """Exit 2, one `error:` line naming `pattern`, no traceback, no runs/ left in `cwd`.
    `trained`: the job trained before the error, so Lightning's INFO lines may precede it."""
    err = p.stderr.strip()
    assert p.returncode == 2, f"exit status {p.returncode}:\n{err[-3000:]}"
    lines = [ln for ln in err.splitlines() if not (trained and LIGHTNING_INFO.match(ln))]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"not one line:\n{err[-3000:]}"
    assert re.search(pattern, lines[0]), f"the error does not name {pattern!r}: {lines[0]}"
    assert not (cwd / "runs").exists(), f"left {sorted(str(q) for q in (cwd / 'runs').rglob('*'))}"
    return lines[0]


def _can_mount() -> bool:
    if not shutil.which("unshare") or not shutil.which("mount"):
        return False
    p = subprocess.run(["unshare", "-m", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d "
                        "&& umount $d; rc=$?; rmdir $d; exit $rc"], capture_output=True)
    return p.returncode == 0


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs unshare -m and mount (a private mount namespace)")


def run_in_mount_ns(setup: str, app: str, *args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`setup` (shell, e.g. a tmpfs or read-only bind mount) then the app, in a private mount namespace:
    nothing is mounted outside this one process tree."""
    cmd = f"{setup} && exec {shlex.join([script(app), *args])}"
    return subprocess.run(["unshare", "-m", "sh", "-c", cmd], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env())


def tree(root: Path) -> dict:
    """Every path under root with what a write would change (inode, size, mtime)."""
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


# ------------------------------------------------------------------------------------------ sizes
def test_net_too_large_for_memory_is_refused_naming_the_key(tmp_path):
    """net.width=1e9 used to die allocating 256 GB (traceback): the parameter count times the
    population is checked against the machine's memory before anything is built."""
    for bad, key in (("net.width=1000000000", r"net\.width"), ("net.depth=1000000000", r"net\.depth"),
                     ("population.size=1000000000", r"population\.size")):
        p = run_app("zoo", "zoo.path=z", *TINY, bad, cwd=tmp_path)
        line = assert_one_line(p, key, tmp_path)
        assert "memory" in line
        assert not (tmp_path / "z").exists()


# ------------------------------------------------------------------------------------------ zoo.path
def test_zoo_path_that_is_a_file_or_cannot_be_created_stops_before_training(tmp_path):
    """zoo.path=<a file> used to train the whole population and then die with NotADirectoryError."""
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    for path in ("notes.txt", "notes.txt/zoo"):
        p = run_app("zoo", f"zoo.path={path}", *TINY, cwd=tmp_path)
        line = assert_one_line(p, r"zoo\.path=notes\.txt", tmp_path)
        assert "a file" in line
        assert "GPU available" not in p.stderr, "it trained before failing"
    assert f.read_text() == "mine" and sorted(q.name for q in tmp_path.iterdir()) == ["notes.txt"]


@needs_mount
def test_zoo_path_under_a_read_only_directory_stops_before_training(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    q = shlex.quote(str(ro))
    setup = f"mount --bind {q} {q} && mount -o remount,bind,ro {q}"
    p = run_in_mount_ns(setup, "zoo", "zoo.path=ro/sub/zoo", *TINY, cwd=tmp_path)
    line = assert_one_line(p, r"zoo\.path=ro/sub/zoo", tmp_path)
    assert "not writable" in line and "GPU available" not in p.stderr
    assert not list(ro.iterdir())


# ------------------------------------------------------------------------------------------ devices
def test_trainer_devices_zero_is_refused(tmp_path):
    p = run_app("zoo", "zoo.path=z", *TINY, "trainer.devices=0", cwd=tmp_path)
    assert_one_line(p, r"trainer\.devices", tmp_path)
    assert not (tmp_path / "z").exists()


def test_gpu_asked_for_on_a_machine_without_one_is_refused(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    for acc in ("gpu", "cuda"):
        p = run_app("zoo", "zoo.path=z", *TINY, f"trainer.accelerator={acc}", cwd=tmp_path)
        assert_one_line(p, rf"trainer\.accelerator={acc}", tmp_path)
    p = run_app("train-encoder", "zoo.path=z", "trainer.accelerator=gpu", cwd=tmp_path)
    assert_one_line(p, r"trainer\.accelerator=gpu", tmp_path)
    p = run_app("sample", "run=r", "zoo.path=g", "device=cuda", cwd=tmp_path)
    assert_one_line(p, r"\bdevice=cuda\b", tmp_path)
    assert not any((tmp_path / d).exists() for d in ("z", "g"))


# ------------------------------------------------------------------------------------------ seeds
def test_seed_out_of_range_is_refused_before_training(tmp_path):
    """A seed too large for the zoo's int64 hyperparameter columns used to fail at commit, after training."""
    p = run_app("zoo", "zoo.path=z", *TINY, "population.seed=100000000000000000000000", cwd=tmp_path)
    assert_one_line(p, r"population\.seed", tmp_path)
    assert not (tmp_path / "z").exists()


def test_job_config_with_a_non_integer_seed_is_one_line(tmp_path, tiny_zoo):
    """A zoo whose stored job config holds split_seed 1.5 (a zoo is untrusted input) made
    wsl-landscape die in numpy's SeedSequence: the reader now names the file and the key."""
    import h5py

    from wsl.zoo.table import seal_file

    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_zoo, zoo)
    for f in [zoo / "index.h5", *(zoo / "shards").glob("*.h5")]:
        with h5py.File(f, "r+") as h:
            configs = [json.loads(c) for c in h["jobs/config"].asstr()[()]]
            for c in configs:
                c["dataset"]["split_seed"] = 1.5
            del h["jobs/config"]
            h.create_dataset("jobs/config", data=[json.dumps(c) for c in configs], dtype=h5py.string_dtype())
        seal_file(f)  # a consistent file: the content checksums would refuse the edit before the seed is read
    before = tree(zoo)
    work = tmp_path / "work"
    work.mkdir()
    p = run_app("landscape", f"zoo.path={zoo}", "landscape=basic", "landscape.num_samples=16", cwd=work)
    assert_one_line(p, r"index\.h5.*dataset\.split_seed", work)
    # (wsl-landscape brings the index up to date from the shards when it stops: same content, new file)
    after = tree(zoo)
    assert {k: v for k, v in after.items() if k != "index.h5"} == {k: v for k, v in before.items() if k != "index.h5"}


# ------------------------------------------------------------------------------------------ writes
@needs_mount
@pytest.mark.parametrize("size", ["4k", "20k", "40k"])  # the tiny zoo is ~86 kB: a checkpoint, the shard, the index
def test_full_disk_is_one_line_naming_the_file(tmp_path, size):
    """ENOSPC while writing a checkpoint, the shard or the index (by the size of the disk): one line
    naming the file, exit 2, and what is on disk is consistent (no temp file looks complete). The
    HDF5 library itself used to print pages of errors and, for the shard, crash with SIGSEGV."""
    disk = tmp_path / "disk"
    disk.mkdir()
    p = run_in_mount_ns(f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(disk))}",
                        "zoo", "zoo.path=disk/z", *TINY, cwd=tmp_path)
    line = assert_one_line(p, r"disk/z/\S+(safetensors|\.h5): cannot write: no space left", tmp_path, trained=True)
    assert "\\x" not in line


@needs_mount
def test_read_only_zoo_rerun_with_nothing_to_train_writes_nothing(tmp_path, tiny_zoo):
    """A no-op rerun used to take the lock and re-merge the index: on a read-only zoo, a traceback."""
    from conftest import TINY_ZOO

    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_zoo, zoo)
    before = tree(zoo)
    q = shlex.quote(str(zoo))
    p = run_in_mount_ns(f"mount --bind {q} {q} && mount -o remount,bind,ro {q}", "zoo", f"zoo.path={zoo}",
                        *TINY_ZOO, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "nothing to train" in p.stderr + p.stdout
    assert tree(zoo) == before
    # more members: there is something to train, and the read-only zoo is named before any training
    work = tmp_path / "work"
    work.mkdir()
    p = run_in_mount_ns(f"mount --bind {q} {q} && mount -o remount,bind,ro {q}", "zoo", f"zoo.path={zoo}",
                        *TINY_ZOO, "population.size=8", cwd=work)
    assert_one_line(p, r"zoo\.path=\S+ is read-only", work)
    assert "GPU available" not in p.stderr, "it trained before failing"
    assert tree(zoo) == before


def test_no_op_rerun_leaves_the_index_untouched(tmp_path, tiny_zoo):
    """The same without a mount namespace: the index file is not rewritten (same inode and mtime)."""
    from conftest import TINY_ZOO

    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_zoo, zoo)
    before = tree(zoo)
    p = run_app("zoo", f"zoo.path={zoo}", *TINY_ZOO, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert tree(zoo) == before


# ------------------------------------------------------------------------------------------ values
@pytest.mark.parametrize("bad, key", [("train.lr=nan", r"train\.lr"), ("train.lr=inf", r"train\.lr"),
                                      ("train.lr=[0.1,nan]", r"train\.lr"), ("train.weight_decay=nan", r"weight_decay"),
                                      ("train.momentum=nan", r"train\.momentum"), ("train.eps=inf", r"train\.eps")])
def test_non_finite_hyperparameters_are_refused(tmp_path, bad, key):
    """train.lr=nan used to commit a zoo of diverged nets with exit 0."""
    p = run_app("zoo", "zoo.path=z", *TINY, bad, cwd=tmp_path)
    assert_one_line(p, key, tmp_path)
    assert not (tmp_path / "z").exists()


@pytest.mark.parametrize("bad, key", [("+trainer.max_steps=3", r"trainer\.max_steps.*train\.epochs"),
                                      ("+trainer.limit_train_batches=0.1", r"trainer\.limit_train_batches"),
                                      ("+trainer.max_epochs=2", r"trainer\.max_epochs.*train\.epochs")])
def test_trainer_overrides_that_change_what_is_trained_are_refused(tmp_path, bad, key):
    """+trainer.max_steps=3 used to commit nets as `trained` with fewer epochs than the zoo records
    (and the rerun then found nothing to train); +trainer.max_epochs=2 crashed."""
    p = run_app("zoo", "zoo.path=z", *TINY, bad, cwd=tmp_path)
    assert_one_line(p, key, tmp_path)
    assert not (tmp_path / "z").exists()


# ------------------------------------------------------------------------------------------ run dirs
@pytest.mark.parametrize("app, args", [("plot", ["zoo.path=missing"]), ("train-encoder", ["zoo.path=missing"]),
                                       ("landscape", ["zoo.path=missing"]),
                                       ("sample", ["run=missing", "zoo.path=gen"]),
                                       ("evaluate", ["zoo.path=missing", "reference=missing"])])
def test_a_failed_app_leaves_no_run_directory(tmp_path, app, args):
    """Errors raised in an app's body used to leave runs/<app>/<date>/<time>/ holding only Hydra's files."""
    p = run_app(app, *args, cwd=tmp_path)
    assert_one_line(p, r"missing", tmp_path)
    assert not list(tmp_path.iterdir())


def test_a_run_directory_holding_anything_else_is_kept(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep")
    p = run_app("plot", "zoo.path=missing", f"hydra.run.dir={mine}", cwd=tmp_path)
    assert p.returncode == 2
    assert (mine / "thesis.tex").read_text() == "keep"
    empty = tmp_path / "empty"  # a directory that existed before the run is not the run's to remove
    empty.mkdir()
    p = run_app("plot", "zoo.path=missing", f"hydra.run.dir={empty}", cwd=tmp_path)
    assert p.returncode == 2 and empty.is_dir()


# ------------------------------------------------------------------------------------------ printing
@pytest.mark.parametrize("char", ["\n", "\u202e", "\x1b[2K"])
def test_untrusted_strings_in_errors_are_escaped(tmp_path, char):
    """A newline or U+202E in a path used to split or reorder the one error line."""
    name = f"a{char}b"
    for app, args in (("plot", [f"zoo.path='{name}'"]), ("zoo", [f"zoo.path='notes{char}/z'", *TINY])):
        if app == "zoo":
            (tmp_path / f"notes{char}").write_text("a file")
        p = run_app(app, *args, cwd=tmp_path)
        line = assert_one_line(p, r"a\\|notes\\", tmp_path)
        err = p.stderr.strip()
        assert char not in err and "\x1b" not in err and "\u202e" not in err, repr(line)


# ------------------------------------------------------------------------------------------ overrides
def test_mapping_overrides_of_keys_that_default_to_null_compose(tmp_path):
    """condition={val_acc:0.9} (the form wsl-sample's docstring shows) and zoo.filter={width:999} used to
    answer 'unknown config key' while listing that very key as valid; they compose now, so the error
    is the next real one (the run and zoo do not exist)."""
    from conftest import compose_cfg

    p = run_app("sample", "run=missing", "zoo.path=gen", "condition={val_acc:0.9}", cwd=tmp_path)
    line = assert_one_line(p, r"run=missing", tmp_path)
    assert "unknown config key" not in line
    p = run_app("train-generator", "zoo.path=missing", "zoo.filter={width:999}", cwd=tmp_path)
    line = assert_one_line(p, r"missing", tmp_path)
    assert "unknown config key" not in line
    assert compose_cfg("sample", ["run=r", "zoo.path=g", "condition={val_acc:0.9}"]).condition.val_acc == 0.9
    assert compose_cfg("train_generator", ["zoo.path=z", "zoo.filter={width:999}"]).zoo.filter.width == 999
    assert compose_cfg("train_generator", ["zoo.path=z", "+zoo.filter.width=8"]).zoo.filter.width == 8
