"""Adversarial campaign: the apps tried as a new user and as an attacker would, on copies of real zoos.

    python scripts/attack_campaign.py                 # every attack (about 10 minutes on 2 cores)
    python scripts/attack_campaign.py --only symlink  # the attacks whose name contains "symlink"
    python scripts/attack_campaign.py --keep          # keep the temp dir (printed) to look at a FAIL

It builds once, in a temp directory, what the attacks work on: a small training zoo (`wsl-zoo`, 4 nets,
2 epochs), a tiny generator run (`wsl-train-generator`, 10 steps), a sampled zoo (`wsl-sample n=4`) and an
annotated copy of the training zoo. Every attack then gets a fresh COPY of what it needs in its own
workspace, changes it the way a careless user or an attacker would, and runs the real console scripts in
subprocesses (cwd = the workspace, so `runs/` lands there), each in its own process group with a time limit
and an address-space limit (RLIMIT_AS), so nothing can hang or eat the machine.

Each attack states its expectation and the script checks it:
- refuse:  exit status 2, exactly one stderr line `error: ...` (Lightning's INFO lines aside), no traceback,
           every pre-existing file of the workspace byte-identical (differences listed), no file created
           anywhere in the workspace, nothing left under runs/;
- detect:  `wsl-verify` exits 1 and its output names the damaged file or dataset (a regex), no traceback;
- ok:      exit status 0 and no traceback (plus the attack's own check, e.g. nothing written outside);
- custom checks per attack (peak memory, files that must not appear, content unchanged, ...).

Output: one line per attack (PASS/FAIL, class, name; for a FAIL the reasons: exit status, stderr tail,
changed files), then counts by class and the wall time. The figures of the README's reliability section
(attacks tried, handled, defects) come from this script.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import resource
import shutil
import signal
import subprocess
import struct
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
QUIET = ["logger=none", "progress_refresh_rate=0", "trainer.accelerator=cpu"]
ENC_QUIET = ["logger=none", "trainer.accelerator=cpu"]  # wsl-train-encoder has no progress bar setting
TINY = ["net.width=8", "population.size=4", "train.epochs=2", "train.batch_size=64", *QUIET]
FAST_EVAL = ["logger=none", "baselines.noise.n=4", "baselines.average.n=4", "baselines.gaussian.n=4",
             "novelty.max_iter=5"]
ZQ = [*TINY, "population.size=6", "train.lr=[0.1,0.03,0.01]"]  # 3 cells of 2 nets: one cell per encoder split
TIMEOUT = 120
MEM_LIMIT = 6 << 30
# Lightning and torch print these on stderr on their own: not part of an app's error message.
NOISE = re.compile(r"^(GPU|TPU|HPU|IPU) available|^\[rank|Seed set to|^`Trainer|LOCAL_RANK|^Using |^You are using"
                   r"|^\s*$|^💡|^Tip:|litlogger|^/.*Warning|^\s+warnings\.warn|^  ")

CLASSES = ["critical data loss", "symlinks", "integrity", "bounded resources", "one-line errors"]
DL, SL, IN, BR, OL = CLASSES


# ---- one app run, bounded ----------------------------------------------------------------------------------
@dataclass
class Result:
    rc: int | None  # None: killed at the time limit
    stdout: str
    stderr: str
    seconds: float
    peak_mb: int


def _limit(mem: int):
    def f():
        os.setsid()
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    return f


def run(argv: list[str], cwd: Path, timeout: float = TIMEOUT, mem: int = MEM_LIMIT) -> Result:
    """Run a console script (argv[0], from this venv) in its own process group; kill the group at `timeout`."""
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT))
    cmd = [str(BIN / argv[0]), *argv[1:]]
    t0 = time.time()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                             preexec_fn=_limit(mem))
        killed = []

        def kill():
            killed.append(1)
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        timer = threading.Timer(timeout, kill)
        timer.start()
        _, status, usage = os.wait4(p.pid, 0)
        timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Result(None if killed else p.returncode, out.read().decode(errors="replace"),
                      err.read().decode(errors="replace"), time.time() - t0, usage.ru_maxrss // 1024)


# ---- the state of a workspace -------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, str]:
    """relative path -> sha256 (files), 'dir', 'link:<target>', 'fifo' (everything but runs/)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        if rel_dir == Path("."):
            dirnames[:] = [d for d in dirnames if d != "runs"]
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(rel_dir / name)
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            elif p.is_fifo():
                out[rel] = "fifo"
            else:
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                out[rel] = h.hexdigest()
        dirnames[:] = [d for d in dirnames if not (Path(dirpath) / d).is_symlink()]
    return out


def differences(before: dict, after: dict, allowed: Callable[[str], bool] = lambda rel: False) -> list[str]:
    diffs = []
    for rel in sorted(set(before) | set(after)):
        if allowed(rel):
            continue
        if rel not in after:
            diffs.append(f"removed {rel}")
        elif rel not in before:
            diffs.append(f"created {rel}")
        elif before[rel] != after[rel]:
            diffs.append(f"changed {rel}")
    return diffs


def runs_litter(ws: Path) -> list[str]:
    runs = ws / "runs"
    return [str(p.relative_to(ws)) for p in runs.rglob("*")] if runs.exists() else []


# ---- attacks -------------------------------------------------------------------------------------------------
@dataclass
class Attack:
    name: str
    cls: str
    needs: tuple[str, ...]  # base items copied into the workspace: zq (training zoo), zg (generated), gen, za
    prep: Callable[[Path], list[str] | list[list[str]]]  # changes the workspace, returns the argv to run
    expect: str = "refuse"  # refuse | detect | ok | any (only `check` decides)
    pattern: str | None = None  # must occur in stderr (refuse) or stdout (detect)
    check: Callable[[Path, Result], list[str]] | None = None  # extra checks: a list of failures
    allowed: Callable[[str], bool] = lambda rel: False  # changes that are fine (expect ok/detect)
    timeout: float = TIMEOUT
    mem: int = MEM_LIMIT
    cleanup: Callable[[Path], None] | None = None  # e.g. undo chattr +i


def judge(a: Attack, ws: Path, r: Result, before: dict, after: dict) -> list[str]:
    why = []
    if r.rc is None:
        return [f"timeout after {a.timeout:.0f}s"]
    if "Traceback" in r.stderr or "Traceback" in r.stdout:
        why.append("traceback")
    if a.expect == "refuse":
        if r.rc != 2:
            why.append(f"exit {r.rc} (expected 2)")
        lines = [ln for ln in r.stderr.splitlines() if not NOISE.search(ln)]
        errors = [ln for ln in lines if ln.startswith("error:")]
        if len(errors) != 1 or len(lines) != 1:
            why.append(f"{len(errors)} error lines, {len(lines)} stderr lines (expected exactly one error line)")
        if a.pattern and not re.search(a.pattern, r.stderr):
            why.append(f"stderr lacks /{a.pattern}/")
        why += differences(before, after, a.allowed)
        litter = runs_litter(ws)
        if litter:
            why.append(f"left under runs/: {litter[:3]}")
    elif a.expect == "detect":
        if r.rc != 1:
            why.append(f"exit {r.rc} (expected 1)")
        if a.pattern and not re.search(a.pattern, r.stdout):
            why.append(f"output lacks /{a.pattern}/")
        why += differences(before, after, a.allowed)
    elif a.expect == "ok":
        if r.rc != 0:
            why.append(f"exit {r.rc} (expected 0)")
        if a.pattern and not re.search(a.pattern, r.stdout + r.stderr):
            why.append(f"output lacks /{a.pattern}/")
        why += differences(before, after, a.allowed)
    if a.check:
        why += a.check(ws, r)
    return why


def execute(a: Attack, base: Path, work: Path) -> tuple[Attack, list[str], Result | None]:
    ws = work / re.sub(r"[^\w.-]", "_", a.name)
    ws.mkdir(parents=True)
    for item in a.needs:
        shutil.copytree(base / item, ws / item, symlinks=True)
    r = None
    try:
        cmds = a.prep(ws)
        if cmds and isinstance(cmds[0], str):
            cmds = [cmds]
        before = snapshot(ws)
        for argv in cmds:  # several commands: every one but the last must succeed (setup steps)
            r = run(argv, ws, a.timeout, a.mem)
            if argv is not cmds[-1] and r.rc != 0:
                return a, [f"setup step {argv[0]} exit {r.rc}: {r.stderr.strip()[-300:]}"], r
        after = snapshot(ws)
        return a, judge(a, ws, r, before, after), r
    except Exception as e:  # noqa: BLE001 - a campaign bug is reported as a FAIL, the rest goes on
        return a, [f"campaign error: {type(e).__name__}: {e}"], r
    finally:
        if a.cleanup:
            a.cleanup(ws)


# ---- helpers to damage files ----------------------------------------------------------------------------------
def shard(zoo: Path) -> Path:
    return next((zoo / "shards").glob("*.h5"))


def checkpoints(zoo: Path) -> list[Path]:
    return sorted((zoo / "models").rglob("epoch_*.safetensors"))


def flip(path: Path, dataset: str, element: int = 0, bit: int = 62) -> None:
    """Flip one bit of one stored value of `dataset` (bit 62 of a float64: its exponent)."""
    import h5py
    with h5py.File(path, "r") as f:
        ds = f[dataset]
        offset, itemsize = ds.id.get_offset(), ds.dtype.itemsize
    raw = bytearray(path.read_bytes())
    pos = offset + element * itemsize + bit // 8
    raw[pos] ^= 1 << (bit % 8)
    path.write_bytes(bytes(raw))


def h5_edit(path: Path, fn) -> None:
    import h5py
    with h5py.File(path, "r+") as f:
        fn(f)


def reseal_sha(zoo: Path, rel: str, sha: str) -> None:
    """Record a new checksum of a checkpoint in the index and shard, content checksums resealed."""
    import h5py

    from wsl.zoo.table import seal_file
    for table in [zoo / "index.h5", *(zoo / "shards").glob("*.h5")]:
        with h5py.File(table, "r+") as f:
            paths = f["checkpoints/path"].asstr()[()]
            shas = f["checkpoints/sha256"].asstr()[()].astype(object)
            shas[paths == rel] = sha
            del f["checkpoints/sha256"]
            f.create_dataset("checkpoints/sha256", data=shas, dtype=h5py.string_dtype())
        seal_file(table)


def replace_weights(zoo: Path, fn, reseal: bool = True) -> Path:
    """Rewrite the last checkpoint of the second net with fn(state_dict) through the real encoder."""
    from wsl.zoo import Zoo, read_checkpoint_metadata
    from wsl.zoo.format import sha256_bytes
    from wsl.zoo.writer import encode_checkpoint
    z = Zoo(zoo)
    mid = z.ids[1]
    path = z.checkpoint_path(mid, 2)
    data = encode_checkpoint(fn(z.state_dict(mid, 2)), read_checkpoint_metadata(path))
    path.write_bytes(data)
    if reseal:
        reseal_sha(zoo, str(path.relative_to(zoo)), sha256_bytes(data))
    return path


def with_(argv: list[str], *overrides: str) -> list[str]:
    """argv with `overrides`, replacing any override of the same key (Hydra refuses a key given twice)."""
    key = lambda o: o.split("=", 1)[0].lstrip("+~")  # noqa: E731
    keys = {key(o) for o in overrides}
    return [a for a in argv if key(a) not in keys or "=" not in a] + list(overrides)


def edit_generator(run_dir: Path, fn) -> None:
    """Edit the description in generator.safetensors' header (what wsl-sample reads); fn None: make it not JSON."""
    p = run_dir / "generator.safetensors"
    raw = p.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    head = json.loads(raw[8:8 + n])
    meta = head["__metadata__"]
    if fn is None:
        meta["wsl_generator"] = "{not json"
    else:
        d = json.loads(meta["wsl_generator"])
        fn(d)
        meta["wsl_generator"] = json.dumps(d)
    h = json.dumps(head).encode()
    h += b" " * (-len(h) % 8)
    p.write_bytes(struct.pack("<Q", len(h)) + h + raw[8 + n:])


def no_file(*rels: str):
    def check(ws: Path, r: Result) -> list[str]:
        return [f"{rel} exists" for rel in rels if os.path.lexists(ws / rel)]
    return check


def both(*checks):
    return lambda ws, r: [w for c in checks for w in c(ws, r)]


def max_mb(mb: int):
    return lambda ws, r: [f"peak memory {r.peak_mb} MB > {mb} MB"] if r.peak_mb > mb else []


def clean_output(ws: Path, r: Result) -> list[str]:
    raw = [c for c in ("\x1b", "\u202e") if c in r.stdout + r.stderr]
    return [f"raw {c!r} in output" for c in raw]


def read_only(rel: str):
    def prep_ro(ws: Path) -> None:
        subprocess.run(["chattr", "-R", "+i", str(ws / rel)], check=True) if os.geteuid() == 0 else \
            subprocess.run(["chmod", "-R", "a-w", str(ws / rel)], check=True)

    def undo(ws: Path) -> None:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-R", "-i", str(ws / rel)], check=False)
        else:
            subprocess.run(["chmod", "-R", "u+w", str(ws / rel)], check=False)
    return prep_ro, undo


# ---- the attack list ---------------------------------------------------------------------------------------
def attacks() -> list[Attack]:
    A: list[Attack] = []

    def add(*args, **kw):
        A.append(Attack(*args, **kw))

    ev = ["wsl-evaluate", "zoo.path=zg", "reference=zq", *FAST_EVAL]

    # -- critical: data loss (issue 12, critical 1 and 3) --
    def user_dir(ws):
        (ws / "thesis").mkdir()
        (ws / "thesis" / "thesis.tex").write_text("\\documentclass{article} years of work\n")
    for target in ["zq", "zg", "zq/shards", "zq/models", "thesis", "zq/index.h5", "zq/", "thesis/../zq",
                   "zg/shards/", "./zq/../zg", "thesis/thesis.tex"]:
        add(f"evaluate out={target}", DL, ("zq", "zg"), lambda ws, t=target: (user_dir(ws), [*ev, f"out={t}"])[1])
    add("evaluate out=link to a zoo", DL, ("zq", "zg"),
        lambda ws: ((ws / "rep").symlink_to("zq"), [*ev, "out=rep"])[1])
    add("evaluate out=. (the working directory)", DL, ("zq", "zg"), lambda ws: [*ev, "out=."])
    add("sample into the training zoo", DL, ("zq", "gen"),
        lambda ws: ["wsl-sample", "run=gen", "n=2", "zoo.path=zq", "logger=none"])
    add("sample into the training zoo via trailing slash", DL, ("zq", "gen"),
        lambda ws: ["wsl-sample", "run=gen", "n=2", "zoo.path=zq/", "logger=none"])
    add("align out=source", DL, ("zq",), lambda ws: ["wsl-align", "zoo.path=zq", "out=zq", "logger=none"])
    add("align out=another zoo", DL, ("zq", "zg"), lambda ws: ["wsl-align", "zoo.path=zq", "out=zg", "logger=none"])
    add("align out=user dir", DL, ("zq",),
        lambda ws: (user_dir(ws), ["wsl-align", "zoo.path=zq", "out=thesis", "logger=none"])[1])
    add("plot out_dir=zoo shards", DL, ("zq",),
        lambda ws: ["wsl-plot", "zoo.path=zq", "plot.out_dir=zq/shards", "logger=none"])
    add("plot out_dir=user dir with files", DL, ("zq",),
        lambda ws: (user_dir(ws), ["wsl-plot", "zoo.path=zq", "plot.out_dir=thesis", "logger=none"])[1],
        expect="any", check=lambda ws, r: [] if (ws / "thesis/thesis.tex").exists() else ["thesis.tex gone"])
    add("evaluate report dir reused only with its marker", DL, ("zq", "zg"),
        lambda ws: ((ws / "zg/report").mkdir(), (ws / "zg/report/report.md").write_text("my notes\n"), ev)[2])

    # -- symlinks (critical 2, integrity: links) --
    def outside(ws):
        (ws / "outside").mkdir(exist_ok=True)
        (ws / "outside" / "keep.txt").write_text("unrelated\n")
    add("symlink report -> .. in generated zoo", SL, ("zq", "zg"),
        lambda ws: (outside(ws), (ws / "zg/report").symlink_to(".."), ev)[2], pattern="report")
    add("symlink report -> outside dir", SL, ("zq", "zg"),
        lambda ws: (outside(ws), (ws / "zg/report").symlink_to(ws / "outside"), ev)[2], pattern="report")
    add("symlink plots -> outside (wsl-plot)", SL, ("zq",),
        lambda ws: (outside(ws), (ws / "zq/plots").symlink_to(ws / "outside"),
                    ["wsl-plot", "zoo.path=zq", "logger=none"])[2], pattern="plots")
    add("symlink annotations -> outside (wsl-landscape)", SL, ("zq",),
        lambda ws: (outside(ws), (ws / "zq/annotations").symlink_to(ws / "outside"),
                    ["wsl-landscape", "zoo.path=zq", "landscape=basic", "logger=none"])[2], pattern="annotations")
    add("symlink .lock -> outside/new (verify repair)", SL, ("zq",),
        lambda ws: (outside(ws), (ws / "zq/.lock").unlink(), (ws / "zq/.lock").symlink_to(ws / "outside/new"),
                    ["wsl-verify", "zoo.path=zq", "repair=true"])[3],
        expect="any", check=both(no_file("outside/new"),
                                 lambda ws, r: [] if r.rc in (1, 2) else [f"exit {r.rc} (expected 1 or 2)"]))
    add("symlink .lock -> outside/new (wsl-zoo rerun)", SL, ("zq",),
        lambda ws: (outside(ws), (ws / "zq/.lock").unlink(), (ws / "zq/.lock").symlink_to(ws / "outside/new"),
                    ["wsl-zoo", "zoo.path=zq", *ZQ])[3],
        expect="any", check=no_file("outside/new"))
    add("symlink shards -> outside (wsl-landscape)", SL, ("zq",),
        lambda ws: (outside(ws), shutil.move(ws / "zq/shards", ws / "outside/shards"),
                    (ws / "zq/shards").symlink_to(ws / "outside/shards"),
                    ["wsl-landscape", "zoo.path=zq", "landscape=basic", "logger=none"])[3], pattern="shards")
    add("symlink epoch_0001 -> epoch_0002 (verify)", SL, ("zq",),
        lambda ws: (checkpoints(ws / "zq")[1].unlink(), checkpoints(ws / "zq")[0].parent.joinpath(
            "epoch_0001.safetensors").symlink_to("epoch_0002.safetensors"), ["wsl-verify", "zoo.path=zq"])[2],
        expect="detect", pattern=r"epoch_0001\.safetensors.*(epoch 2|sha256|link)")
    def index_outside(ws):
        outside(ws)
        shutil.move(ws / "zq/index.h5", ws / "outside/index.h5")
        (ws / "zq/index.h5").symlink_to(ws / "outside/index.h5")
    add("symlink index.h5 outside (verify)", SL, ("zq",),
        lambda ws: (index_outside(ws), ["wsl-verify", "zoo.path=zq"])[1], expect="detect", pattern="index.h5")
    add("symlink index.h5 outside (encoder)", SL, ("zq",),
        lambda ws: (index_outside(ws), ["wsl-train-encoder", "zoo.path=zq", "encoder=flat", "trainer.max_epochs=1",
                                        "seeds=[0]", "split.fractions=[0.3,0.3,0.4]", *ENC_QUIET])[1],
        pattern="index.h5")
    add("symlink loop in models (verify)", SL, ("zq",),
        lambda ws: ((ws / "zq/models/loop").symlink_to("loop"), ["wsl-verify", "zoo.path=zq"])[1],
        expect="detect", pattern="loop")
    add("symlink report/report.md -> user file (evaluate)", SL, ("zq", "zg"),
        lambda ws: (user_dir(ws), (ws / "zg/report").mkdir(),
                    (ws / "zg/report/report.md").symlink_to(ws / "thesis/thesis.tex"), ev)[3], pattern="report")

    # -- integrity --
    vq = ["wsl-verify", "zoo.path=zq"]
    enc = ["wsl-train-encoder", "zoo.path=zq", "encoder=flat", "trainer.max_epochs=1", "seeds=[0]",
           "split.fractions=[0.3,0.3,0.4]", *ENC_QUIET]
    add("flip metrics/test_acc in index (verify)", IN, ("zq",),
        lambda ws: (flip(ws / "zq/index.h5", "metrics/test_acc"), vq)[1], expect="detect",
        pattern=r"index\.h5.*metrics/test_acc")
    add("flip metrics/test_acc in index (encoder)", IN, ("zq",),
        lambda ws: (flip(ws / "zq/index.h5", "metrics/test_acc"), [*enc, "task=test_acc"])[1],
        pattern=r"index\.h5")
    add("flip hparams/lr in index (verify)", IN, ("zq",),
        lambda ws: (flip(ws / "zq/index.h5", "models/hparams/lr"), vq)[1], expect="detect", pattern=r"hparams/lr")
    add("flip metrics/val_acc in shard (verify)", IN, ("zq",),
        lambda ws: (flip(shard(ws / "zq"), "metrics/val_acc", 1), vq)[1], expect="detect",
        pattern=r"shards/.*metrics/val_acc")
    add("flip annotation value in annotations/*.h5 (verify)", IN, ("za",),
        lambda ws: (flip(ws / "za/annotations/probe.h5", "columns/value", 2), ["wsl-verify", "zoo.path=za"])[1],
        expect="detect", pattern=r"annotations/probe\.h5")
    add("flip annotation value in index (verify)", IN, ("za",),
        lambda ws: (flip(ws / "za/index.h5", "annotations/probe/value", 2), ["wsl-verify", "zoo.path=za"])[1],
        expect="detect", pattern=r"index\.h5.*annotations/probe")
    add("delete dataset metrics/val_loss from index (verify)", IN, ("zq",),
        lambda ws: (h5_edit(ws / "zq/index.h5", lambda f: f.__delitem__("metrics/val_loss")), vq)[1],
        expect="detect", pattern=r"metrics/val_loss")
    add("delete dataset from shard (verify)", IN, ("zq",),
        lambda ws: (h5_edit(shard(ws / "zq"), lambda f: f.__delitem__("models/hparams/width")), vq)[1],
        expect="detect", pattern=r"hparams/width")
    add("directory in place of index.h5 (verify)", IN, ("zq",),
        lambda ws: ((ws / "zq/index.h5").unlink(), (ws / "zq/index.h5").mkdir(), vq)[2], expect="detect",
        pattern="index.h5")
    add("directory in place of a checkpoint (verify)", IN, ("zq",),
        lambda ws: (checkpoints(ws / "zq")[2].unlink(), checkpoints(ws / "zq")[0].parent.joinpath(
            "epoch_0002.safetensors").mkdir(), vq)[2], expect="detect", pattern="epoch_0002")
    for dtype in ["int8", "bool", "float64", "float8_e4m3fn", "float16"]:
        def wrong(ws, dtype=dtype):
            import torch
            return replace_weights(ws / "zq", lambda sd: {k: v.to(getattr(torch, dtype)) for k, v in sd.items()})
        add(f"dtype {dtype}, sha resealed (verify)", IN, ("zq",), lambda ws, w=wrong: (w(ws), vq)[1],
            expect="detect", pattern=r"stored as")
        add(f"dtype {dtype}, sha resealed (encoder)", IN, ("zq",), lambda ws, w=wrong: (w(ws), enc)[1],
            pattern=r"stored as")

    def nan_net(ws):
        def f(sd):
            w = next(k for k, v in sd.items() if v.ndim == 2)
            sd[w][0, :3] = float("nan")
            return sd
        replace_weights(ws / "zq", f)
    add("non-finite weights in a training zoo (verify)", IN, ("zq",), lambda ws: (nan_net(ws), vq)[1],
        expect="detect", pattern="non-finite")
    add("non-finite weights in a training zoo (encoder)", IN, ("zq",), lambda ws: (nan_net(ws), enc)[1],
        expect="any", check=lambda ws, r: ([] if r.rc in (0, 2) else [f"exit {r.rc}"]) +
        (["tau nan reported"] if re.search(r"\bnan\b", r.stdout + r.stderr) and r.rc == 0 else []) +
        (["traceback"] if "Traceback" in r.stderr else []))
    add("non-finite weights in reference zoo (evaluate)", IN, ("zq", "zg"), lambda ws: (nan_net(ws), ev)[1],
        expect="any", allowed=lambda rel: rel.startswith("zg/report"),
        check=lambda ws, r: ([] if r.rc in (0, 2) else [f"exit {r.rc}"]) +
        (["traceback"] if "Traceback" in r.stderr else []))
    for proto in (0, 1, 2, 5):
        add(f"pickle protocol {proto} planted (verify)", IN, ("zq",),
            lambda ws, p=proto: ((ws / "zq/models/notes.dat").write_bytes(pickle.dumps({"a": [1, 2.5]}, protocol=p)),
                                 vq)[1], expect="detect", pattern=r"notes\.dat.*pickle")
    add("checkpoint truncated to 0 bytes (verify)", IN, ("zq",),
        lambda ws: (checkpoints(ws / "zq")[4].write_bytes(b""), vq)[1], expect="detect", pattern="epoch_0001")
    add("checkpoint truncated to 0 bytes (encoder)", IN, ("zq",),
        lambda ws: (checkpoints(ws / "zq")[5].write_bytes(b""), enc)[1], pattern="epoch_0002")
    add("checkpoint truncated by half (verify)", IN, ("zq",),
        lambda ws: (checkpoints(ws / "zq")[5].write_bytes(checkpoints(ws / "zq")[5].read_bytes()[:300]), vq)[1],
        expect="detect", pattern="epoch_0002")
    add("shard replaced by a FIFO (verify)", IN, ("zq",),
        lambda ws: (shard(ws / "zq").unlink(), os.mkfifo(ws / "zq/shards/x.h5"), vq)[2], expect="detect",
        pattern=r"x\.h5", timeout=60)
    add("index replaced by a FIFO (encoder)", IN, ("zq",),
        lambda ws: ((ws / "zq/index.h5").unlink(), os.mkfifo(ws / "zq/index.h5"), enc)[2], pattern=r"index\.h5",
        timeout=60)
    add("shard of another zoo planted (verify)", IN, ("zq", "zg"),
        lambda ws: (shutil.copy(shard(ws / "zg"), ws / "zq/shards/"), vq)[1], expect="detect", pattern=r"shards/")
    add("annotation file of another zoo (verify)", IN, ("za", "zq"),
        lambda ws: (shutil.copy(ws / "za/annotations/probe.h5", ws / "zq/annotations/probe.h5")
                    if (ws / "zq/annotations").mkdir() is None else None, vq)[1], expect="detect",
        pattern=r"annotations/probe\.h5")
    add("index.h5 of 0 bytes (verify)", IN, ("zq",), lambda ws: ((ws / "zq/index.h5").write_bytes(b""), vq)[1],
        expect="detect", pattern="index.h5")
    add("index.h5 of 0 bytes (encoder)", IN, ("zq",), lambda ws: ((ws / "zq/index.h5").write_bytes(b""), enc)[1],
        pattern="index.h5")
    add("checkpoint swapped with another net's (verify)", IN, ("zq",),
        lambda ws: (shutil.copy(checkpoints(ws / "zq")[2], checkpoints(ws / "zq")[5]), vq)[1], expect="detect",
        pattern="epoch_0002")
    for seed in range(8):
        def flips(ws, seed=seed):
            import random
            rng = random.Random(seed)
            p = ws / "zq/index.h5"
            raw = bytearray(p.read_bytes())
            for _ in range(rng.choice((1, 2))):
                i = rng.randrange(len(raw))
                raw[i] ^= 1 << rng.randrange(8)
            p.write_bytes(bytes(raw))
            return ["wsl-verify", "zoo.path=zq"]
        # a flip in unused bytes changes nothing: verify may pass, but only if the content is unchanged
        add(f"random bit flips of index.h5 #{seed} (verify)", IN, ("zq",), flips, expect="any", timeout=60,
            check=lambda ws, r: ([] if r.rc in (0, 1) else [f"exit {r.rc}"]) +
            (["traceback"] if "Traceback" in r.stdout + r.stderr else []) +
            (content_changed(ws) if r.rc == 0 else []))

    # -- bounded resources --
    smp = ["wsl-sample", "run=gen", "zoo.path=out", "logger=none"]
    add("sample n=1e12", BR, ("gen",), lambda ws: [*smp, "n=1000000000000"], pattern=r"\bn\b", mem=3 << 30,
        timeout=60)
    add("sample n=-1", BR, ("gen",), lambda ws: [*smp, "n=-1"], pattern=r"\bn\b")
    add("sample n=0", BR, ("gen",), lambda ws: [*smp, "n=0"], pattern=r"\bn\b")
    add("sample batch_size=0", BR, ("gen",), lambda ws: [*smp, "n=2", "batch_size=0"], pattern="batch_size")
    add("sample steps=1e9", BR, ("gen",), lambda ws: [*smp, "n=2", "steps=1000000000"], pattern="steps",
        timeout=60)
    gen_edits = {"steps=1e9": lambda d: d["method"]["kwargs"].__setitem__("steps", 10**9),
                 "arch width 20000": lambda d: d["arch"].__setitem__("width", 20000),
                 "hidden width 1e9": lambda d: d["denoiser"]["kwargs"].__setitem__("hidden", 10**9),
                 "denoiser name os.system": lambda d: d["denoiser"].__setitem__("name", "os.system"),
                 "layout offsets past the end": lambda d: d["representation"]["layout"][0].__setitem__(3, 10**12),
                 "solver unknown": lambda d: d["method"]["kwargs"].__setitem__("solver", "rk99")}
    for what, fn in gen_edits.items():
        add(f"generator run metadata {what}", BR, ("gen",),
            lambda ws, fn=fn: (edit_generator(ws / "gen", fn), [*smp, "n=2"])[1], pattern="generator.safetensors",
            timeout=60, check=max_mb(1500))
    add("generator run metadata not JSON", BR, ("gen",),
        lambda ws: (edit_generator(ws / "gen", None), [*smp, "n=2"])[1], pattern="generator.safetensors")
    add("generator run missing its checkpoint", BR, ("gen",),
        lambda ws: ((ws / "gen/generator.safetensors").unlink(), [*smp, "n=2"])[1], pattern="generator.safetensors")
    add("sample run=a zoo (not a run)", BR, ("zq",),
        lambda ws: ["wsl-sample", "run=zq", "zoo.path=out", "n=2", "logger=none"], pattern="run")

    def unwritten(ws):
        def f(h):
            for name in ("test_acc", "train_loss"):
                del h[f"metrics/{name}"]
                h.create_dataset(f"metrics/{name}", shape=(4, 4_500_000), dtype="f8", chunks=(1, 1 << 16))
        h5_edit(ws / "zq/index.h5", f)
    add("unwritten chunked datasets in index (verify)", BR, ("zq",), lambda ws: (unwritten(ws), vq)[1],
        expect="detect", pattern="declares", check=max_mb(900))
    add("unwritten chunked datasets in index (encoder)", BR, ("zq",), lambda ws: (unwritten(ws), enc)[1],
        pattern="declares", check=max_mb(900))
    add("checkpoint grown to 1 GB sparse (encoder)", BR, ("zq",),
        lambda ws: (os.truncate(checkpoints(ws / "zq")[5], 1 << 30), enc)[1], pattern="appended",
        check=max_mb(900))
    def huge_header(ws):
        p = checkpoints(ws / "zq")[5]
        raw = p.read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        head = json.loads(raw[8:8 + n])
        head["__metadata__"]["junk"] = "x" * (64 << 20)
        h = json.dumps(head).encode()
        p.write_bytes(struct.pack("<Q", len(h)) + h + raw[8 + n:])
    add("64 MB JSON in safetensors metadata (verify)", BR, ("zq",), lambda ws: (huge_header(ws), vq)[1],
        expect="detect", pattern="epoch_0002", check=max_mb(1500))
    add("safetensors header length 2^60 (encoder)", BR, ("zq",),
        lambda ws: ((lambda p: p.write_bytes(struct.pack("<Q", 1 << 60) + p.read_bytes()[8:]))(
            checkpoints(ws / "zq")[5]), enc)[1], pattern="epoch_0002", check=max_mb(1500))
    add("zoo net.width=1e9", BR, (), lambda ws: with_(["wsl-zoo", "zoo.path=z", *TINY], "net.width=1000000000"),
        pattern="width")
    add("zoo population.size=0", BR, (), lambda ws: with_(["wsl-zoo", "zoo.path=z", *TINY], "population.size=0"),
        pattern="size")
    add("zoo train.batch_size=0", BR, (), lambda ws: with_(["wsl-zoo", "zoo.path=z", *TINY], "train.batch_size=0"),
        pattern="batch_size")
    add("evaluate chunk=0", BR, ("zq", "zg"), lambda ws: [*ev, "chunk=0"], pattern="chunk")
    add("evaluate max_nets=-1", BR, ("zq", "zg"), lambda ws: [*ev, "max_nets=-1"], pattern="max_nets")

    # -- one line, exit 2, nothing left behind --
    def a_file(ws):
        (ws / "afile").write_text("mine\n")
    zoo = ["wsl-zoo", *TINY]
    add("zoo zoo.path=<a file>", OL, (), lambda ws: (a_file(ws), [*zoo, "zoo.path=afile"])[1], pattern="afile")
    add("zoo zoo.path under a file", OL, (), lambda ws: (a_file(ws), [*zoo, "zoo.path=afile/z"])[1],
        pattern="afile")
    add("zoo zoo.path= (empty)", OL, (), lambda ws: [*zoo, "zoo.path="], pattern="zoo.path")
    add("zoo zoo.path with escapes and U+202E", OL, (),
        lambda ws: (a_file(ws), [*zoo, "zoo.path=afile/x\x1b[2K\u202eevil"])[1], check=clean_output)
    add("verify zoo.path with newline and escapes", OL, (),
        lambda ws: ["wsl-verify", "zoo.path=no\nzoo\x1b[31m\u202e"], check=clean_output)
    add("verify a directory that is no zoo", OL, (),
        lambda ws: ((ws / "home").mkdir(), (ws / "home/notes.txt").write_text("x"), ["wsl-verify", "zoo.path=home"])[2],
        expect="detect", pattern="index.h5")
    add("zoo trainer.devices=0", OL, (), lambda ws: [*zoo, "zoo.path=z", "trainer.devices=0"], pattern="devices")
    add("zoo trainer.accelerator=gpu", OL, (), lambda ws: with_(zoo, "zoo.path=z", "trainer.accelerator=gpu"),
        pattern="accelerator|GPU|gpu")
    add("encoder trainer.accelerator=gpu", OL, ("zq",), lambda ws: with_(enc, "trainer.accelerator=gpu"),
        pattern="accelerator|GPU|gpu")
    add("plot plot.out_dir=<file>", OL, ("zq",),
        lambda ws: (a_file(ws), ["wsl-plot", "zoo.path=zq", "plot.out_dir=afile", "logger=none"])[1], pattern="afile")
    add("encoder zoo.epoch=99", OL, ("zq",), lambda ws: [*enc, "zoo.epoch=99"], pattern="epoch")
    add("generator zoo.epoch=99", OL, ("zq",),
        lambda ws: ["wsl-train-generator", "zoo.path=zq", "zoo.epoch=99", "trainer.max_steps=2", *QUIET],
        pattern="epoch")
    add("evaluate epoch=99", OL, ("zq", "zg"), lambda ws: [*ev, "epoch=99"], pattern="epoch")
    add("sample device=cuda", OL, ("gen",), lambda ws: [*smp, "n=2", "device=cuda"], pattern="cuda")
    add("align out=<file>", OL, ("zq",),
        lambda ws: (a_file(ws), ["wsl-align", "zoo.path=zq", "out=afile", "logger=none"])[1], pattern="afile")
    add("zoo dataset=mnist dataset.root=/missing", OL, (),
        lambda ws: [*zoo, "zoo.path=z", "dataset=mnist", "dataset.root=/missing"], pattern="missing")
    for lr in ["nan", "inf", "-inf", "[0.1,nan]", "-0.1"]:
        add(f"zoo train.lr={lr}", OL, (), lambda ws, lr=lr: [*zoo, "zoo.path=z", f"train.lr={lr}"], pattern="lr")
    for ov in ["+trainer.max_steps=3", "+trainer.limit_train_batches=0.1", "+trainer.max_epochs=2",
               "trainer.max_epochs=2", "+trainer.accumulate_grad_batches=4"]:
        add(f"zoo {ov}", OL, (), lambda ws, ov=ov: [*zoo, "zoo.path=z", ov], pattern="trainer")
    add("sample condition={val_acc:0.9} on an unconditional run", OL, ("gen",),
        lambda ws: [*smp, "n=2", "condition={val_acc:0.9}"],
        check=lambda ws, r: ["'unknown config key'"] if "unknown config key" in r.stderr else [])
    add("generator zoo.filter={width:999}", OL, ("zq",),
        lambda ws: ["wsl-train-generator", "zoo.path=zq", "zoo.filter={width:999}", "trainer.max_steps=2", *QUIET],
        check=lambda ws, r: ["'unknown config key'"] if "unknown config key" in r.stderr else [])
    add("unknown key typo (zoo.pth)", OL, (), lambda ws: [*zoo, "zoo.pth=z"], pattern="zoo.pth")
    add("encoder seeds=[]", OL, ("zq",), lambda ws: with_(enc, "seeds=[]"), pattern="seeds")
    add("encoder split.fractions=[1,0,0]", OL, ("zq",), lambda ws: with_(enc, "split.fractions=[1,0,0]"),
        pattern="split|fraction")
    add("planted escape-code file name (verify output)", OL, ("zq",),
        lambda ws: ((ws / "zq/models/x\x1b[2K\x1b[1Gall good\n.pkl").write_bytes(b"junk"), vq)[1],
        expect="any", check=both(clean_output, lambda ws, r: [] if r.rc == 1 else [f"exit {r.rc}"]))
    ro_prep, ro_undo = read_only("zq")
    add("read-only zoo: no-op wsl-zoo rerun", OL, ("zq",),
        lambda ws: (ro_prep(ws), ["wsl-zoo", "zoo.path=zq", *ZQ])[1], expect="ok", cleanup=ro_undo)
    add("read-only zoo: wsl-plot", OL, ("zq",),
        lambda ws: (ro_prep(ws), ["wsl-plot", "zoo.path=zq", "logger=none"])[1], cleanup=ro_undo)
    add("read-only zoo: verify repair=true", OL, ("zq",),
        lambda ws: (ro_prep(ws), ["wsl-verify", "zoo.path=zq", "repair=true"])[1], pattern="repair",
        cleanup=ro_undo)
    add("read-only zoo: wsl-landscape", OL, ("zq",),
        lambda ws: (ro_prep(ws), ["wsl-landscape", "zoo.path=zq", "landscape=basic", "logger=none"])[1],
        cleanup=ro_undo)
    add("plot plot.dpi=100000", BR, ("zq",), lambda ws: ["wsl-plot", "zoo.path=zq", "plot.dpi=100000", "logger=none"],
        pattern="dpi", check=max_mb(2000))
    add("plot plot.format=exe", OL, ("zq",), lambda ws: ["wsl-plot", "zoo.path=zq", "plot.format=exe", "logger=none"],
        pattern="format")
    add("sample job_id=../../evil (path traversal)", SL, ("gen",), lambda ws: [*smp, "n=2", "job_id=../../evil"],
        pattern=r"job.id")
    add("sample job_id=a/b", SL, ("gen",), lambda ws: [*smp, "n=2", "job_id=a/b"], pattern=r"job.id")
    add("sample guidance=nan", OL, ("gen",), lambda ws: [*smp, "n=2", "guidance=nan"], pattern="guidance")
    add("evaluate reference = the generated zoo itself", OL, ("zg",),
        lambda ws: ["wsl-evaluate", "zoo.path=zg", "reference=zg", *FAST_EVAL], pattern="reference")
    add("verify checksums=maybe", OL, ("zq",), lambda ws: ["wsl-verify", "zoo.path=zq", "checksums=maybe"],
        pattern="checksums")
    add("landscape model_ids=[nope]", OL, ("zq",),
        lambda ws: ["wsl-landscape", "zoo.path=zq", "model_ids=[nope]", "logger=none"], pattern="nope")
    return A


_DUMP = """
import hashlib, sys, h5py, numpy as np
h = hashlib.sha256()
def visit(name, obj):
    h.update(name.encode())
    for k in sorted(obj.attrs):
        if k in ("content_sha256",):
            continue
        h.update(k.encode()); h.update(repr(obj.attrs[k]).encode())
    if isinstance(obj, h5py.Dataset):
        h.update(np.asarray(obj[()]).tobytes() if obj.dtype.kind != "O" else repr(obj[()].tolist()).encode())
with h5py.File(sys.argv[1], "r") as f:
    visit("/", f)
    f.visititems(visit)
print(h.hexdigest())
"""


def content_changed(ws: Path) -> list[str]:
    """After verify passed a bit-flipped index: its content must equal the original's (the flip hit unused bytes)."""
    def dump(p):
        r = subprocess.run([sys.executable, "-c", _DUMP, str(p)], capture_output=True, text=True, timeout=60)
        return r.stdout.strip() if r.returncode == 0 else f"unreadable: {r.stderr.strip()[-200:]}"
    flipped, original = dump(ws / "zq/index.h5"), dump(BASE_ZQ_INDEX)
    if flipped.startswith("unreadable"):
        return ["verify passed an index that h5py cannot read"]
    return [] if flipped == original else ["verify passed an index whose content changed"]


BASE_ZQ_INDEX: Path = Path()


# ---- building the base and running the campaign -----------------------------------------------------------------
def build_base(base: Path) -> None:
    steps = [["wsl-zoo", "zoo.path=zq", *ZQ],
             ["wsl-train-generator", "zoo.path=zq", "generator=flow", "trainer.max_steps=10",
              "generator.denoiser.hidden=32", "hydra.run.dir=gen", *QUIET],
             ["wsl-sample", "run=gen", "n=4", "zoo.path=zg", "logger=none"]]
    for argv in steps:
        r = run(argv, base, timeout=600)
        if r.rc != 0:
            sys.exit(f"building the base failed: {' '.join(argv)}: exit {r.rc}\n{r.stderr[-3000:]}")
    shutil.rmtree(base / "runs", ignore_errors=True)
    (base / "gen" / "train_generator.log").unlink(missing_ok=True)
    # za: the training zoo with one annotation group written through the real API
    shutil.copytree(base / "zq", base / "za")
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from wsl.zoo import Zoo, write_annotation
    z = Zoo(base / "za")
    write_annotation(base / "za", "probe", z.ids, {"value": np.arange(len(z.ids)) + 0.5,
                                                "label": [f"l{i}" for i in range(len(z.ids))]},
                     {"estimator": "campaign"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=None, help="run the attacks whose name contains this substring")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument("--jobs", type=int, default=2, help="attacks run at once")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="wsl-attacks-"))
    global BASE_ZQ_INDEX
    BASE_ZQ_INDEX = tmp / "base" / "zq" / "index.h5"
    chosen = [a for a in attacks() if args.only is None or args.only.lower() in a.name.lower()]
    print(f"{len(chosen)} attacks; workspace {tmp}", flush=True)
    try:
        (tmp / "base").mkdir()
        build_base(tmp / "base")
        print(f"base built in {time.time() - t0:.0f}s", flush=True)
        results = []
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for a, why, r in pool.map(lambda a: execute(a, tmp / "base", tmp / "attacks"), chosen):
                secs = f"{r.seconds:5.1f}s" if r else "  -   "
                print(f"{'FAIL' if why else 'PASS'} {secs} [{a.cls}] {a.name}", flush=True)
                if why:
                    tail = " | ".join((r.stderr if r else "").strip().splitlines()[-3:])[-400:]
                    print(f"     reasons: {'; '.join(why)[:800]}", flush=True)
                    print(f"     stderr tail: {tail!r}", flush=True)
                results.append((a, why))
    finally:
        if not args.keep:
            subprocess.run(["chattr", "-R", "-i", str(tmp)], capture_output=True) if os.geteuid() == 0 else None
            shutil.rmtree(tmp, ignore_errors=True)
    print("\nclass                 tried  passed  failed")
    for cls in CLASSES:
        rs = [why for a, why in results if a.cls == cls]
        print(f"{cls:<21} {len(rs):>5}  {sum(not w for w in rs):>6}  {sum(bool(w) for w in rs):>6}")
    n_fail = sum(bool(w) for _, w in results)
    print(f"{'total':<21} {len(results):>5}  {len(results) - n_fail:>6}  {n_fail:>6}")
    print(f"wall time {time.time() - t0:.0f}s" + (f"; kept {tmp}" if args.keep else ""))
    sys.exit(1 if n_fail else 0)


if __name__ == "__main__":
    main()
