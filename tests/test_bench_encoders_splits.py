"""scripts/bench_encoders.py's split-seed bookkeeping (issue 18): per-split and pooled means over
fabricated results.csv files, the beats-flat-and-stats verdicts, the default split seeds per zoo, and
`--collect` over a --out/split<k> tree. Arithmetic and file layout only: no encoder is trained."""

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_encoders", ROOT / "scripts" / "bench_encoders.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# test tau per split seed -> encoder -> encoder seeds 0, 1, 2; val = test - 0.1
TAU = {0: {"flat": [0.80, 0.70, 0.90], "stats": [0.60, 0.62, 0.58], "graph": [0.75, 0.77, 0.73]},
       1: {"flat": [0.75, 0.76, 0.74], "stats": [0.78, 0.80, 0.76], "graph": [0.79, 0.79, 0.82]},
       2: {"flat": [0.76, 0.77, 0.75], "stats": [0.79, 0.81, 0.77], "graph": [0.86, 0.85, 0.87]}}


def write_results(path: Path, name: str, taus: list) -> None:
    """A results.csv as wsl-train-encoder writes it (per-seed rows, then mean and std rows)."""
    path.mkdir(parents=True)
    lines = ["encoder,task,seed,params,s_per_epoch,peak_mem_mb,val/tau,test/tau,test/r2"]
    lines += [f"{name},test_acc,{s},100,0.1,400,{t - 0.1},{t},0.5" for s, t in enumerate(taus)]
    lines += [f"{name},test_acc,mean,100,0.1,400,{statistics.fmean(taus) - 0.1},{statistics.fmean(taus)},0.5",
              f"{name},test_acc,std,0,0,0,0,{statistics.stdev(taus)},0"]
    (path / "results.csv").write_text("\n".join(lines) + "\n")


def test_pool_and_verdicts_against_hand_arithmetic(bench, tmp_path):
    scores = {}
    for k, per in TAU.items():
        scores[k] = {}
        for name, taus in per.items():
            write_results(bench.split_dir(tmp_path, [0, 1, 2], k) / name, name, taus)
            scores[k][name] = bench.seed_scores(tmp_path / f"split{k}" / name / "results.csv", "tau")
    assert scores[1]["graph"]["test"] == TAU[1]["graph"]  # the mean/std rows are not seeds
    pooled = bench.pool_splits(scores)
    for name in ("flat", "stats", "graph"):
        runs = [t for k in TAU for t in TAU[k][name]]
        assert pooled[name]["n"] == 9
        assert pooled[name]["mean"] == pytest.approx(statistics.fmean(runs))
        assert pooled[name]["std"] == pytest.approx(statistics.stdev(runs))  # over all 9 split x seed runs
        assert pooled[name]["val_mean"] == pytest.approx(statistics.fmean(runs) - 0.1)
        for k in TAU:
            m, s, n = pooled[name]["splits"][k]
            assert (m, s, n) == pytest.approx((statistics.fmean(TAU[k][name]), statistics.stdev(TAU[k][name]), 3))
    v = bench.verdicts(pooled)
    assert list(v) == ["graph"]  # baselines get no verdict
    # graph pooled 0.8033 > flat 0.7700 > stats 0.7233; split means: graph loses split 0 to flat (0.75 < 0.80)
    # and wins splits 1 (0.80 > 0.78) and 2 (0.86 > 0.79)
    assert v["graph"]["pooled"] and v["graph"]["splits_won"] == 2 and v["graph"]["splits"] == 3
    assert v["graph"]["margin"] == pytest.approx(statistics.fmean([t for k in TAU for t in TAU[k]["graph"]])
                                                 - statistics.fmean([t for k in TAU for t in TAU[k]["flat"]]))


def test_missing_split_and_missing_baseline(bench):
    s = {"test": [0.5, 0.7], "val": [0.4, 0.6]}
    pooled = bench.pool_splits({0: {"flat": s, "nfn": s}, 1: {"flat": s}})
    assert pooled["nfn"]["missing"] == [1] and pooled["nfn"]["n"] == 2 and pooled["flat"]["n"] == 4
    assert bench.verdicts(pooled) == {}  # no stats: no verdict


def test_default_split_seeds(bench):
    def seeds(net, split_seeds=None, override=()):
        a = type("A", (), {"net": net, "split_seeds": split_seeds, "override": list(override)})()
        bench.set_split_seeds(a)
        return a.split_seeds

    assert seeds("mlp") == seeds("resnet") == [0, 1, 2] and seeds("cnn") == seeds("inr") == [0]
    assert seeds("mlp", override=["split.seed=2"]) == [2]  # the old single-split way
    assert seeds("cnn", [0, 1, 2]) == [0, 1, 2]
    for bad in ([[0, 1], ["split.seed=1"]], [[1, 1], []]):
        with pytest.raises(SystemExit, match="split"):
            seeds("mlp", *bad)


def test_collect_pools_a_split_tree(bench, tmp_path, monkeypatch, capsys):
    zoo, out = tmp_path / "zoo", tmp_path / "out"
    zoo.mkdir()
    (zoo / "index.h5").write_bytes(b"")  # an existing zoo is reused, never rebuilt, by --collect
    for k, per in TAU.items():
        for name, taus in per.items():
            write_results(out / f"split{k}" / name, name, taus)
    monkeypatch.setattr(sys, "argv", ["bench_encoders.py", "--zoo", str(zoo), "--out", str(out), "--collect",
                                      "--encoders", "flat", "stats", "graph"])
    bench.main()
    text = capsys.readouterr().out
    assert "graph: pooled 0.803 (+0.033 against 0.770) beats both; splits 2/3" in text
    saved = json.loads((out / "pooled.json").read_text())
    assert saved["split_seeds"] == [0, 1, 2] and saved["verdicts"]["graph"]["splits_won"] == 2
