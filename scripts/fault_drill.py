"""Fault drill: SIGKILL wsl jobs at random moments, rerun them, and check that nothing was lost or redone.

    python scripts/fault_drill.py                          # zoo drill, 3 rounds
    python scripts/fault_drill.py --rounds 10 --seed 1 --apps zoo,landscape,sample
    python scripts/fault_drill.py --apps landscape,sample --base-zoo zoos/x --generator runs/train_generator/y
    python scripts/fault_drill.py --apps evaluate,plot --base-zoo zoos/x   # the report and plot writes
    python scripts/fault_drill.py --launcher submitit_local   # parallel workers (hydra-submitit-launcher)

A round builds something from scratch with a real app (wsl-zoo: a multirun `-m net.width=4,8,16`;
wsl-landscape: `landscape=basic` metrics of a copy of a zoo; wsl-sample: n nets drawn from a small
generator, committed batch by batch) and kills the whole process group with SIGKILL up to --kills
times, each at a moment drawn at random:

- training:   a random time after the k-th checkpoint of the run (work in progress, no write pending;
              wsl-landscape: after its k-th annotation commit, reported as "computing"),
- checkpoint, shard, index, annotation: inside that write's rename window, i.e. after the temp file
  is complete and before it replaces the real one. The app passes a hook there
  (wsl.zoo.atomic.fault_point): the drill sets WSL_FAULT_LOG to follow the run and WSL_FAULT_DELAY to
  hold the chosen window open for a moment, and kills at the k-th passage of that kind.

wsl-evaluate and wsl-plot write output directories, not zoos: a report (fault point `report`: the new
report complete in a temporary directory, about to be swapped with the old one) and plot files (`plot`:
a finished temp file before its rename). After every kill the report directory must be absent (before
the first finished run), the previous complete report byte for byte, or a new complete one; every
visible plot file must be complete and none that was complete may vanish; after the last run no temp
file or directory may be left, and the results must equal a fault-free run's.

After every kill it checks that nothing half-written is visible (every model the index lists loads
with its checksum; the index and every annotation file open) and records which models (or annotation
rows) were committed and the inodes of their files. Then it reruns the same command, until a run
finishes. At the end of the round it checks that the result is complete (every expected model or row,
each once, every scheduled epoch), that wsl-verify finds no error, that no committed model or row is
lost, and that none was redone: a model's files are the same inodes, untouched; wsl-sample's log of the
batches it drew names no committed net; wsl-landscape's log of how many rows (cells) of each metric it
is about to compute equals the number not yet committed. Every app is compared with a fault-free run of
the same command: zoo and sample weights, landscape values (rtol 1e-5) and text columns.

Prints, per app: rounds, runs, kills by phase (and how many landed inside their write window), models
(rows) expected / final, lost, redone needlessly, duplicated, missing, checksum failures, visible
half-written models, verify errors / warnings, models (rows) that differ from the fault-free run and
the largest difference.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOLD = 1.5  # seconds a targeted write window is held open (the drill polls every 20 ms)
ZOO_SWEEP = ["net.width=4,8,16", "population.size=2", "train.epochs=3", "train.batch_size=64"]
QUIET = ["logger=none", "progress_refresh_rate=0", "trainer.accelerator=cpu"]


# ---- one run of an app, killed at a chosen moment ------------------------------------------------
@dataclass
class Run:
    rc: int | None  # exit status; None if killed
    phase: str | None  # where it was killed
    in_window: bool  # a kill aimed at a write window found that write's temp file on disk
    seconds: float
    output: str


def _events(log: Path) -> list[str]:
    try:
        return [ln.split()[0] for ln in log.read_text().splitlines() if ln.strip()]
    except FileNotFoundError:
        return []


def _temp_files(root: Path) -> set[Path]:
    return set(root.rglob(".*.tmp")) if root.exists() else set()


def run_app(cmd: list[str], workdir: Path, zoo: Path, target: tuple[str, int] | None, rng: random.Random,
            timeout: float = 900, progress: str = "checkpoint", jitter: float = 1.0) -> Run:
    """Run `cmd` (in its own process group); kill it at `target` = (kind, k): the k-th event of that kind
    ("training": a random moment up to `jitter` seconds after the k-th `progress` event). None: let it finish."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = Path(tempfile.mkstemp(prefix="faults-", suffix=".log", dir=workdir)[1])
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="disabled", WSL_FAULT_LOG=str(log))
    env.pop("WSL_FAULT_DELAY", None)
    if target and target[0] != "training":
        env["WSL_FAULT_DELAY"] = f"{target[0]}={HOLD}"
    before = _temp_files(zoo)
    out_path = log.with_suffix(".out")
    t0 = time.time()
    with open(out_path, "w") as out:
        p = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True)
        phase, kill_at = None, None
        while p.poll() is None:
            if time.time() - t0 > timeout:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                raise RuntimeError(f"{' '.join(cmd)} ran past {timeout}s; output in {out_path}")
            if target and kill_at is None:
                kind, k = target
                seen = Counter(_events(log))
                if kind == "training" and seen[progress] >= k:
                    kill_at = time.time() + rng.uniform(0.0, jitter)
                elif kind != "training" and seen[kind] >= k:
                    kill_at = time.time()
            if kill_at is not None and time.time() >= kill_at:
                os.killpg(p.pid, signal.SIGKILL)  # the whole group: launcher workers die with it
                p.wait()
                phase = target[0]
                break
            time.sleep(0.02)
    seconds = time.time() - t0
    in_window = bool(phase and phase != "training" and _temp_files(zoo) - before)
    output = out_path.read_text(errors="replace")
    return Run(None if phase else p.returncode, phase, in_window, seconds, output)


# ---- what a zoo holds ------------------------------------------------------------------------------
def committed_models(zoo: Path) -> dict[str, dict[str, tuple]]:
    """{model id: {checkpoint path: (inode, mtime_ns, sha256)}} of every model committed to a shard."""
    from wsl.zoo.table import read_table

    out = {}
    for shard in sorted((zoo / "shards").glob("*.h5")) if (zoo / "shards").is_dir() else []:
        for r in read_table(shard).rows:
            files = {}
            for _, rel, sha in r.checkpoints:
                st = (zoo / rel).stat()
                files[rel] = (st.st_ino, st.st_mtime_ns, sha)
            out[r.model_id] = files
    return out


def visible_broken(zoo: Path) -> int:
    """Models the index shows that do not load with a valid checksum (must be 0 at any moment)."""
    from wsl.errors import ZooFormatError
    from wsl.zoo import Zoo

    if not (zoo / "index.h5").exists():
        return 0
    z = Zoo(zoo)  # the index itself is replaced atomically: it must always open
    bad = 0
    for mid in z.ids:
        try:
            for e in z.checkpoint_epochs(mid):
                z.state_dict(mid, e)
        except ZooFormatError:
            bad += 1
    return bad


@dataclass
class Stats:
    app: str
    rounds: int = 0
    runs: int = 0
    kills: Counter = field(default_factory=Counter)
    in_window: int = 0
    expected: int = 0
    final: int = 0
    lost: int = 0
    redone: int = 0
    duplicated: int = 0
    missing: int = 0
    checksum_failures: int = 0
    visible_broken: int = 0
    verify_errors: int = 0
    verify_warnings: int = 0
    protected: int = 0  # models (rows) committed before some kill: the ones a rerun must not redo
    max_weight_diff: float | None = None  # wsl-landscape: largest |value - reference| of a numeric annotation
    reference_mismatches: int = 0  # models (rows) that differ from the fault-free reference run
    litter: int = 0  # wsl-evaluate, wsl-plot: temp files or directories left after the round's last run
    seconds: float = 0.0

    def count_kill(self, run) -> None:
        """A killed run: where the kill landed (a random moment counts as "computing") and whether inside a write."""
        self.kills["computing" if run.phase == "training" else run.phase] += 1
        self.in_window += run.in_window
    notes: list = field(default_factory=list)

    def lines(self) -> list[str]:
        kills = sum(self.kills.values())
        by = ", ".join(f"{k} {v}" for k, v in sorted(self.kills.items())) or "none"
        unit = {"landscape": "rows", "evaluate": "files", "plot": "files"}.get(self.app, "models")
        out = [f"[{self.app}] rounds {self.rounds}, runs {self.runs}, kills {kills} ({by}; "
               f"{self.in_window} inside their write window)",
               f"[{self.app}] {unit} expected {self.expected}, final {self.final}, lost {self.lost}, "
               f"redone needlessly {self.redone} (of {self.protected} committed before a kill), "
               f"duplicated {self.duplicated}, missing {self.missing}",
               f"[{self.app}] checksum failures {self.checksum_failures}, half-written visible {self.visible_broken}, "
               f"verify errors {self.verify_errors}, warnings {self.verify_warnings}"
               + ("" if self.max_weight_diff is None else
                  f", differ from the fault-free reference {self.reference_mismatches} "
                  f"(max |{'value' if self.app == 'landscape' else 'w'} - reference| {self.max_weight_diff:.3g})")
               + f", {self.seconds:.0f} s"]
        if self.app in ("evaluate", "plot"):  # output files, not models: nothing is trained, checksummed or verified
            what = "reports" if self.app == "evaluate" else "files"
            out[1:] = [f"[{self.app}] files expected {self.expected}, final {self.final}, lost {self.lost} (of "
                       f"{self.protected} complete {what} at risk in a later run), missing {self.missing}",
                       f"[{self.app}] half-written visible {self.visible_broken}, differ from the fault-free run "
                       f"{self.reference_mismatches}, temp litter {self.litter}, {self.seconds:.0f} s"]
        out += [f"[{self.app}] note: {n}" for n in self.notes]
        return out

    @property
    def ok(self) -> bool:
        return not (self.lost or self.redone or self.duplicated or self.missing or self.checksum_failures
                    or self.visible_broken or self.verify_errors or self.reference_mismatches or self.litter)


def _choose(rng: random.Random, kinds: dict[str, int]) -> tuple[str, int]:
    kind = rng.choice(sorted(kinds))
    return kind, rng.randint(1, kinds[kind])


def _verify(zoo: Path, stats: Stats) -> None:
    from wsl.zoo.verify import verify_zoo

    problems = verify_zoo(zoo)
    errors = [p for p in problems if p.level == "error"]
    stats.verify_errors += len(errors)
    stats.verify_warnings += len(problems) - len(errors)
    stats.notes += [f"verify: {p}" for p in errors[:5]]


def _drill_models(stats: Stats, cmd, zoo: Path, workdir: Path, rng: random.Random, plan,
                  expected: list[str], epochs: dict[str, list[int]] | None = None, after_run=None,
                  jitter: float = 1.0) -> None:
    """Run `cmd`, killing it at each target of `plan` in turn (a list, or a function (attempt, zoo) -> target,
    None: let the run finish), then once more to the end (each run resumes the last); then check the zoo
    against `expected` model ids. after_run(run, ids committed before it) -> ids it redid needlessly
    (evidence other than rewritten files, e.g. from the app's log)."""
    first_seen: dict[str, dict] = {}
    redone: set[str] = set()
    targets = None if callable(plan) else [*plan, None]
    for attempt in range(10_000):
        target = plan(attempt, zoo) if targets is None else targets[attempt]
        before = set(committed_models(zoo)) if after_run else set()
        run = run_app(cmd, workdir, zoo, target, rng, jitter=jitter)
        stats.runs += 1
        if after_run:
            redone |= after_run(run, before)
        if run.rc is not None:
            if run.rc != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed ({run.rc}):\n{run.output[-3000:]}")
            break
        stats.kills[run.phase] += 1
        stats.in_window += run.in_window
        stats.visible_broken += visible_broken(zoo)
        for mid, files in committed_models(zoo).items():
            first_seen.setdefault(mid, files)
    stats.protected += len(first_seen)
    from wsl.errors import ZooFormatError
    from wsl.zoo import Zoo

    z = Zoo(zoo)
    ids = list(z.ids)
    stats.expected += len(expected)
    stats.final += len(set(ids))
    stats.duplicated += len(ids) - len(set(ids))
    stats.missing += len(set(expected) - set(ids))
    if set(ids) - set(expected):
        stats.notes.append(f"unexpected models: {sorted(set(ids) - set(expected))[:3]}")
    final = committed_models(zoo)
    for mid, files in first_seen.items():
        now = final.get(mid)
        if now is None or mid not in ids:
            stats.lost += 1
        elif now != files:
            redone.add(mid)  # its files were rewritten (new inode): a committed model was trained again
    stats.redone += len(redone)
    if redone:
        stats.notes.append(f"redone: {sorted(redone)[:5]}")
    for mid in ids:
        try:
            for e in z.checkpoint_epochs(mid):
                z.state_dict(mid, e)
        except ZooFormatError as e:
            stats.checksum_failures += 1
            stats.notes.append(str(e))
        if epochs is not None and z.checkpoint_epochs(mid) != epochs.get(mid):
            stats.missing += 1
            stats.notes.append(f"{mid}: epochs {z.checkpoint_epochs(mid)}, expected {epochs.get(mid)}")
    _verify(zoo, stats)


# ---- wsl-zoo -----------------------------------------------------------------------------------------
def zoo_command(zoo: Path, sweep_dir: Path, sweep=ZOO_SWEEP, launcher: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "wsl.apps.zoo", "-m", f"zoo.path={zoo}", *sweep, *QUIET,
           f"hydra.sweep.dir={sweep_dir}"]
    if launcher:
        cmd.append(f"hydra/launcher={launcher}")
    return cmd


def expected_zoo(sweep=ZOO_SWEEP) -> tuple[list[str], dict[str, list[int]]]:
    """Model ids (and checkpoint epochs) a sweep must produce, from its composed configs."""
    from hydra import compose, initialize_config_dir

    from wsl.apps.common import CONF_DIR, _variants
    from wsl.apps.zoo import typed_config
    from wsl.apps.zoo_job import checkpoint_schedule, job_identity
    from wsl.population import make_members

    ids, epochs = [], {}
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        variants = _variants([*sweep, *QUIET])
        for ov in variants:
            cfg = typed_config(compose(config_name="zoo", overrides=[*ov, "zoo.path=x"]))
            job = job_identity(cfg)
            for m in make_members(cfg.population.size, cfg.train.lr, cfg.train.weight_decay, cfg.population.seed):
                ids.append(f"{job}-{m.key()}")
                epochs[ids[-1]] = sorted(checkpoint_schedule(cfg))
    return ids, epochs


def _weight_diff(zoo: Path, ref: Path, per_model: bool = False):
    """Largest |w - w_ref| over the models both zoos hold (per_model: and how many models differ at all)."""
    from wsl.zoo import Zoo

    a, b = Zoo(zoo), Zoo(ref)
    worst, differ = 0.0, 0
    for mid in b.ids:
        if mid in a.ids:
            d = 0.0
            for e in b.checkpoint_epochs(mid):
                sa, sb = a.state_dict(mid, e), b.state_dict(mid, e)
                d = max(d, *(float((sa[k] - sb[k]).abs().max()) for k in sb))
            worst, differ = max(worst, d), differ + (d > 0)
    return (worst, differ) if per_model else worst


def drill_zoo(workdir: Path, rounds: int = 3, max_kills: int = 4, seed: int = 0, sweep=ZOO_SWEEP,
              launcher: str | None = None, reference: bool = True, kinds: dict | None = None,
              plan_fn=None) -> Stats:
    """Rounds of: a fresh multirun zoo generation, killed max_kills times at random moments (or at
    plan_fn(round): a list of (kind, k) targets), then rerun to the end."""
    rng = random.Random(seed)
    stats = Stats("zoo")
    t0 = time.time()
    expected, epochs = expected_zoo(sweep)
    # k ranges: how many events of a kind a run may pass before the kill (one checkpoint per member and epoch)
    kinds = kinds or {"training": 6, "checkpoint": 10, "shard": 2, "index": 2}
    ref = None
    if reference:
        ref = workdir / "reference"
        r = run_app(zoo_command(ref, workdir / "runs" / "reference", sweep, launcher), workdir, ref, None, rng)
        if r.rc != 0:
            raise RuntimeError(f"reference run failed:\n{r.output[-3000:]}")
        stats.max_weight_diff = 0.0
    for rnd in range(rounds):
        zoo = workdir / f"round{rnd}"
        cmd = zoo_command(zoo, workdir / "runs" / f"round{rnd}", sweep, launcher)
        plan = plan_fn(rnd) if plan_fn else [_choose(rng, kinds) for _ in range(max_kills)]
        _drill_models(stats, cmd, zoo, workdir, rng, plan, expected, epochs)
        if ref is not None:
            worst, differ = _weight_diff(zoo, ref, per_model=True)
            stats.max_weight_diff = max(stats.max_weight_diff, worst)
            stats.reference_mismatches += differ
        stats.rounds += 1
    stats.seconds = time.time() - t0
    return stats


# ---- wsl-landscape -----------------------------------------------------------------------------------
# landscape=basic (curvature, barrier, CKA, spectra, phase label) shrunk to seconds; chunk_size=1: one
# commit per model (per cell for cell metrics), i.e. many windows to kill in
LANDSCAPE_ARGS = ["landscape=basic", "landscape.chunk_size=1", "landscape.num_samples=128",
                  "landscape.hessian_trace.samples=4", "landscape.hessian_trace.min_samples=4",
                  "landscape.hessian_eig.max_iters=20"]
TODO_RE = re.compile(r"\] - (\S+): (\d+) of (\d+) (models|cells) to compute")
VALUE_TOL = (1e-5, 1e-6)  # rtol, atol of a value against the reference run's


def annotation_rows(zoo: Path) -> dict[str, dict[str, list[dict]]]:
    """{group: {model id: [row {column: value}, ...]}} as committed in annotations/<group>.h5 (a list:
    a model id twice in a file would be a duplicate)."""
    from wsl.zoo.table import read_annotation_file

    out = {}
    d = zoo / "annotations"
    for p in sorted(d.glob("*.h5")) if d.is_dir() else []:
        ann = read_annotation_file(p)
        rows: dict[str, list] = {}
        for i, mid in enumerate(ann.model_ids):
            rows.setdefault(mid, []).append({c: v[i] for c, v in ann.columns.items()})
        out[ann.group] = rows
    return out


def _done(rows: dict[str, list[dict]]) -> set[str]:
    """Model ids with a finished row (failed rows have empty settings: a rerun retries them)."""
    return {m for m, rs in rows.items() if rs and str(rs[-1].get("settings", ""))}


def _same(a, b) -> tuple[bool, float]:
    """Equal within VALUE_TOL (numbers; NaN == NaN) or exactly (text); and |a - b| for numbers."""
    import numpy as np

    if a is None or b is None:
        return a is b, 0.0
    try:
        x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    except (TypeError, ValueError):
        return str(a) == str(b), 0.0
    if x.shape != y.shape:
        return False, float("inf")
    both_nan = np.isnan(x) & np.isnan(y)
    d = np.where(both_nan, 0.0, np.abs(x - y))
    d = np.where(np.isnan(d), np.inf, d)
    worst = float(d.max()) if d.size else 0.0
    return bool(np.all(d <= VALUE_TOL[1] + VALUE_TOL[0] * np.abs(np.nan_to_num(y)))), worst


def _zoo_readable(zoo: Path) -> bool:
    from wsl.zoo import Zoo

    try:
        Zoo(zoo).table()
        annotation_rows(zoo)
        return True
    except Exception:  # noqa: BLE001 - anything a reader would hit counts
        return False


def landscape_command(zoo: Path, runs: Path, args=LANDSCAPE_ARGS) -> list[str]:
    return [sys.executable, "-m", "wsl.apps.landscape", f"zoo.path={zoo}", *args, f"hydra.run.dir={runs}"]


def drill_landscape(workdir: Path, base_zoo: Path, rounds: int = 2, max_kills: int = 4, seed: int = 0,
                    args=LANDSCAPE_ARGS, reference: Path | None = None, plan_fn=None) -> Stats:
    """wsl-landscape on copies of `base_zoo`, killed while computing and inside its annotation and index
    writes, rerun each time; then every row must be there once, equal to a fault-free run's (`reference`:
    a copy of base_zoo annotated without faults; default: made here), and no row computed twice (each run
    logs how many rows of each metric it is about to compute: that must equal the rows not yet committed).
    plan_fn(round, attempt) -> (kind, k) or None: fixed kill moments instead of random ones."""
    from wsl.zoo import Zoo

    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    stats = Stats("landscape")
    t0 = time.time()
    base = Zoo(base_zoo)
    ids, cells = list(base.ids), [sorted(c) for c in base.cells().values()]
    if reference is None:
        reference = workdir / "reference"
        shutil.copytree(base_zoo, reference)
        r = run_app(landscape_command(reference, workdir / "runs" / "reference", args), workdir, reference, None, rng)
        if r.rc != 0:
            raise RuntimeError(f"reference run failed:\n{r.output[-3000:]}")
    ref = annotation_rows(reference)
    # how a group commits: per model, per cell (cell metrics have a `members` column), or at once (the
    # phase label, derived from the others after them)
    units = {g: "once" if re.fullmatch(r"phase(_epoch\d+)?", g) else
             "cells" if "members" in next(iter(rows.values()))[0] else "models" for g, rows in ref.items()}
    stats.max_weight_diff = 0.0
    for rnd in range(rounds):
        zoo = workdir / f"landscape{rnd}"
        shutil.copytree(base_zoo, zoo)
        cmd = landscape_command(zoo, workdir / "runs" / f"landscape{rnd}", args)
        first_seen: set[tuple[str, str]] = set()
        for attempt in range(max_kills + 1 if plan_fn is None else 10_000):
            before = annotation_rows(zoo)
            done_before = {g: _done(before.get(g, {})) for g in ref}
            # rows (cells) each group still has to compute: what the run must announce, no more
            todo_before = {g: (sum(1 for c in cells if not set(c) <= done_before[g]) if units[g] == "cells"
                               else len(set(ids) - done_before[g])) for g in ref}
            left = sum(min(v, 1) if units[g] == "once" else v for g, v in todo_before.items())  # commits to come
            target = None
            if plan_fn is not None:
                target = plan_fn(rnd, attempt)
            elif attempt < max_kills and left > 0:
                # index merges per run: once at the end (after every annotation commit), and at start-up when
                # the index is behind the files (a killed run's commits; never on the round's fresh copy)
                kinds = {"training": max(1, left - 1), "annotation": left, "index": 1 if attempt == 0 else 2}
                target = _choose(rng, kinds)
            run = run_app(cmd, workdir, zoo, target, rng, progress="annotation")
            stats.runs += 1
            announced = {}
            for g, todo, _, _ in TODO_RE.findall(run.output):
                announced.setdefault(g, int(todo))
            for g, todo in announced.items():
                extra = todo - todo_before.get(g, 0)
                if extra > 0:
                    stats.redone += extra
                    stats.notes.append(f"round {rnd} run {attempt}: {g} computes {todo}, {todo_before.get(g, 0)} left")
            if run.rc is not None:
                if run.rc != 0:
                    raise RuntimeError(f"{' '.join(cmd)} failed ({run.rc}):\n{run.output[-3000:]}")
                break
            stats.count_kill(run)
            stats.visible_broken += not _zoo_readable(zoo)
            for g, rows in annotation_rows(zoo).items():
                first_seen.update((g, m) for m in _done(rows))
        stats.protected += len(first_seen)
        final = annotation_rows(zoo)
        z = Zoo(zoo)
        table = z.table()
        stats.expected += len(ids) * len(ref)
        for g, ref_rows in ref.items():
            rows = final.get(g, {})
            stats.duplicated += sum(len(v) - 1 for v in rows.values())
            done = _done(rows)
            stats.final += len(done & set(ids))
            stats.missing += len(_done(ref_rows) - done)
            col = f"{g}/settings"
            in_index = {m for m in z.ids if col in table.columns and str(table.loc[m, col])}
            if in_index != done:
                stats.notes.append(f"{g}: index and annotations/{g}.h5 disagree")
                stats.verify_errors += 1
            for m, rr in ref_rows.items():
                if m not in rows:
                    continue
                differ = False
                for c, v in rr[-1].items():
                    ok, d = _same(rows[m][-1].get(c), v)
                    differ |= not ok
                    if c not in ("epoch", "pairs") and d != float("inf"):
                        stats.max_weight_diff = max(stats.max_weight_diff, d)
                if differ:
                    stats.reference_mismatches += 1
                    if stats.reference_mismatches <= 3:
                        stats.notes.append(f"{g}/{m}: {rows[m][-1]} != reference {rr[-1]}")
        stats.lost += sum(1 for g, m in first_seen if m not in _done(final.get(g, {})))
        _verify(zoo, stats)
        stats.rounds += 1
    stats.seconds = time.time() - t0
    return stats


# ---- wsl-sample ----------------------------------------------------------------------------------------
GENERATOR_ARGS = ["+zoo.filter.width=4", "generator/denoiser=mlp", "generator.denoiser.hidden=64", "generator.denoiser.depth=1",
                  "generator.denoiser.emb_dim=16", "trainer.max_steps=50", "representation.align=false",
                  "spread.every_n_steps=1000", "logger=none", "progress_refresh_rate=0", "trainer.accelerator=cpu"]
DRAWN_RE = re.compile(r"sample: drew nets (\d+)\.\.(\d+)")


def train_small_generator(base_zoo: Path, run_dir: Path) -> Path:
    gen = subprocess.run([sys.executable, "-m", "wsl.apps.train_generator", f"zoo.path={base_zoo}", *GENERATOR_ARGS,
                          f"hydra.run.dir={run_dir}"], cwd=run_dir.parent, capture_output=True, text=True,
                         env=dict(os.environ, WANDB_MODE="disabled"))
    if gen.returncode != 0:
        raise RuntimeError(f"wsl-train-generator failed:\n{gen.stdout[-2000:]}\n{gen.stderr[-2000:]}")
    return run_dir


def sample_command(run_dir: Path, zoo: Path, n: int, batch_size: int, runs: Path) -> list[str]:
    return [sys.executable, "-m", "wsl.apps.sample", f"run={run_dir}", f"n={n}", f"batch_size={batch_size}",
            f"zoo.path={zoo}", "threads=1", f"hydra.run.dir={runs}"]


def drill_sample(workdir: Path, base_zoo: Path | None, rounds: int = 2, max_kills: int = 3, seed: int = 0,
                 n: int = 12, batch_size: int = 2, run_dir: Path | None = None, reference: Path | None = None,
                 plan_fn=None) -> Stats:
    """wsl-sample from a small generator (`run_dir`, or trained here on `base_zoo`), killed while drawing
    and inside its checkpoint/shard/index writes, rerun each time; then the zoo must hold exactly the n nets
    of an uninterrupted draw with the same seed (`reference`: such a zoo; default: drawn here), bit for bit,
    none drawn or written twice. plan_fn(round, attempt) -> (kind, k) or None: fixed kill moments."""
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    stats = Stats("sample")
    t0 = time.time()
    if run_dir is None:
        run_dir = train_small_generator(base_zoo, workdir / "generator")
    job = f"gen-{run_dir.name}-s0"
    expected = [f"{job}-{i:06d}" for i in range(n)]
    ref = reference
    if ref is None:
        ref = workdir / "reference"
        r = run_app(sample_command(run_dir, ref, n, batch_size, workdir / "runs" / "reference"), workdir, ref, None,
                    rng)
        if r.rc != 0:
            raise RuntimeError(f"reference run failed:\n{r.output[-3000:]}")
    stats.max_weight_diff = 0.0

    def plan(attempt: int, zoo: Path):
        if plan_fn is not None:
            return plan_fn(rnd, attempt)
        left = n - len(committed_models(zoo))
        if attempt >= max_kills or left <= 0:
            return None
        batches = -(-left // batch_size)
        return _choose(rng, {"training": left, "checkpoint": left, "shard": batches, "index": batches})

    def drawn_again(run: Run, before: set[str]) -> set[str]:
        drawn = {f"{job}-{i:06d}" for a, b in DRAWN_RE.findall(run.output) for i in range(int(a), int(b) + 1)}
        return drawn & before

    for rnd in range(rounds):
        zoo = workdir / f"sampled{rnd}"
        cmd = sample_command(run_dir, zoo, n, batch_size, workdir / "runs" / f"sample{rnd}")
        _drill_models(stats, cmd, zoo, workdir, rng, plan, expected, {m: [0] for m in expected},
                      after_run=drawn_again, jitter=0.3)  # a draw takes about a second
        worst, differ = _weight_diff(zoo, ref, per_model=True)
        stats.max_weight_diff = max(stats.max_weight_diff, worst)
        stats.reference_mismatches += differ
        stats.rounds += 1
    if stats.kills["training"]:
        stats.kills["drawing"] = stats.kills.pop("training")  # wsl-sample draws nets; it trains nothing
    stats.seconds = time.time() - t0
    return stats


# ---- wsl-evaluate and wsl-plot: output directories ---------------------------------------------------------
REPORT_FILES = ("report.md", "sets.csv", "nets.csv", "summary.json", "accuracy_novelty.png", "nn_distances.png",
                ".wsl-output")
EVALUATE_ARGS = ["baselines.noise.sigmas=[0.1,1.0]", "baselines.noise.n=2", "baselines.average.ks=[2]",
                 "baselines.average.n=2", "~baselines.gaussian", "logger=none"]
DETERMINISTIC = ("nets.csv", "sets.csv")  # timings make report.md and summary.json differ from run to run


def _stable_rows(data: bytes | None) -> list[bytes]:
    """The header and the rows of the generated and training sets of a report table. (The random
    baselines' rows are left out: they are not reproducible from run to run today; their draws follow
    the state-dict key order of a loaded checkpoint, which changes from process to process.)"""
    return [ln for ln in (data or b"").splitlines() if ln.split(b",")[0] in (b"method", b"generated", b"training")]


def _complete(name: str, data: bytes) -> bool:
    """A finished output file: a PNG up to its IEND chunk, JSON that parses, text ending in a newline."""
    if name.endswith(".png"):
        return data.startswith(b"\x89PNG\r\n\x1a\n") and data[-12:-4] == b"\x00\x00\x00\x00IEND"
    if name.endswith(".json"):
        try:
            json.loads(data)
            return True
        except ValueError:
            return False
    return data.endswith(b"\n") or (name.endswith(".csv") and data == b"")


def _files(d: Path) -> dict[str, bytes] | None:
    """The visible output files of a directory (None: no directory); hidden temp files are not output."""
    if not d.is_dir():
        return None
    return {f.name: f.read_bytes() for f in sorted(d.iterdir())
            if f.is_file() and (not f.name.startswith(".") or f.name == ".wsl-output")}


def _litter(d: Path) -> list[str]:
    """Temp files and directories a finished run left next to or inside its output."""
    near = [p.name for p in d.parent.glob(f".{d.name}.*")] if d.parent.is_dir() else []
    inner = [p.name for p in d.glob(".*.tmp")] if d.is_dir() else []
    return sorted(near + inner)


def _output_plan(rng: random.Random, max_kills: int, window: str, k_max: int):
    """Kill targets of one round: some runs before the first finished output, some while it is being
    replaced by the next run (random moments, or inside the write window), each phase ended by a full run."""
    first = rng.randint(0, max_kills)
    # ("training", 0): a random moment of the run (its work or its writes); (window, k): inside the k-th write
    kill = [("training", 0) if rng.random() < 0.4 else (window, rng.randint(1, k_max)) for _ in range(max_kills)]
    return kill[:first] + [None] + kill[first:] + [None]


def drill_report(workdir: Path, gen_zoo: Path | None, ref_zoo: Path, rounds: int = 2, max_kills: int = 3,
                 seed: int = 0, plan_fn=None, fault_free_run: bool = True) -> Stats:
    """wsl-evaluate writing its report directory, killed at random moments and inside the report swap
    (fault point `report`: the new report complete in its temp directory, the old one still in place),
    rerun each time. At every moment the report directory must be absent (before the first finished run),
    or the last complete report byte for byte, or a new complete one; after the round no temp directory
    is left, and the per-net and per-set tables equal a fault-free run's. plan_fn(round) -> list of
    targets ((kind, k) or None: a run to the end) instead of random ones. fault_free_run=False: the tables
    are compared with the first complete report of the round instead (saves a run)."""
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    stats = Stats("evaluate")
    t0 = time.time()
    extra = []
    if gen_zoo is None:  # a copy of the reference plays the generated zoo: its first two nets (one architecture)
        gen_zoo = workdir / "generated"
        shutil.copytree(ref_zoo, gen_zoo)
        extra = ["max_nets=2"]

    def cmd(out: Path, runs: Path) -> list[str]:
        return [sys.executable, "-m", "wsl.apps.evaluate", f"zoo.path={gen_zoo}", f"reference={ref_zoo}",
                f"out={out}", *EVALUATE_ARGS, *extra, f"hydra.run.dir={runs}"]

    ref = None
    if fault_free_run:
        reference = workdir / "reference"
        r = run_app(cmd(reference, workdir / "runs" / "reference"), workdir, reference.parent, None, rng)
        if r.rc != 0:
            raise RuntimeError(f"reference run failed:\n{r.output[-3000:]}")
        ref = _files(reference)
    for rnd in range(rounds):
        out = workdir / f"round{rnd}" / "report"
        out.parent.mkdir(parents=True, exist_ok=True)
        plan = plan_fn(rnd) if plan_fn else _output_plan(rng, max_kills, "report", 1)
        last = None  # the last complete report seen
        for target in plan:
            run = run_app(cmd(out, workdir / "runs" / f"round{rnd}"), workdir, out.parent, target, rng, jitter=6.0)
            stats.runs += 1
            if run.rc not in (None, 0):
                raise RuntimeError(f"wsl-evaluate failed ({run.rc}):\n{run.output[-3000:]}")
            if run.phase:
                stats.count_kill(run)
            now = _files(out)
            complete = now is not None and set(REPORT_FILES) <= set(now) and all(_complete(n, b) for n, b in now.items())
            if now is not None and not complete:
                stats.visible_broken += 1
                stats.notes.append(f"round {rnd}: half-written report visible: {sorted(now)}")
            if last is not None:
                stats.protected += 1
                if not complete:
                    stats.lost += 1  # the old complete report is gone and no new one replaced it
                elif run.phase and now != last and not (run.phase == "training"):
                    stats.lost += 1  # killed inside the swap window: the old report must be untouched
            if complete:
                last = now
                ref = ref if ref is not None else now
            if run.rc == 0 and not complete:
                stats.missing += 1
        final = _files(out) or {}
        stats.expected += len(REPORT_FILES)
        stats.final += len(set(final) & set(REPORT_FILES))
        stats.missing += len(set(REPORT_FILES) - set(final))
        litter = _litter(out)
        if litter:
            stats.litter += len(litter)
            stats.notes.append(f"round {rnd}: left behind {litter[:5]}")
        differ = [n for n in DETERMINISTIC if _stable_rows(final.get(n)) != _stable_rows((ref or {}).get(n))]
        stats.reference_mismatches += len(differ)
        if differ:
            stats.notes.append(f"round {rnd}: {differ} differ from the fault-free report")
        stats.rounds += 1
    stats.seconds = time.time() - t0
    return stats


PLOT_ARGS = ["logger=none"]


def drill_plot(workdir: Path, base_zoo: Path, rounds: int = 2, max_kills: int = 3, seed: int = 0,
               plan_fn=None) -> Stats:
    """wsl-plot writing its files into <zoo>/plots (copies of `base_zoo`), killed at random moments and
    inside its file writes (fault point `plot`: a finished temp file not yet renamed), rerun each time. At
    every moment each visible plot file is complete, and one that was complete stays there complete; after
    the round every file of a fault-free run is there with the same bytes and no temp file is left.
    plan_fn(round) -> list of targets instead of random ones."""
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    stats = Stats("plot")
    t0 = time.time()

    def cmd(zoo: Path, runs: Path) -> list[str]:
        return [sys.executable, "-m", "wsl.apps.plot", f"zoo.path={zoo}", *PLOT_ARGS, f"hydra.run.dir={runs}"]

    reference = workdir / "reference"
    shutil.copytree(base_zoo, reference)
    r = run_app(cmd(reference, workdir / "runs" / "reference"), workdir, reference, None, rng)
    if r.rc != 0:
        raise RuntimeError(f"reference run failed:\n{r.output[-3000:]}")
    ref = _files(reference / "plots")
    n_files = len([n for n in ref if not n.startswith(".")])
    for rnd in range(rounds):
        zoo = workdir / f"plot{rnd}"
        shutil.copytree(base_zoo, zoo)
        out = zoo / "plots"
        plan = plan_fn(rnd) if plan_fn else _output_plan(rng, max_kills, "plot", n_files)
        seen: dict[str, bytes] = {}
        at_risk: set[str] = set()  # complete files a later run could have destroyed
        for target in plan:
            run = run_app(cmd(zoo, workdir / "runs" / f"plot{rnd}"), workdir, zoo, target, rng, jitter=3.0)
            stats.runs += 1
            if run.rc not in (None, 0):
                raise RuntimeError(f"wsl-plot failed ({run.rc}):\n{run.output[-3000:]}")
            if run.phase:
                stats.count_kill(run)
            now = _files(out) or {}
            broken = [n for n, b in now.items() if not _complete(n, b)]
            stats.visible_broken += len(broken)
            stats.notes += [f"round {rnd}: half-written {n} visible" for n in broken]
            at_risk |= set(seen)
            gone = [n for n in seen if n not in now or not _complete(n, now[n])]
            stats.lost += len(gone)
            seen.update({n: b for n, b in now.items() if _complete(n, b)})
        stats.protected += len(at_risk)
        final = _files(out) or {}
        stats.expected += len(ref)
        stats.final += len(set(final) & set(ref))
        stats.missing += len(set(ref) - set(final))
        differ = [n for n in ref if n in final and final[n] != ref[n]]
        stats.reference_mismatches += len(differ)
        if differ:
            stats.notes.append(f"round {rnd}: {differ[:3]} differ from the fault-free run")
        litter = _litter(out)
        if litter:
            stats.litter += len(litter)
            stats.notes.append(f"round {rnd}: left behind {litter[:5]}")
        stats.rounds += 1
    stats.seconds = time.time() - t0
    return stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--apps", default="zoo", help="comma-separated: zoo, landscape, sample, evaluate, plot (all "
                                                  "but zoo work on the zoo drill's first zoo, or on --base-zoo)")
    ap.add_argument("--base-zoo", default=None, help="an existing zoo for the landscape and sample drills (copied, "
                                                     "never changed); default: the zoo drill's first round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kills", type=int, default=4, help="most kills per round (then one run may finish)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--generator", default=None, help="a wsl-train-generator run for the sample drill; default: "
                                                      "a small one trained on the base zoo")
    ap.add_argument("--launcher", default=None, help="hydra launcher of the zoo multirun, e.g. submitit_local")
    ap.add_argument("--no-reference", action="store_true", help="skip the fault-free reference zoo")
    ap.add_argument("--workdir", default=None, help="keep everything here (default: a temp dir, removed)")
    a = ap.parse_args(argv)
    apps = [x.strip() for x in a.apps.split(",") if x.strip()]
    unknown = set(apps) - {"zoo", "landscape", "sample", "evaluate", "plot"}
    if unknown:
        ap.error(f"unknown app(s) {sorted(unknown)}; valid: zoo, landscape, sample, evaluate, plot")
    work = Path(a.workdir or tempfile.mkdtemp(prefix="wsl-fault-drill-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"fault drill in {work} (seed {a.seed}, up to {a.kills} kills per round, window held {HOLD}s)", flush=True)
    results = []
    try:
        base = Path(a.base_zoo).resolve() if a.base_zoo else work / "zoo" / "round0"
        if "zoo" in apps or not a.base_zoo:
            zoo_stats = drill_zoo(work / "zoo", a.rounds, a.kills, a.seed, launcher=a.launcher,
                                  reference=not a.no_reference)
            results.append(zoo_stats)
            print("\n".join(zoo_stats.lines()), flush=True)
        if "landscape" in apps:
            results.append(drill_landscape(work / "landscape", base, a.rounds, a.kills, a.seed))
            print("\n".join(results[-1].lines()), flush=True)
        if "sample" in apps:
            results.append(drill_sample(work / "sample", base, a.rounds, a.kills, a.seed,
                                        run_dir=Path(a.generator).resolve() if a.generator else None))
            print("\n".join(results[-1].lines()), flush=True)
        if "evaluate" in apps:
            results.append(drill_report(work / "evaluate", None, base, a.rounds, a.kills, a.seed))
            print("\n".join(results[-1].lines()), flush=True)
        if "plot" in apps:
            results.append(drill_plot(work / "plot", base, a.rounds, a.kills, a.seed))
            print("\n".join(results[-1].lines()), flush=True)
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    ok = all(s.ok for s in results)
    total = {k: sum(getattr(s, k) for s in results) for k in ("runs", "lost", "redone")}
    kills = sum(sum(s.kills.values()) for s in results)
    print(f"TOTAL apps {len(results)}, runs {total['runs']}, kills {kills}, lost {total['lost']}, "
          f"redone needlessly {total['redone']} -> {'PASS' if ok else 'FAIL'}")
    print(json.dumps({s.app: {**{k: v for k, v in vars(s).items() if k not in ('kills', 'notes')},
                              "kills": dict(s.kills)} for s in results}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
