"""Landscape metrics on zoos beyond images: a language model's loss is the cross-entropy over every
position (curvature and paths follow that definition). PINN zoos: tests/test_landscape_pinn.py."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from conftest import compose_cfg, make_zoo
from wsl.apps.landscape import typed_config
from wsl.landscape import annotate_zoo
from wsl.landscape.connectivity import path_points
from wsl.landscape.hessian import dense_hessian, population_hvp
from wsl.population.functional import member_loss, stack_state_dicts
from wsl.zoo import Zoo

SHRINK = ["landscape.num_samples=64", "landscape.chunk_size=8", "landscape.hessian_eig.max_iters=10",
          "landscape.hessian_trace.samples=4", "landscape.hessian_trace.min_samples=2",
          "landscape.hessian_trace.deflation=0", "landscape.mode_connectivity.steps=5",
          "landscape.mode_connectivity.points=3", "landscape.barrier.points=3"]


class TokenModel(nn.Module):
    def __init__(self, vocab: int = 5, width: int = 3):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, x):  # [N, T] -> [N, T, vocab]
        return self.head(torch.tanh(self.embed(x)))


def _lm_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (12, 4), generator=g)
    return x, torch.randint(0, 5, (12, 4), generator=g)


def test_lm_loss_is_the_mean_cross_entropy_over_every_position():
    torch.manual_seed(0)
    net = TokenModel()
    x, y = _lm_batch()
    logp = net(x).log_softmax(-1)
    want = -logp.gather(-1, y[..., None]).mean()
    assert math.isclose(float(member_loss(net, dict(net.named_parameters()), x, y).detach()), float(want.detach()),
                        rel_tol=1e-6)


def test_lm_hessian_vector_products_equal_the_dense_hessian():
    nets = []
    for s in range(2):
        torch.manual_seed(s)
        nets.append(TokenModel().double())
    params = stack_state_dicts([n.state_dict() for n in nets])
    x, y = _lm_batch()
    g = torch.Generator().manual_seed(1)
    v = {k: torch.randn(t.shape, generator=g, dtype=t.dtype) for k, t in params.items()}
    hv = population_hvp(nets[0], params, v, x, y, batch_size=5)  # uneven batches: the weighting must be exact
    for i in range(2):
        h = dense_hessian(nets[0], {k: t[i] for k, t in params.items()}, x, y)
        flat = torch.cat([v[k][i].flatten() for k in params])
        torch.testing.assert_close(torch.cat([hv[k][i].flatten() for k in params]), h @ flat, rtol=1e-6, atol=1e-9)


def test_lm_path_losses_are_per_position_means():
    nets = []
    for s in range(3):
        torch.manual_seed(s)
        nets.append(TokenModel())
    params = stack_state_dicts([n.state_dict() for n in nets])
    x, y = _lm_batch()
    r = path_points(nets[0], params, x, y, batch_size=5)
    for i, net in enumerate(nets):
        with torch.no_grad():
            out = net(x)
        assert math.isclose(float(r.loss[i]), float(F.cross_entropy(out.flatten(0, 1), y.flatten())), rel_tol=1e-6)
        assert math.isclose(float(r.accuracy[i]), float((out.argmax(-1) == y).double().mean()), rel_tol=1e-9)


def _annotate(zoo):
    cfg = typed_config(compose_cfg("landscape", [f"zoo.path={zoo}", "landscape=full", *SHRINK])).landscape
    annotate_zoo(zoo, cfg)
    return Zoo(zoo).table()


def test_lm_zoo_gets_every_landscape_metric(tmp_path):
    zoo = make_zoo(tmp_path / "lm", ["dataset=text", "dataset.context=8", "dataset.max_chars=2000", "net=transformer",
                                     "net.depth=1", "net.heads=2", "train.batch_size=32"])
    t = _annotate(zoo)
    for col in ("hessian_eig/train", "hessian_trace/train", "barrier/value", "mode_connectivity/value", "cka/value"):
        assert np.isfinite(t[col]).all(), (col, t[col.split("/")[0] + "/note"].tolist())
