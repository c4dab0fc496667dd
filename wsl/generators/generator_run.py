"""A generator run directory on disk: everything `wsl-sample` needs, readable without pickle.

    <run>/generator.safetensors   tensors: denoiser.*, representation.* (per-tensor statistics,
                                  reference weights), autoencoder.* (flat runs with p-diff's latent),
                                  stage.* (representation=pca: mean, components, scale; representation=latent:
                                  the chunk VAE's state dict), condition.*;
                                  header metadata "wsl_generator": the JSON description below
    <run>/generator.json          the same description, indented, for people
    <run>/config.json             the resolved training config (Hydra also keeps .hydra/)

The layout is that of the nets' parameters (Layout.of): BatchNorm running statistics are not
generated (wsl-sample re-estimates them on the train split). The description names the method and the denoiser by registry name (never a class path: a run
file cannot make the reader import anything), with their constructor arguments (checked by the
classes' schemas in wsl.generators.schema when a run is loaded, as a config is); the zoo's net
architecture; the zoo path, its dataset config and fingerprint, the training model ids and
checkpoint epoch; the condition keys with their normalization.

Versions: 1 (flat runs, with or without p-diff's autoencoder; still written for them, so older readers read
them) and 2 (representation.kind = tokens | pca | latent, representation.stage for pca | latent, the "tokens"
denoiser). This wsl reads both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as st_load, save as st_save
from torch import nn

from wsl.errors import ConfigError, ZooFormatError, printable
from wsl.generators.denoisers import MLPDenoiser, TransformerDenoiser
from wsl.generators.diffusion import Diffusion
from wsl.generators.flow import FlowMatching
from wsl.generators.limits import MAX_PARAMS
from wsl.generators.representation import WeightAutoencoder, WeightRepresentation
from wsl.generators.representations import stage_class
from wsl.generators.representations.tokens import TokenDenoiser
from wsl.generators.schema import LatentConfig
from wsl.nets import build_net
from wsl.schema import TARGETS, FieldError
from wsl.zoo.atomic import write_bytes_atomic
from wsl.zoo.format import check_arch_limits, safetensors_header
from wsl.zoo.layout import Layout

RUN_FORMAT = "wsl-generator"
RUN_VERSION = 2  # the newest written (flat runs are still written as version 1)
READ_VERSIONS = ("1", "2")
KINDS = ("flat", "tokens", "pca", "latent")  # representation.kind
CHECKPOINT = "generator.safetensors"
DENOISERS: dict[str, type[nn.Module]] = {"mlp": MLPDenoiser, "transformer": TransformerDenoiser,
                                         "tokens": TokenDenoiser}
METHODS: dict[str, type] = {"flow": FlowMatching, "diffusion": Diffusion}


def register_denoiser(cls: type[nn.Module]) -> type[nn.Module]:
    """Make a denoiser class (with `name` and a `kwargs` dict of its constructor arguments) storable."""
    DENOISERS[cls.name] = cls
    return cls


def _build(registry: dict, kind: str, name: str, kwargs: dict, source, spec: type | None = None):
    """registry[name](**kwargs), its arguments first checked by `spec` (default: the schema registered
    for the class, wsl.generators.schema): the sizes a run file names are capped before anything is built."""
    if name not in registry:
        raise ZooFormatError(f"{source}: {kind} {printable(name)[:80]!r} is unknown; known: {', '.join(sorted(registry))}")
    if not isinstance(kwargs, dict):
        raise ZooFormatError(f"{source}: key {kind}.kwargs must be a mapping, got {printable(kwargs)[:80]}")
    cls = registry[name]
    spec = spec or TARGETS.get(f"{cls.__module__}.{cls.__qualname__}")
    try:
        if spec is not None:  # the class's options only (dim, cond_dim, segments come from the zoo)
            spec(**{k: v for k, v in kwargs.items() if k in {f.name for f in dataclasses.fields(spec)}})
        return cls(**kwargs)
    except (TypeError, ValueError, ConfigError) as e:
        raise ZooFormatError(f"{source}: key {kind}.kwargs cannot rebuild {kind} {name!r} "
                             f"({printable(e.at('') if isinstance(e, FieldError) else e)[:300]})") from e


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
    conditions: nn.Module | None = None  # categories / tasks: wsl.generators.conditions.ConditionEncoder

    def describe(self) -> dict:
        for kind, obj, registry in (("denoiser", self.denoiser, DENOISERS), ("method", self.method, METHODS)):
            if registry.get(getattr(obj, "name", None)) is not type(obj):
                raise ConfigError(f"{kind} {type(obj).__name__} is not registered in wsl.generators.generator_run, so "
                                  "a run could not be reloaded; register it (register_denoiser) or use a built-in one")
        return {"format": RUN_FORMAT, "format_version": self.version(),
                "method": {"name": self.method.name, "kwargs": self.method.kwargs()},
                "denoiser": {"name": self.denoiser.name, "kwargs": self.denoiser.kwargs},
                "representation": self.representation.meta(), "arch": self.arch, "zoo": self.zoo,
                "condition": {"keys": list(self.condition_keys),
                              **(self.conditions.spec.meta() if self.conditions is not None else {})},
                "training": self.training}

    def version(self) -> int:
        """1 for a flat run (readable by older wsl), 2 for tokens | pca | latent."""
        return 1 if self.representation.kind == "flat" and self.representation.stage is None else RUN_VERSION

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"denoiser.{k}": v for k, v in self.denoiser.state_dict().items()}
        out.update(self.representation.tensors())
        if self.condition_keys:
            out.update({"condition.mean": self.cond_mean, "condition.std": self.cond_std})
        if self.conditions is not None:
            out.update({f"condition.encoder.{k}": v for k, v in self.conditions.state_dict().items()})
        return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}

    def save(self, run_dir, config: dict | None = None) -> Path:
        """Write the run's files atomically (temp file + rename); returns the checkpoint path."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        desc = self.describe()
        data = st_save(self.tensors(), metadata={"format": RUN_FORMAT, "format_version": str(self.version()),
                                                 "wsl_generator": json.dumps(desc, sort_keys=True)})
        files = {"generator.json": json.dumps(desc, indent=2, sort_keys=True).encode()}
        if config is not None:
            files["config.json"] = json.dumps(config, indent=2, sort_keys=True, default=str).encode()
        files[CHECKPOINT] = data  # last: its presence marks a finished run
        for name, blob in files.items():  # temp + rename, never through a link planted in the run directory
            write_bytes_atomic(run_dir / name, blob, what="generator", root=run_dir)
        self.path, self.sha256 = run_dir.resolve(), hashlib.sha256(data).hexdigest()
        return run_dir / CHECKPOINT


_FLOATS = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64"}


def _check_tensors(ckpt: Path, expected: dict, found: dict) -> None:
    """The checkpoint holds exactly the tensors its description implies: names, shapes, float dtypes."""
    missing = [k for k in expected if k not in found]
    if missing:
        raise ZooFormatError(f"{ckpt}: lacks tensor {missing[0]!r} that key {expected[missing[0]][1]} implies "
                             f"({len(missing)} missing); the run is incomplete or was edited")
    extra = [k for k in found if k not in expected]
    if extra:
        raise ZooFormatError(f"{ckpt}: holds {len(extra)} tensor(s) its description does not account for "
                             f"(e.g. {printable(extra[0])[:80]!r}); the run was edited")
    for k, (shape, key) in expected.items():
        dtype, got = found[k]
        if got != shape:
            raise ZooFormatError(f"{ckpt}: tensor {k!r} has shape {list(got)}, key {key} implies {list(shape)}; "
                                 "the description contradicts the weights")
        if dtype not in _FLOATS.values():
            raise ZooFormatError(f"{ckpt}: tensor {k!r} has dtype {dtype}, expected a float dtype")


def _on_meta(build, too_big: str) -> nn.Module:
    """`build()` on the meta device (shapes and parameter counts without allocating any memory); refused,
    with the message `too_big` followed by the count, when it has more than MAX_PARAMS parameters."""
    with torch.device("meta"):
        module = build()
    n = sum(v.numel() for v in module.state_dict().values())
    if n > MAX_PARAMS:
        raise ZooFormatError(f"{too_big} {n} parameters; at most {MAX_PARAMS}")
    return module


def load_run(run_dir) -> GeneratorRun:
    """Read a run directory written by `GeneratorRun.save`; every problem names the file (and the key).

    The description in the checkpoint's header is untrusted: its sizes are capped
    (wsl.generators.limits), the net architecture, layout, denoiser, autoencoder and condition it
    records are built on the meta device and checked against the tensors the header lists (names,
    shapes, dtypes, count) before any tensor is read or any module allocated."""
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise ConfigError(f"run={printable(run_dir)}: not a directory (expected a wsl-train-generator run directory)")
    ckpt = run_dir / CHECKPOINT
    if not ckpt.is_file():
        raise ZooFormatError(f"{printable(ckpt)}: missing; {printable(run_dir)} is not a finished wsl-train-generator run")
    meta, index = safetensors_header(ckpt)
    ckpt = printable(ckpt)  # from here on only named in messages
    if meta.get("format") != RUN_FORMAT:
        raise ZooFormatError(f"{ckpt}: not a wsl generator checkpoint (format {printable(meta.get('format'))[:40]!r})")
    if meta.get("format_version") not in READ_VERSIONS:
        raise ZooFormatError(f"{ckpt}: generator format version {printable(meta.get('format_version'))[:20]!r}; "
                             f"this wsl reads versions {', '.join(READ_VERSIONS)}")
    try:
        desc = json.loads(meta["wsl_generator"])
        arch, zoo, rmeta = desc["arch"], desc["zoo"], desc["representation"]
        keys = list(desc["condition"]["keys"])
        cmeta = desc["condition"]
        mname, mkw = desc["method"]["name"], desc["method"]["kwargs"]
        dname, dkw = desc["denoiser"]["name"], desc["denoiser"]["kwargs"]
        layout = Layout.from_json(rmeta["layout"])
        ae_meta = rmeta.get("autoencoder")
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # JSONDecodeError is a ValueError
        raise ZooFormatError(f"{ckpt}: generator description is incomplete ({type(e).__name__}: "
                             f"{printable(e)[:200]})") from e
    if (not isinstance(zoo, dict) or not isinstance(zoo.get("path", ""), str)
            or not all(isinstance(k, str) for k in keys) or not isinstance(dkw, dict)):
        raise ZooFormatError(f"{ckpt}: keys zoo (with a path string), condition.keys and denoiser.kwargs must be a "
                             "mapping, a list of names and a mapping")
    # the zoo net: capped sizes, built without memory; its tensors are what the representation's layout lists
    arch = check_arch_limits(arch, f"{ckpt}: key arch")
    try:
        skeleton = _on_meta(lambda: build_net(arch), f"{ckpt}: key arch makes nets of")
    except (ConfigError, TypeError, ValueError, RuntimeError) as e:
        raise ZooFormatError(f"{ckpt}: key arch records an unusable net architecture "
                             f"{printable(arch)[:200]} ({printable(e)[:200]})") from e
    net_layout = Layout.of(skeleton)  # the net's parameters: BatchNorm statistics are not generated
    if layout != net_layout:
        have = dict((n, s) for n, s, _, _ in layout.entries)
        name, shape = next(((n, s) for n, s, _, _ in net_layout.entries if have.get(n) != s),
                           (net_layout.names[-1] if net_layout.entries else "?", None))
        raise ZooFormatError(f"{ckpt}: key arch ({printable(arch)[:200]}) contradicts key representation.layout: "
                             f"tensor {name!r} is {list(shape or [])} by the arch, "
                             f"{list(have.get(name, [])) or 'absent'} by the layout")
    # every tensor the description implies, with the key that implies it
    expected = {f"representation.{s}": ((len(layout.entries),), "representation.layout") for s in ("mean", "std")}
    if rmeta.get("align"):
        expected.update({f"representation.reference.{n}": (s, "representation.layout") for n, s, _, _ in layout.entries})
    dim = layout.numel
    if ae_meta:
        if not isinstance(ae_meta, dict) or ae_meta.get("dim") != layout.numel:
            raise ZooFormatError(f"{ckpt}: key representation.autoencoder.dim={printable(ae_meta)[:80]} must equal "
                                 f"the layout's {layout.numel} weights")
        kw = {k: v for k, v in ae_meta.items() if k != "name"}
        ae = _on_meta(lambda: _build({WeightAutoencoder.name: WeightAutoencoder}, "representation.autoencoder",
                                     ae_meta.get("name"), kw, ckpt, spec=LatentConfig),
                      f"{ckpt}: key representation.autoencoder makes")
        expected.update({f"autoencoder.{k}": (tuple(v.shape), "representation.autoencoder")
                         for k, v in ae.state_dict().items()})
        dim = int(kw["latent_dim"])
        expected.update({f"representation.latent_{s}": ((dim,), "representation.autoencoder.latent_dim")
                         for s in ("mean", "std")})
    cenc, cond_dim = None, len(keys)
    if isinstance(cmeta, dict) and "kinds" in cmeta:  # categories / tasks (wsl.generators.conditions)
        from wsl.generators.conditions import ConditionEncoder, ConditionSpec

        spec = ConditionSpec.from_meta(keys, cmeta, ckpt)
        cenc = _on_meta(lambda: ConditionEncoder(spec), f"{ckpt}: key condition makes an encoder of")
        cond_dim = cenc.dim
        expected.update({f"condition.encoder.{k}": (tuple(v.shape), "condition.set_encoder")
                         for k, v in cenc.state_dict().items()})
    kind, st_meta = rmeta.get("kind", "flat"), rmeta.get("stage")
    if kind not in KINDS or (kind != "flat" and meta.get("format_version") == "1"):
        raise ZooFormatError(f"{ckpt}: key representation.kind={printable(kind)[:40]!r} is not one of {', '.join(KINDS)} "
                             "(kinds other than flat need format version 2)")
    if (kind in ("pca", "latent")) != bool(st_meta) or (st_meta and ae_meta):
        raise ZooFormatError(f"{ckpt}: key representation.stage must be present exactly for kind pca or latent "
                             f"(kind {kind!r}), without an autoencoder")
    if st_meta:
        cls = stage_class(st_meta.get("name")) if isinstance(st_meta, dict) else None
        if cls is None or cls.name != {"pca": "pca", "latent": "chunk_vae"}[kind]:
            raise ZooFormatError(f"{ckpt}: key representation.stage names {printable(st_meta)[:80]}, not the stage of "
                                 f"representation {kind!r}")
        shapes, dim = cls.expected(st_meta, layout.numel, ckpt)
        expected.update({f"stage.{k}": (tuple(v), "representation.stage") for k, v in shapes.items()})
    if (kind == "tokens") != (dname == "tokens"):
        raise ZooFormatError(f"{ckpt}: key denoiser.name={printable(dname)[:40]!r} does not fit representation {kind!r} "
                             "(the tokens denoiser is the tokens representation's)")
    if dkw.get("dim") != dim or dkw.get("cond_dim") != cond_dim:
        raise ZooFormatError(f"{ckpt}: key denoiser.kwargs gives dim={printable(dkw.get('dim'))[:20]}, "
                             f"cond_dim={printable(dkw.get('cond_dim'))[:20]}; the representation has {dim} "
                             f"coordinates and key condition encodes {cond_dim}")
    method = _build(METHODS, "method", mname, mkw, ckpt)
    denoiser = _on_meta(lambda: _build(DENOISERS, "denoiser", dname, dkw, ckpt),
                        f"{ckpt}: key denoiser.kwargs makes a denoiser of")
    expected.update({f"denoiser.{k}": (tuple(v.shape), "denoiser.kwargs") for k, v in denoiser.state_dict().items()})
    if keys:
        expected.update({f"condition.{s}": ((len(keys),), "condition.keys") for s in ("mean", "std")})
    _check_tensors(ckpt, expected, index)

    # the description holds: read the tensors (checked again: the file may have changed since its header was read)
    data = (run_dir / CHECKPOINT).read_bytes()
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises several error types on damaged files
        raise ZooFormatError(f"{ckpt}: not a readable safetensors file ({type(e).__name__}: {printable(e)[:200]})") from e
    _check_tensors(ckpt, expected, {k: (_FLOATS.get(v.dtype, str(v.dtype)), tuple(v.shape)) for k, v in tensors.items()})
    denoiser = _build(DENOISERS, "denoiser", dname, dkw, ckpt).eval()
    denoiser.load_state_dict({k[len("denoiser."):]: v for k, v in tensors.items() if k.startswith("denoiser.")})
    rep = WeightRepresentation.load(rmeta, tensors, source=str(ckpt))
    cm = cs = None
    if keys:
        cm, cs = tensors["condition.mean"].double(), tensors["condition.std"].double()
        if not (torch.isfinite(cm).all() and torch.isfinite(cs).all() and (cs > 0).all()):
            raise ZooFormatError(f"{ckpt}: condition statistics (tensors condition.mean/std) are not finite and positive")
    if cenc is not None:
        cenc = ConditionEncoder(spec).eval()
        cenc.load_state_dict({k[len("condition.encoder."):]: v for k, v in tensors.items()
                              if k.startswith("condition.encoder.")})
    return GeneratorRun(denoiser, method, rep, arch, zoo, keys, cm, cs, desc.get("training", {}),
                        path=run_dir.resolve(), sha256=hashlib.sha256(data).hexdigest(), conditions=cenc)
