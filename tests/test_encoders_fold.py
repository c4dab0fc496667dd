"""fold_fixed of the graph and transformer encoders (issue 18): a hidden neuron's weights to and from the
net's fixed inputs and outputs enter its initial features as one vector in their fixed order. Checked
against its definition, for invariance to the net's permutations (chains, residual streams, SIRENs),
for reading the fixed axis in order, and for padding (a narrow net padded = the same net unpadded)."""

from __future__ import annotations

import pytest
import torch
from test_encoders import ENCODER_KWARGS, NETS, _mixed_width_models, _predict_both, _random_permutation, population

from wsl.encoders import ENCODERS, WeightSpace
from wsl.encoders.common import NeuronEmbedding
from wsl.symmetry import PermutationAugment

FOLD = {e: dict(ENCODER_KWARGS[e], fold_fixed=True) for e in ("graph", "transformer")}


def test_fold_adds_a_linear_map_of_each_hidden_neurons_fixed_weights():
    """Definition: with fold_fixed, set m's embedding = the plain one + W_in[l](row j of every tensor from the
    fixed inputs into m) + W_out[l](column j of every tensor from m to the fixed outputs); fixed sets alike."""
    params, _, space = population(NETS["mlp"])  # 64 inputs -> 12 -> 12 -> 10 outputs
    batch = space.to_batch(params)
    torch.manual_seed(0)
    plain = NeuronEmbedding(space, 8)
    fold = NeuronEmbedding(space, 8, fold_fixed=True)
    fold.load_state_dict(plain.state_dict(), strict=False)
    first, last = 0, len(space.edges) - 1
    p_in, p_out = space.edges[first].out, space.edges[last].inp  # the first and last hidden sets
    assert sorted(fold.fold) == sorted([f"{p_in}_in_{first}", f"{p_out}_out_{last}"])
    with torch.no_grad():
        a, b = plain(batch), fold(batch)
        want = {m: a[m].clone() for m in range(len(a))}
        want[p_in] += batch.edges[first].flatten(2) @ fold.fold[f"{p_in}_in_{first}"].weight.T
        want[p_out] += batch.edges[last].transpose(1, 2).flatten(2) @ fold.fold[f"{p_out}_out_{last}"].weight.T
    for m in range(len(a)):
        torch.testing.assert_close(b[m], want[m])


@pytest.mark.parametrize("net", ["mlp", "resnet_bn", "siren"])
@pytest.mark.parametrize("enc", list(FOLD))
def test_fold_keeps_invariance(net, enc, monkeypatch):
    monkeypatch.setitem(ENCODER_KWARGS, enc, FOLD[enc])
    encoder, y, y_perm = _predict_both(net, enc, _random_permutation)
    assert encoder.invariant and (encoder.tokens if enc == "transformer" else encoder.nodes).folds
    torch.testing.assert_close(y_perm, y, atol=1e-5, rtol=1e-4)


def test_fold_reads_the_fixed_inputs_in_order():
    """Reordering the net's (fixed) inputs is no symmetry: the folded embedding changes with it, the
    plain one (position embeddings on the input nodes, which it does not read) does not."""
    params, _, space = population(NETS["mlp"])
    first = space.edges[0].name
    swapped = {**params, first: params[first].flip(-1)}  # the inputs in reverse order
    m = space.edges[0].out
    for fold, changes in ((True, True), (False, False)):
        emb = NeuronEmbedding(space, 8, fold_fixed=fold).eval()
        with torch.no_grad():
            a, b = emb(space.to_batch(params))[m], emb(space.to_batch(swapped))[m]
        assert ((a - b).abs().max() > 1e-3) == changes


@pytest.mark.parametrize("enc", list(FOLD))
def test_fold_ignores_padding(enc):
    """A narrow MLP in a padded space (padding moved by a random permutation) = the same net in its own."""
    _, sds, models = _mixed_width_models("mlp")
    own, padded = WeightSpace.from_models(models[:1]), WeightSpace.from_models(models, pad=True)
    torch.manual_seed(0)
    encoder = ENCODERS[enc](own, 2, **FOLD[enc]).eval()
    encoder_p = ENCODERS[enc](padded, 2, **FOLD[enc]).eval()
    encoder_p.load_state_dict(encoder.state_dict())
    p, m = padded.pad_state_dict(sds["narrow"])
    moved = PermutationAugment(batched=True, seed=0)({k: v[None] for k, v in {**p, **m}.items()}, padded.mask_spec())
    with torch.no_grad():
        ref = encoder(own.to_batch({k: sds["narrow"][k][None] for k in own.shapes}))
        out = encoder_p(padded.to_batch({k: moved[k] for k in p}, {k: moved[k] for k in m}))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
