"""Symmetry toolkit checked against definitions: function equality after permuting, exact recovery
of a known permutation, brute-force search over all permutations, barriers of trained replicas,
and augmentations that do what they claim."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from wsl.data import load_dataset
from wsl.errors import ConfigError
from wsl.landscape.connectivity import linear_barrier
import wsl.nets.siren  # noqa: F401  (registers "siren")
from wsl.nets import MLP, NETS, build_net
from wsl.population.functional import stack_state_dicts
from wsl.zoo import Layout
from wsl.symmetry import (AlignedMixUp, Compose, GaussianNoiseAugment, PermutationAugment, WeightDropoutAugment,
                          align, brute_force_matching, compose, flat_permutation_index, identity_permutations,
                          inverse, match, objective, permute, random_permutations, weight_matching)

# one small instance of every registered architecture (and its variants); a new net in NETS
# without an entry here fails test_every_registered_net_is_covered
NET_CASES = {
    "mlp": [dict(in_shape=[1, 8, 8], num_classes=10, width=12, depth=3, activation="tanh"),
            dict(in_shape=[40], num_classes=5, width=8, depth=1)],
    "cnn": [dict(in_shape=[1, 40], num_classes=10, width=6, depth=3, pooling="stride"),
            dict(in_shape=[1, 8, 8], num_classes=10, width=5, depth=2, kernel=3, pooling="max", activation="gelu"),
            dict(in_shape=[3, 9, 9], num_classes=4, width=4, depth=2, pooling="avg")],
    "siren": [dict(in_shape=[2], num_classes=1, width=10, depth=3)],
    "resnet": [dict(in_shape=[1, 8, 8], num_classes=10, width=3, depth=2, stages=2),
               dict(in_shape=[1, 16], num_classes=4, width=3, depth=1, stages=3, norm="none")],
    # float inputs here (token ids, causal attention: tests/test_transformer.py)
    "transformer": [dict(in_shape=[1, 8, 8], num_classes=10, width=8, depth=1, heads=2, patch=2)],
}
NET_CASES["cnn"].append(dict(in_shape=[1, 12], num_classes=3, width=4, depth=2, norm="batch"))
CASES = [(name, kw) for name, kws in NET_CASES.items() for kw in kws]


def _net(name, kw, seed=0):
    torch.manual_seed(seed)
    net = build_net({"name": name, **kw}).eval()
    with torch.no_grad():  # BatchNorm as after training: no unit alike (fresh ones are all 1 and 0)
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(), m.running_mean.normal_(), m.running_var.uniform_(0.5, 2)
            if isinstance(m, torch.nn.LayerNorm):  # likewise (transformers)
                m.weight.uniform_(0.5, 1.5), m.bias.normal_()
    return net


def _sd(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _rebuild(net, sd):
    other = build_net(net.arch).eval()
    other.load_state_dict(sd)
    return other


def test_every_registered_net_is_covered():
    shipped = {n for n in NETS if not n.startswith("test_")}  # other test files register throwaway nets
    assert shipped <= set(NET_CASES), f"add cases for {shipped - set(NET_CASES)}"


@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}{i}" for n, kws in NET_CASES.items() for i in range(len(kws))])
def test_random_permutation_changes_weights_keeps_function(name, kw):
    net = _net(name, kw)
    spec, sd = net.permutation_spec(), _sd(net)
    perms = random_permutations(spec, torch.Generator().manual_seed(3))
    assert all(not torch.equal(p, torch.arange(len(p))) for p in perms.values())
    moved = permute(sd, spec, perms)
    for k, axes in spec.axes.items():  # every permuted tensor changed, the others are untouched
        assert torch.equal(moved[k], sd[k]) == all(a is None for a in axes), k
    x = torch.randn(64, *net.in_shape)
    with torch.no_grad():
        y, y_moved = net(x), _rebuild(net, moved)(x)
        f, f_moved = net.features(x), _rebuild(net, moved).features(x)
    assert torch.allclose(y, y_moved, atol=1e-5, rtol=0)
    # hidden units really moved: the penultimate features are re-ordered by the last permutation
    last = spec.axes["head.weight"][1]
    assert torch.allclose(f[:, perms[last]], f_moved, atol=1e-5, rtol=0)
    assert torch.equal(permute(moved, spec, inverse(perms))["head.weight"], sd["head.weight"])


def test_permutation_algebra():
    net = _net("mlp", NET_CASES["mlp"][0])
    spec, sd = net.permutation_spec(), _sd(net)
    g = torch.Generator().manual_seed(0)
    a, b = random_permutations(spec, g), random_permutations(spec, g)
    two_steps = permute(permute(sd, spec, a), spec, b)
    one_step = permute(sd, spec, compose(a, b))
    assert all(torch.equal(two_steps[k], one_step[k]) for k in sd)
    same = permute(sd, spec, identity_permutations(spec))
    assert all(torch.equal(same[k], sd[k]) for k in sd)
    partial = permute(sd, spec, {"P1": a["P1"]})  # names left out stay in place
    assert torch.equal(partial["hidden.0.weight"], sd["hidden.0.weight"])
    assert not torch.equal(partial["hidden.1.weight"], sd["hidden.1.weight"])


def test_batched_permute_matches_member_by_member():
    nets = [_net("cnn", NET_CASES["cnn"][0], seed=s) for s in range(4)]
    spec = nets[0].permutation_spec()
    stacked = stack_state_dicts([_sd(n) for n in nets])
    g = torch.Generator().manual_seed(1)
    per_member = random_permutations(spec, g, batch=4)  # [4, n] each
    out = permute(stacked, spec, per_member, batched=True)
    shared = random_permutations(spec, g)
    out_shared = permute(stacked, spec, shared, batched=True)
    for i, n in enumerate(nets):
        one = permute(_sd(n), spec, {p: v[i] for p, v in per_member.items()})
        assert all(torch.equal(out[k][i], one[k]) for k in one)
        one = permute(_sd(n), spec, shared)
        assert all(torch.equal(out_shared[k][i], one[k]) for k in one)


def test_flat_permutation_index_equals_permute():
    net = _net("cnn", NET_CASES["cnn"][1])
    spec, sd = net.permutation_spec(), _sd(net)
    layout = Layout.from_state_dict(sd)
    perms = random_permutations(spec, torch.Generator().manual_seed(5))
    idx = flat_permutation_index(layout, spec, perms)
    flat = layout.flatten(sd)
    assert torch.equal(flat[idx], layout.flatten(permute(sd, spec, perms)))
    batch = torch.stack([flat, 2 * flat])  # one gather permutes a whole batch of flat vectors
    assert torch.equal(batch[:, idx][1], 2 * flat[idx])
    assert torch.equal(flat_permutation_index(layout.entries, spec, perms), idx)


def test_bad_input_names_the_parameter():
    net = _net("mlp", NET_CASES["mlp"][1])
    spec, sd = net.permutation_spec(), _sd(net)
    perms = random_permutations(spec)
    with pytest.raises(ConfigError, match="hidden.0.bias"):
        permute({k: v for k, v in sd.items() if k != "hidden.0.bias"}, spec, perms)
    with pytest.raises(ConfigError, match="bn.running_mean"):
        permute({**sd, "bn.running_mean": torch.zeros(8)}, spec, perms)
    with pytest.raises(ConfigError, match="head.weight"):
        permute({**sd, "head.weight": torch.zeros(5, 9)}, spec, perms)
    with pytest.raises(ConfigError, match="not a permutation"):
        permute(sd, spec, {"P0": torch.zeros(8, dtype=torch.long)})
    with pytest.raises(ConfigError, match="unknown permutation 'P7'"):
        permute(sd, spec, {"P7": torch.arange(8)})
    other = _sd(_net("mlp", dict(NET_CASES["mlp"][1], num_classes=6)))
    with pytest.raises(ConfigError, match="head.weight"):
        weight_matching(sd, other, spec)


@pytest.mark.parametrize("name,kw", CASES[:1] + CASES[2:4] + [c for c in CASES if c[0] in ("siren", "resnet", "transformer")
                                                               or c[1].get("norm") == "batch"])
def test_weight_matching_recovers_known_permutation(name, kw):
    net = _net(name, kw)
    spec, sd = net.permutation_spec(), _sd(net)
    pi = random_permutations(spec, torch.Generator().manual_seed(7))
    found = weight_matching(sd, permute(sd, spec, pi), spec, seed=1)
    want = inverse(pi)  # permute(permute(sd, pi), pi^-1) == sd
    assert all(torch.equal(found[p], want[p]) for p in spec.sizes)
    aligned = align(sd, permute(sd, spec, pi), spec)
    assert all(torch.equal(aligned[k], sd[k]) for k in sd)


def _best_single(ref, sd, spec, perms, p):
    """Brute force over permutation p alone, the others held fixed."""
    best = -math.inf
    for cand in itertools.permutations(range(spec.sizes[p])):
        best = max(best, objective(ref, sd, spec, {**perms, p: torch.tensor(cand)}))
    return best


def test_weight_matching_equals_brute_force_one_hidden_layer():
    # one permutation: the linear assignment is exact, so coordinate descent must hit the optimum of 4! = 24
    for seed in range(12):
        a, b = _sd(_net("mlp", dict(in_shape=[5], num_classes=3, width=4), 2 * seed)), \
            _sd(_net("mlp", dict(in_shape=[5], num_classes=3, width=4), 2 * seed + 1))
        spec = MLP([5], 3, width=4).permutation_spec()
        bf, wm = brute_force_matching(a, b, spec), match(a, b, spec)
        assert bf.passes == 24
        assert wm.objective == pytest.approx(bf.objective, rel=1e-12, abs=1e-12)
        assert torch.equal(wm.perms["P0"], bf.perms["P0"])


def test_weight_matching_against_brute_force_two_hidden_layers():
    # two permutations of 3 units: 36 joint candidates; coordinate descent reaches a point that no
    # single permutation can improve (checked by brute force), never beats the joint optimum, and
    # with restarts finds the joint optimum on every pair
    spec = MLP([4], 3, width=3, depth=2).permutation_spec()
    for seed in range(10):
        a = _sd(_net("mlp", dict(in_shape=[4], num_classes=3, width=3, depth=2), 2 * seed))
        b = _sd(_net("mlp", dict(in_shape=[4], num_classes=3, width=3, depth=2), 2 * seed + 1))
        bf = brute_force_matching(a, b, spec)
        assert bf.passes == 36
        wm = match(a, b, spec, seed=seed)
        assert wm.converged and wm.objective <= bf.objective + 1e-9
        for p in spec.sizes:
            assert _best_single(a, b, spec, wm.perms, p) <= wm.objective + 1e-9
        fixed = match(a, b, spec, init=bf.perms)  # the joint optimum is a fixed point of the descent
        assert fixed.passes == 1 and all(torch.equal(fixed.perms[p], bf.perms[p]) for p in spec.sizes)
        assert match(a, b, spec, seed=seed, restarts=10).objective == pytest.approx(bf.objective, rel=1e-12)


def _train_digits_mlp(data, seed, steps=150):
    torch.manual_seed(seed)
    net = MLP(data.input_shape, data.num_classes, width=32, depth=1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):  # full batch: 1,078 digits
        loss = torch.nn.functional.cross_entropy(net(data.x_train), data.y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def test_weight_matching_lowers_barrier_between_trained_replicas():
    data = load_dataset("digits")
    net_a, net_b = _train_digits_mlp(data, 0), _train_digits_mlp(data, 1)
    spec, a, b = net_a.permutation_spec(), _sd(net_a), _sd(net_b)
    b_aligned = align(a, b, spec)
    x, y = data.x_test, data.y_test
    with torch.no_grad():  # same function after alignment
        assert torch.allclose(net_b(x), _rebuild(net_b, b_aligned)(x), atol=1e-5)
    pair = lambda u, v: (stack_state_dicts([u]), stack_state_dicts([v]))  # noqa: E731
    before = float(linear_barrier(net_a, *pair(a, b), data.x_train, data.y_train).barrier[0])
    after = float(linear_barrier(net_a, *pair(a, b_aligned), data.x_train, data.y_train).barrier[0])
    assert before > 0.1, before  # independently trained replicas: a real barrier on the straight line
    assert after < 0.25 * before, (before, after)
    dist = lambda u, v: sum(float((u[k] - v[k]).pow(2).sum()) for k in u)  # noqa: E731
    assert dist(a, b_aligned) < dist(a, b)


# ---- augmentations ---------------------------------------------------------------------------


def test_gaussian_noise_adds_noise_not_a_constant():
    net = _net("mlp", dict(in_shape=[64], num_classes=10, width=64, depth=2))
    sd = _sd(net)
    aug = GaussianNoiseAugment(sigma=0.1, relative=True, seed=0)
    one, two = aug(sd), aug(sd)
    for k, w in sd.items():
        d1, d2 = one[k] - w, two[k] - w
        assert not torch.equal(d1, d2), k  # two draws differ
        assert d1.unique().numel() > d1.numel() // 2, k  # per coordinate, not one shift
        if w.numel() >= 1000:  # empirical std matches sigma * RMS(w), mean ~ 0
            rms = w.pow(2).mean().sqrt()
            assert float(d1.std() / rms) == pytest.approx(0.1, rel=0.1), k
            assert abs(float(d1.mean() / rms)) < 0.01, k
    absolute = GaussianNoiseAugment(sigma=0.5, relative=False, seed=1)(sd)["hidden.0.weight"] - sd["hidden.0.weight"]
    assert float(absolute.std()) == pytest.approx(0.5, rel=0.05)
    # batched: each member scaled by its own RMS
    stacked = {k: torch.stack([v, 10 * v]) for k, v in sd.items()}
    noisy = GaussianNoiseAugment(sigma=0.1, batched=True, seed=2)(stacked)["hidden.0.weight"] - stacked["hidden.0.weight"]
    assert float(noisy[1].std() / noisy[0].std()) == pytest.approx(10, rel=0.1)
    with pytest.raises(ConfigError, match="sigma"):
        GaussianNoiseAugment(sigma=-1)


def test_weight_dropout_zeroes_a_fraction_and_keeps_expectation():
    sd = {"w": torch.ones(200, 100)}
    out = WeightDropoutAugment(p=0.3, seed=0)(sd)["w"]
    assert float((out == 0).float().mean()) == pytest.approx(0.3, abs=0.02)
    assert torch.allclose(out[out != 0], torch.full_like(out[out != 0], 1 / 0.7))
    assert float(out.mean()) == pytest.approx(1.0, abs=0.03)
    with pytest.raises(ConfigError, match="augment.p"):
        WeightDropoutAugment(p=1.0)


def test_permutation_augment_preserves_function_per_member():
    nets = [_net("cnn", NET_CASES["cnn"][1], seed=s) for s in range(3)]
    spec = nets[0].permutation_spec()
    aug = PermutationAugment(spec=spec, batched=True, seed=0)
    stacked = stack_state_dicts([_sd(n) for n in nets])
    out = aug(stacked)
    x = torch.randn(16, 1, 8, 8)
    for i, n in enumerate(nets):
        moved = {k: v[i] for k, v in out.items()}
        assert not torch.equal(moved["convs.0.weight"], _sd(n)["convs.0.weight"])
        with torch.no_grad():
            assert torch.allclose(n(x), _rebuild(n, moved)(x), atol=1e-5)
    with pytest.raises(ConfigError, match="permutation spec"):
        PermutationAugment()(_sd(nets[0]))
    chain = Compose([PermutationAugment(), GaussianNoiseAugment(0.0)])  # sigma 0: permutation only
    single = chain(_sd(nets[0]), spec)
    with torch.no_grad():
        assert torch.allclose(nets[0](x), _rebuild(nets[0], single)(x), atol=1e-5)


def test_aligned_mixup_aligns_before_mixing():
    net = _net("mlp", dict(in_shape=[10], num_classes=3, width=16, depth=2))
    spec, a = net.permutation_spec(), _sd(net)
    b = permute(a, spec, random_permutations(spec, torch.Generator().manual_seed(0)))  # same net, shuffled
    mixup = AlignedMixUp(alpha=0.4, spec=spec, seed=0)
    mixed, lam = mixup(a, b)
    assert 0.0 < lam < 1.0
    # b is a permuted copy of a: after alignment every mixture is a itself (naive mixing is not)
    assert all(torch.allclose(mixed[k], a[k], atol=1e-6) for k in a)
    assert not torch.allclose(lam * a["hidden.0.weight"] + (1 - lam) * b["hidden.0.weight"], a["hidden.0.weight"])
    lams = [mixup(a, b)[1] for _ in range(200)]  # Beta(0.4, 0.4): mean 1/2, var 1/(4 * 1.8)
    assert sum(lams) / 200 == pytest.approx(0.5, abs=0.06)
    assert torch.tensor(lams).var().item() == pytest.approx(1 / 7.2, rel=0.25)
    c = _sd(_net("mlp", dict(in_shape=[10], num_classes=3, width=16, depth=2), seed=1))
    stacked_a, stacked_b = stack_state_dicts([a, a]), stack_state_dicts([b, c])
    out, lam2 = AlignedMixUp(alpha=0.4, spec=spec, batched=True, seed=1)(stacked_a, stacked_b)
    assert lam2.shape == (2,)
    assert all(torch.allclose(out[k][0], a[k], atol=1e-6) for k in a)
    c_al = align(a, c, spec)
    assert torch.allclose(out["head.bias"][1], lam2[1].float() * a["head.bias"] + (1 - lam2[1].float()) * c_al["head.bias"])
