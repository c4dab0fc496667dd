"""Landscape metrics of a real zoo: storage with settings and sample indices, skip/resume, bad input,
the wsl-landscape and wsl-plot apps."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, compose_cfg, make_zoo, run_cli
from wsl.errors import ConfigError
from wsl.apps.landscape import typed_config
from wsl.apps.config import typed
from wsl.landscape import LandscapeConfig, annotate_zoo
from wsl.landscape.exact_trace import exact_trace
from wsl.landscape.hessian import top_eigenvalue
from wsl.landscape.phases import PhaseThresholds, phase_label
from wsl.landscape.plots import plot_zoo
from wsl.landscape.sampling import decode_indices
from wsl.population.functional import split_state, stack_state_dicts
from wsl.zoo import Zoo, merge_index

SHRINK = ["landscape.num_samples=300", "landscape.chunk_size=3", "landscape.hessian_eig.max_iters=30",
          "landscape.hessian_trace.samples=8", "landscape.mode_connectivity.steps=15",
          "landscape.mode_connectivity.points=7", "landscape.barrier.points=5"]


@pytest.fixture(scope="module")
def zoo_base(tmp_path_factory):
    """Two jobs in one zoo: width 16 × lr {0.1, 0.02} × 3 seeds, and width 3 × lr {0.1, 1000} × 1 seed
    (single-seed cells, a 3-row hidden layer, and a member that diverges)."""
    path = tmp_path_factory.mktemp("landscape") / "zoo"
    make_zoo(path, ["net.width=16", "train.lr=[0.1,0.02]", "population.size=6"])
    make_zoo(path, ["net.width=3", "train.lr=[0.1,1000.0]", "population.size=2"])
    return path


def _copy(src, tmp_path):
    dst = tmp_path / "zoo"
    shutil.copytree(src, dst)
    return dst


def landscape_config(node) -> LandscapeConfig:
    """A `landscape:` mapping typed as the apps type it (messages name `landscape.<key>`)."""
    return typed(node, LandscapeConfig, path="landscape")


def _landscape_cfg(*extra):
    """The typed `landscape` node of wsl-landscape (landscape=full, shrunk)."""
    return typed_config(compose_cfg("landscape", ["zoo.path=unused", "landscape=full", *SHRINK, *extra])).landscape


@pytest.fixture(scope="module")
def annotated(zoo_base, tmp_path_factory):
    path = _copy(zoo_base, tmp_path_factory.mktemp("annotated"))
    done = annotate_zoo(path, _landscape_cfg())
    return path, done


def test_every_metric_is_stored_with_settings_epoch_and_notes(annotated):
    path, done = annotated
    zoo = Zoo(path)
    assert done == {m: 8 for m in ("hessian_eig", "hessian_trace", "barrier", "mode_connectivity", "cka", "spectra",
                                   "phase")}
    t = zoo.table()
    trained = t[(t.status == "trained")]
    assert len(trained) == 7
    diverged = t[t.status == "diverged"].index[0]
    for col in ("hessian_eig/train", "hessian_eig/test", "hessian_trace/train", "hessian_trace/test",
                "spectra/stable_rank_mean"):
        assert np.isfinite(trained[col].astype(float)).all(), col
        assert np.isnan(float(t.loc[diverged, col]))
        assert "diverged" in t.loc[diverged, col.split("/")[0] + "/note"]
    assert (trained["hessian_eig/train"] > 0).all() and (trained["hessian_trace/train"] > 0).all()
    assert (t.loc[trained.index, "hessian_eig/epoch"] == 2).all()  # the final checkpoint
    # cell metrics: the cell's value on every member row, with the pairs used
    wide = t[t.width == 16]
    for lr, cell in wide.groupby("lr"):
        for m in ("barrier", "mode_connectivity", "cka"):
            assert cell[f"{m}/value"].nunique() == 1 and np.isfinite(cell[f"{m}/value"].iloc[0])
            assert (cell[f"{m}/pairs"] == 3).all()
            assert len(cell[f"{m}/members"].iloc[0].split(",")) == 3
    assert (wide["cka/value"] <= 1 + 1e-9).all() and (wide["barrier/value"] >= 0).all()
    # a cell with one seed records why, never crashes
    single = t[(t.width == 3) & (t.status == "trained")]
    for m in ("barrier", "mode_connectivity", "cka"):
        assert np.isnan(float(single[f"{m}/value"].iloc[0]))
        assert "needs >= 2" in single[f"{m}/note"].iloc[0]
    # layers with 3 rows (hidden) or 3 columns (head) are too small to fit: said, not fitted
    note = single["spectra/note"].iloc[0]
    assert "hidden.0: too small to fit a power law: 3 eigenvalues" in note and "head: too small" in note
    assert np.isnan(float(single["spectra/alpha_mean"].iloc[0]))
    assert np.isfinite(float(single["spectra/stable_rank[hidden.0]"].iloc[0]))
    assert np.isfinite(wide["spectra/alpha_mean"].astype(float)).all()
    assert (wide["spectra/num_evals[hidden.0]"] == 16).all() and (wide["spectra/layers_fit"] == 2).all()


def test_stored_settings_and_sample_indices_recompute_the_value(annotated):
    path, _ = annotated
    zoo = Zoo(path)
    t = zoo.table()
    mid = t[(t.status == "trained") & (t.width == 16)].index[0]
    settings = json.loads(t.loc[mid, "hessian_eig/settings"])
    assert settings["max_iters"] == 30 and settings["tol"] == 1e-3 and settings["seed"] == 0
    assert settings["num_samples"] == 300 and settings["splits"] == ["train", "test"]
    ann = zoo.annotation("hessian_eig")
    described = json.loads(ann["attrs"][f"samples:{settings['samples']['train']}"])
    data = zoo.training_data(mid)
    idx = decode_indices(described["indices"], described["n_split"])
    assert described["n_split"] == data.x_train.shape[0] and idx.size == 300 and np.all(np.diff(idx) > 0)
    assert described["data_fingerprint"] == data.fingerprint()
    # anyone can recompute the stored number from what the zoo says
    net = zoo.skeleton(mid).eval()
    params, buffers = split_state(net, stack_state_dicts([zoo.state_dict(mid)]))
    r = top_eigenvalue(net, params, data.x_train[idx], data.y_train[idx], max_iters=settings["max_iters"],
                       tol=settings["tol"], seed=settings["seed"], buffers=buffers, batch_size=256)
    assert int(r.iterations[0]) == int(t.loc[mid, "hessian_eig/train_iters"])
    assert float(r.eigenvalue[0]) == pytest.approx(float(t.loc[mid, "hessian_eig/train"]), rel=1e-5)
    # these ReLU MLPs get the exact trace (method auto), and say so
    assert json.loads(t.loc[mid, "hessian_trace/settings"])["method"] == "auto"
    assert (t.loc[t.status == "trained", "hessian_trace/train_exact"] == 1).all()
    assert (t.loc[t.status == "trained", "hessian_trace/train_stderr"] == 0).all()
    tr = exact_trace(net, params, data.x_train[idx], data.y_train[idx], buffers=buffers)
    assert float(tr[0]) == pytest.approx(float(t.loc[mid, "hessian_trace/train"]), rel=1e-5)


def test_rerun_skips_what_is_stored_and_recomputes_changed_settings(zoo_base, tmp_path):
    path = _copy(zoo_base, tmp_path)
    cfg = ["landscape.metrics=[hessian_eig,cka]"]
    assert annotate_zoo(path, _landscape_cfg(*cfg)) == {"hessian_eig": 8, "cka": 8, "phase": 8}
    before = Zoo(path).table()["cka/value"]
    assert annotate_zoo(path, _landscape_cfg(*cfg)) == {"hessian_eig": 0, "cka": 0, "phase": 0}
    # a different estimator setting is a different value: recomputed; the other metric is kept
    assert annotate_zoo(path, _landscape_cfg(*cfg, "landscape.hessian_eig.max_iters=31")) == \
        {"hessian_eig": 8, "cka": 0, "phase": 0}
    pd.testing.assert_series_equal(Zoo(path).table()["cka/value"], before)
    # a subset of models: only those rows (and the cells they belong to)
    one = Zoo(path).ids[0]
    assert annotate_zoo(path, _landscape_cfg("landscape.metrics=[barrier]"), model_ids=[one]) == \
        {"barrier": 3, "phase": 0}


def test_what_is_done_is_read_from_annotation_files_and_the_index_rebuilt_once(zoo_base, tmp_path, monkeypatch):
    """Each chunk is committed as its annotation file; the index is rebuilt once per run (start-up and end),
    not after every write. A run killed before its end-of-run merge leaves the index behind the files: the
    rerun must still skip every committed row and derive the phase labels from the files."""
    import wsl.landscape.annotate
    import wsl.zoo.annotations

    path = _copy(zoo_base, tmp_path)
    cfg = _landscape_cfg("landscape.metrics=[hessian_eig,cka]")
    merges, real = [], wsl.zoo.merge_index
    for module in (wsl.zoo.annotations, wsl.landscape.annotate):  # as if every merge were killed
        monkeypatch.setattr(module, "merge_index", lambda p: merges.append(p))
    assert annotate_zoo(path, cfg) == {"hessian_eig": 8, "cka": 8, "phase": 8}
    assert len(merges) == 1  # end of run only: none per annotation write, none at start-up (index current)
    assert "cka/value" not in Zoo(path).table()  # committed to annotations/, not yet in the index
    assert annotate_zoo(path, cfg) == {"hessian_eig": 0, "cka": 0, "phase": 0}  # skipped from the files
    assert len(merges) == 2  # start-up (files newer than the index), no end-of-run merge: nothing written
    for module in (wsl.zoo.annotations, wsl.landscape.annotate):
        monkeypatch.setattr(module, "merge_index", real)
    assert annotate_zoo(path, cfg) == {"hessian_eig": 0, "cka": 0, "phase": 0}  # its start-up merge catches up
    index = path / "index.h5"
    stamp = index.stat().st_mtime_ns
    assert annotate_zoo(path, cfg) == {"hessian_eig": 0, "cka": 0, "phase": 0}
    assert index.stat().st_mtime_ns == stamp  # nothing changed: the index is not rebuilt at all
    t = Zoo(path).table()
    wide = t[t.width == 16]
    assert wide["cka/value"].notna().all() and wide["hessian_eig/train"].notna().all()
    assert wide["phase/cka"].astype(float).notna().all()  # the labels saw cka in the files
    assert not wide["phase/note"].str.contains("cka").any()


def test_chosen_checkpoint_epochs_get_their_own_groups(zoo_base, tmp_path):
    path = _copy(zoo_base, tmp_path)
    done = annotate_zoo(path, _landscape_cfg("landscape.metrics=[spectra,cka]", "landscape.epoch=[0,7,-1]"))
    assert done == {"spectra_epoch0": 8, "cka_epoch0": 8, "phase_epoch0": 8, "spectra_epoch7": 8, "cka_epoch7": 8,
                    "phase_epoch7": 8, "spectra": 8, "cka": 8, "phase": 8}
    t = Zoo(path).table()
    ok = t[(t.status == "trained") & (t.width == 16)]
    assert (ok["spectra_epoch0/epoch"] == 0).all() and (ok["spectra/epoch"] == 2).all()
    assert (ok["spectra_epoch0/stable_rank_mean"] != ok["spectra/stable_rank_mean"]).all()  # init vs trained
    assert ok["cka_epoch7/note"].str.contains("no checkpoint at epoch 7").all()
    assert (ok["phase_epoch7/label"] == "?").all() and ok["phase_epoch7/note"].str.contains("no checkpoint at epoch 7").all()
    for _, cell in ok.groupby("lr"):  # the cell's mean train loss at the analyzed checkpoint, from the history
        init = [Zoo(path).history(m)["train_loss"][0] for m in cell.index]
        assert np.allclose(cell["phase_epoch0/train_loss"].astype(float), np.mean(init)) and np.mean(init) > 1.5
    with pytest.raises(ConfigError, match="landscape.epoch"):
        landscape_config({"metrics": ["cka"], "epoch": [3, 3]})


def test_wsl_landscape_resumes_after_a_kill(zoo_base, tmp_path):
    path = _copy(zoo_base, tmp_path)
    args = [f"zoo.path={path}", "landscape.metrics=[hessian_trace]", "landscape.chunk_size=1",
            "landscape.hessian_trace.samples=200",
            "landscape.hessian_trace.method=hutchinson", f"hydra.run.dir={tmp_path / 'run'}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "wsl.apps.landscape", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ann = path / "annotations" / "hessian_trace.h5"
    deadline = time.time() + 240
    while not ann.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # mid-run: after the first committed chunk
    proc.wait()
    merge_index(path)  # the kill may fall between an annotation commit and the index rebuild
    zoo = Zoo(path)
    stored = [m for m, s in zip(zoo.ids, zoo.annotation("hessian_trace")["columns"]["settings"]) if s]
    assert 1 <= len(stored) < 8
    kept = zoo.table().loc[stored, "hessian_trace/train"].copy()
    rest = annotate_zoo(path, typed_config(compose_cfg("landscape", args[:-1])).landscape)
    assert rest == {"hessian_trace": 8 - len(stored), "phase": 8}  # labels come after the metrics: never before the kill
    t = Zoo(path).table()
    pd.testing.assert_series_equal(t.loc[stored, "hessian_trace/train"], kept)  # not recomputed
    assert t["hessian_trace/settings"].str.len().gt(0).all()


def test_unknown_metric_fails_before_any_work(tmp_path):
    missing = tmp_path / "no-such-zoo"
    with pytest.raises(ConfigError, match="unknown metric.*'hessian'.*valid: hessian_eig, hessian_trace"):
        annotate_zoo(missing, landscape_config({"metrics": ["hessian", "cka"]}))  # the zoo is never opened
    with pytest.raises(ConfigError, match="landscape.hessian_eig.max_iters must be an integer >= 1, got 0"):
        _landscape_cfg("landscape.hessian_eig.max_iters=0")
    with pytest.raises(ConfigError, match="unknown config key 'landscape.hessian_eig.iters'"):  # a plain dict too
        landscape_config({"metrics": ["hessian_eig"], "hessian_eig": {"iters": 5}})
    with pytest.raises(ConfigError, match="landscape.hessian_trace.splits"):
        landscape_config({"metrics": ["hessian_trace"], "hessian_trace": {"splits": ["training"]}})
    p = run_cli("landscape", f"zoo.path={missing}", "landscape.metrics=[cka,bogus]", f"hydra.run.dir={tmp_path / 'r'}")
    assert p.returncode == 2 and "unknown metric(s) 'bogus'" in p.stderr and "valid: hessian_eig" in p.stderr
    assert "Traceback" not in p.stderr and not missing.exists()


def test_landscape_group_composes_into_the_zoo_config():
    has = "landscape" in compose_cfg("zoo", [])
    for option, n in (("none", 0), ("basic", 5), ("full", 6)):
        cfg = compose_cfg("zoo", [f"{'' if has else '+'}landscape={option}"])
        assert len(landscape_config(cfg.landscape).metrics) == n
    assert annotate_zoo("/nonexistent", landscape_config(compose_cfg("landscape", ["zoo.path=x", "landscape=none"]).landscape)) == {}


def test_wsl_plot_draws_phase_diagrams_into_the_zoo(annotated):
    path, _ = annotated
    p = run_cli("plot", f"zoo.path={path}", f"hydra.run.dir={path.parent / 'plot-run'}", check=True)
    assert "plot:" in p.stdout
    out = path / "plots"
    cells = pd.read_csv(out / "cells__width_vs_lr.csv")  # load axis on x, temperature axis on y by default
    for m in ("train_loss", "hessian_eig-train", "hessian_trace-test", "barrier-value", "mode_connectivity-value",
              "cka-value", "spectra-alpha_mean", "phase"):
        png = out / f"{m}__width_vs_lr.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert len(cells) == 4 and set(cells.width) == {3, 16}
    div = cells[cells.lr == 1000.0].iloc[0]
    assert div.n_diverged == 1 and div.n_members == 1 and np.isnan(div.train_loss) and div.phase == "?"
    t = Zoo(path).table()
    thr = PhaseThresholds()
    for _, c in cells.iterrows():
        members = t[(t.width == c.width) & (t.lr == c.lr) & (t.status != "diverged")]
        assert c.train_loss == pytest.approx(members.train_loss.mean(), nan_ok=True)  # seeds averaged
        want = phase_label(members.train_loss.mean() if len(members) else float("nan"),
                           members["mode_connectivity/value"].astype(float).mean(),
                           members["cka/value"].astype(float).mean(), thr)
        assert c.phase == want
    with pytest.raises(ConfigError, match="plot.x='depth_of_field' is not a hyperparameter.*swept: .*width"):
        plot_zoo(path, x="depth_of_field")


def test_phase_label_of_every_cell_is_stored_on_every_member(annotated):
    """Group `phase`: the label the phase diagram draws for a cell, on each member's row, with its inputs,
    a note for coarse labels and the thresholds used."""
    from wsl.landscape.plots import cell_table

    path, done = annotated
    zoo = Zoo(path)
    t = zoo.table()
    assert done["phase"] == 8 and t["phase/label"].str.len().gt(0).all()
    ann = zoo.annotation("phase")
    assert ann["attrs"]["threshold:loss"] == 0.1 and ann["attrs"]["threshold:cka"] == 0.9
    settings = json.loads(t["phase/settings"].iloc[0])
    assert settings["thresholds"] == {"loss": 0.1, "mc_tolerance": 0.05, "cka": 0.9}
    cells = cell_table(t, "width", "lr", [], ["train_loss", "mode_connectivity/value", "cka/value"], PhaseThresholds())
    for _, c in cells.iterrows():
        members = t[(t.width == c.width) & (t.lr == c.lr)]
        assert (members["phase/label"] == c.phase).all(), (c.width, c.lr)  # diverged members carry their cell's label
        assert members["phase/members"].nunique() == 1
    wide = t[(t.width == 16)]
    assert wide["phase/label"].isin(["I", "II", "III", "IV-A", "IV-B"]).all()  # every input present: a full label
    assert (wide["phase/note"] == "").all()
    for lr, cell in wide.groupby("lr"):
        assert cell["phase/cka"].astype(float).iloc[0] == pytest.approx(cell["cka/value"].astype(float).mean())
        assert cell["phase/train_loss"].astype(float).iloc[0] == pytest.approx(cell["train_loss"].mean())
    single = t[(t.width == 3) & (t.status == "trained")].iloc[0]  # one seed: no mode connectivity, a coarse label
    assert single["phase/label"] in ("I/II", "III/IV")
    assert "mode_connectivity missing (cell has 1 usable seed replica(s)" in single["phase/note"]
    div = t[t.status == "diverged"].iloc[0]
    assert div["phase/label"] == "?" and "train_loss missing (every member diverged)" in div["phase/note"]
    # the label is a function of the thresholds, which are settings: another threshold, another label, rewritten
    cfg = _landscape_cfg("landscape.metrics=[cka]", "landscape.phase.loss=1000")
    copy = _copy(path, path.parent / "relabel")
    assert annotate_zoo(copy, cfg) == {"cka": 0, "phase": 8}
    t2 = Zoo(copy).table()
    assert t2.loc[wide.index, "phase/label"].isin(["III", "IV-A", "IV-B"]).all()
    with pytest.raises(ConfigError, match=r"landscape.phase.cka must be a number in \[0, inf\)"):
        _landscape_cfg("landscape.phase.cka=-1")
    assert _landscape_cfg("landscape.phase=null").phase is None


def test_phase_labels_follow_the_taxonomy_table():
    t = PhaseThresholds(loss=0.1, mc_tolerance=0.05, cka=0.9)
    assert phase_label(1.0, -0.3, None, t) == "I"
    assert phase_label(1.0, 0.4, None, t) == "II"
    assert phase_label(1.0, 0.0, None, t) == "I/II"
    assert phase_label(0.01, -0.3, 0.99, t) == "III"
    assert phase_label(0.01, 0.01, 0.5, t) == "IV-A"
    assert phase_label(0.01, -0.01, 0.95, t) == "IV-B"
    assert phase_label(0.01, None, 0.95, t) == "III/IV"
    assert phase_label(0.01, 0.0, None, t) == "IV"
    assert phase_label(float("nan"), 0.0, 0.9, t) == "?"
    with pytest.raises(ConfigError, match=r"cka must be a number in \[0, inf\), got -1"):
        PhaseThresholds(cka=-1)


def test_a_shared_setting_is_named_where_the_user_sets_it():
    """Every metric copies landscape.num_samples / sample_seed (`${..num_samples}`): a bad value names the
    shared key; a metric's own override names the metric's key."""
    with pytest.raises(ConfigError, match=r"^landscape\.num_samples must be an integer >= 1 or null, got 0$"):
        _landscape_cfg("landscape.num_samples=0")
    with pytest.raises(ConfigError, match=r"^landscape\.cka\.num_samples must be an integer >= 1 or null, got 0$"):
        _landscape_cfg("landscape.cka.num_samples=0")
