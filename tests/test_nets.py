import pytest
import torch

from wsl.errors import ConfigError
from wsl.nets import CNN, MLP, NETS, build_net, count_parameters


def test_small_cnn_zoo_shape_has_4970_parameters():
    assert count_parameters(CNN((1, 28, 28), 10)) == 4970


@pytest.mark.parametrize("net", [MLP((1, 8, 8), 10, width=6, depth=2), CNN((1, 40), 10, width=5),
                                 CNN((1, 8, 8), 10, width=4, pooling="max")])
def test_permutation_spec_declares_every_tensor_and_preserves_function(net):
    spec = net.permutation_spec()
    sd = net.state_dict()
    assert set(spec.axes) == set(sd)
    for name, axes in spec.axes.items():
        assert len(axes) == sd[name].dim()
        for i, p in enumerate(axes):
            if p is not None:
                assert sd[name].shape[i] == spec.sizes[p]
    # permute every hidden layer by the declared structure: the function must not change
    g = torch.Generator().manual_seed(0)
    perms = {p: torch.randperm(n, generator=g) for p, n in spec.sizes.items()}
    new = {k: v.clone() for k, v in sd.items()}
    for p, uses in spec.perm_to_axes.items():
        for name, axis in uses:
            new[name] = new[name].index_select(axis, perms[p])
    assert any(not torch.equal(new[k], sd[k]) for k in sd)
    other = build_net(net.arch)
    other.load_state_dict(new)
    x = torch.randn(7, *net.in_shape)
    torch.testing.assert_close(other(x), net(x), atol=1e-5, rtol=1e-5)


def test_build_net_round_trips_and_refuses_unknown():
    m = MLP((1, 40), 10, width=3, depth=2, activation="tanh")
    assert build_net(m.arch).arch == m.arch
    with pytest.raises(ConfigError, match="valid"):
        build_net({"name": "os.system"})
    with pytest.raises(ConfigError, match="unknown argument"):
        build_net({**m.arch, "evil": 1})
    with pytest.raises(ConfigError, match="width must be an integer >= 1, got 0"):
        MLP((1, 8, 8), 10, width=0)
    assert {"mlp", "cnn"} <= set(NETS)
