"""wsl-merge: the merge methods against their definitions (closed forms, hand-made task vectors), the
greedy soup's guarantee, the aligned merge of permuted copies, the zoo it writes and its bad inputs."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from tests.conftest import compose_cfg, run_cli
from wsl.errors import ConfigError
from wsl.merge import methods as M

F64 = torch.float64


# ---- the methods on hand-made state dicts --------------------------------------------------------------------
def _equal_angle_deltas(k: int, c: float, n: int, g) -> list:
    """k vectors in R^n of norms 1..k whose pairwise cosines all equal c (u shared, e_i orthonormal)."""
    q, _ = torch.linalg.qr(torch.randn(n, k + 1, generator=g, dtype=F64))
    return [(i + 1) * (math.sqrt(c) * q[:, 0] + math.sqrt(1 - c) * q[:, i + 1]) for i in range(k)]


@pytest.mark.parametrize("k,c", [(2, 0.3), (3, 0.6), (5, 0.05)])
def test_model_stock_ratio_matches_its_closed_form(k, c):
    g = torch.Generator().manual_seed(k)
    base = {"w": torch.randn(40, generator=g, dtype=F64), "b": torch.randn(3, generator=g, dtype=F64)}
    dw = _equal_angle_deltas(k, c, 40, g)
    db = torch.randn(3, generator=g, dtype=F64)  # every net moved its bias the same way: angle 0, t = 1
    sds = [{"w": base["w"] + dw[i], "b": base["b"] + (i + 1) * db} for i in range(k)]
    out = M.model_stock(sds, base)
    t = k * c / ((k - 1) * c + 1)
    assert out.coefficients["w"] == pytest.approx(t, abs=1e-12)
    assert out.coefficients["b"] == pytest.approx(1.0, abs=1e-12)
    avg = sum(sd["w"] for sd in sds) / k
    torch.testing.assert_close(out.state_dict["w"], t * avg + (1 - t) * base["w"])
    torch.testing.assert_close(out.state_dict["b"], sum(sd["b"] for sd in sds) / k)
    assert M.stock_ratio(c, k) == pytest.approx(t)


def test_ties_matches_its_definition_on_hand_made_task_vectors():
    base = {"a": torch.tensor([1.0, 2.0], dtype=F64), "b": torch.tensor([0.0, -1.0], dtype=F64)}
    taus = [[3.0, -1.0, 0.5, 2.0], [-2.0, -4.0, 1.0, 0.1], [2.0, 1.0, -3.0, 0.0]]
    sds = [{"a": base["a"] + torch.tensor(t[:2], dtype=F64), "b": base["b"] + torch.tensor(t[2:], dtype=F64)}
           for t in taus]
    # density 0.5: the 2 largest |entries| of each task vector (over both tensors) are kept:
    #   [3, 0, 0, 2], [-2, -4, 0, 0], [2, 0, -3, 0]; elected signs (sum): [+, -, -, +];
    #   disjoint means: (3 + 2) / 2, -4, -3, 2
    out = M.ties(sds, base, density=0.5, scale=0.5)
    merged = torch.tensor([2.5, -4.0, -3.0, 2.0], dtype=F64)
    torch.testing.assert_close(out.state_dict["a"], base["a"] + 0.5 * merged[:2])
    torch.testing.assert_close(out.state_dict["b"], base["b"] + 0.5 * merged[2:])
    # density 1 and agreeing signs: the plain mean of the task vectors
    same = [{"a": base["a"] + s, "b": base["b"] + 2 * s} for s in (torch.ones(2, dtype=F64), 3 * torch.ones(2, dtype=F64))]
    torch.testing.assert_close(M.ties(same, base, density=1.0).state_dict["a"], base["a"] + 2)


def test_dare_matches_its_definition_on_hand_made_task_vectors():
    base = {"w": torch.zeros(6, dtype=F64)}
    taus = [torch.arange(1.0, 7.0, dtype=F64), -torch.arange(6.0, 0.0, -1.0, dtype=F64) / 2]
    sds = [{"w": base["w"] + t} for t in taus]
    p = 0.4
    out = M.dare(sds, base, drop=p, scale=2.0, seed=7)
    g = torch.Generator().manual_seed(7)
    keep = torch.rand((2, 6), generator=g, dtype=F64) >= p  # an entry is dropped where its uniform draw < p
    want = 2.0 * (torch.stack(taus) * keep / (1 - p)).mean(0)
    torch.testing.assert_close(out.state_dict["w"], want)
    # drop 0, scale 1: the uniform soup; and the rescaling keeps every entry's expectation
    torch.testing.assert_close(M.dare(sds, base, drop=0.0).state_dict["w"], M.uniform_soup(sds).state_dict["w"])
    mean = torch.stack([M.dare(sds[:1], base, drop=0.5, seed=s).state_dict["w"] for s in range(4000)]).mean(0)
    torch.testing.assert_close(mean, taus[0], atol=0.1 * 6, rtol=0.06)


def test_greedy_soup_keeps_only_what_does_not_lower_the_validation_score():
    sds = [{"w": torch.tensor([v], dtype=F64)} for v in (0.9, 1.1, 3.0)]
    score = lambda sd: -float((sd["w"][0] - 1.0) ** 2)  # noqa: E731  (a validation score, best at w = 1)
    out = M.greedy_soup(sds, score)
    # ranked 0.9, 1.1 (tie: input order), 3.0; 1.1 joins (mean 1.0 scores 0 >= -0.01); 3.0 would drop it
    assert out.weights == [0.5, 0.5, 0.0] and out.info["kept"] == [0, 1]
    torch.testing.assert_close(out.state_dict["w"], torch.tensor([1.0], dtype=F64))
    assert score(out.state_dict) >= max(score(sd) for sd in sds)


def test_merging_nets_of_different_architectures_is_one_line():
    with pytest.raises(ConfigError, match="different architectures"):
        M.uniform_soup([{"w": torch.zeros(3)}, {"w": torch.zeros(4)}])


# ---- on a real zoo -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def judged(tiny_zoo):
    """(zoo, state dicts, judge) of the tiny zoo's nets on its own data."""
    from wsl.evaluate.domains import judge_for
    from wsl.nets import build_net
    from wsl.zoo import Zoo

    zoo = Zoo(tiny_zoo)
    sds = [zoo.state_dict(m) for m in zoo.ids]
    return zoo, sds, judge_for(zoo.training_data(zoo.ids[0]), build_net(zoo.arch(zoo.ids[0])))


def test_greedy_soup_validation_accuracy_is_never_below_its_best_ingredient(judged):
    zoo, sds, judge = judged
    val = lambda sd: float(judge.scores([sd], "val").accuracy[0])  # noqa: E731
    for order in ([0, 1, 2, 3], [3, 1, 0, 2]):
        out = M.greedy_soup([sds[i] for i in order], val)
        assert val(out.state_dict) >= max(val(sds[i]) for i in order)
        assert val(out.state_dict) == out.info["val_score"]


def test_aligned_merge_of_permuted_copies_gives_the_net_back(judged):
    from wsl.symmetry import permute, random_permutations

    zoo, sds, _ = judged
    spec = zoo.permutation_spec(zoo.ids[0])
    g = torch.Generator().manual_seed(0)
    copies = [sds[0]] + [permute(sds[0], spec, random_permutations(spec, g)) for _ in range(3)]
    assert any(not torch.equal(copies[1][k], sds[0][k]) for k in sds[0])
    out = M.aligned_soup(copies, spec)
    for k, v in sds[0].items():
        torch.testing.assert_close(out.state_dict[k], v)


def _typed(overrides):
    from wsl.apps.merge import typed_config

    return typed_config(compose_cfg("merge", ["logger=none", *overrides]))


def test_wsl_merge_console_run_writes_a_zoo_every_tool_reads(tiny_zoo, tmp_path):
    from wsl.zoo import Zoo

    out = tmp_path / "merged"
    p = run_cli("merge", f"zoo.path={tiny_zoo}", "method=uniform", f"out={out}", "logger=none", check=True)
    assert "vs best" in p.stdout and "zoo:" in p.stdout
    z, src = Zoo(out), Zoo(tiny_zoo)
    [mid] = z.ids
    row = z.table().loc[mid]
    assert row["status"] == "merged" and row["merge_method"] == "uniform"
    assert json.loads(row["merge_members"]) == src.ids and json.loads(row["merge_weights"]) == [0.25] * 4
    for col in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "merge/gain_vs_best",
                "merge/ensemble_test"):
        assert math.isfinite(float(row[col])), col
    # the stored net is the uniform soup of the members, scored as the index says
    soup = M.uniform_soup([src.state_dict(m) for m in src.ids]).state_dict
    for k, v in z.state_dict(mid).items():
        torch.testing.assert_close(v, soup[k])
    table = (out / "merge_report" / "merge_table.csv").read_text().splitlines()
    assert len(table) == 2 and (out / "merge_report" / "merge_gain.png").stat().st_size > 1000
    assert row["merge/gain_vs_best"] == pytest.approx(row["test_acc"] - row["merge/best_test"])
    # wsl-plot's merge-gain figure (one cell here: no axes) next to the source's phase label
    from wsl.merge.plots import plot_merge_phases

    (tmp_path / "plots").mkdir()
    files = plot_merge_phases(out, tmp_path / "plots")
    assert [f.name for f in files] == ["cells__merge_gain__none_vs_none.csv", "merge_gain__none_vs_none.png"]
    assert f"{row['merge/gain_vs_best']:.6f}"[:6] in files[0].read_text()


@pytest.mark.slow
def test_averaging_per_phase_plot_on_a_phase_zoo(tmp_path, restore_hydra_and_logging):
    """A 2 widths x 2 learning rates zoo, merged per cell (aligned): wsl-plot draws the merge gain per cell
    next to the source's phase map; the CSV's gains are the merged zoo's, its labels the source cells'."""
    import pandas as pd

    from tests.conftest import make_zoo
    from wsl.apps.plot import main as plot_main
    from wsl.landscape.plots import cell_table
    from wsl.landscape.schema import PhaseThresholds
    from wsl.merge.job import merge_zoo
    from wsl.zoo import Zoo

    src = tmp_path / "phase"
    for w in (4, 8):
        make_zoo(src, [f"net.width={w}", "train.lr=[0.05,0.2]"])
    out, rows = merge_zoo(_typed([f"zoo.path={src}", "method=aligned", f"out={tmp_path / 'm'}"]))
    assert len(rows) == 4 and all(r["n_members"] == 2 for r in rows)
    import sys

    argv = sys.argv
    sys.argv = ["wsl-plot", f"zoo.path={out}", "logger=none"]
    try:
        plot_main()
    finally:
        sys.argv = argv
    cells = pd.read_csv(out / "plots" / "cells__merge_gain__width_vs_lr.csv")
    assert (out / "plots" / "merge_gain__width_vs_lr.png").stat().st_size > 1000 and len(cells) == 4
    m = Zoo(out).table()
    ref = cell_table(Zoo(src).table(), "width", "lr", [], [], PhaseThresholds())
    for _, c in cells.iterrows():
        mine = m[(m["width"] == c["width"]) & (m["lr"] == c["lr"])]
        assert c["merge/gain_vs_best"] == pytest.approx(float(mine["merge/gain_vs_best"].iloc[0]))
        assert c["phase"] == ref[(ref["width"] == c["width"]) & (ref["lr"] == c["lr"])]["phase"].iloc[0]


def test_bad_inputs_are_one_line_and_write_nothing(tiny_zoo, tmp_path):
    from wsl.merge.job import merge_zoo
    from wsl.nets import build_net
    from wsl.zoo import ShardWriter, Zoo

    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="method='soup' is not allowed"):
        _typed([f"zoo.path={tiny_zoo}", "method=soup", f"out={out}"])
    with pytest.raises(ConfigError, match="init_from"):  # stock needs the pretrained net: none recorded, none given
        merge_zoo(_typed([f"zoo.path={tiny_zoo}", "method=stock", f"out={out}"]))
    with pytest.raises(ConfigError, match="does not exist|merge.base"):
        merge_zoo(_typed([f"zoo.path={tiny_zoo}", "method=ties", f"out={out}", f"merge.base={tmp_path}/no:m@1"]))
    # a zoo holding two architectures, merged as one group
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_zoo, mixed)
    src = Zoo(mixed)
    arch = {**src.arch(src.ids[0]), "width": 4}
    w = ShardWriter(mixed, "narrow", config=src.job_config(src.ids[0]))
    for i in range(2):
        w.write_checkpoint(f"narrow-{i}", 0, build_net(arch).state_dict(), arch)
        w.add_model(f"narrow-{i}", arch, {"width": 4}, "trained")
    w.commit()
    with pytest.raises(ConfigError, match="different architectures"):
        merge_zoo(_typed([f"zoo.path={mixed}", "method=uniform", "merge.by=all", f"out={out}"]))
    assert not out.exists()


def test_model_stock_on_a_fine_tuned_zoo_uses_the_recorded_base(tiny_zoo, tmp_path):
    """wsl-zoo init.from= fine-tunes of one tiny-zoo member, merged with method=stock: the base comes from the
    init_from column, the stored net is model_stock of the members and that base."""
    from tests.conftest import make_zoo
    from wsl.merge.job import merge_zoo
    from wsl.zoo import Zoo

    src = Zoo(tiny_zoo)
    ft = make_zoo(tmp_path / "ft", [f"init.from={tiny_zoo}:{src.ids[0]}", "population.size=3", "train.epochs=1"])
    z = Zoo(ft)
    out, rows = merge_zoo(_typed([f"zoo.path={ft}", "method=stock", f"out={tmp_path / 'm'}"]))
    m = Zoo(out)
    [mid] = m.ids
    hp = m.hparams(mid)
    assert hp["merge_base"] == z.hparams(z.ids[0])["init_from"] and hp["merge_base_sha256"] == hp["init_sha256"]
    want = M.model_stock([z.state_dict(i) for i in z.ids], src.state_dict(src.ids[0]),
                         keys=[n for n, _ in m.skeleton(mid).named_parameters()])
    for k, v in m.state_dict(mid).items():
        torch.testing.assert_close(v, want.state_dict[k])
    assert json.loads(hp["merge_coefficients"]) == pytest.approx(want.coefficients)
    assert rows[0]["n_members"] == 3 and math.isfinite(rows[0]["gain_vs_ensemble"])


@pytest.mark.slow
def test_merging_lora_fine_tunes_writes_dense_nets(tiny_zoo, tmp_path):
    """LoRA members are read merged (base + BA); their merge is a dense checkpoint, not a LoRA row."""
    from tests.conftest import make_zoo
    from wsl.merge.job import merge_zoo
    from wsl.zoo import Zoo

    src = Zoo(tiny_zoo)
    lz = Zoo(make_zoo(tmp_path / "lora", [f"init.from={tiny_zoo}:{src.ids[0]}", "finetune=lora", "finetune.rank=2",
                                          "population.size=3", "train.epochs=1"]))
    out, _ = merge_zoo(_typed([f"zoo.path={lz.path}", "method=ties", "merge.density=1", f"out={tmp_path / 'm'}"]))
    m = Zoo(out)
    [mid] = m.ids
    hp = m.hparams(mid)
    assert "finetune" not in hp and not any(k.startswith("lora_") for k in hp) and hp["merge_finetune"] == "lora"
    want = M.ties([lz.state_dict(i) for i in lz.ids], src.state_dict(src.ids[0]), density=1.0,
                  keys=[n for n, _ in m.skeleton(mid).named_parameters()])
    for k, v in m.state_dict(mid).items():
        torch.testing.assert_close(v, want.state_dict[k])


def test_model_stock_keeps_a_tensor_no_net_moved():
    base = {"w": torch.ones(3, dtype=F64), "frozen": torch.arange(2.0, dtype=F64)}
    sds = [{"w": base["w"] + d, "frozen": base["frozen"].clone()} for d in (torch.tensor([1.0, 0, 0], dtype=F64),
                                                                            torch.tensor([0, 1.0, 0], dtype=F64))]
    out = M.model_stock(sds, base)
    assert set(out.coefficients) == {"w"} and out.coefficients["w"] == pytest.approx(0.0)  # orthogonal: t = 0
    torch.testing.assert_close(out.state_dict["frozen"], base["frozen"])
    torch.testing.assert_close(out.state_dict["w"], base["w"])


@pytest.mark.slow
def test_cells_of_different_train_fractions_keep_their_own_data(tmp_path):
    """One shard per dataset record: each merged net's Zoo.training_data is its group's train split."""
    from tests.conftest import make_zoo
    from wsl.merge.job import merge_zoo
    from wsl.zoo import Zoo

    src = tmp_path / "tf"
    for f in (0.5, 1.0):
        make_zoo(src, [f"dataset.train_fraction={f}", "population.size=2", "train.epochs=1"])
    out, rows = merge_zoo(_typed([f"zoo.path={src}", "method=uniform", f"out={tmp_path / 'm'}"]))
    z, s = Zoo(out), Zoo(src)
    assert len(z.ids) == 2 and len({z.row(m).job_id for m in z.ids}) == 2
    for m in z.ids:
        member = json.loads(z.hparams(m)["merge_members"])[0]
        torch.testing.assert_close(z.training_data(m).x_train, s.training_data(member).x_train)
