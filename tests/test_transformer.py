"""Transformers checked against definitions: the function is unchanged by every symmetry the permutation spec
declares (stream, MLP units, heads as units, dims within a head) and changed by what is no symmetry (a head
split, queries without keys); head-aware weight matching recovers a planted permutation exactly and its
head step equals brute force; a population of transformers equals each member trained alone; bad options
are refused with one line naming the key."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
import torch

from test_population import _fit_population, _fit_solo
from wsl.data.classification import ClassificationData
from wsl.errors import ConfigError
from wsl.nets import MLP, Transformer, build_net
from wsl.nets.schema import MLPConfig, TransformerConfig, data_info
from wsl.population import make_members
from wsl.population.functional import population_forward, stack_state_dicts
from wsl.nets.spec import PermutationSpec
from wsl.symmetry import brute_force_matching, inverse, match, permute, random_permutations, weight_matching
from wsl.symmetry.matching import best_head_blocks, symmetries
from wsl.symmetry.permute import block_permutation, head_permutation

CASES = {
    "tokens": dict(in_shape=[5], num_classes=7, vocab=9, width=8, heads=2, depth=2),
    "causal": dict(in_shape=[6], num_classes=9, vocab=9, causal=True, width=12, heads=3, depth=2, mlp_ratio=2),
    "image": dict(in_shape=[1, 8, 8], num_classes=10, patch=2, width=8, heads=2, depth=1),
    "signal": dict(in_shape=[2, 12], num_classes=3, patch=3, width=12, heads=4, depth=1, mlp_ratio=1.5,
                   activation="relu"),
}


def _net(kw, seed=0):
    torch.manual_seed(seed)
    net = Transformer(**kw).eval()
    with torch.no_grad():  # LayerNorms as after training (fresh ones are all 1 and 0: no unit alike)
        for name, p in net.named_parameters():
            if "ln" in name or "norm" in name:
                p.normal_()
    return net


def _x(net, n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    if net.vocab is not None:
        return torch.randint(0, net.vocab, (n, *net.in_shape), generator=g)
    return torch.randn(n, *net.in_shape, generator=g)


def _rebuild(net, sd):
    other = build_net(net.arch).eval()
    other.load_state_dict(sd)
    return other


@pytest.mark.parametrize("case", CASES)
def test_shapes_arch_and_vmapped_population(case):
    net = _net(CASES[case])
    x = _x(net)
    y = net(x)
    expect = (16, 6, 9) if case == "causal" else (16, net.num_classes)
    assert y.shape == expect and torch.allclose(net.head(net.features(x)), y)
    assert build_net(net.arch).arch == net.arch and not net.piecewise_linear
    nets = [_net(CASES[case], seed=s) for s in range(3)]
    out = population_forward(net, stack_state_dicts([n.state_dict() for n in nets]), x)
    for k, n in enumerate(nets):
        torch.testing.assert_close(out[k], n(x), atol=1e-5, rtol=1e-5)


def test_positions_live_in_the_embedding():
    """embed.weight = [token (or patch) columns | position columns]: token v at position t is W[:, v] + W[:, D + t]."""
    net = _net(CASES["tokens"])
    x = _x(net, 4)
    w = net.embed.weight
    expect = w[:, x].permute(1, 2, 0) + w[:, net.vocab:].t()
    torch.testing.assert_close(net._tokens(x), expect)
    assert w.shape == (8, 9 + 5)


@pytest.mark.parametrize("case", CASES)
def test_random_permutation_keeps_the_function(case):
    net = _net(CASES[case])
    spec, sd = net.permutation_spec(), {k: v.clone() for k, v in net.state_dict().items()}
    assert set(spec.axes) == set(sd) and spec.buffers == frozenset()
    assert {p for p, _ in spec.heads.items()} == {f"A{b}.{s}" for b in range(net.depth) for s in ("qk", "vo")}
    perms = random_permutations(spec, torch.Generator().manual_seed(3))
    for h, members in spec.head_groups.items():  # block form, one head permutation per group
        heads = [head_permutation(perms[p], spec.num_heads[h]) for p in members]
        assert heads[0] is not None and all(torch.equal(heads[0], o) for o in heads)
    moved = permute(sd, spec, perms)
    for k, axes in spec.axes.items():  # every permuted tensor changed, the others are untouched
        assert torch.equal(moved[k], sd[k]) == all(a is None for a in axes), k
    x = _x(net)
    with torch.no_grad():
        other = _rebuild(net, moved)
        assert (net(x) - other(x)).abs().max() < 1e-5
        f, g = net.features(x), other.features(x)
    assert torch.allclose(f[..., perms["S"]], g, atol=1e-5)  # the stream really moved
    assert torch.equal(permute(moved, spec, inverse(perms))["embed.weight"], sd["embed.weight"])


def test_what_is_no_symmetry_changes_the_function_or_is_refused():
    net = _net(CASES["tokens"])
    spec, sd, x = net.permutation_spec(), net.state_dict(), _x(net)
    swap = torch.tensor([0, 1, 2, 4, 3, 5, 6, 7])  # dims 3 and 4: across the two heads of 4 dims
    with pytest.raises(ConfigError, match="splits the heads of 'H0'"):
        permute(sd, spec, {"A0.qk": swap})
    qk_heads = block_permutation(torch.tensor([1, 0]), torch.arange(4).expand(2, 4))
    with pytest.raises(ConfigError, match="move the heads of 'H1' differently"):
        permute(sd, spec, {"A1.qk": qk_heads})  # heads of q/k swapped, of v/o not
    # by hand: the head split, or queries re-ordered without their keys, change what the net computes
    with torch.no_grad():
        for names, perm in ((("q", "k"), swap), (("q",), torch.arange(8).flip(0))):
            broken = dict(sd)
            for proj in names:
                for t in ("weight", "bias")[: 1 if proj == "k" else 2]:
                    broken[f"blocks.0.attn.{proj}.{t}"] = sd[f"blocks.0.attn.{proj}.{t}"].index_select(0, perm)
            assert (net(x) - _rebuild(net, broken)(x)).abs().max() > 1e-3
        # while swapping the heads of q, k, v and o together is a symmetry
        both = permute(sd, spec, {"A0.qk": qk_heads, "A0.vo": qk_heads})
        assert (net(x) - _rebuild(net, both)(x)).abs().max() < 1e-5


def test_head_step_equals_brute_force():
    """best_head_blocks maximizes sum_p <S_p, P_p> over every block permutation sharing one head
    permutation: checked against all 2 * (3!^2)^2 = 2592 candidates."""
    rng = np.random.default_rng(0)
    k, d = 2, 3
    for _ in range(5):
        sims = [rng.normal(size=(k * d, k * d)) for _ in range(2)]
        got = best_head_blocks(sims, k)
        value = lambda perms: sum(s[np.arange(k * d), p.numpy()].sum() for s, p in zip(sims, perms))  # noqa: E731
        inner = list(itertools.product(itertools.permutations(range(d)), repeat=k))
        best = max(value([block_permutation(torch.tensor(h), torch.tensor(a)),
                          block_permutation(torch.tensor(h), torch.tensor(b))])
                   for h in itertools.permutations(range(k)) for a in inner for b in inner)
        assert math.isclose(value(got), best, rel_tol=1e-12)
        assert torch.equal(head_permutation(got[0], k), head_permutation(got[1], k))


def test_matching_with_heads_against_brute_force():
    """A tiny attention layer (stream of 2, 2 heads of 2 dims): every one of the 2! * 2! * (2!^2)^2 = 64
    symmetries enumerated; the descent never beats the joint optimum, and with restarts finds it."""
    spec = PermutationSpec({"q.weight": ("A.qk", "S"), "k.weight": ("A.qk", "S"), "v.weight": ("A.vo", "S"),
                            "o.weight": ("S", "A.vo"), "e.weight": ("S", None)},
                           {"S": 2, "A.qk": 4, "A.vo": 4}, heads={"A.qk": "H", "A.vo": "H"}, num_heads={"H": 2})
    count, every = symmetries(spec)
    assert count == 64 and len({tuple(torch.cat(list(p.values())).tolist()) for p in every}) == 64
    g = torch.Generator().manual_seed(0)
    shapes = {"q.weight": (4, 2), "k.weight": (4, 2), "v.weight": (4, 2), "o.weight": (2, 4), "e.weight": (2, 3)}
    for _ in range(5):
        a, b = ({k: torch.randn(s, generator=g) for k, s in shapes.items()} for _ in range(2))
        bf = brute_force_matching(a, b, spec)
        assert match(a, b, spec).objective <= bf.objective + 1e-9
        assert match(a, b, spec, restarts=8).objective == pytest.approx(bf.objective, rel=1e-12)


@pytest.mark.parametrize("case", ["image", "tokens"])
def test_weight_matching_recovers_a_planted_permutation(case):
    """heads + dims within heads + stream + MLP units: recovered exactly, and the aligned net computes the same."""
    kw = dict(CASES[case], width=8, heads=2, depth=1)
    net = _net(kw)
    spec, sd = net.permutation_spec(), net.state_dict()
    perms = random_permutations(spec, torch.Generator().manual_seed(5))
    assert not torch.equal(head_permutation(perms["A0.qk"], 2), torch.arange(2)), "plant a head swap"
    moved = permute(sd, spec, perms)
    result = match(sd, moved, spec)
    assert result.converged
    truth = inverse(perms)
    assert all(torch.equal(result.perms[p], truth[p]) for p in spec.sizes)
    back = permute(moved, spec, result.perms)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    x = _x(net)
    with torch.no_grad():
        assert (_rebuild(net, moved)(x) - net(x)).abs().max() < 1e-5


def test_matching_two_independent_nets_gives_symmetries():
    a, b = _net(CASES["causal"], 0), _net(CASES["causal"], 1)
    spec = a.permutation_spec()
    perms = weight_matching(a.state_dict(), b.state_dict(), spec, restarts=2)
    aligned = permute(b.state_dict(), spec, perms)  # refused unless block permutations sharing heads
    x = _x(a)
    with torch.no_grad():
        assert (_rebuild(b, aligned)(x) - b(x)).abs().max() < 1e-5


def _modular(p=11, seed=0):
    """a + b mod p as token ids (a, b, "=" = p): a ClassificationData built here (wsl/data has its own)."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    x = torch.stack([a.flatten(), b.flatten(), torch.full((p * p,), p)], 1)
    y = (a + b).flatten() % p
    order = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    tr, va, te = order[:80], order[80:100], order[100:]
    data = ClassificationData("modular_test", x[tr], y[tr], x[va], y[va], x[te], y[te], p)
    data.vocab_size, data.causal = p + 1, False  # what a token dataset carries
    return data


@pytest.mark.parametrize("case", ["image", "tokens"])
def test_population_member_equals_solo_training(case):
    if case == "tokens":
        data = _modular()
        info = data_info(data)
        arch = TransformerConfig(width=8, heads=2, depth=1, mlp_ratio=2).arch([3], data.num_classes, info)
        assert arch["vocab"] == 12 and arch["causal"] is False
    else:
        from wsl.data import load_dataset

        data = load_dataset("digits")
        arch = TransformerConfig(width=8, heads=2, depth=1, patch=4).arch([1, 8, 8], 10, data_info(data))
        assert arch["vocab"] is None
    factory = lambda: build_net(arch)  # noqa: E731
    members = make_members(2, [0.01, 0.003], 1e-4, seed=3)
    pop = _fit_population(factory, data, members, "adamw")
    for k in (0, 1):
        solo = _fit_solo(factory, data, members[k], "adamw")
        got = pop.member_state_dict(k)
        for name, v in solo.state_dict().items():
            torch.testing.assert_close(got[name], v, atol=2e-5, rtol=1e-4)


def test_bad_options_are_one_line_naming_the_key():
    with pytest.raises(ConfigError, match=r"net.heads=3 does not divide net.width=8"):
        Transformer([5], 3, vocab=4, width=8, heads=3)
    with pytest.raises(ConfigError, match=r"net.patch=3 does not divide the input sides 8x8"):
        Transformer([1, 8, 8], 3, width=8, heads=2, patch=3)
    with pytest.raises(ConfigError, match=r"net.patch=3 does not divide the input sides 8x8 of dataset=digits"):
        TransformerConfig(width=8, heads=2, patch=3).arch([1, 8, 8], 10, {"name": "digits"})
    with pytest.raises(ConfigError, match=r"net.patch=2: patches cut float inputs"):
        TransformerConfig(width=8, heads=2, patch=2).arch([3], 10, {"vocab_size": 12, "name": "modular"})
    with pytest.raises(ConfigError, match="mlp_ratio must be a number >= 1"):
        Transformer([5], 3, vocab=4, width=8, heads=2, mlp_ratio=0.5)
    with pytest.raises(ConfigError, match="causal attention is for token sequences"):
        Transformer([1, 8, 8], 3, width=8, heads=2, causal=True)
    with pytest.raises(ConfigError,
                       match=r"^net=mlp reads float inputs; dataset=text gives token ids: use net=transformer$"):
        MLPConfig().arch([64], 65, {"vocab_size": 65, "causal": True, "name": "text"})
    assert MLP([1, 8, 8], 10).arch == build_net(MLPConfig(width=32).arch([1, 8, 8], 10, data_info(object()))).arch


def test_transformer_config_checks_through_the_app_typing():
    from conftest import typed_zoo

    job = typed_zoo(["net=transformer", "net.width=8", "net.heads=2", "net.patch=2"])
    assert isinstance(job.net, TransformerConfig) and job.net.patch == 2
    for overrides, msg in ((["net.heads=3"], "net.heads=3 does not divide net.width=32"),
                           (["net.mlp_ratio=0.5"], "net.mlp_ratio must be a number in [1, inf)"),
                           (["net.patch=3"], "net.patch=3 does not divide the input sides 8x8"),
                           (["net.patch=0"], "net.patch must be an integer >= 1 or null")):
        with pytest.raises(ConfigError, match=re.escape(msg)) as e:
            typed_zoo(["net=transformer", *overrides])
        assert "\n" not in str(e.value)


def test_weight_space_keeps_heads_and_augmentations_keep_the_function():
    """Encoders read a transformer as a graph of neuron sets whose attention sets keep their heads, so the
    permutation augmentation (on the mask-extended spec) draws block permutations; padding heads is refused."""
    from wsl.encoders import WeightSpace
    from wsl.symmetry import PermutationAugment

    net = _net(CASES["causal"])
    spec, sd = net.permutation_spec(), net.state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    space = WeightSpace.from_models([("a", spec, shapes), ("b", spec, shapes)])
    assert space.spec.heads == spec.heads and space.mask_spec().heads == spec.heads
    idx = {s.name: m for m, s in enumerate(space.sets)}
    into = lambda m: sorted(space.edges[e].name for e in space.incoming(m))  # noqa: E731
    assert into(idx["A0.qk"]) == ["blocks.0.attn.k.weight", "blocks.0.attn.q.weight"]
    assert into(idx["S"]) == ["blocks.0.attn.o.weight", "blocks.0.fc2.weight", "blocks.1.attn.o.weight",
                              "blocks.1.fc2.weight", "embed.weight"]
    assert space.sizes[0] == 9 + 6 and space.sizes[-1] == 9  # one-hot tokens and positions in, logits out
    params, masks = space.pad_state_dict(sd)
    aug = PermutationAugment(space.mask_spec(), seed=0)
    moved = aug({**params, **masks})
    x = _x(net)
    with torch.no_grad():
        other = _rebuild(net, {k: moved[k] for k in sd})
        assert (other(x) - net(x)).abs().max() < 1e-5
    wide = Transformer(**dict(CASES["causal"], width=24))
    wide_shapes = {k: tuple(v.shape) for k, v in wide.state_dict().items()}
    with pytest.raises(ConfigError, match="zoo.pad=true cannot pad heads"):
        WeightSpace.from_models([("a", spec, shapes), ("w", wide.permutation_spec(), wide_shapes)], pad=True)


def test_generator_alignment_is_head_aware_and_round_trips():
    """The generators' representation aligns every net to the reference with the head-aware matching: the
    aligned nets compute what they computed, and the spec (heads included) survives the run's JSON."""
    from wsl.generators.representation import WeightRepresentation
    from wsl.zoo.layout import Layout

    nets = [_net(CASES["tokens"], seed=s) for s in range(3)]
    spec = nets[0].permutation_spec()
    layout = Layout.of(nets[0])
    rep, flat = WeightRepresentation.fit([n.state_dict() for n in nets], layout, spec)
    x = _x(nets[0])
    with torch.no_grad():
        for net, sd in zip(nets, rep.state_dicts(flat)):
            assert (_rebuild(net, sd)(x) - net(x)).abs().max() < 1e-5
    again = WeightRepresentation.load(rep.meta(), rep.tensors())
    assert again.spec == spec.parameters() and again.spec.num_heads == {"H0": 2, "H1": 2}
