"""ResNets with BatchNorm: shapes and sizes, the residual permutation structure checked against the
definition (function equality in train and eval mode after permuting, running statistics included),
exact recovery of a planted permutation, and one-line refusals of impossible options."""

from __future__ import annotations

import pytest
import torch

from wsl.errors import ConfigError
from wsl.nets import ResNet, build_net, count_parameters
from wsl.symmetry import inverse, permute, random_permutations, weight_matching
from wsl.symmetry.permute import check_state_dict


def _trained_like(net, x, steps=3):
    """Running statistics and affine BatchNorm parameters away from their initial values."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_()
        net.train()
        for i in range(steps):
            net(x * (i + 1) + i)
    return net


@pytest.mark.parametrize("in_shape", [[1, 8, 8], [1, 40], [3, 16, 16]])
@pytest.mark.parametrize("depth", [1, 2])
def test_permuted_resnet_computes_the_same_function_in_train_and_eval_mode(in_shape, depth):
    torch.manual_seed(depth)
    x = torch.randn(32, *in_shape)
    net = _trained_like(ResNet(in_shape, 10, width=3, depth=depth), x)
    spec, sd = net.permutation_spec(), {k: v.clone() for k, v in net.state_dict().items()}
    assert set(spec.axes) == set(sd), "the spec declares every tensor, BatchNorm buffers included"
    assert spec.buffers == {k for k in sd if k.rsplit(".", 1)[-1] in ("running_mean", "running_var",
                                                                       "num_batches_tracked")}
    # one stream per stage, one inner permutation per block
    assert sorted(spec.sizes) == sorted([f"S{s}" for s in range(3)] + [f"B{s}.{b}" for s in range(3)
                                                                        for b in range(depth)])
    perms = random_permutations(spec, torch.Generator().manual_seed(2))
    moved = build_net(net.arch)
    moved.load_state_dict(permute(sd, spec, perms))
    net.eval(), moved.eval()
    with torch.no_grad():
        assert torch.allclose(net(x), moved(x), atol=1e-5)
        net.train(), moved.train()  # batch statistics; the running ones are updated alike
        assert torch.allclose(net(x), moved(x), atol=1e-5)
    after = permute({k: v.clone() for k, v in net.state_dict().items()}, spec, perms)
    for k, v in moved.state_dict().items():
        assert torch.allclose(v.double(), after[k].double(), atol=1e-5), k


def test_stream_permutation_ties_the_skip_path():
    """Permuting a block's inner channels alone, or a whole stream, keeps the function; permuting only
    the second conv of a block (half a stream) does not: the skip connection ties them."""
    torch.manual_seed(0)
    x = torch.randn(16, 1, 8, 8)
    net = _trained_like(ResNet([1, 8, 8], 5, width=4, depth=2), x).eval()
    spec, sd = net.permutation_spec(), net.state_dict()
    flip = torch.arange(8).flip(0)
    half = dict(sd)
    for k in ("stages.1.1.conv2.conv.weight", "stages.1.1.conv2.bn.weight", "stages.1.1.conv2.bn.bias",
              "stages.1.1.conv2.bn.running_mean", "stages.1.1.conv2.bn.running_var"):
        half[k] = sd[k].index_select(0, flip)
    broken = build_net(net.arch).eval()
    broken.load_state_dict(half)
    whole = build_net(net.arch).eval()
    whole.load_state_dict(permute(sd, spec, {"S1": flip}))
    with torch.no_grad():
        assert torch.allclose(net(x), whole(x), atol=1e-5)
        assert not torch.allclose(net(x), broken(x), atol=1e-3)
    users = {name for name, _ in spec.perm_to_axes["S1"]}
    assert {"stages.1.0.shortcut.conv.weight", "stages.2.0.conv1.conv.weight", "stages.2.0.shortcut.conv.weight",
            "stages.1.1.conv1.conv.weight"} <= users


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_weight_matching_recovers_a_planted_permutation(norm):
    torch.manual_seed(1)
    net = _trained_like(ResNet([1, 8, 8], 10, width=4, depth=2, norm=norm), torch.randn(16, 1, 8, 8))
    spec, sd = net.permutation_spec(), net.state_dict()
    planted = random_permutations(spec, torch.Generator().manual_seed(5))
    found = weight_matching(sd, permute(sd, spec, planted), spec)
    want = inverse(planted)
    assert all(torch.equal(found[p], want[p]) for p in spec.sizes)


def test_sizes_and_weight_layout():
    assert count_parameters(ResNet([1, 8, 8], 10, width=8, depth=1)) == 19_810  # ResNet-8, width 8
    assert count_parameters(ResNet([3, 32, 32], 10, width=16, depth=3)) == 272_474  # ResNet-20 (0.27M)
    net = ResNet([1, 40], 10, width=4, norm="none")
    assert not net.permutation_spec().buffers and not list(net.buffers())
    check_state_dict(net.state_dict(), net.permutation_spec())
    # the spec of the weights alone: no buffers, and a state dict without them is accepted
    bn = ResNet([1, 8, 8], 10, width=2)
    weights = bn.permutation_spec().parameters()
    assert set(weights.axes) == {k for k, _ in bn.named_parameters()}
    check_state_dict(dict(bn.named_parameters()), bn.permutation_spec())


@pytest.mark.parametrize("kw,match", [
    (dict(in_shape=[1, 2, 2], stages=3), "net.stages=3: an input of side 2 is too small"),
    (dict(in_shape=[8], stages=1), r"inputs \[C, L\] or \[C, H, W\]"),
    (dict(in_shape=[1, 8, 8], norm="layer"), "norm='layer' is unknown; valid: none, batch"),
    (dict(in_shape=[1, 8, 8], width=0), "width"),
])
def test_impossible_options_are_one_line_naming_the_key(kw, match):
    with pytest.raises(ConfigError, match=match) as e:
        ResNet(num_classes=10, **kw)
    assert "\n" not in str(e.value)
