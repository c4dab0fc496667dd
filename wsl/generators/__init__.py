"""Diffusion and flow-matching generators of network weights, and sampling them into a zoo.

representation  aligned, flattened, per-tensor normalized weights (optional autoencoder latent)
flow / diffusion  the generative methods (loss + sampler), plain objects
denoisers       the networks they train (MLP, transformer over per-layer tokens), plain nn.Modules
module          LightningModules (losses, collapse monitor, optimizers)
run             a generator run on disk (safetensors + JSON, no pickle)
train / sample  what wsl-train-generator and wsl-sample do
"""

from wsl.generators.denoisers import MLPDenoiser, TransformerDenoiser, guided
from wsl.generators.diffusion import Diffusion
from wsl.generators.flow import FlowMatching, ot_pairing
from wsl.generators.representation import WeightAutoencoder, WeightRepresentation, layer_segments
from wsl.generators.run import GeneratorRun, load_run, register_denoiser
from wsl.generators.sample import sample_vectors, sample_weights, write_sample_zoo

__all__ = ["MLPDenoiser", "TransformerDenoiser", "guided", "Diffusion", "FlowMatching", "ot_pairing",
           "WeightAutoencoder", "WeightRepresentation", "layer_segments", "GeneratorRun", "load_run",
           "register_denoiser", "sample_vectors", "sample_weights", "write_sample_zoo"]
