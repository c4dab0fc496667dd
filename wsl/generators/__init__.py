"""Diffusion and flow-matching generators of network weights, and sampling them into a zoo.

schema          the config schemas (generator group, wsl-train-generator, wsl-sample): plain Python
representation  aligned, flattened, per-tensor normalized weights (optional autoencoder latent)
flow / diffusion  the generative methods (loss + sampler), plain objects
denoisers       the networks they train (MLP, transformer over per-layer tokens), plain nn.Modules
module          LightningModules (losses, collapse monitor, optimizers)
generator_run   a generator run directory on disk (safetensors + JSON, no pickle)
train / sample  what wsl-train-generator and wsl-sample do

The names below are imported on first use: the schemas (and an app's `--help`) need no torch.
"""

import importlib

_EXPORTS = {"MLPDenoiser": "denoisers", "TransformerDenoiser": "denoisers", "guided": "denoisers",
            "Diffusion": "diffusion", "FlowMatching": "flow", "ot_pairing": "flow",
            "WeightAutoencoder": "representation", "WeightRepresentation": "representation",
            "layer_segments": "representation", "GeneratorRun": "generator_run", "load_run": "generator_run",
            "register_denoiser": "generator_run", "sample_vectors": "sample", "sample_weights": "sample",
            "write_sample_zoo": "sample"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"wsl.generators.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'wsl.generators' has no attribute {name!r}")
