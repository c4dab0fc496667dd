"""INR zoos through the ordinary wsl-zoo job: `dataset=digits_inr net=siren` fits one SIREN per digits
image in one vmapped population (member k fits image k), writes it like any zoo (checkpoints, index,
resume), records the SIREN recipe and each net's digit, and `task=inr_class` reads the digits back."""

from __future__ import annotations

import pytest
import torch
from conftest import run_cli, typed_zoo

from wsl.errors import ConfigError

# the recipe of experiment=inr_digits, shrunk: 20 images (2 per digit), 60 full-batch steps
TINY_INR = ["experiment=inr_digits", "dataset.per_class=2", "train.epochs=60",
            "zoo.checkpoint_epochs=[0,20]", "logger=none", "progress_refresh_rate=0", "trainer.accelerator=cpu"]


def make_inr_zoo(path, extra=()):
    from wsl.apps.zoo_job import run_zoo_job

    return run_zoo_job(typed_zoo([f"zoo.path={path}", *TINY_INR, *extra]))


@pytest.fixture(scope="module")
def inr_zoo(tmp_path_factory):
    return make_inr_zoo(tmp_path_factory.mktemp("inr") / "inr")


def test_each_checkpoint_redraws_its_own_image_and_the_index_holds_labels_and_recipe(inr_zoo):
    from wsl.data import INRData
    from wsl.population import psnr
    from wsl.zoo import Zoo

    zoo = Zoo(inr_zoo)
    data = zoo.training_data()  # the exact images the zoo was fitted to
    assert isinstance(data, INRData) and data.num_images == 20
    t = zoo.table()
    assert len(t) == 20 and (t["status"] == "trained").all()
    assert sorted(t["label"].tolist()) == sorted(data.labels.tolist()) == sorted(list(range(10)) * 2)
    assert sorted(t["image_index"].tolist()) == sorted(data.image_index.tolist())
    # recipe: in every row and in the job config
    row = t.iloc[3]
    assert (row["net"], row["w0"], row["width"], row["depth"], row["optimizer"], row["lr"], row["steps"]) == \
        ("siren", 10.0, 32, 2, "adam", 3e-3, 60)
    assert row["loss"] == "mse" and bool(row["shared_init"]) and row["init"].startswith("siren")
    recipe = zoo.job_config(row["model_id"])["inr"]
    assert recipe["w0"] == 10.0 and recipe["steps"] == 60 and recipe["full_batch"] and recipe["shared_init"]
    assert t["seed_init"].nunique() == 1  # shared init: every image's SIREN starts from the same weights
    # per-epoch metrics are the fit's MSE and PSNR (no accuracy)
    assert {"train_loss", "train_psnr"} <= set(t.columns) and t["train_acc"].isna().all()
    assert zoo.checkpoint_epochs(row["model_id"]) == [0, 20, 60]
    for mid in t.index[:5]:
        k = int((data.image_index == int(t.loc[mid, "image_index"])).nonzero())
        assert int(data.labels[k]) == int(t.loc[mid, "label"])
        with torch.no_grad():
            mse = [(zoo.load_model(mid, epoch=e)(data.coords) - data.values[k]).pow(2).mean() for e in (0, 20, 60)]
        assert psnr(mse[0]) < 12 and psnr(mse[2]) > 35 and mse[2] < mse[1] < mse[0]
        hist = zoo.history(mid)
        assert float(psnr(mse[2])) == pytest.approx(hist["train_psnr"][-1], rel=1e-3)
        assert hist["train_loss"][0] > hist["train_loss"][20] > hist["train_loss"][-1]
        # and it draws its own image better than any other image of the zoo
        with torch.no_grad():
            err = (zoo.load_model(mid)(data.coords)[None] - data.values).pow(2).mean(dim=(1, 2))
        assert int(err.argmin()) == k


def test_member_equals_one_siren_fitted_alone_with_torch_optim(inr_zoo):
    from wsl.nets import SIREN
    from wsl.population import member_epoch_order
    from wsl.zoo import Zoo

    zoo = Zoo(inr_zoo)
    data = zoo.training_data()
    t = zoo.table()
    for mid in (t.index[0], t.index[-1]):
        hp = zoo.hparams(mid)
        k = int((data.image_index == hp["image_index"]).nonzero())
        torch.manual_seed(hp["seed_init"])
        net = SIREN([2], 1, width=hp["width"], depth=hp["depth"], w0=hp["w0"])
        torch.testing.assert_close(net.state_dict(), zoo.state_dict(mid, epoch=0), atol=0, rtol=0)
        opt = torch.optim.Adam(net.parameters(), lr=hp["lr"])
        for e in range(hp["steps"]):  # full batch: one step per epoch, the member's pixel order
            order = member_epoch_order(hp["seed_data"], e, 64)
            loss = (net(data.coords[order]) - data.values[k][order]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        for name, v in net.state_dict().items():
            torch.testing.assert_close(zoo.state_dict(mid)[name], v, atol=1e-5, rtol=1e-5)


def test_inr_class_reads_the_digits(inr_zoo, tmp_path):
    from hydra import compose, initialize_config_dir

    from wsl.apps.common import CONF_DIR
    from wsl.apps.train_encoder import typed_config
    from wsl.encoders.experiment import run_experiment

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train_encoder", overrides=[
            "logger=none", f"zoo.path={inr_zoo}", "task=inr_class", "encoder=transformer", "encoder.dim=16",
            "encoder.num_layers=1", "seeds=[0]", "trainer.max_epochs=2", "trainer.accelerator=cpu",
            "split.fractions=[0.5,0.25,0.25]"])
    df = run_experiment(typed_config(cfg), tmp_path / "out")
    assert 0.0 <= df.loc[0, "test/acc"] <= 1.0 and "test/tau" not in df
    assert (df["task"] == "inr_class").all() and df.loc[0, "params"] > 0


def test_resume_and_growing_the_population_train_only_new_nets(tmp_path):
    from wsl.zoo import Zoo

    extra = ["dataset.per_class=1", "train.epochs=3", "zoo.checkpoint_epochs=[0,1]"]
    root = make_inr_zoo(tmp_path / "z", extra)
    before = {mid: Zoo(root).row(mid).checkpoints for mid in Zoo(root).ids}
    assert len(before) == 10
    make_inr_zoo(tmp_path / "z", extra)  # same command: nothing retrained, nothing rewritten
    assert {mid: Zoo(root).row(mid).checkpoints for mid in Zoo(root).ids} == before
    make_inr_zoo(tmp_path / "z", [*extra, "population.size=2"])  # a second seed replica per image
    zoo = Zoo(root)
    t = zoo.table()
    assert len(t) == 20 and all(zoo.row(mid).checkpoints == c for mid, c in before.items())
    assert t.groupby("replica")["seed_init"].nunique().tolist() == [1, 1]  # shared within a replica
    assert t["seed_init"].nunique() == 2 and t.groupby("image_index").size().tolist() == [2] * 10
    # replicas of one image are one cell: a model-level split never separates them
    assert len(zoo.cells()) == 10


def test_per_image_init_is_an_option(tmp_path):
    from wsl.zoo import Zoo

    root = make_inr_zoo(tmp_path / "z", ["dataset.per_class=1", "train.epochs=1", "zoo.checkpoint_epochs=null",
                                          "dataset.shared_init=false"])
    t = Zoo(root).table()
    assert t["seed_init"].nunique() == 10 and not t["shared_init"].any()
    assert Zoo(root).job_config(t.index[0])["inr"]["shared_init"] is False


@pytest.mark.parametrize("overrides,match", [
    (["dataset=digits", "net=siren"], r"net=siren with dataset=digits: .*INR dataset \(dataset=digits_inr\)"),
    (["dataset=digits_inr", "net=cnn"], r"net=cnn with dataset=digits_inr: .*net=mlp or net=siren"),
    (["experiment=inr_digits", "landscape=basic"], r"landscape.metrics with dataset=digits_inr"),
    (["experiment=inr_digits", "dataset.num_images=50"], r"dataset.num_images and dataset.per_class"),
    (["dataset=digits_inr", "net=siren", "dataset.shared_init=maybe"], r"dataset.shared_init must be true or false"),
    (["dataset=digits_inr", "net=siren", "net.w0=0"], r"net.w0 must be a number in \(0, inf\), got 0"),
])
def test_impossible_combinations_are_refused_naming_the_keys(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        typed_zoo([f"zoo.path={tmp_path / 'z'}", *overrides])


def test_cli_refuses_siren_on_a_classification_dataset_before_any_work(tmp_path):
    r = run_cli("zoo", "dataset=digits", "net=siren", f"zoo.path={tmp_path / 'z'}", cwd=tmp_path)
    assert r.returncode == 2 and "net=siren with dataset=digits" in r.stderr
    assert not (tmp_path / "z").exists()


@pytest.mark.slow
def test_inr_classification_beats_chance_on_a_wsl_zoo_inr_zoo(tmp_path):
    """300 SIRENs fitted by wsl-zoo from one shared init: an encoder reads the digit from their weights
    far above chance (10%). (experiment=inr_digits, 1,000 SIRENs: stats ~0.65, see README.)"""
    from hydra import compose, initialize_config_dir

    from wsl.apps.common import CONF_DIR
    from wsl.apps.train_encoder import typed_config
    from wsl.encoders.experiment import run_experiment

    root = make_inr_zoo(tmp_path / "inr", ["dataset.per_class=30", "net.width=32", "train.epochs=100",
                                           "zoo.checkpoint_epochs=null", "zoo.checkpoint_every=100"])
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train_encoder", overrides=[
            "logger=none", f"zoo.path={root}", "task=inr_class", "encoder=stats", "seeds=[0]",
            "trainer.max_epochs=30", "trainer.accelerator=cpu"])
    df = run_experiment(typed_config(cfg), tmp_path / "out")
    assert df.loc[0, "test/acc"] > 0.3, df.to_string()
