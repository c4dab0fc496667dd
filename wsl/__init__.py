"""wsl: weight-space learning. Model zoos, landscape metadata, weight encoders and generators."""

__version__ = "0.1.0"
