"""A saved encoder: what wsl-train-encoder writes per seed, readable without pickle.

    <run>/encoders/seed<k>.safetensors   the seed's best-validation PropertyPredictor: encoder.* (the encoder's
                                         parameters and buffers), scale.* (per-tensor input scaling fitted on the
                                         training nets), y_mean / y_std (target standardization, regression);
                                         header metadata "wsl_encoder": the JSON description below
    <run>/encoders/seed<k>.json          the same description, indented, for people
    <run>/config.json                    the resolved wsl-train-encoder config

The description names the encoder by registry name (wsl.encoders.ENCODERS, never a class path: a run file
cannot make the reader import anything) with its constructor arguments (checked by the encoder's schema,
wsl.encoders.schema, as a config is); the task (its schema's options) and its targets (names, classes of a
classification, log offsets); the weight space: the distinct architectures of the training nets (the space
is rebuilt from them exactly as wsl-train-encoder built it), zoo.pad and zoo.bn_stats, and the set sizes
it had (checked against the rebuilt space); the zoo, its checkpoint epoch and the split.

`load_encoder` checks everything before anything is allocated: sizes are capped, the encoder is built on
the meta device, and the tensors the header lists (names, shapes, dtypes) must be exactly those the
description implies. `check_fits` says in one line why a saved encoder cannot read the nets of a zoo
(another architecture, other widths without zoo.pad, wider nets than it was trained on).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as st_load, save as st_save
from torch import nn

from wsl.encoders.module import PropertyPredictor, WeightSet
from wsl.encoders.tasks import Task
from wsl.encoders.weightspace import WeightSpace
from wsl.errors import ConfigError, ZooFormatError, printable
from wsl.schema import FieldError
from wsl.zoo.atomic import write_bytes_atomic
from wsl.zoo.format import check_arch_limits, safetensors_header

log = logging.getLogger("wsl.encoders")

RUN_FORMAT = "wsl-encoder"
RUN_VERSION = 1
ENCODER_DIR = "encoders"
MAX_PARAMS = 200_000_000  # an encoder a run file may ask to build
_SEED_FILE = re.compile(r"seed(-?\d+)\.safetensors")
_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64",
           torch.int64: "I64", torch.int32: "I32", torch.bool: "BOOL"}


def seed_file(run_dir, seed: int) -> Path:
    return Path(run_dir) / ENCODER_DIR / f"seed{seed}.safetensors"


def tensors_of(module: PropertyPredictor) -> dict:
    """What a saved encoder holds: the predictor's state without the augmentations (training only)."""
    return {k: v for k, v in module.state_dict().items() if not k.startswith("augments.")}


def describe(*, encoder: dict, out_dim: int, task: Task, targets, archs: list, space: WeightSpace, pad: bool,
             bn_stats: bool, zoo: dict, seed: int, training: dict, run_token: str | None = None) -> dict:
    """The JSON description of one saved encoder (see the module docstring)."""
    task_opts = {f.name: getattr(task, f.name) for f in dataclasses.fields(task) if f.name != "_target_"}
    return {"format": RUN_FORMAT, "format_version": RUN_VERSION, "encoder": encoder, "out_dim": int(out_dim),
            "task": task_opts, "targets": {"names": list(targets.names), "classes": list(targets.classes),
                                          "offsets": dict(targets.offsets)},
            "space": {"archs": archs, "pad": bool(pad), "bn_stats": bool(bn_stats),
                      "sets": {s.name: n for s, n in zip(space.sets, space.sizes)}},
            "zoo": zoo, "seed": int(seed), "training": training, "run_token": run_token}


RUN_FILE = "run.json"  # encoders/run.json: {"token": ..., "seeds": [...]} of the run that owns the directory


def start_run(run_dir, seeds: list) -> str:
    """Mark encoders/ as this run's (a new token): seed files an earlier run left there are then ignored by
    load_run. Returns the token every seed's description carries."""
    import secrets

    run_dir = Path(run_dir)
    token = secrets.token_hex(8)
    (run_dir / ENCODER_DIR).mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(run_dir / ENCODER_DIR / RUN_FILE, json.dumps({"token": token, "seeds": list(seeds)}).encode(),
                       what="encoder", root=run_dir)
    return token


def save_encoder(run_dir, seed: int, module: PropertyPredictor, desc: dict) -> Path:
    """Write encoders/seed<k>.json and encoders/seed<k>.safetensors (last: its presence marks a finished
    seed), each temp file + rename; returns the checkpoint path."""
    run_dir = Path(run_dir)
    data = st_save({k: v.detach().to("cpu").contiguous() for k, v in tensors_of(module).items()},
                   metadata={"format": RUN_FORMAT, "format_version": str(RUN_VERSION),
                             "wsl_encoder": json.dumps(desc, sort_keys=True, default=str)})
    ckpt = seed_file(run_dir, seed)
    (run_dir / ENCODER_DIR).mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(ckpt.with_suffix(".json"), json.dumps(desc, indent=2, sort_keys=True, default=str).encode(),
                       what="encoder", root=run_dir)
    write_bytes_atomic(ckpt, data, what="encoder", root=run_dir)
    return ckpt


# ------------------------------------------------------------------------------------------ loading
@dataclass
class SavedEncoder:
    """One seed's encoder as loaded from a run directory."""

    module: PropertyPredictor  # in eval mode
    space: WeightSpace
    task: Task
    desc: dict
    path: Path
    sha256: str

    @property
    def seed(self) -> int:
        return int(self.desc["seed"])

    @property
    def name(self) -> str:
        """The encoder's name as the run called it (encoder.name, e.g. nfn_np), else its registry name."""
        enc = self.desc["encoder"]
        return str(enc.get("label") or enc["name"])

    @property
    def target_names(self) -> list:
        return list(self.desc["targets"]["names"])

    @property
    def classes(self) -> list:
        return list(self.desc["targets"]["classes"])

    @torch.no_grad()
    def predict(self, data: WeightSet, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """(predictions [M, T] in target units, or logits [M, C]; embeddings [M, D]) of every net of `data`.
        The embedding is the input of the encoder's last linear layer (its penultimate features), so
        output = last_linear(embedding)."""
        module, enc = self.module, self.module.encoder
        seen: list = [None]  # the last linear layer called and its input (one slot: nothing else is kept)

        def remember(mod, args):
            seen[0] = (mod, args[0])

        hooks = [m.register_forward_pre_hook(remember) for m in enc.modules() if isinstance(m, nn.Linear)]
        preds, embs = [], []
        try:
            for s in range(0, len(data), batch_size):
                p, m = ({k: v.to(module.device) for k, v in d.items()} for d in data[s:s + batch_size][:2])
                seen[0] = None
                out = module(p, m)
                last = seen[0]
                emb = last[1] if last is not None and last[0].out_features == out.shape[-1] else out
                preds.append(module.to_target_units(out).cpu())
                embs.append(emb.reshape(out.shape[0], -1).cpu())
        finally:
            for h in hooks:
                h.remove()
        return torch.cat(preds), torch.cat(embs)

    def in_column_units(self, pred: torch.Tensor) -> dict:
        """Predictions in the units of the zoo's columns: {column: [M]} (log targets transformed back; a
        classification: the predicted class value)."""
        if self.task.kind == "classification":
            idx = pred.argmax(-1).tolist()
            return {self.target_names[0]: [self.classes[i] for i in idx]}
        offsets = self.desc["targets"]["offsets"]
        out = {}
        for j, c in enumerate(self.target_names):
            v = pred[:, j].double()
            out[c] = (10 ** v - offsets[c]) if c in self.task.log else v
        return out


def _check_tensors(ckpt, expected: dict, found: dict) -> None:
    missing = [k for k in expected if k not in found]
    if missing:
        raise ZooFormatError(f"{ckpt}: lacks tensor {missing[0]!r} that its description implies ({len(missing)} "
                             "missing); the file is incomplete or was edited")
    extra = [k for k in found if k not in expected]
    if extra:
        raise ZooFormatError(f"{ckpt}: holds {len(extra)} tensor(s) its description does not account for "
                             f"(e.g. {printable(extra[0])[:80]!r}); the file was edited")
    for k, want in expected.items():
        if found[k] != want:
            raise ZooFormatError(f"{ckpt}: tensor {k!r} is {found[k][0]} {list(found[k][1])}, its description "
                                 f"implies {want[0]} {list(want[1])}; the description contradicts the weights")


def _space(desc_space: dict, ckpt) -> WeightSpace:
    """The weight space rebuilt from the recorded architectures (capped, built on the meta device)."""
    from wsl.nets import build_net
    import wsl.nets.siren  # noqa: F401  (registers net=siren: INR encoders)

    archs = desc_space["archs"]
    if not isinstance(archs, list) or not archs or not all(isinstance(a, dict) for a in archs):
        raise ZooFormatError(f"{ckpt}: key space.archs must be a non-empty list of architectures")
    models = []
    for i, arch in enumerate(archs):
        arch = check_arch_limits(arch, f"{ckpt}: key space.archs[{i}]")
        try:
            with torch.device("meta"):
                net = build_net(arch)
        except (ConfigError, TypeError, ValueError, RuntimeError) as e:
            raise ZooFormatError(f"{ckpt}: key space.archs[{i}] is an unusable architecture "
                                 f"{printable(arch)[:200]} ({printable(e)[:200]})") from e
        models.append((f"architecture {i}", net.permutation_spec(),
                       {k: tuple(v.shape) for k, v in net.state_dict().items()}))
    try:
        space = WeightSpace.from_models(models, pad=bool(desc_space["pad"]), bn_stats=bool(desc_space["bn_stats"]))
    except ConfigError as e:
        raise ZooFormatError(f"{ckpt}: key space.archs does not make one weight space ({printable(e)[:300]})") from e
    sets = {s.name: n for s, n in zip(space.sets, space.sizes)}
    if sets != desc_space.get("sets"):
        raise ZooFormatError(f"{ckpt}: key space.sets={printable(desc_space.get('sets'))[:200]} contradicts the "
                             f"space of key space.archs ({sets})")
    return space


def load_encoder(path) -> SavedEncoder:
    """Read one saved encoder (encoders/seed<k>.safetensors); every problem is one ZooFormatError naming the
    file (and the key)."""
    from wsl.encoders import ENCODERS
    from wsl.encoders.schema import ENCODER_SCHEMAS

    ckpt_path = Path(path)
    if not ckpt_path.is_file():
        raise ZooFormatError(f"{printable(ckpt_path)}: missing (not a saved encoder)")
    meta, index = safetensors_header(ckpt_path, "; the saved encoder is damaged or truncated")
    ckpt = printable(ckpt_path)
    if meta.get("format") != RUN_FORMAT:
        raise ZooFormatError(f"{ckpt}: not a wsl encoder checkpoint (format {printable(meta.get('format'))[:40]!r})")
    if meta.get("format_version") != str(RUN_VERSION):
        raise ZooFormatError(f"{ckpt}: encoder format version {printable(meta.get('format_version'))[:20]!r}; "
                             f"this wsl reads version {RUN_VERSION}")
    try:
        desc = json.loads(meta["wsl_encoder"])
        name, kwargs = desc["encoder"]["name"], dict(desc["encoder"]["kwargs"])
        out_dim, task_opts, tg = int(desc["out_dim"]), dict(desc["task"]), desc["targets"]
        names, classes, offsets = list(tg["names"]), list(tg["classes"]), dict(tg["offsets"])
        desc_space = dict(desc["space"])
        int(desc["seed"]), dict(desc["zoo"]), bool(desc_space["pad"]), bool(desc_space["bn_stats"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # JSONDecodeError is a ValueError
        raise ZooFormatError(f"{ckpt}: encoder description is incomplete ({type(e).__name__}: "
                             f"{printable(e)[:200]})") from e
    schemas = {c.name: c for c in ENCODER_SCHEMAS}
    if name not in ENCODERS or name not in schemas:
        raise ZooFormatError(f"{ckpt}: encoder {printable(name)[:80]!r} is unknown; known: {', '.join(sorted(ENCODERS))}")
    try:
        schemas[name](**kwargs)  # the config schema's checks (sizes >= 1, choices)
        task = Task(**task_opts)
    except (TypeError, ValueError, FieldError) as e:
        raise ZooFormatError(f"{ckpt}: keys encoder.kwargs / task cannot rebuild encoder {name!r} "
                             f"({printable(e.at('') if isinstance(e, FieldError) else e)[:300]})") from e
    if out_dim != (len(classes) or len(names)) or out_dim < 1 or (task.kind == "classification") != bool(classes):
        raise ZooFormatError(f"{ckpt}: key out_dim={out_dim} does not match targets.names {printable(names)[:100]} "
                             f"/ classes {printable(classes)[:100]} of a {task.kind} task")
    if task.kind == "regression" and (set(offsets) - set(names) or not all(isinstance(offsets.get(c, 0.0), (int, float))
                                                                           for c in names)):
        raise ZooFormatError(f"{ckpt}: key targets.offsets must map target names to numbers")
    space = _space(desc_space, ckpt)
    cls = ENCODERS[name]
    with torch.device("meta"):
        try:
            probe = cls(space=space, out_dim=out_dim, **kwargs)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ZooFormatError(f"{ckpt}: key encoder.kwargs cannot build encoder {name!r} ({printable(e)[:200]})") from e
    n = sum(v.numel() for v in probe.state_dict().values())
    if n > MAX_PARAMS:
        raise ZooFormatError(f"{ckpt}: key encoder.kwargs makes an encoder of {n} parameters; at most {MAX_PARAMS}")
    # the description holds up: build the predictor (its statistics are overwritten by the file's) and check
    module = _predictor(cls(space=space, out_dim=out_dim, **kwargs), space, task, names, len(classes))
    expected = {k: (_DTYPES.get(v.dtype, str(v.dtype)), tuple(v.shape)) for k, v in tensors_of(module).items()}
    _check_tensors(ckpt, expected, index)
    data = ckpt_path.read_bytes()
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises several error types on damaged files
        raise ZooFormatError(f"{ckpt}: not a readable safetensors file ({type(e).__name__}: {printable(e)[:200]}); "
                             "the saved encoder is damaged or truncated") from e
    _check_tensors(ckpt, expected, {k: (_DTYPES.get(v.dtype, str(v.dtype)), tuple(v.shape)) for k, v in tensors.items()})
    if task.kind == "regression" and not (torch.isfinite(tensors["y_std"]).all() and (tensors["y_std"] > 0).all()):
        raise ZooFormatError(f"{ckpt}: tensor y_std (target standardization) is not finite and positive")
    module.load_state_dict(tensors, strict=False)  # the augmentations hold nothing
    return SavedEncoder(module.eval(), space, task, desc, ckpt_path.resolve(), hashlib.sha256(data).hexdigest())


def _predictor(encoder: nn.Module, space: WeightSpace, task: Task, names: list, num_classes: int) -> PropertyPredictor:
    """A PropertyPredictor around `encoder`, its fitted statistics placeholders (one all-zero net)."""
    params = {k: torch.zeros(1, *shape) for k, shape in space.shapes.items()}
    masks = {k: torch.ones(1, n) for k, n in _mask_sizes(space).items()}
    y = torch.zeros(1, dtype=torch.long) if num_classes else torch.zeros(1, len(names))
    return PropertyPredictor(encoder, space, task, names, WeightSet(params, masks, y), None, num_classes=num_classes)


def _mask_sizes(space: WeightSpace) -> dict:
    from wsl.encoders.weightspace import MASK_PREFIX

    return {MASK_PREFIX + s.name: n for s, n in zip(space.sets, space.sizes) if not s.fixed}


def load_run(run, seed: int | None = None, key: str = "run") -> list[SavedEncoder]:
    """The saved encoders of a wsl-train-encoder run directory: every seed (sorted), or `seed` alone."""
    run_dir = Path(run).expanduser()
    if not run_dir.is_dir():
        raise ConfigError(f"{key}={printable(run)}: not a directory (expected a wsl-train-encoder run directory)")
    d = run_dir / ENCODER_DIR
    files = list(d.iterdir()) if d.is_dir() else []
    matches = [(_SEED_FILE.fullmatch(p.name), p) for p in files]
    found = sorted((int(m.group(1)), p) for m, p in matches if m)
    if not found:
        raise ConfigError(f"{key}={printable(run)}: holds no saved encoder ({ENCODER_DIR}/seed<k>.safetensors); "
                          "expected the directory of a finished wsl-train-encoder run")
    if seed is not None:
        have = ", ".join(str(s) for s, _ in found)
        found = [(s, p) for s, p in found if s == seed]
        if not found:
            raise ConfigError(f"seed={seed}: {key}={printable(run)} has no encoder of that seed; seeds: {have}")
    token = None
    if (d / RUN_FILE).is_file():
        try:
            token = json.loads((d / RUN_FILE).read_text())["token"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ZooFormatError(f"{printable(d / RUN_FILE)}: unreadable ({type(e).__name__}: {printable(e)[:100]})") from e
    encs = [load_encoder(p) for _, p in found]
    if token is not None:
        stale = [e for e in encs if e.desc.get("run_token") != token]
        if stale and len(stale) == len(encs):
            raise ConfigError(f"{key}={printable(run)}: {', '.join(e.path.name for e in stale)} were left by an "
                              f"earlier run in this directory; the latest run ({d / RUN_FILE}) saved no such seed")
        for e in stale:
            log.warning("%s: left by an earlier run in this directory; ignored", printable(e.path))
        encs = [e for e in encs if e.desc.get("run_token") == token]
    first = encs[0].desc
    for e in encs[1:]:
        for k in ("encoder", "task", "targets", "space"):
            if e.desc[k] != first[k]:
                raise ZooFormatError(f"{printable(e.path)}: key {k} differs from {printable(encs[0].path)}'s; the "
                                     "seeds of one run must share them")
    return encs


# ------------------------------------------------------------------------------------------ fitting a zoo
def _arch_text(arch: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in arch.items())


def check_fits(enc: SavedEncoder, zoo_space: WeightSpace, zoo_arch: dict, where: str) -> None:
    """ConfigError naming what differs when the encoder cannot read the nets of `zoo_space` (computed with the
    encoder's own pad / bn_stats): another structure (architecture, depth, kernels), other fixed inputs or
    outputs, nets wider than the encoder's space, or other widths when it was trained without zoo.pad."""
    space, desc = enc.space, enc.desc
    trained = desc["space"]["archs"][0]
    run = printable(enc.path.parent.parent)
    if space.structure() != zoo_space.structure():
        a, b = space.structure(), zoo_space.structure()
        diff = next((y for x, y in zip(a, b) if x != y), b[-1] if len(b) > len(a) else a[-1])
        layer = next((t for t in diff if isinstance(t, str) and "." in t), diff[0])
        raise ConfigError(f"{where}: its nets ({_arch_text(zoo_arch)}) differ from those encoder run {run} was "
                          f"trained on ({_arch_text(trained)}) at layer {layer!r} (type, kernel or connections)")
    for s, n_enc, n_zoo in zip(space.sets, space.sizes, zoo_space.sizes):
        if n_enc == n_zoo:
            continue
        layer = next(e.name for e in space.edges if space.sets.index(s) in (e.out, e.inp))
        if s.fixed:
            raise ConfigError(f"{where}: layer {layer!r} has {n_zoo} {s.name}puts, the nets encoder run {run} was "
                              f"trained on have {n_enc} (another task or data shape)")
        if n_zoo > n_enc:
            raise ConfigError(f"{where}: layer {layer!r} has {n_zoo} units, more than the {n_enc} encoder run {run} "
                              "reads (it was trained on narrower nets)")
        if not desc["space"]["pad"]:
            raise ConfigError(f"{where}: layer {layer!r} has {n_zoo} units, the nets encoder run {run} was trained on "
                              f"have {n_enc}; reading other widths needs an encoder trained with zoo.pad=true")
    if zoo_space.padded and not desc["space"]["pad"]:
        raise ConfigError(f"{where}: holds nets of several widths; encoder run {run} was trained without zoo.pad, "
                          "so it reads one width only (train it with zoo.pad=true)")
