"""Encoders room: weight-space representation, encoder invariance, padding, tasks, metrics, SIREN/INR data.

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
from wsl.nets import CNN, MLP, PermutationSpec, build_net, register_net
from wsl.nets.siren import SIREN
from wsl.symmetry import PermutationAugment, permute, random_permutations



NETS = {
    "mlp": lambda: MLP([1, 8, 8], 10, width=12, depth=2),
    "cnn2d": lambda: CNN([1, 8, 8], 10, width=6, depth=3),
    "cnn1d": lambda: CNN([1, 40], 10, width=6, depth=2, kernel=5),
    "siren": lambda: SIREN([2], 1, width=10, depth=3, w0=30.0),
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


def population(make, n=3, seed=0):
    """n independently initialized nets of one architecture, stacked: ({name: [n, ...]}, spec, space)."""
    torch.manual_seed(seed)
    nets = [make() for _ in range(n)]
    # spread the weights a little beyond the init so layers are not all alike
    sds = [{k: v.detach() * (1 + 0.3 * i) for k, v in net.state_dict().items()} for i, net in enumerate(nets)]
    spec = nets[0].permutation_spec()
    shapes = {k: tuple(v.shape) for k, v in sds[0].items()}
    space = WeightSpace.from_models([(f"m{i}", spec, shapes) for i in range(n)])
    return {k: torch.stack([sd[k] for sd in sds]) for k in sds[0]}, nets, space


# ------------------------------------------------------------------------------------------ representation
@pytest.mark.parametrize("net", list(NETS))
def test_weight_space_chain_follows_the_permutation_spec(net):
    params, nets, space = population(NETS[net], n=2)
    n0 = nets[0]
    assert space.sizes[0] == (np.prod(n0.in_shape) if net in ("mlp", "siren") else n0.in_shape[0])
    assert space.sizes[-1] == n0.num_classes
    assert [s.weight for s in space.layers][-1] == "head.weight"
    batch = space.to_batch(params)
    for l, (w, s) in enumerate(zip(batch.weights, space.layers), start=1):
        assert w.shape == (2, space.sizes[l], space.sizes[l - 1], s.kernel_numel)
        # the representation is a reshape of the state dict, entry for entry
        assert torch.equal(w.reshape(params[s.weight].shape), params[s.weight])
    assert space.numel == sum(p.numel() for p in n0.parameters())


@pytest.mark.parametrize("net,enc", list(itertools.product(NETS, ENCODER_KWARGS)))
def test_encoders_are_invariant_to_hidden_permutations(net, enc):
    params, _, space = population(NETS[net])
    torch.manual_seed(1)
    encoder = encoder_cls(enc)(space, 3, **ENCODER_KWARGS[enc]).eval()
    perms = random_permutations(space.spec, torch.Generator().manual_seed(2), batch=3)
    permuted = permute(params, space.spec, perms, batched=True)
    assert any(not torch.equal(permuted[k], params[k]) for k in params), "the permutation must move weights"
    with torch.no_grad():
        y, y_perm = encoder(space.to_batch(params)), encoder(space.to_batch(permuted))
    assert y.shape == (3, 3) and torch.isfinite(y).all()
    assert y.std(0).max() > 1e-4, "different nets must give different predictions"
    if enc == "flat":
        # the flattened-weights MLP is the one encoder that is NOT invariant: it sees a different vector
        assert not encoder.invariant
        assert (y - y_perm).abs().max() > 1e-4
    else:
        assert encoder.invariant
        torch.testing.assert_close(y_perm, y, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["hnp", "np"])
def test_nfn_layer_is_equivariant(mode):
    """Stronger than invariance: permuting the input's neurons permutes every output the same way."""
    params, _, space = population(NETS["cnn2d"])
    torch.manual_seed(0)
    enc = NFN(space, 2, mode=mode, channels=4, num_layers=1)
    layer = EquivariantLayer(_Structure(space, mode), 4, 5)
    perms = random_permutations(space.spec, torch.Generator().manual_seed(3))
    batch, batch_p = space.to_batch(params), space.to_batch(permute(params, space.spec, perms, batched=True))
    with torch.no_grad():
        E, V, g = layer(*enc.embed(batch), batch.masks)
        Ep, Vp, gp = layer(*enc.embed(batch_p), batch_p.masks)
    neuron_perm = [None] + [perms[s.out_perm] if s.out_perm else None for s in space.layers]
    take = lambda t, ax, p: t if p is None else t.index_select(ax, p)  # noqa: E731
    assert E and V
    for l, e in E.items():
        torch.testing.assert_close(Ep[l], take(take(e, 1, neuron_perm[l]), 2, neuron_perm[l - 1]), atol=1e-5, rtol=1e-4)
    for m, v in V.items():
        torch.testing.assert_close(Vp[m], take(v, 1, neuron_perm[m]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gp, g, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------ padding
def _mixed_width_models():
    torch.manual_seed(0)
    narrow, wide = MLP([1, 8, 8], 10, width=5, depth=2), MLP([1, 8, 8], 10, width=9, depth=2)
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


@pytest.mark.parametrize("enc", [e for e in ENCODER_KWARGS if e != "flat"])
def test_masked_encoders_ignore_padding(enc):
    """A narrow net read in a padded space (with a random permutation moving padding and masks
    together) gets exactly the prediction it gets in its own, unpadded space."""
    _, sds, models = _mixed_width_models()
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
        ref = encoder(own.to_batch({k: v[None] for k, v in sds["narrow"].items()}))
        out = encoder_p(padded.to_batch({k: moved[k] for k in p}, {k: moved[k] for k in m}))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------ bad input
class BNNet(nn.Module):
    """A net with a BatchNorm layer: a layer type the weight-space encoders do not read."""

    name = "test_bn_mlp"

    def __init__(self, in_shape=(4,), num_classes=3, width=5):
        super().__init__()
        self.in_shape, self.num_classes, self.width = tuple(in_shape), num_classes, width
        self.fc = nn.Linear(in_shape[0], width)
        self.bn = nn.BatchNorm1d(width, track_running_stats=False)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.fc(x))))

    @property
    def arch(self):
        return {"name": self.name, "in_shape": list(self.in_shape), "num_classes": self.num_classes, "width": self.width}

    def permutation_spec(self):
        return PermutationSpec({"fc.weight": ("P0", None), "fc.bias": ("P0",), "bn.weight": ("P0",),
                                "bn.bias": ("P0",), "head.weight": (None, "P0"), "head.bias": (None,)}, {"P0": 5})


register_net(BNNet)


def test_unsupported_layer_is_named_with_the_model():
    net = BNNet()
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    with pytest.raises(ConfigError, match=r"model zoo-m7: layer 'bn\.(weight|bias)'.*unsupported layer type"):
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
    w1 = batch.weights[0][..., 0]  # [3, 9, 64]
    pad = batch.masks[1] == 0  # [3, 9]
    assert pad.sum() == 8 and not torch.equal(batch.masks[1], space.to_batch(params, masks).masks[1])
    # padded neurons were moved together with their (zero) weights: noise is relative to each tensor's
    # RMS, so real neurons are far from zero and padded ones are exactly noise around zero
    real_rms = w1[~pad].pow(2).mean().sqrt()
    assert w1[pad].pow(2).mean().sqrt() < 0.05 * real_rms
