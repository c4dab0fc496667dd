"""Population training of the new domains: language models (kind "lm") and physics-informed nets (kind
"pinn"). Member k equals the same net trained alone with torch.optim and plain autograd; the physics
residual equals finite differences of the net; the metrics follow their definitions."""

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from test_population import _fit_solo as _fit_solo_classifier

from wsl.data import load_task_dataset
from wsl.nets import MLP
from wsl.population import PopulationBatchSampler, PopulationModule, make_members, member_epoch_order, stack_state_dicts
from wsl.population.pinn import convection_residual
from wsl.population.sampler import IndexDataset
from wsl.population.schedules import lr_factor


class TokenModel(nn.Module):
    """Test-only causal token model: an embedding and a linear read-out per position (a bigram model)."""

    def __init__(self, vocab: int, width: int = 6):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.head = nn.Linear(width, vocab)
        self.in_shape = None

    def forward(self, x):  # [N, T] int64 -> [N, T, vocab]
        return self.head(torch.tanh(self.embed(x)))


def _fit_population(nets, data, members, epochs, batch, schedule="cosine", optimizer="adam"):
    n = data.x_train.shape[0]
    steps = -(-n // batch)
    mod = PopulationModule(nets[0], stack_state_dicts([x.state_dict() for x in nets]), data,
                           [m.lr for m in members], [m.weight_decay for m in members], optimizer=optimizer,
                           schedule=schedule, epochs=epochs, steps_per_epoch=steps)
    dl = DataLoader(IndexDataset(), batch_size=None,
                    sampler=PopulationBatchSampler(n, batch, [m.seed_data for m in members]))
    L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, use_distributed_sampler=False, accelerator="cpu").fit(mod, dl)
    return mod


def _fit_solo(net, data, m, epochs, batch, loss_fn, schedule="cosine"):
    opt = torch.optim.Adam(net.parameters(), lr=m.lr, weight_decay=m.weight_decay)
    n = data.x_train.shape[0]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(schedule, epochs * -(-n // batch)))
    for e in range(epochs):
        order = member_epoch_order(m.seed_data, e, n)
        for s in range(0, n, batch):
            loss = loss_fn(net, order[s : s + batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net


# ---- language models ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_data():
    return load_task_dataset("text", context=8, max_chars=3000)


def _transformer(d, **kw):
    from wsl.nets import Transformer

    return Transformer(d.input_shape, d.num_classes, width=8, depth=1, heads=2, vocab=d.vocab_size, causal=d.causal,
                       **kw)


@pytest.mark.parametrize("model", ["token", "transformer"])
def test_lm_member_equals_solo_training(text_data, model):
    d, E, B = text_data, 2, 64
    members = make_members(2, [0.03, 0.01], 1e-4, seed=3)

    def make(seed):
        torch.manual_seed(seed)
        return TokenModel(d.vocab_size) if model == "token" else _transformer(d)

    pop = _fit_population([make(m.seed_init) for m in members], d, members, E, B)
    for k, m in enumerate(members):
        solo = _fit_solo(make(m.seed_init), d, m, E, B, lambda net, i: F.cross_entropy(
            net(d.x_train[i]).flatten(0, 1), d.y_train[i].flatten()))
        for name, v in solo.state_dict().items():
            torch.testing.assert_close(pop.member_state_dict(k)[name], v, atol=2e-5, rtol=1e-4)
            assert not torch.equal(make(m.seed_init).state_dict()[name], v)  # it trained
        # metrics by definition: mean cross-entropy over every position, bpc = loss / ln 2, accuracy
        with torch.no_grad():
            out = solo(d.x_test)
            ce = F.cross_entropy(out.flatten(0, 1), d.y_test.flatten())
            acc = (out.argmax(-1) == d.y_test).double().mean()
        loss, bpc, got_acc = (v[k] for v in pop.evaluate("test"))
        assert abs(float(loss) - float(ce)) < 1e-4 and abs(float(bpc) - float(ce) / math.log(2)) < 1e-4
        assert abs(float(got_acc) - float(acc)) < 1e-9
    assert pop.metric_names == ("loss", "bpc", "acc")
    assert set(pop.evaluate_all()) == {f"{s}_{m}" for s in ("train", "val", "test") for m in ("loss", "bpc", "acc")}


# ---- physics-informed nets ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pinn_data():
    return load_task_dataset("convection", beta=3.0, collocation=96, initial=16, boundary=16, test_nx=16, test_nt=8)


def _tanh_mlp(seed, dtype=torch.float32):
    torch.manual_seed(seed)
    return MLP((2,), 1, width=8, depth=2, activation="tanh").to(dtype)


def _solo_pinn_loss(net, d, points, split="train"):
    """The physics-informed loss of one net by plain autograd (no torch.func)."""
    p = points.clone().requires_grad_(True)
    u = net(p)
    du = torch.autograd.grad(u.sum(), p, create_graph=True)[0]
    res = du[:, 1] + d.beta * du[:, 0]
    ic_x, ic_u = d.initial(split)
    left, right = d.boundary(split)
    return res.pow(2).mean() + (net(ic_x) - ic_u).pow(2).mean() + (net(left) - net(right)).pow(2).mean()


def test_pinn_member_equals_solo_training(pinn_data):
    d, E, B = pinn_data, 3, 32
    members = make_members(2, [0.01, 0.003], 0.0, seed=5)
    pop = _fit_population([_tanh_mlp(m.seed_init) for m in members], d, members, E, B)
    for k, m in enumerate(members):
        solo = _fit_solo(_tanh_mlp(m.seed_init), d, m, E, B, lambda net, i: _solo_pinn_loss(net, d, d.x_train[i]))
        for name, v in solo.state_dict().items():
            torch.testing.assert_close(pop.member_state_dict(k)[name], v, atol=2e-5, rtol=1e-4)
        # metrics by definition on the test grid: each term, their sum, the relative L2 error
        x, exact = d.split("test")
        p = x.clone().requires_grad_(True)
        u = solo(p)
        du = torch.autograd.grad(u.sum(), p)[0]
        residual = (du[:, 1] + d.beta * du[:, 0]).pow(2).mean()
        ic = (solo(d.initial("test")[0]) - d.initial("test")[1]).pow(2).mean()
        left, right = d.boundary("test")
        bc = (solo(left) - solo(right)).pow(2).mean()
        rel = (u - exact).norm() / exact.norm()
        got = dict(zip(pop.metric_names, (v[k] for v in pop.evaluate("test"))))
        for name, want in (("residual", residual), ("ic", ic), ("bc", bc), ("loss", residual + ic + bc),
                           ("rel_l2", rel)):
            want = float(want.detach())
            assert abs(float(got[name]) - want) <= 1e-5 * (1 + abs(want)), name
        init = _tanh_mlp(m.seed_init).state_dict()
        assert all(not torch.equal(init[n], v) for n, v in solo.state_dict().items())  # it trained
    assert pop.metric_names == ("loss", "residual", "ic", "bc", "rel_l2")


def test_pinn_residual_equals_finite_differences_of_the_net():
    """u_t + beta u_x from the vmapped population (torch.func) against central differences of each member."""
    beta, h = 7.0, 1e-5
    nets = [_tanh_mlp(s, torch.float64) for s in (0, 1, 2)]
    params = {k: v for k, v in stack_state_dicts([n.state_dict() for n in nets]).items()}
    g = torch.Generator().manual_seed(0)
    x = torch.stack([torch.rand(50, generator=g, dtype=torch.float64) * 2 * math.pi,
                     torch.rand(50, generator=g, dtype=torch.float64)], 1)
    u, res = convection_residual(nets[0], params, x, beta, shared_input=True)
    for k, net in enumerate(nets):
        with torch.no_grad():
            ex, et = torch.tensor([h, 0.0], dtype=torch.float64), torch.tensor([0.0, h], dtype=torch.float64)
            u_x = (net(x + ex) - net(x - ex))[:, 0] / (2 * h)
            u_t = (net(x + et) - net(x - et))[:, 0] / (2 * h)
            torch.testing.assert_close(res[k], u_t + beta * u_x, atol=1e-8, rtol=1e-6)
            torch.testing.assert_close(u[k], net(x)[:, 0])
    # per-member inputs [P, N, 2] give each member its own points
    xs = torch.stack([x, x.flip(0), x * 0.5])
    _, res_own = convection_residual(nets[0], params, xs, beta, shared_input=False)
    _, res_k = convection_residual(nets[0], {k: v[1:2] for k, v in params.items()}, xs[1], beta, shared_input=True)
    torch.testing.assert_close(res_own[1], res_k[0])


def test_exact_solution_has_zero_residual_and_is_periodic(pinn_data):
    """The data's exact solution satisfies the PDE (a check of the problem itself, with autograd)."""
    d = pinn_data
    x = d.split("val")[0].double().requires_grad_(True)
    u = torch.sin(x[:, 0] - d.beta * x[:, 1])
    du = torch.autograd.grad(u.sum(), x)[0]
    assert float((du[:, 1] + d.beta * du[:, 0]).abs().max()) < 1e-12
    left, right = d.boundary("train")
    torch.testing.assert_close(d.exact(left), d.exact(right), atol=1e-5, rtol=0)
    torch.testing.assert_close(d.exact(d.initial("test")[0]), d.initial("test")[1])


def test_diverged_pinn_member_is_frozen_and_others_go_on(pinn_data):
    d = pinn_data
    members = make_members(2, [0.01, 1e12], 0.0, seed=1)
    pop = _fit_population([_tanh_mlp(m.seed_init) for m in members], d, members, 2, 32, schedule="constant",
                          optimizer="sgd")
    assert pop.alive.tolist() == [True, False] and int(pop.diverged_epoch[1]) >= 0
    metrics = pop.evaluate("test")
    assert all(torch.isnan(v[1]) and torch.isfinite(v[0]) for v in metrics)


def test_transformer_on_modular_member_equals_solo_training():
    """Token triples (a, b, "=") through the classification kind: the answer read at the last position."""
    d, E, B = load_task_dataset("modular", p=11, train_fraction=0.5), 2, 16
    members = make_members(2, [0.01, 0.003], 0.1, seed=2)

    def make(seed):
        torch.manual_seed(seed)
        return _transformer(d)

    pop = _fit_population([make(m.seed_init) for m in members], d, members, E, B, optimizer="adamw")
    for k, m in enumerate(members):
        net = _fit_solo_classifier(lambda: _transformer(d), d, m, "adamw", epochs=E, batch_size=B)
        for name, v in net.state_dict().items():
            torch.testing.assert_close(pop.member_state_dict(k)[name], v, atol=2e-5, rtol=1e-4)
        with torch.no_grad():
            acc = (net(d.x_test).argmax(-1) == d.y_test).double().mean()
        assert abs(float(pop.evaluate("test")[1][k]) - float(acc)) < 1e-9
