"""Integrity and untrusted zoos: wsl-verify finds every problem at once, the reader refuses them.

Each test corrupts a copy of a real trained zoo the way disks, crashes and hostile senders do, and
checks the message names the file. (Single-problem reader checks live in test_zoo.py.)
"""

from __future__ import annotations

import ast
import io
import json
import os
import pickle
import re
import shutil
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from conftest import ROOT, run_cli
from wsl.errors import ZooFormatError
from wsl.nets import build_net
from wsl.zoo import ShardWriter, Zoo, read_checkpoint_metadata
from wsl.zoo.format import sha256_bytes
from wsl.zoo.table import seal_file
from wsl.zoo.verify import check_zoo, verify_zoo


# ---- helpers: edit a zoo the way an attacker or a broken disk would ---------------------------------
def _copy(tiny_zoo: Path, tmp_path: Path, name: str = "z") -> tuple[Path, Zoo]:
    root = tmp_path / name
    shutil.copytree(tiny_zoo, root)
    return root, Zoo(root)


def _set_sha(root: Path, rel: str, sha: str) -> None:
    """Record a new checksum for the checkpoint at `rel` in index.h5 and in its shard (a consistent lie)."""
    for table in [root / "index.h5", *(root / "shards").glob("*.h5")]:
        with h5py.File(table, "r+") as f:
            paths = f["checkpoints/path"].asstr()[()]
            hit = np.argwhere(paths == rel)
            if not len(hit):
                continue
            shas = f["checkpoints/sha256"].asstr()[()].astype(object)
            for i, j in hit:
                shas[i, j] = sha
            del f["checkpoints/sha256"]
            f.create_dataset("checkpoints/sha256", data=shas, dtype=h5py.string_dtype())
        seal_file(table)  # its content checksums agree too


def _rel(z: Zoo, mid: str, epoch: int) -> str:
    return str(z.checkpoint_path(mid, epoch).relative_to(z.path))


def _rewrite(z: Zoo, mid: str, epoch: int, meta_update: dict | None = None, data: bytes | None = None) -> Path:
    """Replace a checkpoint (new metadata, or raw bytes) and record its new sha256 everywhere."""
    path = z.checkpoint_path(mid, epoch)
    if data is None:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata())
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta.update(meta_update or {})
        data = st_save(tensors, metadata=meta)
    path.write_bytes(data)
    _set_sha(z.path, _rel(z, mid, epoch), sha256_bytes(data))
    return path


def _header_file(tensors: dict, meta: dict, payload: bytes) -> bytes:
    """A safetensors file written by hand: whatever header we like, then `payload`."""
    header = json.dumps({**tensors, "__metadata__": meta}).encode()
    return len(header).to_bytes(8, "little") + header + payload


def _set_index_strings(root: Path, dataset: str, fn) -> None:
    with h5py.File(root / "index.h5", "r+") as f:
        vals = f[dataset].asstr()[()].astype(object)
        vals = fn(vals)
        del f[dataset]
        f.create_dataset(dataset, data=vals, dtype=h5py.string_dtype())
    seal_file(root / "index.h5")  # a consistent lie: its content checksums agree


def _find(problems, level: str, path: Path, pattern: str):
    hits = [p for p in problems if p.level == level and p.path == str(path) and re.search(pattern, p.message)]
    assert hits, f"no {level} for {path} matching {pattern!r}; got:\n" + "\n".join(map(str, problems))
    return hits[0]


# ---- a clean zoo ----------------------------------------------------------------------------------------
def test_clean_zoo_verifies_without_any_problem(tiny_zoo):
    v = check_zoo(tiny_zoo)
    assert v.problems == [], "\n".join(map(str, v.problems))
    assert (v.models, v.checkpoints) == (4, 12)
    assert "0 errors, 0 warnings" in v.summary()


# ---- every problem at once --------------------------------------------------------------------------------
def test_verify_reports_every_problem_at_once_each_naming_its_file(tmp_path, tiny_zoo):
    root, z = _copy(tiny_zoo, tmp_path)
    m0, m1, m2, m3 = z.ids
    job = z.row(m0).job_id
    expect = []  # (level, path, pattern)

    # an annotation group whose file comes from a newer wsl (written through the real API first)
    from wsl.zoo import write_annotation

    write_annotation(root, "probe", z.ids, {"value": np.arange(4.0)}, {"estimator": "test"})

    # a job that committed its shard but whose index merge never happened
    stale_index = (root / "index.h5").read_bytes()
    arch = z.arch(m0)
    w = ShardWriter(root, "late-job", config={}, zoo_name="tiny")
    net = build_net(arch)
    w.write_checkpoint("late-job-m0", 0, net.state_dict(), arch)
    w.add_model("late-job-m0", arch, {"width": 8}, "trained", {"test_acc": [0.1]})
    w.commit()
    (root / "index.h5").write_bytes(stale_index)
    expect.append(("error", root / "shards" / "late-job.h5", "missing from or stale in index.h5.*interrupted"))
    with h5py.File(root / "annotations" / "probe.h5", "r+") as f:  # (after the commit: merges refuse it)
        f.attrs["format_version"] = 7
    expect.append(("error", root / "annotations" / "probe.h5", "format version 7 is newer"))

    # bit flip, truncation, deletion
    p = z.checkpoint_path(m0, 2)
    data = bytearray(p.read_bytes())
    data[-5] ^= 0x10
    p.write_bytes(bytes(data))
    expect.append(("error", p, "sha256 does not match the index"))
    p = z.checkpoint_path(m1, 1)
    p.write_bytes(p.read_bytes()[:-37])
    expect.append(("error", p, "truncated"))
    p = z.checkpoint_path(m2, 0)
    p.unlink()
    expect.append(("error", p, "listed in index.h5.*missing"))

    # a checkpoint from the future, and one with a non-numeric epoch (checksums made consistent)
    expect.append(("error", _rewrite(z, m3, 1, {"format_version": "3"}), "format version 3 is newer"))
    expect.append(("error", _rewrite(z, m3, 2, {"epoch": "two"}), "epoch='two' is not an integer"))

    # files nobody committed: a stray checkpoint beside a committed model's, a killed job's leftovers
    stray = root / "models" / job / m0 / "epoch_0007.safetensors"
    shutil.copy(z.checkpoint_path(m0, 0), stray)
    expect.append(("error", stray, "committed model.*does not list"))
    killed = root / "models" / job / f"{job}-killed0001"
    killed.mkdir()
    shutil.copy(z.checkpoint_path(m0, 0), killed / "epoch_0000.safetensors")
    expect.append(("warning", killed, "killed before it committed.*rerunning the same command"))
    tmp = root / "models" / job / m0 / ".epoch_0003.safetensors.4242.tmp"
    tmp.write_bytes(b"partial")
    expect.append(("warning", tmp, "temp file of an interrupted write"))

    # pickles: by name, by magic bytes, and a torch.save archive under an innocent name
    (root / "evil.pkl").write_bytes(pickle.dumps({"a": 1}))
    expect.append(("error", root / "evil.pkl", "pickle"))
    (root / "models" / "notes.dat").write_bytes(pickle.dumps([1, 2, 3], protocol=4))
    expect.append(("error", root / "models" / "notes.dat", "a pickle .starts with the pickle protocol"))
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    (root / "shards" / "weights.bin").write_bytes(buf.getvalue())
    expect.append(("error", root / "shards" / "weights.bin", "zip archive holding a pickle"))

    # an untrusted index: paths that leave the zoo; a link out of the zoo; a FIFO that would block a reader
    def escape(paths):
        paths[z.ids.index(m1), 0] = "../../outside.safetensors"
        paths[z.ids.index(m2), 1] = "/etc/passwd"
        return paths

    _set_index_strings(root, "checkpoints/path", escape)
    expect.append(("error", root / "index.h5", f"{m1}.*'../../outside.safetensors' escapes the zoo"))
    expect.append(("error", root / "index.h5", f"{m2}.*'/etc/passwd' escapes the zoo"))
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours")
    link = z.checkpoint_path(m1, 2)
    link.unlink()
    link.symlink_to(outside)
    expect.append(("error", link, "symbolic link to .*outside the zoo; refused"))
    os.mkfifo(root / "models" / "pipe")
    expect.append(("error", root / "models" / "pipe", "not a regular file"))
    (root / "README.txt").write_text("hello")
    expect.append(("warning", root / "README.txt", "not part of the zoo format"))

    t = time.perf_counter()
    problems = verify_zoo(root)
    assert time.perf_counter() - t < 30  # no hang on the FIFO
    for level, path, pattern in expect:
        _find(problems, level, path, pattern)
    for p in problems:  # every problem names a file of this zoo
        assert p.path.startswith(str(root)), p

    # the console script reports the same, and fails
    r = run_cli("verify", f"zoo.path={root}")
    assert r.returncode == 1, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[-1].startswith("FAILED ") and f"{len([p for p in problems if p.level == 'error'])} errors" in lines[-1]
    for level, path, _ in expect:
        assert any(ln.startswith(level.upper()) and str(path) in ln for ln in lines), (level, path)


# ---- the same checkpoint always gives the same bytes --------------------------------------------------------
def test_rewriting_a_checkpoint_with_the_same_weights_keeps_its_checksum(tmp_path, tiny_zoo):
    """safetensors writes its header in hash-map order (different bytes each time); a rerun that
    rewrites a committed checkpoint with identical weights must not break its recorded sha256."""
    z = Zoo(tiny_zoo)
    mid = z.ids[0]
    sd, arch = z.state_dict(mid), z.arch(mid)
    meta = {"provenance": json.dumps({"seed": 1}), **{f"key{i}": str(i) for i in range(8)}}
    w = ShardWriter(tmp_path / "z", z.row(mid).job_id, config={}, zoo_name="tiny")
    shas = {w.write_checkpoint(mid, 2, sd, arch, extra_meta=meta)[1] for _ in range(10)}
    assert len(shas) == 1
    path = tmp_path / "z" / z.checkpoint_path(mid).relative_to(z.path)
    with safe_open(str(path), "pt") as f:  # still a standard safetensors file
        assert f.metadata()["key7"] == "7" and torch.equal(f.get_tensor("head.bias"), sd["head.bias"])


# ---- killed jobs leave warnings only; repair rebuilds the index ---------------------------------------------
def test_leftovers_of_a_killed_job_are_warnings_and_repair_merges(tmp_path, tiny_zoo, monkeypatch, capsys):
    root, z = _copy(tiny_zoo, tmp_path)
    arch = z.arch(z.ids[0])
    # a second job: commits one model, index merge "killed" (old index restored), another model uncommitted
    old_index = (root / "index.h5").read_bytes()
    w = ShardWriter(root, "job2", config={}, zoo_name="tiny")
    w.write_checkpoint("job2-a", 0, build_net(arch).state_dict(), arch)
    w.add_model("job2-a", arch, {}, "trained", {"test_acc": [0.2]})
    w.commit()
    (root / "index.h5").write_bytes(old_index)
    w.write_checkpoint("job2-b", 0, build_net(arch).state_dict(), arch)  # killed before commit
    (root / ".index.h5.999.tmp").write_bytes(b"half an index")  # killed inside the merge's rename window

    problems = verify_zoo(root)
    assert {p.level for p in problems} == {"error", "warning"}
    _find(problems, "error", root / "shards" / "job2.h5", "stale in index.h5")

    # the app, as its console script runs it (in this process: the subprocess path is tested above)
    from wsl.apps import verify as app

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["wsl-verify", f"zoo.path={root}", *args])
        code = 0
        try:
            app.main()
        except SystemExit as e:
            code = e.code
        return code, capsys.readouterr().out

    code, out = run("repair=true", "checksums=false")
    assert code == 0, out
    assert "WARNING" in out and "job2-b" in out and "0 errors, 1 warnings" in out
    assert not (root / ".index.h5.999.tmp").exists()  # the next merge removes stale temp files
    assert "job2-a" in Zoo(root).ids
    code, out = run("strict=true")
    assert code == 1 and out.strip().splitlines()[-1].startswith("FAILED"), out


# ---- untrusted checkpoint headers and index contents ------------------------------------------------------
def test_crafted_checkpoints_with_consistent_checksums_are_refused(tmp_path, tiny_zoo):
    root, z = _copy(tiny_zoo, tmp_path)
    m0, m1, m2, m3 = z.ids
    meta = {k: v for k, v in read_checkpoint_metadata(z.checkpoint_path(m0, 0)).items()}
    meta["arch"] = json.dumps(meta["arch"])
    cases = {}
    # absurd shape: 2^40 x 2^40 floats claimed by an 8-byte tensor
    absurd = {"head.bias": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 8]}}
    cases[(m0, 0)] = (_header_file(absurd, {**meta, "model_id": m0}, b"\0" * 8), "absurd shape|needs .* bytes")
    # a pickle saved under a checkpoint's name
    cases[(m1, 0)] = (pickle.dumps({"head.bias": [0.0] * 10}, protocol=4), "a pickle, not safetensors")
    # a valid file whose tensors do not fit the architecture the index records
    bad = {"head.weight": torch.zeros(3, 3), "head.bias": torch.zeros(3)}
    cases[(m2, 0)] = (st_save(bad, metadata={**meta, "model_id": m2}), "do not match the architecture")
    # non-numeric and absurd metadata in the header
    cases[(m3, 0)] = (st_save(z.state_dict(m3, 0), metadata={**meta, "model_id": m3, "format_version": "1e9",
                                                             "epoch": "NaN"}), "format_version='1e9' is not an integer")
    for (mid, e), (data, _) in cases.items():
        _rewrite(z, mid, e, data=data)
    problems = verify_zoo(root)
    z = Zoo(root)
    for (mid, e), (_, pattern) in cases.items():
        path = z.checkpoint_path(mid, e)
        _find(problems, "error", path, pattern)
        with pytest.raises(ZooFormatError, match=re.escape(str(path)) + "|" + re.escape(str(root / "index.h5"))):
            z.state_dict(mid, e)
    assert not any("sha256" in p.message for p in problems)  # the checksums were made to agree


def test_absurd_architecture_in_the_index_is_refused_quickly(tmp_path, tiny_zoo):
    root, z = _copy(tiny_zoo, tmp_path)

    def deep(archs):
        a = json.loads(archs[0])
        a["depth"] = 10**9  # building this skeleton would never finish
        archs[0] = json.dumps(a)
        b = json.loads(archs[1])
        b["width"] = "wide"
        archs[1] = json.dumps(b)
        return archs

    _set_index_strings(root, "models/arch", deep)
    z = Zoo(root)
    t = time.perf_counter()
    with pytest.raises(ZooFormatError, match=f"index.h5: model {z.ids[0]}: architecture field depth=1000000000 is absurd"):
        z.load_model(z.ids[0])
    with pytest.raises(ZooFormatError, match=f"index.h5.*model {z.ids[1]}.*unusable architecture"):
        z.state_dict(z.ids[1])
    problems = verify_zoo(root)
    assert time.perf_counter() - t < 20
    _find(problems, "error", root / "index.h5", "depth=1000000000 is absurd")
    _find(problems, "error", root / "index.h5", "width must be an integer >= 1, got 'wide'")


def test_hdf5_links_to_other_files_and_huge_datasets_are_refused(tmp_path, tiny_zoo):
    outside = tmp_path / "outside.h5"
    with h5py.File(outside, "w") as f:
        f["ids"] = np.array(["stolen"], dtype=object).astype("S")
    root, _ = _copy(tiny_zoo, tmp_path)
    with h5py.File(root / "index.h5", "r+") as f:
        del f["models/model_id"]
        f["models/model_id"] = h5py.ExternalLink(str(outside), "/ids")
    with pytest.raises(ZooFormatError, match=r"index.h5: /models/model_id is a ExternalLink.*refused"):
        Zoo(root)
    _find(verify_zoo(root), "error", root / "index.h5", "ExternalLink")

    root2, _ = _copy(tiny_zoo, tmp_path, "z2")
    with h5py.File(root2 / "index.h5", "r+") as f:  # declared, never written: a tiny file, an 8 TB read
        del f["metrics/test_acc"]
        f.create_dataset("metrics/test_acc", shape=(1 << 20, 1 << 20), dtype="f8", chunks=(1, 1024))
    assert (root2 / "index.h5").stat().st_size < 1 << 20
    with pytest.raises(ZooFormatError, match=r"/metrics/test_acc declares 1099511627776 elements"):
        Zoo(root2)


def test_fifo_planted_as_a_checkpoint_does_not_block_the_reader(tmp_path, tiny_zoo):
    root, z = _copy(tiny_zoo, tmp_path)
    path = z.checkpoint_path(z.ids[0], 2)
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(ZooFormatError, match=f"{path}: not a regular file"):
        z.state_dict(z.ids[0])
    _find(verify_zoo(root), "error", path, "not a regular file")


# ---- nothing in the code base loads a pickle ----------------------------------------------------------------
_PICKLE_LOADERS = {("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("cPickle", "load"),
                   ("dill", "load"), ("dill", "loads"), ("cloudpickle", "load"), ("cloudpickle", "loads"),
                   ("joblib", "load"), ("shelve", "open"), ("yaml", "unsafe_load"), ("marshal", "load"),
                   ("marshal", "loads")}


def _pickle_loads_in(path: Path) -> list[str]:
    """Calls in a source file that unpickle (or may): the reasons, with line numbers."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    imported = {}  # local name -> module (from pickle import load as l)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                imported[a.asname or a.name] = (node.module.split(".")[0], a.name)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        kw = {k.arg: k.value for k in node.keywords}
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
            pair = (f.value.id, f.attr)
        elif isinstance(f, ast.Name) and f.id in imported:
            pair = imported[f.id]
        else:
            pair = (None, f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None))
        name = pair[1]
        if pair in _PICKLE_LOADERS or name in ("read_pickle", "Unpickler"):
            found.append(f"{path}:{node.lineno}: {'.'.join(filter(None, pair))}")
        elif name == "load" and pair[0] in ("torch", None) and pair != (None, None):
            wo = kw.get("weights_only")
            if pair[0] == "torch" and not (isinstance(wo, ast.Constant) and wo.value is True):
                found.append(f"{path}:{node.lineno}: torch.load without weights_only=True")
        elif name == "load" and pair[0] in ("np", "numpy"):
            ap = kw.get("allow_pickle")
            if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                found.append(f"{path}:{node.lineno}: numpy.load with allow_pickle")
        elif name == "load" and pair[0] == "yaml" and "Loader" in kw:
            loader = ast.unparse(kw["Loader"])
            if "Safe" not in loader:
                found.append(f"{path}:{node.lineno}: yaml.load with {loader}")
    return found


def test_nothing_in_the_code_base_loads_a_pickle(tmp_path):
    # the scanner itself must catch each way of unpickling
    probe = tmp_path / "probe.py"
    probe.write_text("import pickle, torch, numpy as np\nfrom pickle import loads as l\nimport pandas as pd\n"
                     "pickle.load(f)\nl(b)\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
                     "np.load(p, allow_pickle=True)\npd.read_pickle(p)\n"
                     "torch.load(p, weights_only=True)\nnp.load(p)\n")
    assert len(_pickle_loads_in(probe)) == 6, _pickle_loads_in(probe)
    sources = [p for d in ("wsl", "scripts", "tests") for p in (ROOT / d).rglob("*.py")]
    assert len(sources) > 20
    found = [hit for p in sources for hit in _pickle_loads_in(p)]
    assert found == [], "\n".join(found)
