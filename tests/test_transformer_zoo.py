"""A small ViT zoo made by wsl-zoo's population program (digits, 4x4 patches), aligned by the wsl-align console
script: members learn (test accuracy well above chance), every aligned checkpoint computes what it computed
before, the stored permutations are head-aware symmetries, replicas end up canonical against the reference,
and the barrier recorded before and after alignment drops."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import make_zoo, run_cli
from wsl.symmetry import identity_permutations, permute, weight_matching
from wsl.symmetry.permute import head_permutation
from wsl.zoo import Zoo, read_checkpoint_metadata

VIT = ["net=transformer", "dataset=digits", "net.patch=4", "net.width=8", "net.heads=2", "net.depth=1",
       "population.size=3", "train.epochs=2", "train.batch_size=32", "train.optimizer=adam", "train.lr=0.01"]


@pytest.fixture(scope="module")
def vits(tmp_path_factory):
    return Zoo(make_zoo(tmp_path_factory.mktemp("vit") / "src", VIT))


def test_vit_zoo_trains_and_wsl_align_aligns_it(vits, tmp_path):
    source = vits
    t = source.table()
    assert (t["status"] == "trained").all() and (t["test_acc"] > 0.3).all(), t["test_acc"].tolist()  # chance 0.1
    arch = source.arch(source.ids[0])
    assert arch["name"] == "transformer" and arch["patch"] == 4 and arch["vocab"] is None
    out = tmp_path / "aligned"
    r = run_cli("align", f"zoo.path={source.path}", f"out={out}", "logger=none", f"hydra.run.dir={tmp_path / 'run'}",
                check=True)
    assert f"aligned zoo: {out}" in r.stdout
    new = Zoo(out)
    cols = new.annotation("alignment")["columns"]
    x = source.training_data().x_test
    ref = source.ids[0]
    for m in source.ids:
        spec = source.permutation_spec(m)
        assert spec.heads  # the zoo's nets declare their heads
        for e in source.checkpoint_epochs(m):
            with torch.no_grad():
                assert torch.allclose(source.load_model(m, e)(x), new.load_model(m, e)(x), atol=1e-5, rtol=0), (m, e)
            meta = json.loads(read_checkpoint_metadata(new.checkpoint_path(m, e))["alignment"])
            perms = {p: torch.tensor(v) for p, v in (meta["permutation"] or {}).items()}
            for p, h in spec.heads.items():
                if p in perms:
                    assert head_permutation(perms[p], spec.num_heads[h]) is not None, (m, p)
            moved = permute(source.state_dict(m, e), spec, perms)
            assert all(torch.equal(moved[k], v) for k, v in new.state_dict(m, e).items())
        if m != ref:  # canonical: weight matching against the reference changes nothing
            found = weight_matching(new.state_dict(ref), new.state_dict(m), spec)
            assert all(torch.equal(found[p], q) for p, q in identity_permutations(spec).items())
    row = {m: i for i, m in enumerate(new.ids)}
    others = [row[m] for m in source.ids[1:]]
    before, after = np.asarray(cols["barrier_before"])[others], np.asarray(cols["barrier_after"])[others]
    assert np.isfinite(before).all() and np.isfinite(after).all()
    assert after.mean() <= before.mean() + 1e-9, (before, after)
    l2b, l2a = np.asarray(cols["l2_before"])[others], np.asarray(cols["l2_after"])[others]
    assert (l2a < l2b).all(), (l2b, l2a)


@pytest.mark.parametrize("data", [["dataset=modular", "dataset.p=11", "train.epochs=3"],
                                  ["dataset=text", "dataset.max_chars=20000", "dataset.context=16", "train.epochs=1"]],
                         ids=["modular", "text"])
def test_align_token_zoos(data, tmp_path):
    """Token transformers (the answer at the last position; a causal language model): aligned copies compute
    the same logits at every position, and the barrier to the reference does not grow."""
    from wsl.align import AlignConfig, align_zoo
    from wsl.zoo.schema import ZooPath

    source = Zoo(make_zoo(tmp_path / "src", ["net=transformer", "net.width=8", "net.heads=2", "net.depth=1",
                                             "population.size=2", *data]))
    arch = source.arch(source.ids[0])
    assert arch["vocab"] is not None and arch["causal"] == (data[0] == "dataset=text")
    new = Zoo(align_zoo(AlignConfig(zoo=ZooPath(str(source.path)), out=str(tmp_path / "aligned"))))
    x = source.training_data().x_test[:64]
    for m in source.ids:
        with torch.no_grad():
            assert torch.allclose(source.load_model(m)(x), new.load_model(m)(x), atol=1e-5, rtol=0), m
    cols = new.annotation("alignment")["columns"]
    other = [i for i, m in enumerate(new.ids) if m != source.ids[0]]
    before, after = np.asarray(cols["barrier_before"])[other], np.asarray(cols["barrier_after"])[other]
    assert np.isfinite(before).all() and (after <= before + 1e-9).all(), (before, after)


@pytest.mark.parametrize("encoder", ["flat", "graph"])
def test_wsl_train_encoder_reads_a_vit_zoo(encoder, tmp_path):
    """wsl-train-encoder's experiment on a ViT zoo of 8 cells: the flattened-weights MLP trains with the
    permutation augmentation (block permutations drawn from the space's spec), the graph encoder reads the
    attention sets."""
    from test_encoders_app import config
    from wsl.encoders.experiment import read_space, run_experiment

    zoo = Zoo(make_zoo(tmp_path / "vit", [*VIT[:6], "population.size=8", "train.epochs=1", "train.optimizer=adam",
                                          "train.lr=[0.02,0.01,0.005,0.003,0.002,0.001,0.0005,0.0002]"]))
    space = read_space(zoo, zoo.ids)
    assert space.spec.heads == zoo.permutation_spec(zoo.ids[0]).heads
    df = run_experiment(config(f"zoo.path={zoo.path}", f"encoder={encoder}", "seeds=[0]", "trainer.max_epochs=2",
                               "split.fractions=[0.5,0.25,0.25]"), tmp_path / "out")
    assert df.loc[0, "params"] > 0 and pd.notna(df.loc[0, "test/r2"])
