"""Integrity of every byte of a zoo, and bounded reads of untrusted ones (issue 12).

Each test damages a copy of a real zoo written by the real writer (the session's tiny trained zoo),
the way a disk, a crash or a careless edit would, and checks that the reader (`Zoo`) refuses it with
a ZooFormatError and that wsl-verify reports it, both naming the file and the dataset (or model and
epoch). Bit flips are made in the file's bytes where HDF5 keeps the dataset's values, as a real flip.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import ROOT, run_cli
from wsl.errors import ZooFormatError
from wsl.zoo import Zoo, merge_index, read_checkpoint_metadata, write_annotation
from wsl.zoo.format import sha256_bytes
from wsl.zoo.table import INTEGRITY_GROUP, SEAL_ATTR, ReadBudget, read_annotation_file, read_table, seal_file
from wsl.zoo.verify import check_zoo, verify_zoo
from wsl.zoo.writer import encode_checkpoint


# ---- helpers ----------------------------------------------------------------------------------------
def _copy(tiny_zoo: Path, tmp_path: Path, name: str = "z") -> tuple[Path, Zoo]:
    root = tmp_path / name
    shutil.copytree(tiny_zoo, root)
    return root, Zoo(root)


def _shard(root: Path) -> Path:
    return next((root / "shards").glob("*.h5"))


def _flip(path: Path, dataset: str, element: int = 0, bit: int = 62) -> None:
    """Flip one bit of one stored value of `dataset` in the file's bytes (bit 62 of a float64: its exponent)."""
    with h5py.File(path, "r") as f:
        ds = f[dataset]
        offset, itemsize = ds.id.get_offset(), ds.dtype.itemsize
    assert offset is not None
    raw = bytearray(path.read_bytes())
    pos = offset + element * itemsize + bit // 8
    raw[pos] ^= 1 << (bit % 8)
    path.write_bytes(bytes(raw))


def _find(problems, level: str, path: Path, pattern: str):
    hits = [p for p in problems if p.level == level and p.path == str(path) and re.search(pattern, p.message)]
    assert hits, f"no {level} for {path} matching {pattern!r}; got:\n" + "\n".join(map(str, problems))
    return hits[0]


def _set_sha(root: Path, rel: str, sha: str) -> None:
    """Record a new checksum for a checkpoint in index.h5 and its shard, content checksums resealed:
    the zoo is consistent, only the checkpoint's content is wrong."""
    for table in [root / "index.h5", *(root / "shards").glob("*.h5")]:
        with h5py.File(table, "r+") as f:
            paths = f["checkpoints/path"].asstr()[()]
            shas = f["checkpoints/sha256"].asstr()[()].astype(object)
            shas[paths == rel] = sha
            del f["checkpoints/sha256"]
            f.create_dataset("checkpoints/sha256", data=shas, dtype=h5py.string_dtype())
        seal_file(table)


def _replace_checkpoint(z: Zoo, mid: str, epoch: int, sd: dict) -> Path:
    """Write `sd` as the checkpoint of (mid, epoch) with its own metadata, through the real encoder."""
    path = z.checkpoint_path(mid, epoch)
    meta = read_checkpoint_metadata(path)
    data = encode_checkpoint(sd, meta)
    path.write_bytes(data)
    _set_sha(z.path, str(path.relative_to(z.path)), sha256_bytes(data))
    return path


@pytest.fixture
def annotated(tmp_path, tiny_zoo):
    """A copy of the tiny zoo with an annotation group written through the real API."""
    root, z = _copy(tiny_zoo, tmp_path)
    write_annotation(root, "probe", z.ids, {"value": np.arange(4.0) + 0.5, "label": list("abcd")}, {"estimator": "t"})
    return root, Zoo(root)


# ---- 1. content checksums ------------------------------------------------------------------------------
def test_new_files_carry_content_checksums_and_verify_cleanly(annotated):
    root, z = annotated
    for p in (root / "index.h5", _shard(root), root / "annotations" / "probe.h5"):
        with h5py.File(p) as f:
            assert f.attrs["format_version"] == 2 and len(f.attrs[SEAL_ATTR]) == 64
            listed = set(f[f"{INTEGRITY_GROUP}/path"].asstr()[()])
        assert "/@attrs" in listed and any(n.startswith(("/metrics/", "/columns/")) for n in listed), listed
    assert verify_zoo(root) == []


def test_a_bit_flip_in_a_metric_of_the_index_is_refused_and_named(annotated):
    """The issue's case: test_acc 0.961 became 1.7e308 and both the reader and wsl-verify said nothing."""
    root, z = annotated
    before = z.table()["test_acc"].iloc[1]
    _flip(root / "index.h5", "metrics/test_acc", element=1 * 3 + 2)  # model 1, epoch 2 (its final accuracy)
    with h5py.File(root / "index.h5") as f:
        assert f["metrics/test_acc"][1, 2] != before  # the value really changed
    with pytest.raises(ZooFormatError, match=re.escape(f"{root / 'index.h5'}: /metrics/test_acc: content does not "
                                                       "match its checksum")):
        Zoo(root)
    _find(verify_zoo(root), "error", root / "index.h5", r"^/metrics/test_acc: content does not match")


def test_changed_hparams_and_annotation_values_are_named_in_every_file(annotated):
    root, z = annotated
    shard, ann = _shard(root), root / "annotations" / "probe.h5"
    _flip(shard, "models/hparams/lr", element=0)
    _flip(ann, "columns/value", element=3)
    _flip(root / "index.h5", "annotations/probe/value", element=2)
    problems = verify_zoo(root)
    _find(problems, "error", shard, r"^/models/hparams/lr: content does not match its checksum")
    _find(problems, "error", ann, r"^/columns/value: content does not match its checksum")
    _find(problems, "error", root / "index.h5", r"^/annotations/probe/value: content does not match")
    with pytest.raises(ZooFormatError, match="/annotations/probe/value"):
        Zoo(root)
    with pytest.raises(ZooFormatError, match=re.escape(str(shard)) + ": /models/hparams/lr"):
        read_table(shard)
    with pytest.raises(ZooFormatError, match=re.escape(str(ann)) + ": /columns/value"):
        read_annotation_file(ann)
    with pytest.raises(ZooFormatError, match="/models/hparams/lr"):  # a merge never spreads a damaged shard
        merge_index(root)


def test_deleted_and_added_datasets_and_changed_attributes_are_named(annotated):
    root, z = annotated
    shard = _shard(root)
    for p in (root / "index.h5", shard):
        with h5py.File(p, "r+") as f:
            del f["models/hparams/lr"]
    with h5py.File(root / "annotations" / "probe.h5", "r+") as f:
        f["columns/planted"] = np.zeros(4)
        f.attrs["attr:estimator"] = "other"
    problems = verify_zoo(root)
    for p in (root / "index.h5", shard):
        _find(problems, "error", p, r"^/models/hparams/lr: missing .*deleted after the file was written")
    ann = root / "annotations" / "probe.h5"
    _find(problems, "error", ann, r"^/columns/planted: not in the content manifest")
    _find(problems, "error", ann, r"^the attributes of /: content does not match")
    with pytest.raises(ZooFormatError, match=r"index.h5: /models/hparams/lr: missing"):
        Zoo(root)


def test_an_index_edited_and_resealed_is_checked_against_its_shards(annotated):
    """The index is derived: a value that differs from what its shards and annotation files give is
    an error even when the index's own checksums were recomputed."""
    root, _ = annotated
    with h5py.File(root / "index.h5", "r+") as f:
        a = f["metrics/test_acc"][()]
        a[0, -1] = 0.999
        f["metrics/test_acc"][...] = a
        f["annotations/probe"].attrs["estimator"] = "forged"
    seal_file(root / "index.h5")
    assert Zoo(root).table()["test_acc"].iloc[0] == 0.999  # self-consistent: the reader alone cannot tell
    problems = verify_zoo(root)
    _find(problems, "error", root / "index.h5", r"^/metrics/test_acc: differs from what shards/ and annotations/ give")
    _find(problems, "error", root / "index.h5", r"^the attributes of /annotations/probe: differs")
    merge_index(root)  # repair: the index rebuilt from its sources
    assert verify_zoo(root) == []


def _strip_checksums(path: Path) -> None:
    """Make a file look written by the previous wsl (format version 1: no content checksums)."""
    with h5py.File(path, "r+") as f:
        del f[INTEGRITY_GROUP]
        del f.attrs[SEAL_ATTR]
        f.attrs["format_version"] = 1


def test_files_of_format_version_1_stay_readable_with_a_warning(annotated):
    root, z = annotated
    table = z.table()
    files = [root / "index.h5", _shard(root), root / "annotations" / "probe.h5"]
    for p in files:
        _strip_checksums(p)
    z1 = Zoo(root)
    assert z1.table().equals(table) and not z1._table.checked
    v = check_zoo(root)
    assert v.errors == [], "\n".join(map(str, v.problems))
    for p in files:
        _find(v.problems, "warning", p, r"format version 1.*no content checksums")
    # a version-2 file that lost its manifest is not an old file: stripped or damaged
    with h5py.File(files[1], "r+") as f:
        f.attrs["format_version"] = 2
    _find(verify_zoo(root), "error", files[1], r"format version 2 carries content checksums, this file has none")


# ---- 2. a directory where a file belongs ----------------------------------------------------------------
def test_a_directory_in_place_of_the_index_or_a_checkpoint_is_an_error(tmp_path, tiny_zoo):
    root, z = _copy(tiny_zoo, tmp_path)
    ck = z.checkpoint_path(z.ids[0], 1)
    ck.unlink()
    ck.mkdir()
    _find(verify_zoo(root), "error", ck, "a directory, not the checkpoint file")
    with pytest.raises(ZooFormatError, match=re.escape(str(ck))):
        z.state_dict(z.ids[0], 1)
    (root / "index.h5").unlink()
    (root / "index.h5").mkdir()
    _find(verify_zoo(root), "error", root / "index.h5", "a directory, not the index file")
    with pytest.raises(ZooFormatError, match="index.h5: missing or not a regular file"):
        Zoo(root)


# ---- 3. tensor dtypes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.float64, torch.float8_e4m3fn])
def test_tensors_of_the_wrong_dtype_are_refused(tmp_path, tiny_zoo, dtype):
    """Right names, right shapes, a matching sha256: only the dtype is wrong (the skeleton is the reference)."""
    root, z = _copy(tiny_zoo, tmp_path)
    mid = z.ids[2]
    sd = {k: v.to(dtype) for k, v in z.state_dict(mid, 1).items()}
    path = _replace_checkpoint(z, mid, 1, sd)
    z = Zoo(root)
    with pytest.raises(ZooFormatError, match=re.escape(str(path)) + r": tensor '.*' is stored as \w+, the "
                                                                     r"architecture has F32"):
        z.state_dict(mid, 1)
    _find(verify_zoo(root), "error", path, r"stored as \w+, the architecture has F32")


# ---- 4. non-finite weights ------------------------------------------------------------------------------
def test_non_finite_weights_of_a_trained_net_are_an_error_naming_model_and_epoch(tmp_path, tiny_zoo):
    root, z = _copy(tiny_zoo, tmp_path)
    mid = z.ids[1]
    assert z.row(mid).status == "trained"
    sd = z.state_dict(mid, 2)
    weight = next(k for k, v in sd.items() if v.ndim == 2)
    sd[weight][0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    _replace_checkpoint(z, mid, 2, sd)
    problems = verify_zoo(root)
    _find(problems, "error", root / "index.h5", rf"model {mid} \(status trained\): non-finite weights.*epoch 2 \(3\)")
    assert len([p for p in problems if p.level == "error"]) == 1, "\n".join(map(str, problems))


# ---- 5. symbolic links ----------------------------------------------------------------------------------
def test_a_checkpoint_linked_to_another_epoch_is_named_by_the_link(tmp_path, tiny_zoo):
    root, z = _copy(tiny_zoo, tmp_path)
    mid = z.ids[0]
    link = z.checkpoint_path(mid, 1)
    link.unlink()
    link.symlink_to("epoch_0002.safetensors")
    problems = verify_zoo(root)
    _find(problems, "error", link, "metadata says epoch 2, the index says 1")
    _find(problems, "error", link, "sha256 does not match")
    assert not any(p.level == "error" and p.path == str(z.checkpoint_path(mid, 2)) for p in problems)
    with pytest.raises(ZooFormatError, match=re.escape(f"{link}: ")):
        z.state_dict(mid, 1)


def test_an_index_linked_outside_the_zoo_is_refused_by_the_reader(tmp_path, tiny_zoo):
    root, _ = _copy(tiny_zoo, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(root / "index.h5", elsewhere / "index.h5")
    (root / "index.h5").symlink_to(elsewhere / "index.h5")
    with pytest.raises(ZooFormatError, match=re.escape(str(root / "index.h5")) + ": a symbolic link.*outside the zoo"):
        Zoo(root)
    _find(verify_zoo(root), "error", root / "index.h5", "symbolic link")


# ---- 6. pickles of every protocol -------------------------------------------------------------------------
def test_pickles_of_protocols_0_and_1_are_detected(tmp_path, tiny_zoo):
    root, _ = _copy(tiny_zoo, tmp_path)
    planted = {root / "models" / "notes.dat": pickle.dumps({"a": [1, 2.5, "x"]}, protocol=0),
               root / "shards" / "extra.bin": pickle.dumps([("w", 1.0)] * 50, protocol=1),
               root / "big.dat": pickle.dumps(list(range(300_000)), protocol=0)}  # longer than the scan
    for p, data in planted.items():
        p.write_bytes(data)
    innocent = {root / "README.txt": b"Notes on this zoo.\n", root / "meta.json": b'{"a": [1, 2]}'}
    for p, data in innocent.items():
        p.write_bytes(data)
    problems = verify_zoo(root)
    for p in planted:
        _find(problems, "error", p, r"a pickle \(protocol 0 or 1")
    for p in innocent:
        assert not any("pickle" in q.message for q in problems if q.path == str(p))


# ---- 7. bounded reads -----------------------------------------------------------------------------------
_PEAK = """
import sys
from wsl.errors import ZooFormatError
from wsl.zoo import Zoo
from wsl.zoo.verify import check_zoo
kind, root = sys.argv[1], sys.argv[2]
try:
    if kind == "zoo":
        z = Zoo(root)
        z.table()
        if len(sys.argv) > 3:
            z.state_dict(z.ids[0], 1)
        out = "read"
    else:
        out = " | ".join(str(p) for p in check_zoo(root).errors) or "no errors"
except ZooFormatError as e:
    out = f"ZooFormatError: {e}"
# the peak of this process's own memory (ru_maxrss would also count the parent's, inherited across exec)
peak = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
print(peak // 1024, out)
"""


def _peak_mb(*args) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", _PEAK, *map(str, args)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    mb, out = p.stdout.strip().splitlines()[-1].split(" ", 1)
    return int(mb), out


def test_never_written_datasets_cannot_make_readers_allocate(tmp_path, tiny_zoo):
    """A small index with two chunked datasets that were never written: each under the old per-dataset
    cap, together 288 MB of fill values. The reader and wsl-verify refuse it with what they held anyway."""
    root, _ = _copy(tiny_zoo, tmp_path)
    base = {kind: _peak_mb(kind, root)[0] for kind in ("zoo", "verify")}
    with h5py.File(root / "index.h5", "r+") as f:
        for name in ("test_acc", "train_loss"):
            del f[f"metrics/{name}"]
            f.create_dataset(f"metrics/{name}", shape=(4, 4_500_000), dtype="f8", chunks=(1, 1 << 16))
    assert (root / "index.h5").stat().st_size < 1 << 20
    for kind in ("zoo", "verify"):
        mb, out = _peak_mb(kind, root)
        assert "declares 18000000 elements (shape (4, 4500000)) but stores only" in out, out
        assert mb < base[kind] + 100, (kind, mb, base[kind])


def test_a_read_session_has_a_total_budget(tmp_path, tiny_zoo):
    root, _ = _copy(tiny_zoo, tmp_path)
    budget = ReadBudget(limit=500)
    read_table(root / "index.h5", budget)  # a few hundred elements
    with pytest.raises(ZooFormatError, match=re.escape(str(_shard(root))) + r": reading it would make \d+ elements "
                                                                            r"in this session \(limit 500\)"):
        read_table(_shard(root), budget)


def test_a_checkpoint_header_is_checked_before_the_file_is_read(tmp_path, tiny_zoo):
    """A checkpoint grown to 1 GB (sparse: no disk used) past its declared tensors is refused from its
    header: the reader never holds the gigabyte."""
    root, z = _copy(tiny_zoo, tmp_path)
    base = _peak_mb("zoo", root, "state_dict")[0]
    path = z.checkpoint_path(z.ids[0], 1)
    with open(path, "r+b") as f:
        f.truncate(1 << 30)
    mb, out = _peak_mb("zoo", root, "state_dict")
    assert re.search(r"epoch_0001.safetensors: \d+ bytes after the last tensor \(appended data\)", out), out
    assert mb < base + 100, (mb, base)


# ---- 8. vanishing files, read-only zoos, untrusted names ----------------------------------------------------
def test_a_temp_file_vanishing_during_the_walk_is_tolerated(tmp_path, tiny_zoo, monkeypatch):
    """A running wsl-zoo renames its temp files into place while wsl-verify walks the zoo: a name listed
    a moment ago is gone when it is looked at. The walk below removes it at exactly that moment."""
    root, z = _copy(tiny_zoo, tmp_path)
    tmp = root / "shards" / ".job.h5.4242.tmp"
    tmp.write_bytes(b"half a shard")
    walk = os.walk

    def racing_walk(top, *a, **kw):
        for dirpath, dirnames, filenames in walk(top, *a, **kw):
            if tmp.name in filenames:
                tmp.unlink()  # listed, then gone
            yield dirpath, dirnames, filenames

    monkeypatch.setattr(os, "walk", racing_walk)
    v = check_zoo(root)
    assert v.problems == [], "\n".join(map(str, v.problems))


def _make_read_only(path: Path):
    """Forbid creating and renaming files in `path`, for root too (immutable attribute) where possible."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode != 0:
            pytest.skip("running as root without chattr: cannot make a directory read-only")
        return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)
    path.chmod(0o555)
    return lambda: path.chmod(0o755)


def test_repair_of_a_read_only_zoo_is_one_line_and_exit_2(tmp_path, tiny_zoo):
    root, _ = _copy(tiny_zoo, tmp_path)
    index = (root / "index.h5").read_bytes()
    undo = _make_read_only(root)
    try:
        r = run_cli("verify", f"zoo.path={root}", "repair=true", f"hydra.run.dir={tmp_path / 'run'}")
    finally:
        undo()
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot repair") and "Traceback" not in r.stderr, r.stderr
    assert (root / "index.h5").read_bytes() == index


def test_untrusted_names_in_verify_output_are_escaped(tmp_path, tiny_zoo):
    root, _ = _copy(tiny_zoo, tmp_path)
    evil = root / "models" / "x\x1b[2K\x1b[1Gall good\n.pkl"
    evil.write_bytes(b"not really")
    r = run_cli("verify", f"zoo.path={root}", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 1
    assert "\x1b" not in r.stdout and "\\x1b[2K\\x1b[1Gall good\\x0a.pkl" in r.stdout, r.stdout
    line = next(ln for ln in r.stdout.splitlines() if "all good" in ln and "pickle" in ln)
    assert line.startswith("ERROR ")
