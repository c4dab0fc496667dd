"""A generator run on disk: everything `wsl-sample` needs, readable without pickle.

    <run>/generator.safetensors   tensors: denoiser.*, representation.* (per-tensor statistics,
                                  reference weights), autoencoder.* (latent runs), condition.*;
                                  header metadata "wsl_generator": the JSON description below
    <run>/generator.json          the same description, indented, for people
    <run>/config.json             the resolved training config (Hydra also keeps .hydra/)

The description names the method and the denoiser by registry name (never a class path: a run
file cannot make the reader import anything), with their constructor arguments; the zoo's net
architecture; the zoo path, its dataset config and fingerprint, the training model ids and
checkpoint epoch; the condition keys with their normalization.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as st_load, save as st_save
from torch import nn

from wsl.errors import ConfigError, ZooFormatError
from wsl.generators.denoisers import MLPDenoiser, TransformerDenoiser
from wsl.generators.diffusion import Diffusion
from wsl.generators.flow import FlowMatching
from wsl.generators.representation import WeightRepresentation
from wsl.zoo.atomic import write_bytes_atomic

RUN_FORMAT = "wsl-generator"
RUN_VERSION = 1
CHECKPOINT = "generator.safetensors"
DENOISERS: dict[str, type[nn.Module]] = {"mlp": MLPDenoiser, "transformer": TransformerDenoiser}
METHODS: dict[str, type] = {"flow": FlowMatching, "diffusion": Diffusion}


def register_denoiser(cls: type[nn.Module]) -> type[nn.Module]:
    """Make a denoiser class (with `name` and a `kwargs` dict of its constructor arguments) storable."""
    DENOISERS[cls.name] = cls
    return cls


def _build(registry: dict, kind: str, name: str, kwargs: dict, source):
    if name not in registry:
        raise ZooFormatError(f"{source}: {kind} {name!r} is unknown; known: {', '.join(sorted(registry))}")
    try:
        return registry[name](**kwargs)
    except (TypeError, ValueError, ConfigError) as e:
        raise ZooFormatError(f"{source}: {kind} {name!r} cannot be rebuilt from {kwargs} ({e})") from e


@dataclass
class GeneratorRun:
    """A trained generator as loaded from (or about to be saved to) a run directory."""

    denoiser: nn.Module
    method: object  # FlowMatching | Diffusion
    representation: WeightRepresentation
    arch: dict  # the zoo nets' architecture (wsl.nets.build_net)
    zoo: dict  # path, name, dataset (config), dataset_fingerprint, train_ids, epoch
    condition_keys: list = field(default_factory=list)
    cond_mean: torch.Tensor | None = None  # [C]
    cond_std: torch.Tensor | None = None  # [C]
    training: dict = field(default_factory=dict)  # summary: steps, time, losses, spread ratios
    path: Path | None = None  # run directory (after save/load)
    sha256: str | None = None  # of the checkpoint file (after save/load)

    def describe(self) -> dict:
        for kind, obj, registry in (("denoiser", self.denoiser, DENOISERS), ("method", self.method, METHODS)):
            name = getattr(obj, "name", None)
            if registry.get(name) is not type(obj):
                raise ConfigError(f"{kind} {type(obj).__name__} is not registered in wsl.generators.run, so a run "
                                  "could not be reloaded; register it (register_denoiser) or use a built-in one")
        return {"format": RUN_FORMAT, "format_version": RUN_VERSION,
                "method": {"name": self.method.name, "kwargs": self.method.kwargs()},
                "denoiser": {"name": self.denoiser.name, "kwargs": self.denoiser.kwargs},
                "representation": self.representation.meta(), "arch": self.arch, "zoo": self.zoo,
                "condition": {"keys": list(self.condition_keys)}, "training": self.training}

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"denoiser.{k}": v for k, v in self.denoiser.state_dict().items()}
        out.update(self.representation.tensors())
        if self.condition_keys:
            out.update({"condition.mean": self.cond_mean, "condition.std": self.cond_std})
        return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}

    def normalize_condition(self, values: torch.Tensor) -> torch.Tensor:  # [n, C] raw -> [n, C]
        return ((values.double() - self.cond_mean) / self.cond_std).float()

    def save(self, run_dir, config: dict | None = None) -> Path:
        """Write the run's files atomically (temp file + rename); returns the checkpoint path."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        desc = self.describe()
        data = st_save(self.tensors(), metadata={"format": RUN_FORMAT, "format_version": str(RUN_VERSION),
                                                 "wsl_generator": json.dumps(desc, sort_keys=True)})
        files = {"generator.json": json.dumps(desc, indent=2, sort_keys=True).encode()}
        if config is not None:
            files["config.json"] = json.dumps(config, indent=2, sort_keys=True, default=str).encode()
        files[CHECKPOINT] = data  # last: its presence marks a finished run
        for name, blob in files.items():  # temp + rename, never through a link planted in the run directory
            write_bytes_atomic(run_dir / name, blob, what="generator", root=run_dir)
        self.path, self.sha256 = run_dir.resolve(), hashlib.sha256(data).hexdigest()
        return run_dir / CHECKPOINT


def load_run(run_dir) -> GeneratorRun:
    """Read a run directory written by `GeneratorRun.save`; every problem names the file."""
    from wsl.nets import build_net

    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise ConfigError(f"run={run_dir}: not a directory (expected a wsl-train-generator run directory)")
    ckpt = run_dir / CHECKPOINT
    if not ckpt.is_file():
        raise ZooFormatError(f"{ckpt}: missing; {run_dir} is not a finished wsl-train-generator run")
    data = ckpt.read_bytes()
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
    except Exception as e:  # safetensors raises several error types on damaged files
        raise ZooFormatError(f"{ckpt}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    if meta.get("format") != RUN_FORMAT:
        raise ZooFormatError(f"{ckpt}: not a wsl generator checkpoint (format {meta.get('format')!r})")
    if meta.get("format_version") != str(RUN_VERSION):
        raise ZooFormatError(f"{ckpt}: generator format version {meta.get('format_version')!r}; "
                             f"this wsl reads version {RUN_VERSION}")
    try:
        desc = json.loads(meta["wsl_generator"])
        arch, zoo = desc["arch"], desc["zoo"]
        keys = list(desc["condition"]["keys"])
        mname, mkw = desc["method"]["name"], desc["method"]["kwargs"]
        dname, dkw = desc["denoiser"]["name"], desc["denoiser"]["kwargs"]
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ZooFormatError(f"{ckpt}: generator description is incomplete ({type(e).__name__}: {e})") from e
    try:
        build_net(arch)
    except (ConfigError, TypeError, ValueError) as e:
        raise ZooFormatError(f"{ckpt}: records an unusable net architecture {arch} ({e})") from e
    method = _build(METHODS, "method", mname, mkw, ckpt)
    denoiser = _build(DENOISERS, "denoiser", dname, dkw, ckpt)
    try:
        denoiser.load_state_dict({k[len("denoiser."):]: v for k, v in tensors.items() if k.startswith("denoiser.")})
    except RuntimeError as e:
        raise ZooFormatError(f"{ckpt}: denoiser weights do not fit its description ({e})") from e
    denoiser.eval()
    rep = WeightRepresentation.load(desc["representation"], tensors, source=str(ckpt))
    if rep.dim != getattr(denoiser, "dim", rep.dim):
        raise ZooFormatError(f"{ckpt}: denoiser works on {denoiser.dim} coordinates, the representation has {rep.dim}")
    cm = cs = None
    if keys:
        if "condition.mean" not in tensors or tensors["condition.mean"].numel() != len(keys):
            raise ZooFormatError(f"{ckpt}: condition statistics are missing or do not match keys {keys}")
        cm, cs = tensors["condition.mean"].double(), tensors["condition.std"].double()
    return GeneratorRun(denoiser, method, rep, arch, zoo, keys, cm, cs, desc.get("training", {}),
                        path=run_dir.resolve(), sha256=hashlib.sha256(data).hexdigest())
