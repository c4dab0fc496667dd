"""Generators on plain vectors, checked against definitions before they are trusted with weights.

- samplers driven by the exact (closed-form) denoiser of a Gaussian reproduce that Gaussian,
  with the convergence order their solver claims;
- minibatch OT pairing equals a brute-force search over all pairings;
- flow matching and diffusion, trained for a few seconds, learn a known 2-D Gaussian mixture
  (moments and mode weights), and classifier-free guidance steers a conditional one;
- the weight representation round-trips and alignment keeps every net's function.
"""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch

from conftest import typed_gen
from wsl.errors import ConfigError
from wsl.generators.denoisers import MLPDenoiser, TransformerDenoiser, guided, split_segments
from wsl.generators.diffusion import Diffusion
from wsl.generators.flow import FlowMatching, condition_groups, ot_pairing
from wsl.generators.representation import WeightRepresentation, layer_segments
from wsl.nets import MLP
from wsl.zoo import Layout

MU = torch.tensor([1.0, -2.0, 0.5])
S = torch.tensor([0.3, 1.5, 0.8])


# ---- exact denoisers of x ~ N(MU, diag(S^2)) -------------------------------------------------------
class ExactFlow(torch.nn.Module):
    """E[x1 - x0 | x_t] (velocity) or E[x1 | x_t] (data) for x_t = (1 - t) x0 + t x1, x0 ~ N(0, I)."""

    def __init__(self, prediction):
        super().__init__()
        self.prediction = prediction

    def forward(self, x, t, cond=None, drop=None):
        t = t[:, None]
        var = (1 - t) ** 2 + t**2 * S**2  # Var(x_t)
        if self.prediction == "velocity":
            return MU + (t * S**2 - (1 - t)) / var * (x - t * MU)
        return MU + t * S**2 / var * (x - t * MU)


class ExactDiffusion(torch.nn.Module):
    """E[ε | x_t], E[v | x_t] or E[x0 | x_t] for x_t = sqrt(ᾱ) x0 + sqrt(1 - ᾱ) ε."""

    def __init__(self, method: Diffusion):
        super().__init__()
        self.m = method

    def forward(self, x, t, cond=None, drop=None):
        idx = (t * self.m.timesteps).round().long()
        ab = self.m.abar[idx].float()[:, None]
        var = ab * S**2 + 1 - ab
        eps = (1 - ab).sqrt() * (x - ab.sqrt() * MU) / var
        x0 = MU + ab.sqrt() * S**2 * (x - ab.sqrt() * MU) / var
        return {"eps": eps, "x0": x0, "v": ab.sqrt() * eps - (1 - ab).sqrt() * x0}[self.m.prediction]


def _moment_error(x):
    return max((x.mean(0) - MU).abs().max().item(), (x.std(0) - S).abs().max().item())


def _map_error(noise, x):
    """Deviation from the exact transport: in 1-D (independent coordinates) every ODE flow from
    N(0, 1) to N(μ, s²) is the monotone map z -> μ + s z, so each sample has a known destination."""
    return (x - (MU + S * noise)).abs().max().item()


@pytest.mark.parametrize("prediction", ["velocity", "data"])
def test_flow_ode_sampler_transports_noise_to_the_target_gaussian(prediction):
    noise = torch.randn(2000, 3, generator=torch.Generator().manual_seed(0))
    fm = FlowMatching(prediction=prediction)
    net = ExactFlow(prediction)
    err = {(s, k): _map_error(noise, fm.sample(net, noise, steps=k, solver=s))
           for s in ("euler", "heun") for k in (10, 20, 40)}
    assert err[("heun", 40)] < 5e-3 and err[("euler", 40)] < 0.25  # worst of 2000 samples, tails included
    # Euler is first order: halving the step halves the error; Heun is second order: it quarters it
    assert 1.7 < err[("euler", 10)] / err[("euler", 20)] < 2.3 and 1.7 < err[("euler", 20)] / err[("euler", 40)] < 2.3
    assert err[("heun", 10)] / err[("heun", 20)] > 3.5 and err[("heun", 20)] / err[("heun", 40)] > 3.5


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_ddim_with_the_exact_denoiser_reproduces_the_target_gaussian(prediction):
    noise = torch.randn(2000, 3, generator=torch.Generator().manual_seed(1))
    d = Diffusion(timesteps=1000, schedule="cosine", prediction=prediction)
    net = ExactDiffusion(d)
    errs = [_map_error(noise, d.sample(net, noise, steps=k)) for k in (10, 50, 200)]
    assert errs[2] < 0.06
    assert errs[0] > 3 * errs[1] > 9 * errs[2]  # more DDIM steps, closer to the probability-flow ODE
    # stochastic DDIM (η = 1) reaches the same distribution (not the same map)
    noise = torch.randn(20_000, 3, generator=torch.Generator().manual_seed(2))
    x = d.sample(net, noise, steps=200, eta=1.0, generator=torch.Generator().manual_seed(3))
    assert _moment_error(x) < 0.05  # Monte Carlo error of 2e4 draws: ~0.01


def test_ot_pairing_is_the_exact_minimum_over_all_pairings():
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        x0, x1 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
        paired = ot_pairing(x0, x1)
        assert sorted(map(tuple, paired.tolist())) == sorted(map(tuple, x0.tolist()))  # a permutation of the noise
        best = min(sum(((x0[p[i]] - x1[i]) ** 2).sum().item() for i in range(6)) for p in itertools.permutations(range(6)))
        assert ((paired - x1) ** 2).sum().item() == pytest.approx(best, rel=1e-6)


def test_ot_pairing_never_exchanges_noise_across_conditions():
    g = torch.Generator().manual_seed(4)
    x0, x1 = torch.randn(12, 3, generator=g), torch.randn(12, 3, generator=g)
    cond = torch.tensor([0.0, 1.0, 2.0] * 4)[:, None]
    drop = torch.zeros(12, dtype=torch.bool)
    drop[[0, 5]] = True
    groups = condition_groups(cond, drop, 12)
    paired = ot_pairing(x0, x1, groups)
    for i in range(12):
        j = next(k for k in range(12) if torch.equal(paired[i], x0[k]))
        assert groups[i] == groups[j]
    assert len(set(groups.tolist())) == 4  # three conditions + the dropped rows


# ---- learning a 2-D Gaussian mixture ------------------------------------------------------------
MEANS = torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
WEIGHTS = torch.tensor([0.5, 0.3, 0.2])
STD = 0.4


def _mixture(n, seed):
    g = torch.Generator().manual_seed(seed)
    k = torch.multinomial(WEIGHTS, n, replacement=True, generator=g)
    return MEANS[k] + STD * torch.randn(n, 2, generator=g), k


def _train(method, net, x, cond=None, steps=800, batch=128, lr=3e-3, cond_dropout=0.0, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.05)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,))
        c = None if cond is None else cond[idx]
        drop = None if cond is None else torch.rand(batch) < cond_dropout
        loss = method.loss(net, x[idx], c, drop)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def _check_mixture(samples, data):
    labels = torch.cdist(samples, MEANS).argmin(1)
    weights = torch.bincount(labels, minlength=3).float() / len(samples)
    assert (weights - WEIGHTS).abs().max() < 0.05, weights  # binomial error of 4000 draws: ~0.008
    assert (samples.mean(0) - data.mean(0)).abs().max() < 0.2
    assert ((samples.std(0) / data.std(0)) - 1).abs().max() < 0.1
    for k in range(3):  # each mode has the right width
        within = samples[labels == k].std(0)
        assert ((within / STD) - 1).abs().max() < 0.35, (k, within)  # collapse would be ~ -1


@pytest.mark.parametrize("method", [FlowMatching(ot_pairing=True, prediction="data", steps=20),
                                    Diffusion(timesteps=1000, prediction="v", steps=50)],
                         ids=["flow-data", "diffusion-v"])  # (a velocity flow learns one in the guidance test)
def test_generators_learn_a_gaussian_mixture(method):
    x, _ = _mixture(8192, seed=0)
    net = _train(method, MLPDenoiser(2, hidden=64, depth=2, emb_dim=32), x, steps=800)
    samples = method.sample(net, torch.randn(4000, 2, generator=torch.Generator().manual_seed(5)))
    _check_mixture(samples, x)


@pytest.mark.slow
def test_x0_predicting_diffusion_learns_a_gaussian_mixture():
    """x0-prediction (the default for weights) needs longer on a 2-D mixture: at 800 steps its
    modes are still too narrow (it learns the identity at low noise slowly)."""
    method = Diffusion(timesteps=1000, prediction="x0", steps=50)
    x, _ = _mixture(8192, seed=0)
    net = _train(method, MLPDenoiser(2, hidden=128, depth=2, emb_dim=32), x, steps=3000, lr=2e-3)
    samples = method.sample(net, torch.randn(4000, 2, generator=torch.Generator().manual_seed(5)))
    _check_mixture(samples, x)


def test_classifier_free_guidance_steers_a_conditional_flow():
    x, k = _mixture(8192, seed=1)
    cond = (k.float() - 1)[:, None]  # the mode index, centred
    method = FlowMatching(ot_pairing=True, prediction="velocity", steps=10)
    net = _train(method, MLPDenoiser(2, cond_dim=1, hidden=64, depth=2, emb_dim=32), x, cond, steps=800,
                 cond_dropout=0.2)
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(6))
    for mode in range(3):
        c = torch.full((2000, 1), float(mode - 1))
        hit = {w: (torch.cdist(method.sample(net, noise, cond=c, guidance=w), MEANS).argmin(1) == mode).float().mean()
               for w in (0.0, 1.0)}
        assert hit[1.0] > 0.95, (mode, hit)  # conditional: the asked-for mode
        assert abs(hit[0.0] - WEIGHTS[mode]) < 0.1, (mode, hit)  # guidance 0 is the unconditional model


def test_guidance_is_the_documented_mixture_of_both_predictions():
    torch.manual_seed(0)
    net = MLPDenoiser(5, cond_dim=2, hidden=16, depth=1).eval()
    x, t, c = torch.randn(4, 5), torch.rand(4), torch.randn(4, 2)
    u = net(x, t, c, torch.ones(4, dtype=torch.bool))
    assert torch.allclose(u, net(x, t, None))  # dropped condition = no condition
    cnd = net(x, t, c)
    assert torch.allclose(guided(net, x, t, c, 2.5), u + 2.5 * (cnd - u), atol=1e-5)
    assert torch.allclose(guided(net, x, t, c, 1.0), cnd)


# ---- denoiser shapes and the representation ----------------------------------------------------------
def test_transformer_tokens_tile_each_layer():
    assert split_segments([(0, 10), (10, 13)], 13, 4) == [(0, 4), (4, 8), (8, 10), (10, 13)]
    with pytest.raises(ConfigError, match="tile"):
        split_segments([(0, 5), (6, 13)], 13, None)
    net = TransformerDenoiser(13, cond_dim=1, segments=[(0, 10), (10, 13)], d_model=16, nhead=2, layers=1, max_token=4)
    out = net(torch.randn(3, 13), torch.rand(3), torch.randn(3, 1))
    assert out.shape == (3, 13) and torch.isfinite(out).all()


def _nets(n, width=6, seed=0):
    out = []
    for i in range(n):
        torch.manual_seed(seed + i)
        out.append(MLP([1, 4, 4], 3, width=width, depth=2))
    return out


def test_representation_round_trips_and_alignment_keeps_every_function():
    nets = _nets(5)
    sds = [{k: v.detach().clone() for k, v in n.state_dict().items()} for n in nets]
    layout = Layout.from_state_dict(sds[0])
    assert layer_segments(layout) == [(0, 102), (102, 144), (144, 165)]  # (weight, bias) per layer
    rep, flat = WeightRepresentation.fit(sds, layout, nets[0].permutation_spec(), align=True, reference=0)
    x = rep.encode(flat)
    for a, b, *_ in [(e[2], e[3]) for e in layout.entries]:
        assert x[:, a:b].mean().abs() < 1e-5 and (x[:, a:b].std(unbiased=False) - 1).abs() < 1e-4  # per tensor
    assert torch.allclose(rep.decode(x), flat.float(), atol=1e-5)
    inputs = torch.randn(7, 1, 4, 4)
    ref_dist_before = sum(((layout.flatten(sds[0]) - layout.flatten(sd)) ** 2).sum() for sd in sds[1:])
    ref_dist_after = sum(((flat[0] - f) ** 2).sum() for f in flat[1:])
    assert ref_dist_after < ref_dist_before  # aligned nets are closer to the reference
    for net, sd in zip(nets, rep.state_dicts(flat)):
        moved = MLP([1, 4, 4], 3, width=6, depth=2)
        moved.load_state_dict(sd)
        assert torch.allclose(moved(inputs), net(inputs), atol=1e-5)  # a permutation: same function


def test_representation_rejects_an_impossible_reference():
    sds = [n.state_dict() for n in _nets(2)]
    with pytest.raises(ConfigError, match="reference=5 must index one of the 2 nets"):
        WeightRepresentation.fit(sds, Layout.from_state_dict(sds[0]), _nets(1)[0].permutation_spec(), reference=5)


def test_bad_generator_settings_name_their_key():
    """The generator group's schemas (wsl.generators.schema) check the methods' and denoisers' options
    and name the user's key; the same schemas check a loaded run's description."""
    flow = ["zoo.path=z", "trainer.accelerator=cpu"]
    diffusion = [*flow, "generator=diffusion", "generator/denoiser=transformer"]
    for base, bad, msg in [
            (flow, "generator.method.solver=rk45", "generator.method.solver='rk45' is not allowed"),
            (flow, "generator.method.steps=0", "generator.method.steps must be an integer in [1, 10000], got 0"),
            (flow, "generator.method.sigma_min=1", "generator.method.sigma_min must be a number in [0, 1)"),
            (flow, "generator.denoiser.depth=0", "generator.denoiser.depth must be an integer in [1, 1024], got 0"),
            (flow, "generator.ema=1.5", "generator.ema must be a number in (0, 1) or null"),
            (flow, "generator.optimizer.lr=0", "generator.optimizer.lr must be a number in (0, inf)"),
            (flow, "representation.latent={depth:0}", "representation.latent.depth must be an integer"),
            (flow, "representation.latent={width:3}", "representation.latent: unknown key(s) ['width']"),
            (diffusion, "generator.method.prediction=score", "generator.method.prediction='score' is not allowed"),
            (diffusion, "generator.method.steps=20", "generator.method.steps=20 exceeds generator.method.timesteps=10"),
            (diffusion, "generator.denoiser.nhead=3",
             "generator.denoiser.d_model=128 must be divisible by generator.denoiser.nhead=3")]:
        extra = ["generator.method.timesteps=10"] if "exceeds" in msg else []
        with pytest.raises(ConfigError, match=re.escape(msg)):
            typed_gen("train_generator", [*base, *extra, bad])
    assert math.isfinite(Diffusion(schedule="linear").abar[-1].item())


def test_spread_ratio_reads_collapse_and_excess_noise():
    from wsl.generators.module import spread_ratio

    g = torch.Generator().manual_seed(7)
    train = torch.randn(300, 20, generator=g) * torch.linspace(0.1, 3.0, 20)
    assert spread_ratio(train, train) == pytest.approx(1.0)
    assert spread_ratio(train[:1].expand(50, -1), train) == 0.0  # every sample the same net: collapse
    assert spread_ratio(2 * train + 5, train) == pytest.approx(2.0, rel=1e-5)


def test_warmup_ema_follows_its_recursion():
    from torch.optim.swa_utils import AveragedModel

    from wsl.generators.module import WarmupEMA

    p = torch.nn.Parameter(torch.zeros(3))
    holder = torch.nn.ParameterList([p])
    avg = AveragedModel(holder, multi_avg_fn=WarmupEMA(0.9), use_buffers=True)
    expect = None
    for step, value in enumerate([1.0, 2.0, 4.0, 8.0, 16.0] + [3.0] * 40):
        with torch.no_grad():
            p.fill_(value)
        avg.update_parameters(holder)
        if expect is None:
            expect = value  # the first update copies
        else:
            d = min(0.9, (1 + step) / (10 + step))  # step = updates averaged so far
            expect = d * expect + (1 - d) * value
        assert avg.module[0][0].item() == pytest.approx(expect, rel=1e-6)


# ---- batches under DDP ------------------------------------------------------------------------------
def test_per_rank_batch_is_capped_at_each_ranks_share_and_zero_steps_is_an_error():
    from types import SimpleNamespace

    from wsl.generators.train import _check_trained, per_rank_batch

    assert per_rank_batch(128, 256) == 128
    assert per_rank_batch(128, 24) == 24
    assert per_rank_batch(128, 24, world_size=2) == 12  # not 24: a rank sees 12 nets, 24 would give 0 batches
    assert per_rank_batch(5, 24, world_size=4) == 5
    with pytest.raises(ConfigError, match="3 training nets cannot be shared by 4 DDP processes"):
        per_rank_batch(128, 3, world_size=4)
    with pytest.raises(ConfigError, match="batch_size"):
        per_rank_batch(0, 24)
    idle = SimpleNamespace(global_step=0, max_steps=10, num_training_batches=0, world_size=2)
    with pytest.raises(ConfigError, match="0 optimizer steps"):
        _check_trained(idle, "generator")
    _check_trained(SimpleNamespace(global_step=3), "generator")


# ---- BatchNorm nets (ResNets): statistics are not generated, they are re-estimated on the train split ----------
DIGITS = {"_target_": "wsl.data.load_dataset", "name": "digits", "root": None, "train_fraction": 1.0,
          "subset_seed": 0, "split_seed": 0, "val_fraction": 0.2, "test_fraction": 0.2}


def bn_resnet_zoo(path, n: int = 4, width: int = 2, steps: int = 25, seed: int = 0):
    """A real zoo of digits ResNet-8s with BatchNorm (width `width`), trained by hand (minibatch Adam, train
    mode: their running statistics are the usual momentum averages), written with the zoo's own writer."""
    from wsl.data import load_dataset
    from wsl.nets import ResNet
    from wsl.zoo import ShardWriter

    task = load_dataset("digits")
    w = ShardWriter(path, "bn", config={"dataset": dict(DIGITS)}, zoo_name=path.name)
    for i in range(n):
        torch.manual_seed(seed + i)
        net = ResNet([1, 8, 8], 10, width=width, depth=1, norm="batch").train()
        opt = torch.optim.Adam(net.parameters(), lr=0.03)
        for _ in range(steps):
            idx = torch.randint(len(task.y_train), (128,))
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(task.x_train[idx]), task.y_train[idx]).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            val = (net(task.x_val).argmax(1) == task.y_val).float().mean().item()
        w.write_checkpoint(f"m{i}", 0, net.state_dict(), net.arch)
        w.add_model(f"m{i}", net.arch, {"seed_init": seed + i, "val_acc": val}, status="trained")
    w.commit()
    return path


def test_representation_of_resnets_holds_weights_only_and_alignment_ignores_statistics():
    """Fitted on whole BatchNorm state dicts, the representation keeps the parameters alone (the layout of
    Layout.of), aligns them with the residual spec's parameters (function preserved in eval mode once the
    statistics ride along) and stores no buffer."""
    from wsl.nets import ResNet
    from wsl.symmetry import permute, random_permutations

    nets = []
    for i in range(3):
        torch.manual_seed(i)
        net = ResNet([1, 8, 8], 10, width=2, depth=1, norm="batch").train()
        net(torch.randn(32, 1, 8, 8))  # non-trivial running statistics
        nets.append(net.eval())
    sds = [n.state_dict() for n in nets]
    spec, layout = nets[0].permutation_spec(), Layout.of(nets[0])
    assert spec.buffers and not set(spec.buffers) & set(layout.names)
    # a permuted copy of net 0 (its statistics permuted with it) is aligned back exactly
    moved = permute(sds[0], spec, random_permutations(spec, torch.Generator().manual_seed(3)))
    rep, flat = WeightRepresentation.fit([sds[0], moved, sds[1], sds[2]], layout, spec, align=True)
    assert flat.shape == (4, layout.numel) and rep.spec.buffers == frozenset()
    assert torch.allclose(flat[1], flat[0])
    assert set(rep.reference) == set(layout.names) and not any(k.startswith("representation.reference.") and
                                                                 "running" in k for k in rep.tensors())
    # aligned weights + the statistics permuted alike: the same function as the original net
    x = torch.randn(5, 1, 8, 8)
    for net, sd, w in zip(nets[1:], sds[1:], rep.state_dicts(flat[2:])):
        from wsl.symmetry import weight_matching

        perms = weight_matching(rep.reference, {k: sd[k] for k in layout.names}, spec.parameters())
        again = ResNet([1, 8, 8], 10, width=2, depth=1, norm="batch").eval()
        again.load_state_dict(permute(sd, spec, perms))
        assert torch.allclose(again(x), net(x), atol=1e-5)
        assert all(torch.allclose(again.state_dict()[k], w[k].float(), atol=1e-6) for k in layout.names)


def test_sampled_resnets_carry_train_split_statistics(tmp_path):
    """wsl-sample on a BatchNorm ResNet zoo: each checkpoint is the whole state dict (the zoo reader's tensor
    check passes), its weights are the sampled ones, and its statistics equal a re-estimation by hand on the
    TRAIN inputs (reset_bn_stats), not the val/test inputs' and not any training net's stored ones; the
    batches used are in the provenance."""
    from conftest import typed_gen
    from wsl.data import load_dataset
    from wsl.generators.generator_run import load_run
    from wsl.generators.sample import sample_weights, sample_zoo
    from wsl.generators.train import train_generator
    from wsl.landscape.batchnorm import reset_bn_stats
    from wsl.nets import build_net
    from wsl.zoo import Zoo

    zoo = bn_resnet_zoo(tmp_path / "zoo", n=3, steps=10)
    quiet = ["logger=none", "progress_refresh_rate=0", "trainer.accelerator=cpu"]
    job = typed_gen("train_generator", [f"zoo.path={zoo}", "trainer.max_steps=5", "spread.every_n_steps=5",
                                        "spread.n=8", "generator.denoiser.hidden=32", *quiet])
    train_generator(job, tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.representation.layout == Layout.of(build_net(run.arch))
    out = tmp_path / "gen"
    sample_zoo(typed_gen("sample", [f"run={tmp_path / 'run'}", "n=3", f"zoo.path={out}", "batch_size=2",
                                    "batchnorm.batch_size=500", "logger=none"]))
    gen, ref, task = Zoo(out), Zoo(zoo), load_dataset("digits")
    flat = sample_weights(run, 3, batch_size=2)
    net = build_net(run.arch)
    stored = [ref.state_dict(m) for m in ref.ids]
    for i, m in enumerate(gen.ids):
        sd = gen.state_dict(m)  # the reader checks every tensor of the architecture is there
        assert set(sd) == set(net.state_dict())
        weights = run.representation.layout.unflatten(flat[i])
        assert all(torch.allclose(sd[k], weights[k], atol=1e-6) for k in weights)
        net.load_state_dict({**net.state_dict(), **weights})
        by_hand = reset_bn_stats(net, task.x_train, 500).state_dict()
        stats = [k for k in sd if k not in weights]
        assert stats and all(torch.allclose(sd[k].double(), by_hand[k].double(), atol=1e-5) for k in stats)
        assert int(sd["stem.bn.num_batches_tracked"]) == 3  # 1,079 train inputs in batches of 500
        on_test = reset_bn_stats(net, task.x_test, 500).state_dict()
        assert not torch.allclose(sd["stem.bn.running_mean"], on_test["stem.bn.running_mean"], atol=1e-4)
        assert not any(torch.allclose(sd["stem.bn.running_var"], s["stem.bn.running_var"], atol=1e-4) for s in stored)
        hp = gen.hparams(m)
        assert (hp["bn_split"], hp["bn_inputs"], hp["bn_batches"], hp["bn_batch_size"]) == \
            ("train", len(task.x_train), 3, 500)
