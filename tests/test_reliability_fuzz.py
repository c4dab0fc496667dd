"""Property-based: malformed indexes, checkpoint headers and metadata fed to the zoo reader.

Whatever hypothesis writes into a zoo, reading it either works or raises ZooFormatError: never
another exception type, never a hang, and wsl-verify reports it without raising. The base zoo is
written by the real ShardWriter (real nets, no training needed: the property is about the format,
not about what the weights learned).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from wsl.errors import ZooFormatError
from wsl.nets import build_net
from wsl.zoo import ShardWriter, Zoo, read_checkpoint_metadata
from wsl.zoo.format import sha256_bytes
from wsl.zoo.table import seal_file
from wsl.zoo.verify import verify_zoo

ARCH = {"name": "mlp", "in_shape": [1, 4, 4], "num_classes": 3, "width": 5, "depth": 1, "activation": "relu",
        "init": "default"}
# Deterministic (derandomize: the same examples on every run, no example database) and bounded, so that
# it cannot flake in CI; no per-example deadline (a loaded CI machine is slow, not wrong): a hang would
# still show as a test that never ends.
FUZZ = settings(max_examples=15, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def base_zoo(tmp_path_factory) -> Path:
    """Two jobs, three models, two checkpoints each; an annotation group."""
    import torch

    from wsl.zoo import write_annotation

    root = tmp_path_factory.mktemp("fuzz") / "zoo"
    torch.manual_seed(0)
    for job, n in (("jobA", 2), ("jobB", 1)):
        w = ShardWriter(root, job, config={"dataset": {"name": "digits"}}, zoo_name="fuzz")
        for i in range(n):
            mid = f"{job}-m{i}"
            net = build_net(ARCH)
            for e in (0, 1):
                w.write_checkpoint(mid, e, net.state_dict(), ARCH)
            w.add_model(mid, ARCH, {"lr": 0.1 * (i + 1), "optimizer": "sgd", "seed_init": i}, "trained",
                        {"test_acc": [0.3, 0.5], "train_loss": [2.0, 1.0]})
        w.commit()
    write_annotation(root, "probe", ["jobA-m0", "jobB-m0"], {"value": np.array([1.0, 2.0])}, {"n": 3})
    return root


def exercise_reader(root: Path) -> None:
    """Everything a user does with a zoo; only ZooFormatError may come out."""
    try:
        z = Zoo(root)
        z.table()
        z.cells()
        for mid in z.ids:
            z.history(mid)
            z.hparams(mid)
            for e in z.checkpoint_epochs(mid):
                z.state_dict(mid, e)
                read_checkpoint_metadata(z.checkpoint_path(mid, e))
            z.load_model(mid)
        if z.ids:
            z.weights()
        if "probe" in z._table.annotations:
            z.annotation("probe")
    except ZooFormatError:
        pass
    problems = verify_zoo(root)  # never raises, whatever it finds
    assert isinstance(problems, list)


def _fresh(base: Path, tmp: str) -> Path:
    root = Path(tmp) / "zoo"
    shutil.copytree(base, root)
    return root


# ---- strategies -------------------------------------------------------------------------------------
_text = st.text(max_size=12)
_scalar = st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=True, allow_infinity=True), _text,
                    st.booleans(), st.binary(max_size=8))
_values = st.one_of(
    _scalar,
    st.lists(st.integers(-(2**40), 2**40), max_size=6),
    st.lists(st.floats(allow_nan=True), max_size=6),
    st.lists(_text, max_size=6),
    st.lists(st.lists(st.integers(-5, 5), min_size=2, max_size=2), max_size=4),  # 2-D
    st.lists(st.binary(max_size=6), max_size=4),
)


def _as_array(v):
    if isinstance(v, (bytes, str)) or not isinstance(v, list):
        return np.asarray(v if not isinstance(v, str) else v.encode("utf-8", "surrogatepass"))
    if v and isinstance(v[0], str):
        return np.asarray([s.encode("utf-8", "surrogatepass") for s in v])
    return np.asarray(v)


TABLE_ITEMS = ["models/model_id", "models/job_id", "models/status", "models/arch", "models/diverged_epoch",
               "models/hparams/lr", "models/hparams/optimizer", "metrics/epochs", "metrics/test_acc",
               "metrics/train_loss", "checkpoints/epoch", "checkpoints/path", "checkpoints/sha256", "jobs/job_id",
               "jobs/config", "jobs/overrides", "annotations/probe/value", "models", "checkpoints", "metrics",
               "models/hparams"]
ATTRS = ["format", "format_version", "zoo_name", "config"]


@st.composite
def table_edits(draw):
    """Edits of an HDF5 table: replace/delete a dataset or group, rewrite an attribute."""
    n = draw(st.integers(1, 3))
    edits = []
    for _ in range(n):
        kind = draw(st.sampled_from(["replace", "delete", "attr", "huge", "link"]))
        target = draw(st.sampled_from(ATTRS if kind == "attr" else TABLE_ITEMS))
        edits.append((kind, target, draw(_values)))
    return edits


def _apply_table_edits(path: Path, edits) -> None:
    with h5py.File(path, "r+") as f:
        for edit in edits:
            try:
                _apply_table_edit(f, *edit)
            except (TypeError, ValueError, KeyError, RuntimeError, OSError):
                pass  # an edit HDF5 cannot make (e.g. a dataset under a dataset): the others still apply


def _apply_table_edit(f: h5py.File, kind: str, target: str, value) -> None:
    if kind == "attr":
        try:
            f.attrs[target] = _as_array(value)
        except (TypeError, ValueError):
            f.attrs[target] = str(value)
        return
    if target in f:
        del f[target]
    parent = target.rsplit("/", 1)[0] if "/" in target else None
    if parent and parent not in f:
        f.create_group(parent)
    if kind == "replace":
        try:
            f.create_dataset(target, data=_as_array(value))
        except (TypeError, ValueError):
            f.create_dataset(target, data=str(value).encode("utf-8", "surrogatepass"))
    elif kind == "huge":  # declared, never written: an 8-byte file promising terabytes
        f.create_dataset(target, shape=(1 << 22, 1 << 20), dtype="f8", chunks=(1, 1 << 10))
    elif kind == "link":
        f[target] = h5py.ExternalLink("/etc/hostname", "/x")


# ---- properties ------------------------------------------------------------------------------------------
@FUZZ
@given(edits=table_edits(), which=st.sampled_from(["index.h5", "shards/jobA.h5", "annotations/probe.h5"]),
       reseal=st.booleans())
def test_malformed_tables_raise_only_zoo_format_errors(base_zoo, edits, which, reseal):
    with tempfile.TemporaryDirectory() as tmp:
        root = _fresh(base_zoo, tmp)
        _apply_table_edits(root / which, edits)
        if reseal and not any(kind in ("huge", "link") for kind, _, _ in edits):
            try:  # consistent content checksums: the edit reaches the parser, not only the checksum check
                seal_file(root / which)
            except Exception:  # noqa: BLE001 (an edit that h5py itself cannot read back: stays unsealed)
                pass
        exercise_reader(root)


@FUZZ
@given(data=st.data())
def test_corrupted_bytes_raise_only_zoo_format_errors(base_zoo, data):
    with tempfile.TemporaryDirectory() as tmp:
        root = _fresh(base_zoo, tmp)
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".lock")
        path = data.draw(st.sampled_from(files))
        raw = bytearray(path.read_bytes())
        how = data.draw(st.sampled_from(["flip", "truncate", "append"]))
        if how == "flip":
            for pos in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=8)):
                raw[pos] ^= data.draw(st.integers(1, 255))
        elif how == "truncate":
            raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
        else:
            raw += data.draw(st.binary(min_size=1, max_size=64))
        path.write_bytes(bytes(raw))
        exercise_reader(root)


_json_value = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), _text),
                           lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(_text, c, max_size=4)),
                           max_leaves=8)


@st.composite
def header_edits(draw):
    """Edits of a safetensors header: metadata values, dtypes, shapes, offsets, unexpected keys."""
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["meta", "arch", "dtype", "shape", "offsets", "entry", "nesting"]))
        if kind == "meta":
            key = draw(st.sampled_from(["format", "format_version", "epoch", "model_id", "job_id", "zoo", "arch"]))
            edits.append((kind, key, draw(st.one_of(_text, st.integers(-5, 10**12).map(str)))))
        elif kind == "arch":
            key = draw(st.sampled_from(["name", "width", "depth", "in_shape", "num_classes", "activation", "extra"]))
            edits.append((kind, key, draw(_json_value)))
        elif kind == "dtype":
            edits.append((kind, None, draw(st.sampled_from(["F32", "F64", "I64", "BOOL", "F16", "Q4", "", "f32"]))))
        elif kind == "shape":
            edits.append((kind, None, draw(st.lists(st.integers(-3, 2**62), max_size=5))))
        elif kind == "offsets":
            edits.append((kind, None, draw(st.lists(st.integers(-10, 2**40), max_size=3))))
        elif kind == "entry":
            edits.append((kind, draw(_text), draw(_json_value)))
        else:
            edits.append((kind, None, draw(st.integers(50, 5000))))
    return edits


def _apply_header_edits(path: Path, edits) -> bytes:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header, body = json.loads(raw[8 : 8 + n]), raw[8 + n :]
    meta = header["__metadata__"]
    tensors = sorted(k for k in header if k != "__metadata__")
    for i, (kind, key, value) in enumerate(edits):
        t = tensors[i % len(tensors)]
        if kind == "meta":
            meta[key] = value
        elif kind == "arch":
            try:
                arch = json.loads(meta["arch"])
            except (json.JSONDecodeError, RecursionError, TypeError):
                arch = None
            arch = arch if isinstance(arch, dict) else dict(ARCH)
            arch[key] = value
            meta["arch"] = json.dumps(arch)
        elif kind == "dtype":
            header[t]["dtype"] = value
        elif kind == "shape":
            header[t]["shape"] = value
        elif kind == "offsets":
            header[t]["data_offsets"] = value
        elif kind == "entry":
            header[key or "x"] = value
        else:  # deep nesting: the JSON parser's recursion limit
            meta["arch"] = "[" * value + "]" * value
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + body


@FUZZ
@given(edits=header_edits(), pick=st.integers(0, 5))
def test_crafted_checkpoint_headers_with_valid_checksums_raise_only_zoo_format_errors(base_zoo, edits, pick):
    """An untrusted zoo is self-consistent: its index holds the checksums of the crafted files."""
    with tempfile.TemporaryDirectory() as tmp:
        root = _fresh(base_zoo, tmp)
        z = Zoo(root)
        mid = z.ids[pick % len(z.ids)]
        path = z.checkpoint_path(mid, pick % 2)
        data = _apply_header_edits(path, edits)
        path.write_bytes(data)
        rel = str(path.relative_to(root))
        for table in [root / "index.h5", *(root / "shards").glob("*.h5")]:
            with h5py.File(table, "r+") as f:
                paths = f["checkpoints/path"].asstr()[()]
                shas = f["checkpoints/sha256"].asstr()[()].astype(object)
                shas[paths == rel] = sha256_bytes(data)
                del f["checkpoints/sha256"]
                f.create_dataset("checkpoints/sha256", data=shas, dtype=h5py.string_dtype())
            seal_file(table)
        exercise_reader(root)


@FUZZ
@given(archs=st.lists(st.one_of(_json_value.map(json.dumps), _text), min_size=1, max_size=3),
       hp=st.one_of(_values, st.just([1, 2, 3])))
def test_malformed_index_metadata_raises_only_zoo_format_errors(base_zoo, archs, hp):
    """Architectures and hyperparameters in the index: any JSON, any text, any numbers."""
    with tempfile.TemporaryDirectory() as tmp:
        root = _fresh(base_zoo, tmp)
        with h5py.File(root / "index.h5", "r+") as f:
            col = f["models/arch"].asstr()[()].astype(object)
            for i, a in enumerate(archs[: len(col)]):
                col[i] = a
            del f["models/arch"]
            f.create_dataset("models/arch", data=col, dtype=h5py.string_dtype())
            del f["models/hparams/lr"]
            try:
                f.create_dataset("models/hparams/lr", data=_as_array(hp))
            except (TypeError, ValueError):
                f.create_dataset("models/hparams/lr", data=b"x")
        seal_file(root / "index.h5")  # consistent checksums: the reader meets the values themselves
        exercise_reader(root)


def test_the_base_zoo_reads_cleanly(base_zoo):
    """The properties start from a valid zoo (so what breaks is the edit)."""
    assert verify_zoo(base_zoo) == []
    z = Zoo(base_zoo)
    assert len(z.ids) == 3 and z.weights()[0].shape[0] == 3


# ---- damaged HDF5 structures (deterministic) -------------------------------------------------------------
# HDF5's own checks fail with RuntimeError ("wrong B-tree signature", "Link visitation failed", "bad heap
# free list"), sometimes surfacing as SystemError from h5py's lock: hypothesis found a bit flip in
# annotations/*.h5 that escaped the reader and wsl-verify that way. Damaging each kind of structure by
# its signature reaches those paths on every run, whatever the random bytes of a fuzz example.
SIGNATURES = {"superblock": b"\x89HDF", "btree": b"TREE", "local heap": b"HEAP", "symbol table": b"SNOD",
              "global heap": b"GCOL"}


@pytest.mark.parametrize("structure", sorted(SIGNATURES))
@pytest.mark.parametrize("which", ["index.h5", "shards/jobA.h5", "annotations/probe.h5"])
def test_damaged_hdf5_structures_are_zoo_format_errors_naming_the_file(base_zoo, tmp_path, which, structure):
    root = _fresh(base_zoo, str(tmp_path))
    path = root / which
    raw = bytearray(path.read_bytes())
    sig = SIGNATURES[structure]
    at = [i for i in range(len(raw) - len(sig) + 1) if raw[i:i + len(sig)] == sig]
    assert at, f"{which} has no {structure} ({sig!r})"
    for i in at:  # every copy of the structure: whichever one the reader visits first is damaged
        raw[i + 1] ^= 0x5A
    path.write_bytes(bytes(raw))

    try:
        z = Zoo(root)
        z.table()
        if "probe" in z._table.annotations:
            z.annotation("probe")
    except ZooFormatError as e:
        assert str(root / "index.h5") in str(e) and which == "index.h5", str(e)
        assert "\n" not in str(e)
    problems = verify_zoo(root, checksums=False)
    named = [p for p in problems if p.level == "error" and Path(p.path) == path]
    assert named, f"wsl-verify does not report the damaged {which}: {[str(p) for p in problems]}"


# ---- random bit flips: detected or harmless, never a silent change (deterministic) ------------------------
FLIP_TRIALS = 80
FLIP_FILES = ["index.h5", "shards/jobA.h5", "annotations/probe.h5"]
# A bit flip can make HDF5 itself loop forever (a global heap object of size 0: the reader spun for 17
# minutes in H5Aread, where no Python signal reaches it). The trials run in a child process, watched:
# a trial that does not finish in TRIAL_SECONDS fails the test naming the trial and its flips.
TRIAL_SECONDS = 30


def _loaded(root: Path, which: str):
    """What a reader gets from `which`: the Zoo's table and annotations for the index, the table (or
    annotation) a merge reads for a shard (or annotation file). Raises ZooFormatError if refused."""
    from wsl.zoo.table import read_annotation_file, read_table

    def canon(x):
        if isinstance(x, dict):
            return {k: canon(v) for k, v in sorted(x.items())}
        if isinstance(x, (list, tuple)):
            return [canon(v) for v in x]
        if isinstance(x, np.ndarray):
            return [x.dtype.str, list(x.shape), canon(x.tolist())]
        if isinstance(x, float) and x != x:
            return "nan"
        return x if isinstance(x, (str, int, float, bool, type(None))) else repr(x)

    path = root / which
    if which == "index.h5":
        z = Zoo(root)
        t = z._table
        ann = {g: [a.model_ids, a.columns, a.attrs] for g, a in t.annotations.items()}
        return canon({"table": z.table().to_dict("list"), "rows": [vars(r) for r in t.rows], "jobs": t.jobs,
                      "attrs": t.attrs, "ann": ann})
    if which.startswith("shards/"):
        t = read_table(path)
        return canon({"rows": [vars(r) for r in t.rows], "jobs": t.jobs, "attrs": t.attrs})
    a = read_annotation_file(path)
    return canon([a.group, a.model_ids, a.columns, a.attrs])


def _flip_trials(which: str, n_bytes: int) -> list:
    """The seeded trials: [[(byte, bit), ...] one or two flips] * FLIP_TRIALS."""
    rng = np.random.default_rng(12 + FLIP_FILES.index(which))
    return [[(int(pos), int(rng.integers(0, 8))) for pos in rng.integers(0, n_bytes, size=int(rng.integers(1, 3)))]
            for _ in range(FLIP_TRIALS)]


def _run_flip_trials(base: Path, work: Path, which: str) -> None:
    """In the child: each trial's outcome as one JSON line on stdout, as soon as it is known."""
    original = _loaded(base, which)
    for trial, flips in enumerate(_flip_trials(which, (base / which).stat().st_size)):
        root = work / f"t{trial}"
        shutil.copytree(base, root)
        path = root / which
        raw = bytearray(path.read_bytes())
        for pos, bit in flips:
            raw[pos] ^= 1 << bit
        path.write_bytes(bytes(raw))
        try:
            got = _loaded(root, which)
        except ZooFormatError as e:
            outcome = "refused" if str(path) in str(e) else f"refused without naming the file: {e}"
        else:
            if got == original:
                outcome = "unchanged"
            elif any(p.path == str(path) for p in verify_zoo(root, checksums=False)):
                outcome = "reported"
            else:
                outcome = "silent"
        print(json.dumps({"trial": trial, "outcome": outcome}), flush=True)
        shutil.rmtree(root)


@pytest.mark.parametrize("which", FLIP_FILES)
def test_random_bit_flips_are_refused_or_reported_never_silent(base_zoo, tmp_path, which):
    """80 seeded trials of 1-2 random bit flips in one file. Each flip is refused by the reader
    (ZooFormatError naming the file), or changes nothing the reader loads, or, if the reader loads
    changed content, is reported by wsl-verify naming the file. None changes content silently, none
    hangs. (Before content checksums: 28 of 80 flips of index.h5 changed loaded content unnoticed;
    before the global heap check, trial 20 of annotations/probe.h5 hung the reader.)"""
    trials = _flip_trials(which, (base_zoo / which).stat().st_size)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    child = subprocess.Popen([sys.executable, __file__, str(base_zoo), str(tmp_path), which], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in child.stdout] + [lines.put(None)], daemon=True).start()
    counts = {"refused": 0, "unchanged": 0, "reported": 0, "silent": 0}
    silent = []
    try:
        for trial, flips in enumerate(trials):
            try:
                line = lines.get(timeout=TRIAL_SECONDS)
            except queue.Empty:
                pytest.fail(f"{which}: trial {trial} (byte, bit flipped: {flips}) did not finish in {TRIAL_SECONDS} s: "
                            "the reader hangs on it")
            if line is None:
                child.wait()
                pytest.fail(f"{which}: the trials stopped at trial {trial} ({flips}), exit status {child.returncode}:\n"
                            f"{child.stderr.read()[-3000:]}")
            got = json.loads(line)
            assert got["trial"] == trial and got["outcome"] in counts, (trial, flips, got)
            counts[got["outcome"]] += 1
            if got["outcome"] == "silent":
                silent.append(trial)
    finally:
        child.kill()
        child.wait()
    print(f"{which}: {counts}")
    assert counts["silent"] == 0, (counts, silent)
    assert counts["refused"] >= FLIP_TRIALS // 10, counts  # the flips reached the data, not only free space


@pytest.mark.timeout(120, method="thread")  # a regression spins inside HDF5: only a thread can stop the run
def test_a_corrupt_global_heap_is_refused_not_walked_forever(base_zoo, tmp_path):
    """The flip that hung the reader: a string's size in the global heap grown by 256 lands HDF5's walk
    of the collection on zeroed free space (an object of size 0), which it walks forever. The reader
    and wsl-verify refuse it (naming the file) before HDF5 reads a string."""
    from wsl.zoo.table import read_annotation_file

    root = _fresh(base_zoo, str(tmp_path))
    path = root / "annotations/probe.h5"
    raw = bytearray(path.read_bytes())
    obj, last = raw.index(b"GCOL") + 16, None  # objects: index (2 bytes), refs (2), 4 reserved, size (8), data
    while int.from_bytes(raw[obj : obj + 2], "little") != 0:  # up to the free space (index 0)
        last, obj = obj, obj + 16 + (int.from_bytes(raw[obj + 8 : obj + 16], "little") + 7) // 8 * 8
    raw[last + 9] ^= 1  # the last string's size + 256
    size = int.from_bytes(raw[last + 8 : last + 16], "little")
    landing = last + 16 + (size + 7) // 8 * 8
    assert raw[landing : landing + 16] == bytes(16)  # the walk goes on at a "free space of 0 bytes"
    path.write_bytes(bytes(raw))
    with pytest.raises(ZooFormatError, match="global heap") as e:
        read_annotation_file(path)
    assert str(path) in str(e.value)
    assert any(p.path == str(path) and p.level == "error" for p in verify_zoo(root, checksums=False))


def test_an_attribute_type_turned_into_a_sequence_is_refused_not_a_crash(base_zoo, tmp_path):
    """Found by flipping every bit of an annotation file in turn: bit 1 of the class bits of the attribute
    `format`'s type (variable-length string -> variable-length sequence of kind 3) made h5py's read
    crash the process with a segmentation fault. The type is checked before any value is read."""
    from wsl.zoo.table import read_annotation_file

    root = _fresh(base_zoo, str(tmp_path))
    path = root / "annotations/probe.h5"
    raw = bytearray(path.read_bytes())
    at = raw.index(b"format\x00\x00\x19\x01")  # the attribute's name, then its type: version 1, class 9 (vlen)
    raw[at + 9] ^= 2  # the vlen kind: 1 (string) -> 3 (none HDF5 knows)
    path.write_bytes(bytes(raw))
    with pytest.raises(ZooFormatError, match="type class") as e:
        read_annotation_file(path)
    assert str(path) in str(e.value)
    assert any(p.path == str(path) and p.level == "error" for p in verify_zoo(root, checksums=False))


if __name__ == "__main__":  # the child of test_random_bit_flips_are_refused_or_reported_never_silent
    _run_flip_trials(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
