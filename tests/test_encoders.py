"""Encoders room: weight-space representation (chains and residual nets), encoder invariance, padding, tasks,
metrics, SIREN/INR data.

Everything here runs on real nets (freshly initialized or fitted in the test), never on mocks.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from wsl.encoders import ENCODERS, NFN, WeightSpace
from wsl.encoders.nfn import EquivariantLayer, _Structure
from wsl.encoders.tasks import Task, kendall_tau, r2, score
from wsl.encoders.weightspace import MASK_PREFIX
from wsl.errors import ConfigError
from wsl.nets import CNN, MLP, PermutationSpec, ResNet, Transformer, build_net, register_net
from wsl.nets.siren import SIREN
from wsl.symmetry import PermutationAugment, permute, random_permutations



NETS = {
    "mlp": lambda: MLP([1, 8, 8], 10, width=12, depth=2),
    "cnn2d": lambda: CNN([1, 8, 8], 10, width=6, depth=3),
    "cnn1d": lambda: CNN([1, 40], 10, width=6, depth=2, kernel=5),
    "cnn_bn": lambda: CNN([1, 8, 8], 10, width=4, depth=2, norm="batch"),
    "siren": lambda: SIREN([2], 1, width=10, depth=3, w0=30.0),
    "resnet_bn": lambda: ResNet([1, 8, 8], 10, width=2, depth=2),  # two blocks per stage: streams shared by 5+ tensors
    "resnet1d": lambda: ResNet([1, 16], 10, width=2, depth=1, norm="none"),
    # attention sets with heads: random permutations are block permutations (heads as units)
    "vit": lambda: Transformer([1, 8, 8], 10, width=8, heads=2, depth=1, patch=4),
    "lm": lambda: Transformer([5], 7, vocab=9, width=8, heads=2, depth=2, causal=True),
}
ENCODER_KWARGS = {  # small but complete configurations of every encoder
    "flat": dict(hidden=32), "stats": dict(hidden=32), "deepsets": dict(hidden=16, head_hidden=32),
    "nfn": dict(channels=8, num_layers=2, head_hidden=32), "nfn_np": dict(mode="np", channels=8, num_layers=2,
                                                                          head_hidden=32),
    "graph": dict(hidden=8, num_layers=2, head_hidden=32), "transformer": dict(dim=16, heads=2, num_layers=2,
                                                                                edge_dim=8, head_hidden=32),
}


def encoder_cls(name):
    return ENCODERS["nfn" if name == "nfn_np" else name]


def _spread_batchnorm(net):
    """BatchNorm scales and shifts away from their initial 1 and 0 (which every permutation leaves alone)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.3)
    return net


def population(make, n=3, seed=0):
    """n independently initialized nets of one architecture, stacked: ({name: [n, ...]}, nets, space)."""
    torch.manual_seed(seed)
    nets = [_spread_batchnorm(make()) for _ in range(n)]
    # spread the weights a little beyond the init so layers are not all alike
    sds = [{k: v.detach() * (1 + 0.3 * i) for k, v in net.named_parameters()} for i, net in enumerate(nets)]
    spec = nets[0].permutation_spec()
    shapes = {k: tuple(v.shape) for k, v in nets[0].state_dict().items()}  # buffers included: the space skips them
    space = WeightSpace.from_models([(f"m{i}", spec, shapes) for i in range(n)])
    return {k: torch.stack([sd[k] for sd in sds]) for k in sds[0]}, nets, space


# ------------------------------------------------------------------------------------------ representation
@pytest.mark.parametrize("net", list(NETS))
def test_weight_space_follows_the_permutation_spec(net):
    params, nets, space = population(NETS[net], n=2)
    n0, spec = nets[0], nets[0].permutation_spec()
    assert (space.sets[0].name, space.sets[-1].name) == ("in", "out") and space.sets[0].fixed and space.sets[-1].fixed
    assert space.sizes[0] == (np.prod(n0.in_shape) if net in ("mlp", "siren") else
                              n0.d_in + n0.tokens if net in ("vit", "lm") else n0.in_shape[0])
    assert space.sizes[-1] == n0.num_classes
    # one set per permutation of the spec, of its size; BatchNorm buffers are not read
    assert {s.name: n for s, n in zip(space.sets[1:-1], space.sizes[1:-1])} == spec.sizes
    assert set(space.shapes) == {k for k, _ in n0.named_parameters()} == set(params)
    batch = space.to_batch(params)
    for w, e in zip(batch.edges, space.edges):
        assert w.shape == (2, space.sizes[e.out], space.sizes[e.inp], e.kernel_numel)
        # the representation is a reshape of the state dict, entry for entry
        assert torch.equal(w.reshape(params[e.name].shape), params[e.name])
    for b, v in zip(batch.nodes, space.nodes):
        assert b.shape == (2, space.sizes[v.set]) and torch.equal(b, params[v.name])
    assert space.numel == sum(p.numel() for p in n0.parameters())


def test_a_residual_stream_is_one_set_of_nodes():
    """ResNet depth 2, read against the architecture's definition: every tensor that reads or writes
    stage 0's stream is an edge into or out of ONE set S0; a block's inner channels are their own set;
    BatchNorm scale and shift are features of the units they act on; running statistics only on request."""
    net = ResNet([1, 8, 8], 10, width=2, depth=2)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    space = WeightSpace.from_spec(net.permutation_spec(), shapes)
    idx = {s.name: m for m, s in enumerate(space.sets)}
    names = lambda ls, what: sorted(getattr(space, what)[l].name.rsplit(".", 2)[0] for l in ls)  # noqa: E731
    s0, b01 = idx["S0"], idx["B0.1"]
    assert names(space.incoming(s0), "edges") == ["stages.0.0.conv2", "stages.0.1.conv2", "stem"]
    assert names(space.outgoing(s0), "edges") == ["stages.0.0.conv1", "stages.0.1.conv1", "stages.1.0.conv1",
                                                   "stages.1.0.shortcut"]
    assert sorted(space.nodes[j].name for j in space.features(s0)) == sorted(
        f"{p}.bn.{w}" for p in ("stem", "stages.0.0.conv2", "stages.0.1.conv2") for w in ("weight", "bias"))
    assert names(space.incoming(b01), "edges") == ["stages.0.1.conv1"]
    assert names(space.outgoing(b01), "edges") == ["stages.0.1.conv2"]
    assert names(space.incoming(idx["S2"]), "edges") == ["stages.2.0.conv2", "stages.2.0.shortcut", "stages.2.1.conv2"]
    assert names(space.outgoing(idx["S2"]), "edges") == ["head", "stages.2.1.conv1"]
    assert space.sizes[s0] == 2 and space.sizes[idx["S2"]] == 8 and len(space.sets) == 2 + 3 + 6
    assert not any("running" in k or "num_batches" in k for k in space.shapes)
    with_stats = WeightSpace.from_spec(net.permutation_spec(), shapes, bn_stats=True)
    assert {k for k in with_stats.shapes if k not in space.shapes} == {
        k for k in shapes if k.endswith(("running_mean", "running_var"))}
    assert with_stats.spec.buffers == {k for k in with_stats.shapes if k not in space.shapes}
    plain = ResNet([1, 8, 8], 10, width=2, depth=1, norm="none")
    with pytest.raises(ConfigError, match=r"model m: zoo\.bn_stats=true but the net has no BatchNorm running"):
        WeightSpace.from_spec(plain.permutation_spec(), {k: tuple(v.shape) for k, v in plain.state_dict().items()},
                              "m", bn_stats=True)


def _predict_both(net, enc, move):
    """An encoder's predictions on a population and on `move(params, space)` of it."""
    params, _, space = population(NETS[net])
    torch.manual_seed(1)
    encoder = encoder_cls(enc)(space, 3, **ENCODER_KWARGS[enc]).eval()
    moved = move(params, space)
    assert any(not torch.equal(moved[k], params[k]) for k in params), "the permutation must move weights"
    with torch.no_grad():
        y, y_moved = encoder(space.to_batch(params)), encoder(space.to_batch(moved))
    assert y.shape == (3, 3) and torch.isfinite(y).all()
    assert y.std(0).max() > 1e-4, "different nets must give different predictions"
    return encoder, y, y_moved


def _random_permutation(params, space):
    perms = random_permutations(space.spec, torch.Generator().manual_seed(2), batch=3)
    return permute(params, space.spec, perms, batched=True)


@pytest.mark.parametrize("net,enc", list(itertools.product(NETS, ENCODER_KWARGS)))
def test_encoders_are_invariant_to_function_preserving_permutations(net, enc):
    encoder, y, y_perm = _predict_both(net, enc, _random_permutation)
    if enc == "flat":
        # the flattened-weights MLP is the one encoder that is NOT invariant: it sees a different vector
        assert not encoder.invariant
        assert (y - y_perm).abs().max() > 1e-4
    else:
        assert encoder.invariant
        torch.testing.assert_close(y_perm, y, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("enc", ["stats", "deepsets", "nfn", "graph", "transformer"])
def test_running_statistics_read_on_request_move_with_their_units(enc):
    """bn_stats=True: running mean and variance are two more features of their units, permuted with them."""
    torch.manual_seed(0)
    nets = [_spread_batchnorm(ResNet([1, 8, 8], 10, width=2, depth=1)) for _ in range(3)]
    for i, net in enumerate(nets):
        net.train()
        with torch.no_grad():
            net(torch.randn(16, 1, 8, 8) * (i + 1) + i)  # running statistics away from 0 and 1
    spec = nets[0].permutation_spec()
    sd = {k: torch.stack([n.state_dict()[k] for n in nets]).float() for k in nets[0].state_dict()}
    space = WeightSpace.from_models([(f"m{i}", spec, {k: tuple(v.shape[1:]) for k, v in sd.items()}) for i in range(3)],
                                    bn_stats=True)
    params = {k: sd[k] for k in space.shapes}
    encoder = encoder_cls(enc)(space, 2, **ENCODER_KWARGS[enc]).eval()
    moved = _random_permutation(params, space)
    with torch.no_grad():
        y, y_perm = encoder(space.to_batch(params)), encoder(space.to_batch(moved))
        stats_only = {k: v.flip(0) if "running" in k else v for k, v in params.items()}  # other nets' statistics
        y_other = encoder(space.to_batch(stats_only))
    torch.testing.assert_close(y_perm, y, atol=1e-5, rtol=1e-4)
    assert (y_other - y).abs().max() > 1e-4, "the statistics are read"


def _half_a_stream(params, space):
    """Re-order the outputs of ONE tensor that writes stage 0's stream (block 1's conv2 and its
    BatchNorm) and nothing else: the skip connection ties them to the others, so this changes the
    function; an encoder that gave each layer its own nodes would not notice."""
    perm = torch.tensor([1, 0])
    return {k: v.index_select(1, perm) if k.startswith("stages.0.1.conv2.") else v for k, v in params.items()}


@pytest.mark.parametrize("enc", ["deepsets", "nfn", "nfn_np", "graph", "transformer"])
def test_structured_encoders_tie_the_units_of_a_residual_stream(enc):
    _, y, y_moved = _predict_both("resnet_bn", enc, _half_a_stream)
    assert (y - y_moved).abs().max() > 1e-4


def test_half_a_stream_is_not_a_symmetry_of_the_net():
    params, nets, _ = population(NETS["resnet_bn"], n=1)  # net 0 is the population's first, unscaled
    moved = {k: v[0] for k, v in _half_a_stream(params, None).items()}
    other = build_net(nets[0].arch)
    other.load_state_dict({**nets[0].state_dict(), **moved})
    x = torch.randn(8, 1, 8, 8)
    nets[0].eval(), other.eval()
    with torch.no_grad():
        assert (nets[0](x) - other(x)).abs().max() > 1e-4


@pytest.mark.parametrize("net", ["cnn2d", "resnet_bn"])
@pytest.mark.parametrize("mode", ["hnp", "np"])
def test_nfn_layer_is_equivariant(net, mode):
    """Stronger than invariance: permuting the input's neurons permutes every output the same way."""
    params, _, space = population(NETS[net])
    torch.manual_seed(0)
    enc = NFN(space, 2, mode=mode, channels=4, num_layers=1)
    st = _Structure(space, mode)
    if net == "resnet_bn":  # conv1 (stream -> block) and conv2 (block -> stream) meet reversed
        assert any(st.reversed.values())
    layer = EquivariantLayer(st, 4, 5)
    perms = random_permutations(space.spec, torch.Generator().manual_seed(3))
    batch, batch_p = space.to_batch(params), space.to_batch(permute(params, space.spec, perms, batched=True))
    with torch.no_grad():
        E, V, g = layer(*enc.embed(batch), batch.masks)
        Ep, Vp, gp = layer(*enc.embed(batch_p), batch_p.masks)
    set_perm = [None if s.fixed else perms[s.name] for s in space.sets]
    take = lambda t, ax, p: t if p is None else t.index_select(ax, p)  # noqa: E731
    assert E and V
    for l, e in E.items():
        o, i = space.edges[l].out, space.edges[l].inp
        torch.testing.assert_close(Ep[l], take(take(e, 1, set_perm[o]), 2, set_perm[i]), atol=1e-5, rtol=1e-4)
    for m, v in V.items():
        torch.testing.assert_close(Vp[m], take(v, 1, set_perm[m]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gp, g, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------ flat vectors
@pytest.mark.parametrize("batched", [False, True])
def test_permutation_augment_on_flat_resnet_weights(batched):
    """Flat weight vectors hold parameters only (no BatchNorm statistics); a permutation drawn from the
    ResNet's full spec moves them so that every net computes the same function (train mode: batch
    statistics, which need no running ones), and it equals the state-dict augmentation drawn alike."""
    from wsl.zoo import Layout

    torch.manual_seed(0)
    nets = [_spread_batchnorm(ResNet([1, 8, 8], 10, width=2, depth=2)) for _ in range(3 if batched else 1)]
    layout, spec = Layout.of(nets[0]), nets[0].permutation_spec()
    assert spec.buffers and not any(k in spec.buffers for k in layout.names)
    flat = torch.stack([layout.flatten(dict(n.named_parameters())) for n in nets]).detach()
    x = torch.randn(16, 1, 8, 8)
    moved = PermutationAugment(spec=spec, batched=batched, seed=3, layout=layout)(flat if batched else flat[0])
    moved = moved if batched else moved[None]
    assert moved.shape == flat.shape and not torch.equal(moved, flat)
    same = PermutationAugment(spec=spec, batched=batched, seed=3)(layout.unflatten(flat if batched else flat[0]))
    assert torch.equal(moved, torch.cat([same[k].reshape(len(nets), -1) for k in layout.names], 1))
    for net, row in zip(nets, moved):
        other = build_net(net.arch)
        other.load_state_dict({**net.state_dict(), **layout.unflatten(row)})
        net.train(), other.train()
        with torch.no_grad():
            torch.testing.assert_close(other(x), net(x), atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match=r"PermutationAugment: flat weight vectors need their layout"):
        PermutationAugment(spec=spec)(flat[0])
    with pytest.raises(ConfigError, match=r"PermutationAugment: expected flat weights \[\d+\] in the given layout"):
        PermutationAugment(spec=spec, layout=layout)(flat[0, :-1])


# ------------------------------------------------------------------------------------------ padding
def _mixed_width_models(kind="mlp"):
    torch.manual_seed(0)
    if kind == "mlp":
        narrow, wide = MLP([1, 8, 8], 10, width=5, depth=2), MLP([1, 8, 8], 10, width=9, depth=2)
    else:  # every stream and block of a ResNet is padded: stages 2/4/8 channels to 3/6/12
        narrow, wide = (_spread_batchnorm(ResNet([1, 8, 8], 10, width=w, depth=1)) for w in (2, 3))
    sds = {"narrow": narrow.state_dict(), "wide": wide.state_dict()}
    models = [(k, n.permutation_spec(), {p: tuple(t.shape) for p, t in sds[k].items()})
              for k, n in (("narrow", narrow), ("wide", wide))]
    return narrow, sds, models


def test_padding_keeps_the_function_and_marks_the_padding():
    narrow, sds, models = _mixed_width_models()
    space = WeightSpace.from_models(models, pad=True)
    assert space.padded and space.sizes == [64, 9, 9, 10]
    params, masks = space.pad_state_dict(sds["narrow"])
    padded_net = MLP([1, 8, 8], 10, width=9, depth=2)
    padded_net.load_state_dict(params)
    x = torch.randn(7, 1, 8, 8)
    torch.testing.assert_close(padded_net(x), narrow(x), atol=1e-6, rtol=1e-5)
    assert masks[MASK_PREFIX + "P0"].tolist() == [1.0] * 5 + [0.0] * 4


@pytest.mark.parametrize("kind", ["mlp", "resnet"])
@pytest.mark.parametrize("enc", [e for e in ENCODER_KWARGS if e != "flat"])
def test_masked_encoders_ignore_padding(enc, kind):
    """A narrow net read in a padded space (with a random permutation moving padding and masks
    together) gets exactly the prediction it gets in its own, unpadded space."""
    _, sds, models = _mixed_width_models(kind)
    own = WeightSpace.from_models(models[:1])
    padded = WeightSpace.from_models(models, pad=True)
    torch.manual_seed(0)
    encoder = encoder_cls(enc)(own, 2, **ENCODER_KWARGS[enc]).eval()
    # the parameters of every masked encoder do not depend on hidden widths: one state fits both spaces
    encoder_p = encoder_cls(enc)(padded, 2, **ENCODER_KWARGS[enc]).eval()
    encoder_p.load_state_dict(encoder.state_dict())
    p, m = padded.pad_state_dict(sds["narrow"])
    stacked = {k: v[None] for k, v in {**p, **m}.items()}
    moved = PermutationAugment(batched=True, seed=0)(stacked, padded.mask_spec())
    with torch.no_grad():
        ref = encoder(own.to_batch({k: sds["narrow"][k][None] for k in own.shapes}))
        out = encoder_p(padded.to_batch({k: moved[k] for k in p}, {k: moved[k] for k in m}))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------ bad input
class ScaledNet(nn.Module):
    """An MLP with a learned output temperature: a scalar parameter no encoder reads."""

    name = "test_scaled_mlp"

    def __init__(self, in_shape=(4,), num_classes=3, width=5):
        super().__init__()
        self.in_shape, self.num_classes, self.width = tuple(in_shape), num_classes, width
        self.fc = nn.Linear(in_shape[0], width)
        self.head = nn.Linear(width, num_classes)
        self.temperature = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return self.head(torch.relu(self.fc(x))) / self.temperature

    @property
    def arch(self):
        return {"name": self.name, "in_shape": list(self.in_shape), "num_classes": self.num_classes, "width": self.width}

    def permutation_spec(self):
        return PermutationSpec({"fc.weight": ("P0", None), "fc.bias": ("P0",), "head.weight": (None, "P0"),
                                "head.bias": (None,), "temperature": ()}, {"P0": self.width})


register_net(ScaledNet)


def test_unsupported_layer_is_named_with_the_model():
    net = ScaledNet()
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    with pytest.raises(ConfigError, match=r"model zoo-m7: layer 'temperature' is a scalar parameter, an unsupported "
                                          r"layer type"):
        WeightSpace.from_spec(net.permutation_spec(), shapes, model="zoo-m7")


def test_flattening_layer_is_refused():
    spec = PermutationSpec({"conv.weight": ("P0", None, None, None), "conv.bias": ("P0",),
                            "head.weight": (None, "P0"), "head.bias": (None,)}, {"P0": 4})
    shapes = {"conv.weight": (4, 1, 3, 3), "conv.bias": (4,), "head.weight": (10, 64), "head.bias": (10,)}
    with pytest.raises(ConfigError, match=r"model x: layer 'head\.weight' axis 1 has 64 entries.*'P0' permutes 4"):
        WeightSpace.from_spec(spec, shapes, model="x")


def test_mixed_widths_need_the_padding_option():
    _, _, models = _mixed_width_models()
    with pytest.raises(ConfigError, match=r"model wide: layer 'hidden\.0\.weight' has 9 units.*zoo\.pad=true"):
        WeightSpace.from_models(models)


def test_mixed_depths_are_refused_even_with_padding():
    a, b = MLP([4], 3, width=5, depth=1), MLP([4], 3, width=5, depth=2)
    models = [(mid, n.permutation_spec(), {k: tuple(v.shape) for k, v in n.state_dict().items()})
              for mid, n in (("a", a), ("b", b))]
    with pytest.raises(ConfigError, match=r"model b: layer .* differs"):
        WeightSpace.from_models(models, pad=True)


# ------------------------------------------------------------------------------------------ tasks
def _table():
    return pd.DataFrame({"model_id": ["a", "b", "c", "d"], "test_acc": [0.5, 0.7, 0.9, 0.6],
                         "train_acc": [0.6, 0.9, 0.95, 0.6], "lr": [0.1, 0.01, 0.001, 0.1],
                         "weight_decay": [0.0, 1e-4, 1e-3, 0.0], "width": [8, 8, 8, 8],
                         "phase/label": ["I", "IV-B", "IV-B", "II"]}).set_index("model_id", drop=False)


def test_missing_target_column_is_named():
    t = _table().drop(columns=["phase/label", "train_acc"])
    with pytest.raises(ConfigError, match=r"column 'phase/label' is missing from the zoo's index"):
        Task("phase", "classification", ["phase/label"]).targets(t, list(t.index))
    with pytest.raises(ConfigError, match=r"column 'train_acc' \(needed for 'generalization_gap'\) is missing"):
        Task("gen_gap", "regression", ["generalization_gap"]).targets(t, list(t.index))


def test_task_targets():
    t = _table()
    gap = Task("gen_gap", columns=["generalization_gap"]).targets(t, ["a", "b", "c", "d"])
    torch.testing.assert_close(gap.y[:, 0], torch.tensor([0.1, 0.2, 0.05, 0.0]))
    hp = Task("hparams", columns=["lr", "weight_decay", "width"], log=["lr", "weight_decay"], drop_constant=True)
    tg = hp.targets(t, ["a", "b", "c", "d"])
    assert tg.names == ["lr", "weight_decay"]  # width is constant: dropped
    torch.testing.assert_close(tg.y[:, 0], torch.tensor([-1.0, -2.0, -3.0, -1.0]))
    # weight decay has zeros: log10(wd + smallest positive wd), recorded
    assert tg.offsets["weight_decay"] == pytest.approx(1e-4)
    assert tg.y[0, 1] == pytest.approx(-4.0) and tg.y[2, 1] == pytest.approx(np.log10(1.1e-3))
    with pytest.raises(ConfigError, match="'width' is constant"):
        Task("w", columns=["width"]).targets(t, ["a", "b"])
    ph = Task("phase", "classification", ["phase/label"]).targets(t, ["a", "b", "c", "d"])
    assert ph.classes == ["I", "II", "IV-B"] and ph.y.tolist() == [0, 2, 2, 1]


def test_metrics_match_their_definitions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=12)
    y = x + rng.normal(size=12)
    # Kendall tau from its definition (no ties): (concordant - discordant) / number of pairs
    pairs = list(itertools.combinations(range(12), 2))
    s = sum(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i, j in pairs)
    assert kendall_tau(x, y) == pytest.approx(s / len(pairs))
    assert kendall_tau(x, x) == pytest.approx(1.0) and kendall_tau(x, -x) == pytest.approx(-1.0)
    assert r2(y, y) == 1.0 and r2(np.full(12, y.mean()), y) == pytest.approx(0.0)
    assert r2(x, y) == pytest.approx(1 - ((y - x) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    task = Task("t", columns=["a"])
    out = score(task, ["a"], torch.tensor(x)[:, None], torch.tensor(y)[:, None])
    assert out["tau"] == pytest.approx(s / len(pairs)) and out["r2/a"] == pytest.approx(r2(x, y))
    acc = score(Task("c", "classification", ["l"]), ["l"], torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]]),
                torch.tensor([0, 1, 1]))
    assert acc["acc"] == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------------------ SIREN and INR data
def test_siren_permutation_preserves_function_and_rebuilds():
    torch.manual_seed(0)
    net = SIREN([2], 1, width=16, depth=3, w0=30.0)
    sd = net.state_dict()
    perms = random_permutations(net.permutation_spec(), torch.Generator().manual_seed(0))
    moved = permute(sd, net.permutation_spec(), perms)
    other = build_net(net.arch)  # registered under "siren"
    other.load_state_dict(moved)
    x = torch.rand(50, 2) * 2 - 1
    assert not torch.equal(moved["hidden.1.weight"], sd["hidden.1.weight"])
    torch.testing.assert_close(other(x), net(x), atol=1e-5, rtol=1e-5)
    # the paper's initialization: first layer U(-1/fan_in, 1/fan_in), later U(-sqrt(6/fan_in)/w0, ...)
    assert net.hidden[0].weight.abs().max() <= 1 / 2
    assert net.hidden[1].weight.abs().max() <= np.sqrt(6 / 16) / 30
    assert net.hidden[1].weight.abs().max() > 0.8 * np.sqrt(6 / 16) / 30


def test_digits_inr_data():
    from sklearn.datasets import load_digits

    from wsl.data.digits_inr import digits_inr

    d = digits_inr(per_class=3, seed=1)
    assert d.coords.shape == (64, 2) and d.values.shape == (30, 64, 1)
    assert d.labels.bincount().tolist() == [3] * 10
    assert d.values.min() >= -1 and d.values.max() <= 1
    ref = load_digits()
    k = 7
    img = ref.images[int(d.image_index[k])]
    assert int(d.labels[k]) == int(ref.target[int(d.image_index[k])])
    torch.testing.assert_close(d.values[k, :, 0], torch.tensor(img.reshape(-1) / 8.0 - 1.0, dtype=torch.float32))
    # coordinate of pixel (row 0, col 7) is (-1, 1)
    assert d.coords[7].tolist() == [-1.0, 1.0]
    with pytest.raises(ConfigError, match="per_class"):
        digits_inr(per_class=0)


# ------------------------------------------------------------------------------------------ training module
def test_training_augmentations_move_masks_with_their_neurons():
    from wsl.encoders import FlatMLP, GraphEncoder
    from wsl.encoders.module import PropertyPredictor, WeightSet
    from wsl.symmetry import GaussianNoiseAugment

    _, sds, models = _mixed_width_models()
    space = WeightSpace.from_models(models, pad=True)
    padded = [space.pad_state_dict(sds[k]) for k in ("narrow", "wide", "narrow")]
    params = {k: torch.stack([p[k] for p, _ in padded]) for k in padded[0][0]}
    masks = {k: torch.stack([m[k] for _, m in padded]) for k in padded[0][1]}
    data = WeightSet(params, masks, torch.tensor([[0.1], [0.5], [0.9]]))
    task = Task("t", columns=["test_acc"])
    augs = [PermutationAugment(batched=True, seed=0), GaussianNoiseAugment(0.01, batched=True, seed=0)]
    invariant = PropertyPredictor(GraphEncoder(space, 1, hidden=8), space, task, ["test_acc"], data, augs)
    assert [type(a).__name__ for a in invariant.augments] == ["GaussianNoiseAugment"]  # permuting: a no-op
    flat = PropertyPredictor(FlatMLP(space, 1, hidden=8), space, task, ["test_acc"], data, augs)
    assert [type(a).__name__ for a in flat.augments] == ["PermutationAugment", "GaussianNoiseAugment"]
    p2, m2, y2 = flat.augment(params, masks, data.y)
    assert torch.equal(y2, data.y)
    batch = space.to_batch(p2, m2)
    w1 = batch.edges[0][..., 0]  # [3, 9, 64]
    pad = batch.masks[1] == 0  # [3, 9]
    assert pad.sum() == 8 and not torch.equal(batch.masks[1], space.to_batch(params, masks).masks[1])
    # padded neurons were moved together with their (zero) weights: noise is relative to each tensor's
    # RMS, so real neurons are far from zero and padded ones are exactly noise around zero
    real_rms = w1[~pad].pow(2).mean().sqrt()
    assert w1[pad].pow(2).mean().sqrt() < 0.05 * real_rms


# ------------------------------------------------------------------------------------------ input and readout options
NORM_VARIANTS = {  # the encoder options of issue 18, each a function of the invariant embedding or of entries alike
    "deepsets": dict(ENCODER_KWARGS["deepsets"], norm_readout=True),
    "nfn": dict(ENCODER_KWARGS["nfn"], norm_readout=True, norm="none"),
    "nfn_linear_in": dict(ENCODER_KWARGS["nfn"], entry_mlp=False),
    "graph": dict(ENCODER_KWARGS["graph"], norm_readout=True),
    "transformer": dict(ENCODER_KWARGS["transformer"], norm_readout=True),
}


@pytest.mark.parametrize("net", ["cnn1d", "siren"])
@pytest.mark.parametrize("enc", list(NORM_VARIANTS))
def test_readout_normalization_keeps_invariance(net, enc):
    """After training-mode steps have moved the readout's running statistics, the encoder in eval mode
    is still exactly invariant to the net's permutations; in training mode the head reads the
    embedding standardized over the batch, feature by feature."""
    params, _, space = population(NETS[net], n=4)
    torch.manual_seed(1)
    encoder = encoder_cls(enc.split("_")[0])(space, 2, **NORM_VARIANTS[enc])
    batch = space.to_batch(params)
    seen = []
    if isinstance(getattr(encoder, "readout_norm", None), nn.BatchNorm1d):
        hook = encoder.readout_norm.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
        with torch.no_grad():
            for _ in range(3):
                encoder.train()(batch)
        hook.remove()
        x, out = seen[-1]
        assert (x.var(0) > 1e-6).any()
        # the definition: per feature over the batch, (x - mean) / sqrt(biased variance + eps)
        want = (x - x.mean(0)) / (x.var(0, unbiased=False) + encoder.readout_norm.eps).sqrt()
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-4)
        assert (encoder.readout_norm.running_mean.abs() > 0).any()
    moved = _random_permutation({k: v[:3] for k, v in params.items()}, space)
    encoder.eval()
    with torch.no_grad():
        y = encoder(space.to_batch({k: v[:3] for k, v in params.items()}))
        y_perm = encoder(space.to_batch(moved))
    assert y.std(0).max() > 1e-4
    torch.testing.assert_close(y_perm, y, atol=1e-5, rtol=1e-4)
