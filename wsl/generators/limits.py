"""Hard caps on the sizes a generator config or a generator run may name.

A run directory is data from disk (possibly a stranger's): its description names widths, depths and
step counts that the loader would otherwise build and loop over blindly. Every cap is far above any
useful value, so it only refuses what would exhaust memory or hang. The schemas
(wsl.generators.schema) apply them to a config and to a loaded run's description alike.
"""

MAX_WIDTH = 1 << 20  # hidden sizes, embedding sizes (a 2^20-wide linear layer is already 10^12 parameters)
MAX_DEPTH = 1024  # residual blocks / transformer layers: building the module must stay quick
MAX_TOKENS = 1 << 16  # tokens of the transformer denoiser (one linear map each)
MAX_SAMPLER_STEPS = 10_000  # ODE / DDIM steps per sample (each one a denoiser pass over the batch)
MAX_TIMESTEPS = 1_000_000  # diffusion steps of the noise schedule (a float64 table of that length)
MAX_PARAMS = 2_000_000_000  # parameters of a denoiser, an autoencoder or a zoo net (8 GB in float32)
# nets one wsl-sample run may write: each is a checkpoint file and an index row, and every reader (and each
# batch's index merge) holds all rows in memory (measured: about 6 KB per row)
MAX_SAMPLES = 1_000_000
MAX_BATCH_BYTES = 1 << 30  # float32 generator vectors of one sampling batch held at once

