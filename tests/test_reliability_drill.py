"""Fault drill (reduced) and concurrency: real wsl-zoo, wsl-landscape and wsl-sample processes, killed
with SIGKILL and rerun.

The full drill (random kill moments, several rounds) is scripts/fault_drill.py; here fixed plans hit
the windows that matter most: an index merge after a commit (the work is on disk, the index does not
show it yet: the rerun must count it as done), and a write in progress (its temp file is complete but not
renamed: the rerun must redo exactly that and nothing before it).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import ROOT, compose_cfg, typed_gen
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
    drill.HOLD = 0.6
    # one kill, inside the index merge after the first job committed its shard: its models are on disk
    # but the index does not show them; the rerun must skip that job (no retrain) and train the second
    stats = drill.drill_zoo(tmp_path, rounds=1, sweep=SWEEP, reference=False, plan_fn=lambda rnd: [("index", 1)])
    report = "\n".join(stats.lines())
    assert dict(stats.kills) == {"index": 1} and stats.in_window == 1, report
    assert stats.runs == 2 and stats.rounds == 1, report
    assert stats.protected == 2, report  # the first job's models were at risk of a retrain
    assert (stats.expected, stats.final) == (4, 4), report
    assert stats.lost == stats.redone == stats.duplicated == stats.missing == 0, report
    assert stats.checksum_failures == stats.visible_broken == stats.verify_errors == 0, report
    assert stats.verify_warnings == 0, report  # the rerun's merge removed the killed write's temp file
    assert stats.ok


@pytest.mark.slow
def test_killed_multirun_twice_incl_checkpoint_write(tmp_path):
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


def _clean_apps(out: str) -> list[str]:
    """Apps whose drill line reports nothing lost and nothing redone (not the TOTAL line)."""
    return sorted(line.split("]")[0].strip("[ ") for line in out.splitlines()
                  if line.lstrip().startswith("[") and "lost 0, redone needlessly 0" in line)


def _run_drill(tmp_path, apps: str) -> str:
    t = time.time()
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "fault_drill.py"), "--rounds", "3", "--kills", "4",
                        "--apps", apps, "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=5400,
                       cwd=ROOT)
    print(p.stdout, f"({time.time() - t:.0f} s)")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "PASS" in p.stdout, p.stdout
    return p.stdout


# metrics of every kind the landscape drill meets: per model (hessian_trace), per cell (cka), derived (phase)
LANDSCAPE = ["landscape.metrics=[hessian_trace,cka]", "landscape.chunk_size=1", "landscape.num_samples=64",
             "landscape.hessian_trace.samples=4", "landscape.hessian_trace.min_samples=4"]


def test_killed_landscape_resumes_without_recomputing(tiny_zoo, tmp_path):
    from wsl.apps.landscape import typed_config
    from wsl.landscape import annotate_zoo

    drill = _drill()
    drill.HOLD = 0.6  # seconds a targeted write window is held open (the drill polls every 20 ms)
    ref = tmp_path / "reference"  # the same metrics, computed without faults (in this process: faster)
    shutil.copytree(tiny_zoo, ref)
    annotate_zoo(ref, typed_config(compose_cfg("landscape", [f"zoo.path={ref}", *LANDSCAPE])).landscape)
    # run 1: killed inside the 2nd annotation write (the 2nd model's hessian_trace row: redone by run 2;
    # the 1st row is in annotations/ only: the index is rebuilt once per run, at its end);
    # run 2: killed inside its 2nd and last index merge (start-up merge, then every row committed to
    # annotations/ and the end-of-run merge: the index shows none of run 2's rows, and run 3 must
    # compute nothing again); run 3 finishes
    plan = {0: ("annotation", 2), 1: ("index", 2)}
    stats = drill.drill_landscape(tmp_path / "drill", tiny_zoo, rounds=1, args=LANDSCAPE, reference=ref,
                                  plan_fn=lambda rnd, attempt: plan.get(attempt))
    report = "\n".join(stats.lines())
    assert dict(stats.kills) == {"annotation": 1, "index": 1} and stats.in_window == 2, report
    assert stats.runs == 3 and stats.protected == 3 * 4, report  # every row was committed before the 2nd kill
    assert stats.expected == stats.final == 3 * 4, report  # hessian_trace, cka, phase x 4 models
    assert stats.lost == stats.redone == stats.duplicated == stats.missing == 0, report
    assert stats.reference_mismatches == 0 and stats.max_weight_diff == 0.0, report  # same values, bit for bit
    assert stats.visible_broken == stats.verify_errors == stats.verify_warnings == 0, report
    assert stats.ok


@pytest.fixture(scope="module")
def tiny_generator(tiny_zoo, tmp_path_factory):
    from wsl.generators.train import train_generator

    run_dir = tmp_path_factory.mktemp("drill-gen") / "generator"
    train_generator(typed_gen("train_generator", [f"zoo.path={tiny_zoo}", *_drill().GENERATOR_ARGS[1:]]), run_dir)
    return run_dir


def test_killed_sample_resumes_without_drawing_twice(tiny_generator, tmp_path):
    from wsl.generators.sample import sample_zoo

    drill = _drill()
    drill.HOLD = 0.6
    n, batch = 6, 2  # three batches, each committed (shard + index) once written
    ref = tmp_path / "reference"  # an uninterrupted draw with the same seed
    sample_zoo(typed_gen("sample", [f"run={tiny_generator}", f"n={n}", f"batch_size={batch}", f"zoo.path={ref}",
                                    "threads=1", "logger=none"]))
    # run 1: killed inside the 2nd shard commit (nets 2-3 written, not committed: run 2 draws them again);
    # run 2: killed inside its first index merge (nets 0-3 in the shard, the index shows 0-1: run 3 must
    # skip 0-3 and draw only 4-5); run 3 finishes
    plan = {0: ("shard", 2), 1: ("index", 1)}
    stats = drill.drill_sample(tmp_path / "drill", None, rounds=1, n=n, batch_size=batch, run_dir=tiny_generator,
                               reference=ref, plan_fn=lambda rnd, attempt: plan.get(attempt))
    report = "\n".join(stats.lines())
    assert dict(stats.kills) == {"shard": 1, "index": 1} and stats.in_window == 2, report
    assert stats.runs == 3 and stats.protected == 4, report
    assert (stats.expected, stats.final) == (n, n), report
    assert stats.lost == stats.redone == stats.duplicated == stats.missing == 0, report
    assert stats.reference_mismatches == 0 and stats.max_weight_diff == 0.0, report  # the same nets, bit for bit
    assert stats.checksum_failures == stats.visible_broken == stats.verify_errors == stats.verify_warnings == 0, report
    assert stats.ok


@pytest.mark.slow
def test_full_fault_drill_zoo_and_landscape(tmp_path):
    """The drill as the README reports it: random moments, 3 rounds, compared with a fault-free run."""
    out = _run_drill(tmp_path, "zoo,landscape")
    assert _clean_apps(out) == ["landscape", "zoo"], out


@pytest.mark.slow
def test_full_fault_drill_sample(tmp_path):
    out = _run_drill(tmp_path, "sample")
    assert _clean_apps(out) == ["sample", "zoo"], out  # the sampler needs a zoo: drilled first


def test_killed_evaluate_keeps_the_old_report_or_the_new_one(tiny_zoo, tmp_path):
    drill = _drill()
    drill.HOLD = 0.6
    gen = tmp_path / "generated"  # a copy plays the generated zoo: every net 'memorized', which is fine here
    shutil.copytree(tiny_zoo, gen)
    # run 1: killed inside the swap of its report into place (none there yet: the directory must stay absent);
    # run 2 finishes; run 3: killed inside the swap that would replace run 2's report (that report must stay,
    # byte for byte); run 4 finishes, replaces it, and removes the killed runs' temp directories
    plan = [("report", 1), None, ("report", 1), None]
    stats = drill.drill_report(tmp_path / "drill", gen, tiny_zoo, rounds=1, plan_fn=lambda rnd: plan,
                               fault_free_run=False)
    report = "\n".join(stats.lines())
    assert dict(stats.kills) == {"report": 2} and stats.in_window == 2, report
    assert stats.runs == 4 and stats.protected == 2, report
    assert stats.expected == stats.final == len(drill.REPORT_FILES), report
    assert stats.lost == stats.missing == stats.visible_broken == stats.litter == 0, report
    assert stats.reference_mismatches == 0, report  # the tables of run 4 equal run 2's
    assert stats.ok


def test_killed_plot_leaves_every_file_complete(tiny_zoo, tmp_path):
    drill = _drill()
    drill.HOLD = 0.6
    # run 1: killed inside its 2nd file write (the cell table is in place, the first figure is a finished temp
    # file); run 2: killed inside its 4th (three files in place: they must stay complete); run 3 finishes
    plan = [("plot", 2), ("plot", 4), None]
    stats = drill.drill_plot(tmp_path / "drill", tiny_zoo, rounds=1, plan_fn=lambda rnd: plan)
    report = "\n".join(stats.lines())
    assert dict(stats.kills) == {"plot": 2} and stats.in_window == 2, report
    assert stats.runs == 3 and stats.protected >= 1, report
    assert stats.expected == stats.final >= 4, report  # the cell table, train_loss, test_acc, phase (+ marker)
    assert stats.lost == stats.missing == stats.visible_broken == stats.litter == 0, report
    assert stats.reference_mismatches == 0, report  # the same bytes as a fault-free run
    assert stats.ok
