"""population.chunk: nets trained in groups, one group after another, are the nets of one program."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_zoo, typed_zoo, TINY_ZOO
from wsl.errors import ConfigError
from wsl.population.chunks import auto_chunk, groups
from wsl.zoo import Zoo


def test_chunked_job_trains_the_same_nets_as_one_program(tiny_zoo, tmp_path):
    chunked = Zoo(make_zoo(tmp_path / "c", ["population.chunk=3"]))  # 4 members: a group of 3, then 1
    whole = Zoo(tiny_zoo)
    ids = sorted(whole.filter())
    assert sorted(chunked.filter()) == ids
    for mid in ids:
        assert chunked.checkpoint_epochs(mid) == whole.checkpoint_epochs(mid)
        for e in whole.checkpoint_epochs(mid):
            a, b = chunked.state_dict(mid, e), whole.state_dict(mid, e)
            for k in b:
                torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
        ha, hb = chunked.history(mid), whole.history(mid)
        assert set(ha) == set(hb)
        for k in hb:
            np.testing.assert_allclose(ha[k], hb[k], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("chunk,pattern", [("0", "population.chunk must be auto or an integer >= 1 .*got 0$"),
                                           ("5", r"population.chunk=5 is more than the 4 nets of the population"),
                                           ("some", "population.chunk must be auto or an integer >= 1 .*got 'some'")])
def test_bad_chunk_is_one_line_naming_the_key(tmp_path, chunk, pattern):
    with pytest.raises(ConfigError, match=pattern) as e:
        typed_zoo([f"zoo.path={tmp_path / 'z'}", *TINY_ZOO, f"population.chunk={chunk}"])
    assert "\n" not in str(e.value)
    assert not (tmp_path / "z").exists()


def test_auto_chunk_fits_the_cache_in_equal_groups():
    mb = 2**20
    assert auto_chunk(64, 1_000, 0, cache=32 * mb) == 64  # small nets: one program
    assert auto_chunk(64, 300_000, 0, gpu=True, cache=32 * mb) == 64  # a GPU: one program
    c = auto_chunk(64, 300_000, 0, "sgd", cache=32 * mb)  # 3.6 MB per net: 8 fit
    assert c == 8 and auto_chunk(64, 150_000, 0, "sgd", cache=32 * mb) == 16
    assert auto_chunk(64, 150_000, 0, "adam", cache=32 * mb) < 16
    assert auto_chunk(10, 300_000, 0, cache=32 * mb) == 5  # 8 fit: two groups of 5, not 8 + 2
    assert auto_chunk(64, 10**9, 0, cache=32 * mb) == 8  # never below MIN_GROUP (8) per program
    assert [len(g) for g in groups(list(range(10)), 4)] == [4, 4, 2]


def test_member_state_dicts_are_member_state_dict_of_every_member():
    from wsl.data import load_dataset
    from wsl.nets import CNN
    from wsl.population import PopulationModule, stack_state_dicts

    nets = [CNN((1, 8, 8), 10, width=4, depth=1, norm="batch") for _ in range(3)]
    mod = PopulationModule(nets[0], stack_state_dicts([n.state_dict() for n in nets]), load_dataset("digits"),
                           0.1, 0.0)
    every = mod.member_state_dicts()
    assert len(every) == 3
    for k in range(3):
        one = mod.member_state_dict(k)
        assert list(every[k]) == list(one)
        for name in one:
            assert torch.equal(every[k][name], one[name]) and every[k][name].dtype == one[name].dtype


def test_gpu_options_without_a_gpu_are_one_line_naming_the_key(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for override, key in (("trainer.accelerator=gpu", "trainer.accelerator=gpu"),
                          ("landscape.device=cuda", "landscape.device=cuda")):
        extra = ["landscape=basic"] if override.startswith("landscape") else []
        with pytest.raises(ConfigError, match=f"^{key} but this machine has no CUDA GPU") as e:
            typed_zoo([f"zoo.path={tmp_path / 'z'}", *TINY_ZOO, *extra, override])
        assert "\n" not in str(e.value)
    assert not (tmp_path / "z").exists()
