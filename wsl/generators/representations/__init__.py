"""The representations a generator can run on besides the flat vector (`representation=` group).

    flat    wsl.generators.representation: aligned, per-tensor standardized weights (one coordinate each)
    tokens  tokens.TokenDenoiser: layers cut into chunks, shared projections + embeddings, a transformer
    pca     pca.PCACodes: k principal-component codes of the aligned training zoo
    latent  vae.ChunkVAE: a KL-regularized VAE over fixed-size chunks (D2NWG)

`pca` and `latent` are *stages* of a WeightRepresentation (after alignment and normalization): objects with
`dim`, `encode`, `decode`, `tensors`, `meta`, and a class-level `expected(meta, n)` (the tensors a run must hold)
and `load(meta, tensors)`; `tokens` changes the denoiser, not the vector. Settings arrive as the typed schemas of wsl.generators.schema.
"""

STAGES = {"pca": "wsl.generators.representations.pca:PCACodes",
          "chunk_vae": "wsl.generators.representations.vae:ChunkVAE"}


def stage_class(name: str):
    """The stage class stored under `name` in a run (None: unknown)."""
    import importlib

    ref = STAGES.get(name)
    if ref is None:
        return None
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)
