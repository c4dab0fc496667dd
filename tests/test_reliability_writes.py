"""Writes that cannot destroy: no app deletes or overwrites a directory it did not create, and no write or
removal goes through a symbolic link planted inside a zoo or an output directory.

Real console scripts (python -m wsl.apps.<app>) on copies of the session's tiny zoo. Every refusal must be
one line on stderr, exit status 2, naming the path, with every file around it byte-identical afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_ZOO

ENV = dict(os.environ, WANDB_MODE="disabled", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
FAST_EVALUATE = ["baselines.noise.sigmas=[0.5]", "baselines.noise.n=2", "~baselines.average", "~baselines.gaussian",
                 "logger=none"]


def _start(app: str, *args: str, runs: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", f"wsl.apps.{app}", *args, f"hydra.run.dir={runs}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=runs.parent, env=ENV)


def _wait(p: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = p.communicate(timeout=600)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def _run(app: str, *args: str, runs: Path) -> subprocess.CompletedProcess:
    return _wait(_start(app, *args, runs=runs))


def _refused(p: subprocess.CompletedProcess, *names: str) -> str:
    """Exit status 2 and one line `error: ...` naming each of `names`; returns the line."""
    lines = [ln for ln in p.stderr.strip().splitlines() if not ln.startswith("INFO: ")]  # Lightning's banner
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (p.args, p.returncode,
                                                                                        p.stderr[-3000:])
    for n in names:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


def _snapshot(root: Path) -> dict:
    """Every entry under `root` (links not followed): file bytes, link targets, directories."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", p.read_bytes())
    return out


@pytest.fixture
def place(tiny_zoo, tmp_path):
    """tmp/data/{ref, gen} (copies of the tiny zoo: a training and a 'generated' zoo), a user's directory
    with a thesis and a user's file; Hydra's run directories go to tmp/runs (outside the snapshot)."""
    data = tmp_path / "data"
    shutil.copytree(tiny_zoo, data / "ref")
    shutil.copytree(tiny_zoo, data / "gen")
    (data / "mine").mkdir()
    (data / "mine" / "thesis.tex").write_text("\\chapter{years of work}\n")
    (data / "notes.txt").write_text("a user's file\n")
    (data / "notes").mkdir()
    (data / "notes" / "report.md").write_text("# my own report\n")  # named like a report file, yet the user's
    (tmp_path / "runs").mkdir()
    return data


def _runs(place: Path, name: str) -> Path:
    return place.parent / "runs" / name


# ---- wsl-evaluate out= -------------------------------------------------------------------------------------
def test_evaluate_out_refuses_zoos_user_directories_and_files(place):
    before = _snapshot(place)
    targets = [place / "ref", place / "gen", place / "mine", place / "notes.txt", place / "ref" / "shards",
               place / "ref" / "index.h5", place, place / "ref" / "models", place / "notes",
               place / "ref" / "models" / "new"]
    procs = [_start("evaluate", f"zoo.path={place / 'gen'}", f"reference={place / 'ref'}", f"out={t}", *FAST_EVALUATE,
                    runs=_runs(place, f"e{i}")) for i, t in enumerate(targets)]
    for t, p in zip(targets, procs):
        _refused(_wait(p), t)
    assert _snapshot(place) == before  # nothing moved, removed or written


def test_evaluate_reruns_into_its_own_report_only(place):
    out = place.parent / "report"
    args = [f"zoo.path={place / 'gen'}", f"reference={place / 'ref'}", f"out={out}", *FAST_EVALUATE]
    for i in range(2):  # a new directory, then the same one again: its own earlier report is replaced
        p = _run("evaluate", *args, runs=_runs(place, f"r{i}"))
        assert p.returncode == 0, p.stderr[-3000:]
        assert (out / "report.md").is_file() and (out / ".wsl-output").read_text().strip() == "wsl-evaluate"
    assert not [n for n in os.listdir(out.parent) if n.startswith(".report.")]  # no temp directory left
    (out / ".wsl-output").unlink()  # a report of a version before the marker: all the report files, still ours
    assert _run("evaluate", *args, runs=_runs(place, "r2")).returncode == 0
    (out / "draft.md").write_text("the user's own words\n")  # now it holds something the app did not write
    before = _snapshot(out)
    _refused(_run("evaluate", *args, runs=_runs(place, "r3")), out, "draft.md")
    assert _snapshot(out) == before


def test_evaluate_refuses_a_report_link_in_the_generated_zoo(place):
    (place / "gen" / "report").symlink_to("..")  # would make the report replace the zoo's parent directory
    before = _snapshot(place)
    p = _run("evaluate", f"zoo.path={place / 'gen'}", f"reference={place / 'ref'}", *FAST_EVALUATE,
             runs=_runs(place, "e"))
    _refused(p, place / "gen" / "report", "symbolic link")
    assert _snapshot(place) == before


# ---- wsl-plot, wsl-align out= --------------------------------------------------------------------------------
def test_plot_and_align_refuse_a_file_or_a_foreign_directory_as_output(place):
    before = _snapshot(place)
    procs = [_start("plot", f"zoo.path={place / 'ref'}", f"plot.out_dir={place / 'notes.txt'}", "logger=none",
                    runs=_runs(place, "p1")),
             _start("plot", f"zoo.path={place / 'ref'}", f"plot.out_dir={place / 'mine'}", "logger=none",
                    runs=_runs(place, "p2")),
             _start("plot", f"zoo.path={place / 'ref'}", f"plot.out_dir={place / 'gen'}", "logger=none",
                    runs=_runs(place, "p3")),
             _start("align", f"zoo.path={place / 'ref'}", f"out={place / 'notes.txt'}", "logger=none",
                    runs=_runs(place, "a1")),
             _start("align", f"zoo.path={place / 'ref'}", f"out={place / 'mine'}", "logger=none",
                    runs=_runs(place, "a2"))]
    lines = [_refused(_wait(p)) for p in procs]
    assert "notes.txt is a file" in lines[0] and "thesis.tex" in lines[1] and "holds a zoo" in lines[2]
    assert "notes.txt is a file" in lines[3] and "thesis.tex" in lines[4]
    assert _snapshot(place) == before
    # a new directory is fine, and so is the same one again (its own earlier output, marked)
    out = place.parent / "plots"
    for i in range(2):
        p = _run("plot", f"zoo.path={place / 'ref'}", f"plot.out_dir={out}", "logger=none", runs=_runs(place, f"q{i}"))
        assert p.returncode == 0, p.stderr[-3000:]
    assert (out / ".wsl-output").read_text().strip() == "wsl-plot" and list(out.glob("*.png"))


# ---- links planted inside a zoo --------------------------------------------------------------------------------
def _outside(place: Path) -> Path:
    d = place.parent / "outside"
    d.mkdir()
    (d / "keep.txt").write_text("not the zoo's\n")
    return d


def test_plot_refuses_a_plots_link(place):
    outside = _outside(place)
    (place / "ref" / "plots").symlink_to(outside)
    before = _snapshot(outside)
    _refused(_run("plot", f"zoo.path={place / 'ref'}", "logger=none", runs=_runs(place, "p")),
             place / "ref" / "plots", "symbolic link")
    assert _snapshot(outside) == before


def test_landscape_refuses_an_annotations_link(place):
    outside = _outside(place)
    (place / "ref" / "annotations").symlink_to(outside)
    before = _snapshot(outside)
    p = _run("landscape", f"zoo.path={place / 'ref'}", "landscape.metrics=[hessian_trace]", "landscape.num_samples=32",
             "landscape.hessian_trace.samples=2", "landscape.hessian_trace.min_samples=2", "logger=none",
             runs=_runs(place, "l"))
    _refused(p, place / "ref" / "annotations", "symbolic link")
    assert _snapshot(outside) == before


def test_landscape_refuses_a_shards_link_before_computing(place):
    """Found by scripts/attack_campaign.py: a `shards -> <outside>` link was refused only by the final index
    rebuild, after the annotations had been computed and committed into the zoo."""
    outside = _outside(place)
    zoo = place / "ref"
    shutil.move(zoo / "shards", outside / "shards")
    (zoo / "shards").symlink_to(outside / "shards")
    before, zoo_before = _snapshot(outside), _snapshot(zoo)
    p = _run("landscape", f"zoo.path={zoo}", "landscape.metrics=[hessian_trace]", "landscape.num_samples=32",
             "landscape.hessian_trace.samples=2", "landscape.hessian_trace.min_samples=2", "logger=none",
             runs=_runs(place, "l"))
    _refused(p, zoo / "shards", "symbolic link")
    assert _snapshot(outside) == before and _snapshot(zoo) == zoo_before  # no annotations/ either


def test_verify_repair_refuses_lock_and_shards_links(place):
    outside = _outside(place)
    lock = place / "ref" / ".lock"
    lock.unlink(missing_ok=True)
    lock.symlink_to(outside / "new")  # the lock would create this file
    gen_shards = place / "gen" / "shards"
    shutil.move(gen_shards, outside / "shards")
    gen_shards.symlink_to(outside / "shards")
    (outside / "shards" / ".x.h5.1.tmp").write_bytes(b"named like a temp file")  # a merge removes those
    before = _snapshot(outside)
    procs = [_start("verify", f"zoo.path={place / 'ref'}", "repair=true", runs=_runs(place, "v1")),
             _start("verify", f"zoo.path={place / 'gen'}", "repair=true", runs=_runs(place, "v2"))]
    # refused with the link named (verify may also list it as an error of the zoo: exit status 1 or 2)
    for p, link in zip((_wait(p) for p in procs), (lock, gen_shards)):
        text = p.stdout + p.stderr
        assert p.returncode in (1, 2) and str(link) in text and "symbolic link" in text, text[-3000:]
        assert "Traceback" not in text and "repaired" not in p.stdout, text[-3000:]
    assert _snapshot(outside) == before
    assert not (outside / "new").exists()


def test_zoo_refuses_a_model_directory_link(place):
    outside = _outside(place)
    zoo = place / "ref"
    job = next((zoo / "models").iterdir())
    shutil.move(job, outside / job.name)
    job.symlink_to(outside / job.name)
    for f in [zoo / "index.h5", *(zoo / "shards").glob("*.h5")]:
        f.unlink()  # the job is not committed: a rerun trains it and writes its checkpoints again
    before = _snapshot(outside)
    p = _run("zoo", f"zoo.path={zoo}", *TINY_ZOO, runs=_runs(place, "z"))
    _refused(p, job, "symbolic link")
    assert _snapshot(outside) == before


# ---- the primitives --------------------------------------------------------------------------------------------
def test_safe_paths_refuse_links_and_escapes(tmp_path):
    from wsl.zoo.atomic import atomic_path, write_bytes_atomic
    from wsl.zoo.safe_paths import UnsafePathError, inside, remove_temp_files

    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "real").mkdir(parents=True)
    outside.mkdir()
    (root / "link").symlink_to(outside)
    assert inside(root, root / "real" / "x.h5") == root.resolve() / "real" / "x.h5"
    for bad in (root / "link" / "x.h5", root / ".." / "outside" / "x.h5", "link/sub/x.h5", root / "link"):
        with pytest.raises(UnsafePathError):
            inside(root, bad)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        write_bytes_atomic(root / "link" / "new" / "f.bin", b"x", root=root)
    with pytest.raises(UnsafePathError):
        with atomic_path(root / "link" / "f.h5", root=root):
            pass
    # a link planted at the temp name the next write will use is replaced, never written through
    target = root / "real" / "f.bin"
    (target.parent / f".f.bin.{os.getpid()}.tmp").symlink_to(outside / "victim")
    write_bytes_atomic(target, b"data", root=root)
    assert target.read_bytes() == b"data" and not (outside / "victim").exists()
    # temp-file cleanup: regular files only, never a link named like one, never through a linked directory
    (outside / "t").write_text("x")
    (root / "real" / ".a.h5.1.tmp").write_text("stale")
    (root / "real" / ".b.h5.2.tmp").symlink_to(outside / "t")
    assert remove_temp_files(root, root / "real", ".*.h5.*.tmp") == 1
    assert (root / "real" / ".b.h5.2.tmp").is_symlink() and (outside / "t").read_text() == "x"
    with pytest.raises(UnsafePathError):
        remove_temp_files(root, root / "link", "*")


def test_evaluate_checks_out_before_reading_any_zoo(place):
    """The check runs before any zoo is read: a missing reference zoo is not even looked at."""
    p = _run("evaluate", f"zoo.path={place / 'gen'}", f"reference={place / 'nowhere'}", f"out={place / 'notes.txt'}",
             *FAST_EVALUATE, runs=_runs(place, "x"))
    assert "out=" in _refused(p, place / "notes.txt")

