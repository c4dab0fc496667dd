"""representation= (issue 16): tokens, pca and latent against their definitions, and as runs.

- chunk tokens: the gather / keep indices invert exactly; the token denoiser runs on every net of the zoo format
  (MLP, CNN, ResNet with BatchNorm, transformer) and its parameter count grows with the net only through the
  embeddings;
- PCA: components orthonormal, the training nets' codes reproduce them when k = nets - 1, every decoded vector
  lies in the span (distance 0), the leave-one-out span distance equals brute-force least squares;
- chunk VAE: posterior / reconstruction shapes, padding never leaks into the vector;
- pca noise (`representation.noise`): every training step sees the standardized codes (mean 0, variance 1) with
  that std beside them, and trains on codes + noise; a negative noise names its key;
- runs: each representation trains (conditioned, for tokens), is saved (version 2; flat stays version 1), reloads
  to the same sampler (same samples), and a tampered stage is refused; bad input names its key, nothing written.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import typed_gen
from wsl.errors import ConfigError, ZooFormatError
from wsl.generators.generator_run import load_run
from wsl.generators.representation import layer_segments
from wsl.generators.representations.chunks import chunk_tokens, gather_index
from wsl.generators.representations.pca import PCACodes, _loo_span
from wsl.generators.representations.tokens import TokenDenoiser, layer_kinds
from wsl.generators.representations.vae import ChunkVAE
from wsl.generators.sample import sample_weights
from wsl.generators.train import train_generator
from wsl.nets import CNN, MLP, ResNet, Transformer
from wsl.zoo.layout import Layout

QUIET = ["logger=none", "progress_refresh_rate=0", "trainer.accelerator=cpu", "trainer.max_steps=8", "spread.n=8",
         "batch_size=4"]


def test_chunk_tokens_invert_exactly_and_never_straddle_layers():
    segments = [(0, 5), (5, 6), (6, 17)]
    tokens, layer, pos = chunk_tokens(segments, 17, 4)
    assert tokens == [(0, 4), (4, 5), (5, 6), (6, 10), (10, 14), (14, 17)]
    assert layer == [0, 0, 1, 2, 2, 2] and pos == [0, 1, 0, 0, 1, 2]
    gather, keep = gather_index(tokens, 17, 4)
    x = torch.randn(3, 17)
    pad = torch.cat([x, torch.zeros(3, 1)], 1)
    toks = pad[:, gather].view(3, len(tokens), 4)
    assert toks[:, 1, 1:].abs().sum() == 0  # padding is zero
    assert torch.equal(toks.reshape(3, -1)[:, keep], x)
    with pytest.raises(ConfigError, match="representation.chunk=1 cuts the 100000 weights into 100000 tokens"):
        chunk_tokens([(0, 100_000)], 100_000, 1)


@pytest.mark.parametrize("net", [MLP((1, 8, 8), 10, width=8), CNN((1, 8, 8), 10, width=4, depth=2),
                                 ResNet((1, 8, 8), 10, width=4, depth=1), Transformer((4, 8), 3, width=8, heads=2)],
                         ids=["mlp", "cnn", "resnet", "transformer"])
def test_token_denoiser_on_every_net_kind(net):
    layout = Layout.of(net)  # parameters only: BatchNorm statistics are not generated
    segs, kinds = layer_segments(layout), layer_kinds(layout)
    den = TokenDenoiser(layout.numel, cond_dim=2, segments=segs, kinds=kinds, chunk=16, d_model=16, nhead=2, layers=1)
    x = torch.randn(3, layout.numel)
    out = den(x, torch.rand(3), torch.randn(3, 2), torch.tensor([True, False, True]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    # the output of one token depends on the whole net (attention), but coordinate i comes from its own token
    embeddings = sum(p.numel() for n, p in den.named_parameters() if n.endswith("_emb.weight"))
    bigger = TokenDenoiser(10 * layout.numel, cond_dim=2, segments=[(10 * a, 10 * b) for a, b in segs], kinds=kinds,
                           chunk=16, d_model=16, nhead=2, layers=1)
    emb_big = sum(p.numel() for n, p in bigger.named_parameters() if n.endswith("_emb.weight"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(bigger) - emb_big == count(den) - embeddings  # size grows only through the embeddings


def test_pca_codes_against_their_definition():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 40, generator=g) @ torch.randn(40, 40, generator=g)
    st = PCACodes.fit(x, 6, block=9)  # blocks that do not divide the 40 coordinates
    v = st.components.double()
    assert torch.allclose(v @ v.T, torch.eye(6, dtype=torch.float64), atol=1e-5)  # orthonormal rows
    z = st.encode(x)
    assert torch.allclose(z.std(0, unbiased=False), torch.ones(6), atol=1e-4)  # standardized codes
    assert torch.allclose(st.decode(z), x, atol=1e-3 * x.abs().max())  # k = nets - 1: the nets themselves
    ref = torch.linalg.svd(x - x.mean(0), full_matrices=False)
    assert torch.allclose(st.info["explained_variance"] * torch.ones(()), torch.ones(()), atol=1e-6)
    assert torch.allclose((v @ ref.Vh[:6].double().T).abs(), torch.eye(6, dtype=torch.float64), atol=1e-4)
    samples = st.decode(3 * torch.randn(50, 6, generator=g))
    assert st.span_distance(samples).max() < 1e-4 * samples.norm(dim=1).max()  # samples cannot leave the span
    small = PCACodes.fit(x, 2)
    assert 0 < small.info["explained_variance"] < 1
    with pytest.raises(ConfigError, match=r"representation.k=7 is more than the 6 components that 7 training nets span"):
        PCACodes.fit(x, 7)
    # leave-one-out span distance from the Gram matrix == least squares on the nets themselves
    y = torch.randn(5, 9, generator=g, dtype=torch.float64)
    loo, nn_median = _loo_span(y @ y.T)
    brute = []
    for i in range(5):
        o = torch.cat([y[:i], y[i + 1:]])
        basis = (o[1:] - o[0]).T
        coef = torch.linalg.lstsq(basis, y[i] - o[0]).solution
        brute.append(float((y[i] - o[0] - basis @ coef).norm() / (y[i] - o.mean(0)).norm()))
    assert loo == pytest.approx(sum(brute) / 5, rel=1e-6)
    assert nn_median == pytest.approx(float(torch.cdist(y, y).add(torch.eye(5) * 1e9).min(1).values.median()))


def test_chunk_vae_shapes_and_padding():
    vae = ChunkVAE(10, chunk=4, latent_dim=2, hidden=8)
    x = torch.randn(3, 10)
    mu, logvar = vae.posterior(x)
    assert mu.shape == logvar.shape == (3, 3, 2) and vae.dim == 6
    assert vae.reconstruct(mu).shape == (3, 10)
    with torch.no_grad():
        total, mse, kl = vae.loss(x, beta=0.1)
    assert float(total) == pytest.approx(float(mse + 0.1 * kl)) and float(kl) >= 0
    vae.fit_standardization(x)
    z, sd = vae.encode_with_std(x)
    assert torch.allclose(z.mean(0), torch.zeros(6), atol=1e-5) and (sd > 0).all()


@pytest.fixture(scope="module")
def runs(tiny_zoo, tmp_path_factory):
    root = tmp_path_factory.mktemp("reps")
    out = {}
    for name, extra in {"tokens": ["representation.chunk=64", "representation.d_model=16", "representation.nhead=2",
                                   "representation.layers=1", "condition.columns=[val_acc]"],
                        "pca": ["representation.k=3"],
                        "latent": ["representation.chunk=64", "representation.hidden=16", "representation.steps=8"]
                        }.items():
        job = typed_gen("train_generator", [f"zoo.path={tiny_zoo}", f"representation={name}", *QUIET, *extra])
        out[name] = (train_generator(job, root / name), root / name)
    return out


@pytest.mark.parametrize("name", ["tokens", "pca", "latent"])
def test_each_representation_saves_reloads_and_samples_the_same(runs, name):
    run, path = runs[name]
    desc = json.loads((path / "generator.json").read_text())
    assert desc["format_version"] == 2 and desc["representation"]["kind"] == name
    again = load_run(path)
    assert again.representation.kind == name and again.representation.dim == run.representation.dim
    cond = {"val_acc": 0.8} if name == "tokens" else None
    kw = dict(seed=3, condition=cond, guidance=2.0 if cond else 1.0)
    a, b = sample_weights(run, 4, **kw), sample_weights(again, 4, **kw)
    assert a.shape == (4, run.representation.layout.numel) and torch.isfinite(a).all()
    assert torch.allclose(a, b, atol=1e-5)
    if name == "tokens":
        assert again.denoiser.name == "tokens" and again.denoiser.kwargs["cond_dim"] == 1
    if name == "pca":
        st = again.representation.stage
        assert st.dim == 3 and st.span_distance(again.representation.normalize(a)).max() < 1e-3
        assert 0 < desc["training"]["pca"]["explained_variance"] <= 1


def test_tampered_stage_and_version_are_refused(runs, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    _, path = runs["pca"]
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    ckpt = bad / "generator.safetensors"
    tensors = load_file(ckpt)
    from safetensors import safe_open

    with safe_open(str(ckpt), "pt") as f:
        meta = f.metadata()
    desc = json.loads(meta["wsl_generator"])
    desc["representation"]["stage"]["k"] = 4  # the components say 3
    save_file(tensors, ckpt, metadata={**meta, "wsl_generator": json.dumps(desc)})
    with pytest.raises(ZooFormatError, match="denoiser.kwargs gives dim=3, .*the representation has 4 coordinates"):
        load_run(bad)
    desc["representation"]["stage"]["k"] = 3
    save_file(tensors, ckpt, metadata={**meta, "format_version": "1", "wsl_generator": json.dumps(desc)})
    with pytest.raises(ZooFormatError, match="kinds other than flat need format version 2"):
        load_run(bad)


def test_bad_representation_input_names_the_key(tiny_zoo, tmp_path):
    base = [f"zoo.path={tiny_zoo}", *QUIET]
    for extra, msg in [(["representation=latent", "representation.latent_dim=64", "representation.chunk=64"],
                        "representation.latent_dim=64 must be less than representation.chunk=64"),
                       (["representation=tokens", "representation.nhead=3"],
                        "representation.d_model=128 must be divisible by representation.nhead=3"),
                       (["representation=pca", "representation.k=0"], "representation.k must be an integer")]:
        with pytest.raises(ConfigError, match=msg):
            typed_gen("train_generator", [*base, *extra])
    job = typed_gen("train_generator", [*base, "representation=pca", "representation.k=4"])  # the zoo has 4 nets
    with pytest.raises(ConfigError, match=r"^representation.k=4 is more than the 3 components that 4 training nets"):
        train_generator(job, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing written


def test_pca_noise_trains_on_codes_plus_noise(tiny_zoo, tmp_path, monkeypatch):
    """representation.noise=s: every training batch holds the training codes with std s beside them, and the rows
    the denoiser sees are codes + s * eps (not the codes); a negative noise names its key."""
    from wsl.generators.module import GeneratorModule

    seen, split = [], GeneratorModule._split

    def spy(self, batch, sample=False):
        out = split(self, batch, sample)
        if sample:
            seen.append((batch[0].clone(), out[0].clone()))
        return out

    monkeypatch.setattr(GeneratorModule, "_split", spy)
    job = typed_gen("train_generator", [f"zoo.path={tiny_zoo}", "representation=pca", "representation.k=3",
                                        "representation.noise=0.25", *QUIET, "trainer.max_steps=2"])
    train_generator(job, tmp_path / "run")
    assert len(seen) == 2
    for raw, x in seen:  # batch_size 4 = all 4 nets: the standardized codes, mean 0 and variance 1 per component
        mean, std = raw.chunk(2, dim=1)
        assert raw.shape == (4, 2 * 3) and torch.all(std == 0.25)
        assert torch.allclose(mean.mean(0), torch.zeros(3), atol=1e-5)
        assert torch.allclose(mean.pow(2).mean(0), torch.ones(3), atol=1e-4)
        assert not torch.allclose(x, mean) and (x - mean).abs().max() < 0.25 * 6
    with pytest.raises(ConfigError, match="representation.noise"):
        typed_gen("train_generator", [f"zoo.path={tiny_zoo}", "representation=pca", "representation.noise=-1", *QUIET])
