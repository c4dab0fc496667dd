"""wsl.population.stacked computes the same function as the vmapped population_forward (outputs and
every gradient), its backward is checked against finite differences, the evaluation plan keeps its
bounds, and a PopulationModule of MLPs or stride-2 1-D CNNs takes its path
(training and evaluation) with vmap's numbers; CNNs with pooling layers or BatchNorm keep vmap."""

import math

import pytest
import torch

from wsl.data import load_dataset
from wsl.nets import CNN, MLP
from wsl.population import PopulationModule, stack_state_dicts
from wsl.population import stacked
from wsl.population.functional import population_forward, skeleton


def _population(p, width, depth, activation="relu", in_shape=(1, 6), classes=5, seed=0):
    torch.manual_seed(seed)
    nets = [MLP(in_shape, classes, width=width, depth=depth, activation=activation) for _ in range(p)]
    return nets[0], stack_state_dicts([n.state_dict() for n in nets])


def assert_equals_the_vmapped_forward(forward, net, params, x, shared, outputs):
    """forward(meta, params, x, shared, features=...) (a stacked path) against population_forward: outputs and
    penultimate features without gradients (evaluation), then every gradient (x's and each parameter's) of a loss
    that weighs every output differently."""
    meta = skeleton(net)
    p, n = next(iter(params.values())).shape[0], x.shape[-len(net.in_shape) - 1]
    with torch.no_grad():  # evaluation: the shared first layer as one product, ReLU in place
        for method, features in (("forward", False), ("features", True)):
            want = population_forward(meta, params, x, shared_input=shared, method=method)
            torch.testing.assert_close(forward(meta, params, x, shared, features=features), want)
    weights = torch.randn(p, n, outputs, generator=torch.Generator().manual_seed(5))
    grads = []
    for fn in (lambda prm, xx: population_forward(meta, prm, xx, shared_input=shared),
               lambda prm, xx: forward(meta, prm, xx, shared)):
        prm = {k: v.clone().requires_grad_() for k, v in params.items()}
        xx = x.clone().requires_grad_()
        (fn(prm, xx) * weights).sum().backward()
        grads.append([xx.grad] + [prm[k].grad for k in params])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a)


@pytest.mark.parametrize("width, depth, activation", [(20, 1, "relu"), (7, 3, "tanh"), (24, 2, "relu")])
@pytest.mark.parametrize("shared", [True, False])
def test_outputs_and_gradients_equal_the_vmapped_forward(width, depth, activation, shared):
    net, params = _population(4, width, depth, activation)
    x = torch.randn(*(() if shared else (4,)), 9, 1, 6, generator=torch.Generator().manual_seed(1))
    assert_equals_the_vmapped_forward(stacked.mlp_forward, net, params, x, shared, 5)


@pytest.mark.parametrize("relu", [True, False])
def test_linear_act_backward_against_finite_differences(relu):
    g = torch.Generator().manual_seed(2)
    h = torch.randn(3, 5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(3, 20, 4, dtype=torch.float64, generator=g, requires_grad=True)  # 20 outputs: the transposed product
    b = torch.randn(3, 20, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: stacked.LinearAct.apply(*t, relu), (h, w, b))
    w2 = w[:, :3].detach().clone().requires_grad_()  # 3 outputs: the direct product
    assert torch.autograd.gradcheck(lambda *t: stacked.LinearAct.apply(*t, relu), (h, w2, b[:, :3].detach().clone().requires_grad_()))


@pytest.mark.parametrize("members, act", [(64, 32), (32, 128), (8, 512), (3, 40), (1, 4096)])
def test_eval_plan_keeps_chunks_in_cache_and_groups_equal(members, act):
    group, chunk = stacked.eval_plan(4096, members, act)
    groups = math.ceil(members / group)
    assert 1 <= group <= members and group * groups >= members > (group - 1) * groups  # equal groups
    assert chunk >= stacked.EVAL_SAMPLES  # never fewer samples per chunk: members go in groups instead
    assert group == 1 or group * chunk * act <= stacked.EVAL_NUMBERS
    assert stacked.eval_plan(100, members, act)[1] <= 100  # never above train.eval_batch_size


def _population_of(kind, p, seed=0):
    """(data, net, stacked state dicts) of p MLPs on digits or p stride-2 CNNs on MNIST-1D."""
    if kind == "mlp":
        data = load_dataset("digits")
        return data, *_population(p, 24, 2, in_shape=data.input_shape, classes=data.num_classes, seed=seed)
    data = load_dataset("mnist1d")
    torch.manual_seed(seed)
    nets = [CNN(data.input_shape, data.num_classes, width=6, depth=2) for _ in range(p)]
    return data, nets[0], stack_state_dicts([n.state_dict() for n in nets])


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_population_module_takes_the_stacked_path_with_the_vmapped_numbers(kind):
    data, net, params = _population_of(kind, 6)
    mod = PopulationModule(net, params, data, 0.1, 0.0)
    assert mod.stacked_path is not None
    for other in (CNN(data.input_shape, 10, width=2, pooling="max"), CNN(data.input_shape, 10, width=2, norm="batch")):
        assert PopulationModule(other, stack_state_dicts([other.state_dict()]), data, 0.1, 0.0).stacked_path is None
    got = mod.evaluate_all()
    idx = torch.randint(0, data.x_train.shape[0], (6, 32), generator=torch.Generator().manual_seed(3))
    loss = mod.training_step(idx, 0)
    loss.backward()
    grads = [p.grad.clone() for p in mod.stacked]
    mod.stacked_path = None  # the vmapped path
    want = mod.evaluate_all()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)
    for p in mod.stacked:
        p.grad = None
    again = mod.training_step(idx, 0)
    torch.testing.assert_close(again, loss)
    again.backward()
    for p, gr in zip(mod.stacked, grads):
        torch.testing.assert_close(gr, p.grad)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_bf16_autocast_runs_and_stays_near_fp32(kind):
    """trainer.precision=bf16-mixed: the forward under autocast, the backward in its dtype, fp32 gradients within
    bf16's rounding of the fp32 ones (both paths; bf16 keeps 8 bits: measured 2-6% of the gradient's norm)."""
    data, net, params = _population_of(kind, 3)
    mod = PopulationModule(net, params, data, 0.1, 0.0)
    path = mod.stacked_path
    idx = torch.randint(0, data.x_train.shape[0], (3, 32), generator=torch.Generator().manual_seed(4))

    def grads(stacked_path, bf16):
        mod.stacked_path = path if stacked_path else None
        for p in mod.stacked:
            p.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            mod.training_step(idx, 0).backward()
            metrics = mod.evaluate_all()
        assert torch.isfinite(metrics["test_loss"]).all() and float(metrics["test_acc"].min()) >= 0
        return [p.grad.clone() for p in mod.stacked]

    fp32 = grads(False, False)
    for stacked_path in (True, False):
        for a, b in zip(grads(stacked_path, True), fp32):
            assert a.dtype == torch.float32 and float((a - b).norm()) <= 0.1 * float(b.norm())
