"""Population training: member k equals the same member trained alone with torch.optim."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from wsl.data import load_dataset
from wsl.nets import MLP, CNN
from wsl.population import (PopulationBatchSampler, PopulationModule, make_members, member_epoch_order,
                            stack_state_dicts)
from wsl.population.sampler import IndexDataset
from wsl.population.schedules import lr_factor

E, B = 2, 128


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits")


def _init(factory, seed):
    torch.manual_seed(seed)
    return factory()


def _fit_population(factory, data, members, optimizer, schedule="cosine"):
    nets = [_init(factory, m.seed_init) for m in members]
    n = data.x_train.shape[0]
    steps = -(-n // B)
    mod = PopulationModule(nets[0], stack_state_dicts([x.state_dict() for x in nets]), data,
                           [m.lr for m in members], [m.weight_decay for m in members], optimizer=optimizer,
                           schedule=schedule, epochs=E, steps_per_epoch=steps)
    dl = DataLoader(IndexDataset(), batch_size=None, sampler=PopulationBatchSampler(n, B, [m.seed_data for m in members]))
    L.Trainer(max_epochs=E, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, use_distributed_sampler=False, accelerator="cpu").fit(mod, dl)
    return mod


def _fit_solo(factory, data, m, optimizer, schedule="cosine", epochs=E, batch_size=B):
    """The same member trained alone: torch.optim, train mode (BatchNorm updates its own statistics)."""
    net = _init(factory, m.seed_init).train()
    opt = {"sgd": lambda: torch.optim.SGD(net.parameters(), lr=m.lr, momentum=0.9, weight_decay=m.weight_decay),
           "adam": lambda: torch.optim.Adam(net.parameters(), lr=m.lr, weight_decay=m.weight_decay),
           "adamw": lambda: torch.optim.AdamW(net.parameters(), lr=m.lr, weight_decay=m.weight_decay)}[optimizer]()
    n = data.x_train.shape[0]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(schedule, epochs * -(-n // batch_size)))
    for e in range(epochs):
        order = member_epoch_order(m.seed_data, e, n)
        for s in range(0, n, batch_size):
            i = order[s : s + batch_size]
            loss = F.cross_entropy(net(data.x_train[i]), data.y_train[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


@pytest.mark.parametrize("optimizer,lrs,factory", [
    ("sgd", [0.1, 0.02], lambda: MLP((1, 8, 8), 10, width=12, depth=2)),
    ("adam", [0.01, 0.002], lambda: MLP((1, 8, 8), 10, width=12, depth=2)),
    ("adamw", [0.01], lambda: CNN((1, 8, 8), 10, width=4)),
])
def test_member_equals_solo_training(data, optimizer, lrs, factory):
    members = make_members(2 * len(lrs), lrs, [0.0, 1e-3] if len(lrs) == 1 else 1e-4, seed=7)
    pop = _fit_population(factory, data, members, optimizer)
    for k in (0, len(members) - 1):
        solo = _fit_solo(factory, data, members[k], optimizer)
        got = pop.member_state_dict(k)
        for name, v in solo.state_dict().items():
            torch.testing.assert_close(got[name], v, atol=2e-5, rtol=1e-4)
    assert bool(pop.alive.all())


def test_diverging_member_is_frozen_and_others_go_on(data):
    factory = lambda: MLP((1, 8, 8), 10, width=12, depth=2)
    members = make_members(2, [0.05, 1e6], 0.0, seed=1)  # member 1's lr explodes
    pop = _fit_population(factory, data, members, "sgd", schedule="constant")
    assert pop.alive.tolist() == [True, False]
    assert int(pop.diverged_epoch[1]) == 0 and int(pop.diverged_epoch[0]) == -1
    loss, acc = pop.evaluate("test")
    assert torch.isnan(loss[1]) and torch.isfinite(loss[0]) and acc[0] > 0.2  # above chance (0.1)
    solo = _fit_solo(factory, data, members[0], "sgd", schedule="constant")
    for name, v in solo.state_dict().items():
        torch.testing.assert_close(pop.member_state_dict(0)[name], v, atol=2e-5, rtol=1e-4)


def test_members_grid_and_stable_identity():
    a = make_members(6, [0.1, 0.01], 0.0, seed=0)
    assert [(m.lr, m.replica) for m in a] == [(0.1, 0), (0.01, 0), (0.1, 1), (0.01, 1), (0.1, 2), (0.01, 2)]
    b = make_members(8, [0.1, 0.01], 0.0, seed=0)
    assert [m.key() for m in b[:6]] == [m.key() for m in a]  # growing a population keeps members
    assert len({m.seed_init for m in b}) == 4 and len({m.seed_data for m in b}) == 4
    assert not {m.seed_init for m in b} & {m.seed_data for m in b}
