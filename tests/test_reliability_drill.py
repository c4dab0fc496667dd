"""Fault drill (reduced) and concurrency: real wsl-zoo processes, killed with SIGKILL and rerun.

The full drill (random kill moments, several rounds, landscape and sample) is
scripts/fault_drill.py; here a fixed plan hits the two windows that matter most: the index merge
after a finished job committed its shard, and a checkpoint write of the next job.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from wsl.zoo import Zoo
from wsl.zoo.verify import verify_zoo

SWEEP = ["net.width=4,8", "population.size=2", "train.epochs=2", "train.batch_size=64"]


def _drill():
    spec = importlib.util.spec_from_file_location("fault_drill", ROOT / "scripts" / "fault_drill.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_killed_multirun_loses_nothing_and_retrains_nothing(tmp_path):
    drill = _drill()
    # kill 1: inside the index merge after the first job committed its shard (index never written);
    # kill 2: inside the 2nd checkpoint write of the second job (the first job is done: it is skipped)
    stats = drill.drill_zoo(tmp_path, rounds=1, sweep=SWEEP, reference=False,
                            plan_fn=lambda rnd: [("index", 1), ("checkpoint", 2)])
    report = "\n".join(stats.lines())
    assert dict(stats.kills) == {"index": 1, "checkpoint": 1}, report
    assert stats.in_window == 2, report  # both kills landed between temp file and rename
    assert stats.runs == 3 and stats.rounds == 1, report
    assert stats.protected == 2, report  # the first job's models were at risk of a retrain
    assert (stats.expected, stats.final) == (4, 4), report
    assert stats.lost == stats.redone == stats.duplicated == stats.missing == 0, report
    assert stats.checksum_failures == stats.visible_broken == stats.verify_errors == 0, report
    assert stats.verify_warnings == 0, report  # the rerun's commit removed the killed write's temp file
    assert stats.ok


def _run_zoo(zoo, width: int, log, env_extra: dict) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", WSL_FAULT_LOG=str(log), **env_extra)
    args = [f"zoo.path={zoo}", f"net.width={width}", "population.size=2", "train.epochs=1", "train.batch_size=64",
            "logger=none", "progress_refresh_rate=0", "trainer.accelerator=cpu",
            f"hydra.run.dir={zoo.parent / f'run{width}'}"]
    return subprocess.Popen([sys.executable, "-m", "wsl.apps.zoo", *args], cwd=zoo.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_parallel_jobs_commit_and_merge_into_one_consistent_index(tmp_path):
    """Two jobs of one sweep as parallel workers; their commits and merges are held open so they
    collide. The zoo lock must serialize each commit + merge, and the index must hold every model."""
    zoo = tmp_path / "zoo"
    log = tmp_path / "events.log"
    hold = {"WSL_FAULT_DELAY": "shard=0.5,index=0.5"}
    procs = [_run_zoo(zoo, w, log, hold) for w in (4, 8)]
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-3000:]
    events = [ln.split() for ln in log.read_text().splitlines()]
    commits = [(k, pid) for k, pid in events if k in ("shard", "index", "lock-request")]
    pids = {pid for _, pid in commits}
    assert len(pids) == 2
    # critical sections never interleave: after a job's shard write, the next index write is its own
    for i, (kind, pid) in enumerate(commits):
        if kind == "shard":
            nxt = next((c for c in commits[i + 1:] if c[0] in ("shard", "index")), None)
            assert nxt == ("index", pid), f"commit of {pid} interleaved: {commits}"
    z = Zoo(zoo)
    assert len(z.ids) == len(set(z.ids)) == 4
    assert sorted(z.table().width) == [4, 4, 8, 8]
    assert z.attrs["n_jobs"] == 2
    assert verify_zoo(zoo) == []


def _run_drill(tmp_path, apps: str) -> str:
    t = time.time()
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "fault_drill.py"), "--rounds", "3", "--kills", "4",
                        "--apps", apps, "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=5400,
                       cwd=ROOT)
    print(p.stdout, f"({time.time() - t:.0f} s)")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "PASS" in p.stdout, p.stdout
    return p.stdout


@pytest.mark.slow
def test_full_fault_drill_zoo_and_landscape(tmp_path):
    """The drill as the README reports it: random moments, 3 rounds, compared with a fault-free run."""
    out = _run_drill(tmp_path, "zoo,landscape")
    assert out.count("lost 0, redone needlessly 0") == 2, out


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="wsl-sample samples and rewrites every net again when rerun after a kill "
                                       "that came after its shard commit (it does not skip finished ids)")
def test_full_fault_drill_sample(tmp_path):
    out = _run_drill(tmp_path, "sample")
    assert "[sample]" in out and out.count("lost 0, redone needlessly 0") == 2, out
