import numpy as np
import pytest
import torch

from wsl.data import load_dataset
from wsl.errors import ConfigError, DatasetError


@pytest.mark.parametrize("name,shape", [("digits", (1, 8, 8)), ("mnist1d", (1, 40))])
def test_embedded_datasets_have_fixed_disjoint_splits(name, shape):
    a = load_dataset(name)
    b = load_dataset(name)
    assert a.input_shape == shape and a.num_classes == 10
    n = a.x_train.shape[0] + a.x_val.shape[0] + a.x_test.shape[0]
    assert n == (1797 if name == "digits" else 5000)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)  # fixed split
    assert a.fingerprint() == b.fingerprint()
    # splits are disjoint: no test row appears in train
    train_rows = {r.numpy().tobytes() for r in a.x_train}
    assert not any(r.numpy().tobytes() in train_rows for r in a.x_test)
    assert set(a.y_train.unique().tolist()) == set(range(10))
    # standardized with train statistics only
    assert abs(float(a.x_train.mean())) < 1e-3


def test_split_seed_changes_split_and_train_fraction_subsamples():
    a = load_dataset("digits")
    b = load_dataset("digits", split_seed=1)
    assert not torch.equal(a.y_test, b.y_test)
    h = load_dataset("digits", train_fraction=0.25, subset_seed=3)
    assert h.x_train.shape[0] == round(a.x_train.shape[0] * 0.25)
    assert torch.equal(h.x_test, a.x_test)  # only train is subsampled
    h2 = load_dataset("digits", train_fraction=0.25, subset_seed=4)
    assert not torch.equal(h.y_train, h2.y_train)
    assert h.info["train_fraction"] == 0.25 and h.info["subset_seed"] == 3


def test_bad_dataset_inputs_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="valid: .*digits"):
        load_dataset("nope")
    with pytest.raises(ConfigError, match="train_fraction"):
        load_dataset("digits", train_fraction=0.0)
    missing = tmp_path / "no-such-dir"
    with pytest.raises(DatasetError, match=str(missing)):
        load_dataset("mnist", root=str(missing))
    with pytest.raises(DatasetError, match="dataset.root"):
        load_dataset("cifar10", root=None)


def test_mnist1d_generation_does_not_touch_global_numpy_state(tmp_path, monkeypatch):
    monkeypatch.setenv("WSL_CACHE", str(tmp_path))
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    load_dataset("mnist1d")  # generated afresh into the empty cache
    assert np.random.rand() == expected
    assert list(tmp_path.glob("mnist1d_*.npz"))


def test_inr_dataset_gives_shared_coordinates_and_one_target_row_per_image():
    from wsl.data import INR_DATASETS, load_inr_dataset

    d = load_inr_dataset("digits_inr", per_class=2, subset_seed=3, shared_init=False)
    assert d.kind == "inr" and load_dataset("digits").kind == "classification"
    x, y = d.split("train")
    assert x.shape == (64, 2) and y.shape == (20, 64, 1) and d.num_classes == 1 and d.input_shape == (2,)
    assert d.split("test")[0].shape[0] == 0 and not d.shared_init and d.info["subset_seed"] == 3
    assert d.fingerprint() == load_inr_dataset("digits_inr", per_class=2, subset_seed=3).fingerprint()
    assert "digits_inr" in INR_DATASETS
    with pytest.raises(ConfigError, match="digits_inr.*INR dataset.*load_inr_dataset"):
        load_dataset("digits_inr")
    with pytest.raises(ConfigError, match="not an INR dataset"):
        load_inr_dataset("digits")


def test_dataset_schemas_know_every_dataset_and_its_shapes():
    """The schemas size the nets before any data is loaded: their shapes must be the loaded data's."""
    from wsl.data import DATASETS, INR_DATASETS, load_inr_dataset
    from wsl.data.schema import INR_SHAPES, SHAPES, ClassificationDatasetConfig, INRDatasetConfig

    assert set(SHAPES) == set(DATASETS) and set(INR_SHAPES) == set(INR_DATASETS)
    for name in ("digits", "mnist1d"):
        node = ClassificationDatasetConfig(name=name)
        d = node.load()
        assert (d.input_shape, d.num_classes) == node.shape() == SHAPES[name]
    node = INRDatasetConfig(per_class=2)
    d = node.load()
    assert (d.input_shape, d.num_classes) == node.shape() and d.num_images == node.max_targets() == 20
    assert load_inr_dataset("digits_inr").num_images == INRDatasetConfig().max_targets() == INR_SHAPES["digits_inr"][2]
