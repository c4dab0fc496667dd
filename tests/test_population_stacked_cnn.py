"""wsl.population.stacked_cnn computes the same function as the vmapped population_forward (outputs, penultimate
features and every gradient, 1-D and 2-D inputs, odd and even kernels, ReLU and another activation, shared and
per-member inputs), its backward (ConvAct, whose col2im adds each tap's share back) agrees with finite
differences, and PopulationModule takes it for strided 1-D CNNs only."""

import pytest
import torch

from wsl.nets import CNN
from wsl.population import stack_state_dicts
from wsl.population import stacked_cnn

from test_population_stacked import assert_equals_the_vmapped_forward

CASES = [((1, 40), 8, 2, 3, "relu"), ((3, 9), 5, 3, 5, "tanh"), ((2, 7, 6), 4, 2, 3, "relu"),
         ((1, 8, 8), 6, 1, 4, "relu"), ((2, 5), 3, 2, 2, "relu"),
         ((2, 4), 3, 4, 5, "relu")]  # 4 -> 2 -> 1 -> 1 -> 1: taps that lie in the padding at every position


@pytest.mark.parametrize("in_shape, width, depth, kernel, activation", CASES)
@pytest.mark.parametrize("shared", [True, False])
def test_outputs_and_gradients_equal_the_vmapped_forward(in_shape, width, depth, kernel, activation, shared):
    torch.manual_seed(0)
    nets = [CNN(in_shape, 4, width=width, depth=depth, kernel=kernel, activation=activation) for _ in range(3)]
    params = stack_state_dicts([n.state_dict() for n in nets])
    x = torch.randn(*(() if shared else (3,)), 6, *in_shape, generator=torch.Generator().manual_seed(1))
    assert_equals_the_vmapped_forward(stacked_cnn.cnn_forward, nets[0], params, x, shared, 4)


@pytest.mark.parametrize("sizes, kernel", [((7,), 3), ((6,), 4), ((5, 4), 3), ((1, 2), 5)])
@pytest.mark.parametrize("relu", [True, False])
def test_conv_act_backward_against_finite_differences(sizes, kernel, relu):
    g = torch.Generator().manual_seed(2)
    h = torch.randn(2, 3, *sizes, 4, dtype=torch.float64, generator=g, requires_grad=True)  # [P, N, *S, C]
    w = torch.randn(2, 5, 4, *([kernel] * len(sizes)), dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(2, 5, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: stacked_cnn.ConvAct.apply(*t, 2, kernel // 2, relu), (h, w, b))


def test_population_module_takes_the_path_for_strided_1d_cnns_only():
    assert stacked_cnn.supports(CNN((1, 40), 10, width=2)) and stacked_cnn.supports(CNN((3, 9), 10, width=2, kernel=5))
    assert not stacked_cnn.supports(CNN((1, 8, 8), 10, width=2))  # 2-D: not reliably faster than vmap (see supports)
    assert not stacked_cnn.supports(CNN((1, 40), 10, width=2, pooling="max"))
    assert not stacked_cnn.supports(CNN((1, 40), 10, width=2, pooling="avg"))
    assert not stacked_cnn.supports(CNN((1, 40), 10, width=2, norm="batch"))
