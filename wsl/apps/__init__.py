"""Thin Hydra entry points: compose the config, build objects, call one function."""
