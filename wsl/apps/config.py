"""The composed config becomes the typed objects of the rooms' schemas, once, here.

`typed(cfg, Schema)` checks types (OmegaConf), ranges and cross-field rules (each schema's
`__post_init__`, see `wsl.schema`) and returns the dataclass instance an app passes down. Every
error becomes one `ConfigError` naming the user's key: `net.width must be an integer >= 1, got 0`.
A node that names a `_target_` registered with `wsl.schema.target_schema` (a net, an encoder, a
logger, a baseline, ...) is typed by that class's schema wherever it appears.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import re
import typing
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

from wsl.errors import ConfigError
from wsl.schema import TARGETS, FieldError

_TYPES = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "String": "a string"}


def plain(cfg) -> dict:
    """The config as resolved plain Python types. The logger's `save_dir` (Hydra's run directory,
    unknown outside a running job) is left unresolved: apps give every logger its directory."""
    if not OmegaConf.is_config(cfg):
        return cfg
    data = OmegaConf.to_container(cfg, resolve=False)
    save_dir = None
    if isinstance(data.get("logger"), dict):
        save_dir = data["logger"].pop("save_dir", None)
    try:
        out = OmegaConf.to_container(OmegaConf.create(data), resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{e.full_key}: {str(e).splitlines()[0]}") from None
    if save_dir is not None:
        out["logger"]["save_dir"] = None
    return out


def typed(cfg: DictConfig | dict, schema: type, examples: dict[str, str] | None = None, path: str = ""):
    """An instance of `schema` (a dataclass) from the config; a ConfigError naming the key otherwise.
    `examples`: key -> example command, shown when that required key (`???`) is not set."""
    try:
        return _build(plain(cfg), schema, path)
    except ConfigError as e:  # a value that came from an interpolation: name the key the user sets
        msg = str(e)
        for key, source in _interpolated(cfg, path).items():
            msg = re.sub(rf"(?<![\w.]){re.escape(key)}(?![\w])", source, msg)
        if msg == str(e):
            raise
        raise ConfigError(msg) from None
    except _Missing as e:
        ex = (examples or {}).get(e.key)
        raise ConfigError(f"{e.key} is required, e.g. {ex}" if ex else f"{e.key} is required (set {e.key}=...)") \
            from None


_INTERPOLATION = re.compile(r"\$\{(\.*)([\w.]+)\}")


def _interpolated(cfg, path: str) -> dict[str, str]:
    """Keys whose value is a plain relative interpolation (`num_samples: ${..num_samples}`) -> the key
    they copy (`landscape.hessian_eig.num_samples` -> `landscape.num_samples`)."""
    found: dict[str, str] = {}

    def walk(node, keys: list[str]) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, [*keys, str(k)])
        elif isinstance(node, str) and (m := _INTERPOLATION.fullmatch(node)) and m.group(1):
            up = len(m.group(1))  # one dot: a sibling, each further dot one level up
            found[".".join(keys)] = ".".join([*keys[:len(keys) - up], m.group(2)])

    data = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg
    walk(data, path.split(".") if path else [])
    return found


class _Missing(Exception):
    def __init__(self, key: str):
        self.key = key


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path and key else (path or key)


def _dataclass_in(tp) -> type | None:
    """The dataclass a field is typed with (also inside Optional[...]), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) is typing.Union:
        found = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return None


def _target_schema(value) -> type | None:
    """The schema registered for a node's `_target_`, its room's schema module imported on first use
    (an app pays only for the rooms its config names)."""
    target = value.get("_target_") if isinstance(value, dict) else None
    if isinstance(target, str) and target not in TARGETS:
        module = next((m for prefix, m in TARGET_MODULES.items() if target.startswith(prefix)), None)
        if module is not None:
            importlib.import_module(module)
    return TARGETS.get(target)


def _convert(value, tp, key: str):
    """A field's value with every nested schema built first (so that its errors name its own key)."""
    if not isinstance(value, dict):
        return value
    schema = _target_schema(value) or _dataclass_in(tp)
    if schema is not None:
        return _build(value, schema, key)
    if tp is Any or typing.get_origin(tp) in (dict, typing.Dict, typing.Union):  # a mapping of named nodes
        return {k: _convert(v, Any, _join(key, str(k))) for k, v in value.items()}
    return value


@functools.cache
def _template(schema: type) -> DictConfig:
    """OmegaConf's structured config of `schema`, built once per schema: OmegaConf.merge copies its first
    argument, never changes it. Building it took 23 of the 55 ms that typing wsl-zoo's config took."""
    return OmegaConf.structured(schema)


def _build(data, schema: type, path: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'the config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(schema)
    for k, v in data.items():  # OmegaConf reads any integer as a boolean; a flag must be true or false
        if hints.get(k) in (bool, typing.Optional[bool]) and v is not None and not isinstance(v, bool):
            raise ConfigError(f"{_join(path, k)} must be true or false, got {v!r}")
    data = {k: _convert(v, hints.get(k, Any), _join(path, k)) if k in hints else v for k, v in data.items()}
    try:
        return OmegaConf.to_object(OmegaConf.merge(_template(schema), data))
    except FieldError as e:
        raise e.at(path) from None
    except MissingMandatoryValue as e:
        raise _Missing(_join(path, _key(e))) from None
    except ConfigKeyError as e:
        key = _join(path, _key(e))
        parent, _, _ = key.rpartition(".")
        valid = sorted(f.name for f in dataclasses.fields(schema))
        raise ConfigError(f"unknown config key {key!r}; valid keys under {parent or 'the root'}: "
                          f"{', '.join(valid)}") from None
    except ValidationError as e:
        raise ConfigError(_type_message(e, _join(path, _key(e)))) from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{_join(path, _key(e))}: {str(e).splitlines()[0]}") from None


def _key(e: OmegaConfBaseException) -> str:
    return str(e.full_key or e.key or "").replace("[", ".").replace("]", "")


def _type_message(e: ValidationError, key: str) -> str:
    msg = str(e).splitlines()[0]
    m = re.search(r"could not be converted to (\w+)", msg)
    if m:
        return f"{key} must be {_TYPES.get(m.group(1), m.group(1))}, got {getattr(e, 'value', None)!r}"
    if "Incompatible value 'None'" in msg or "is not Optional" in msg:
        return f"{key} must not be null"
    return f"{key}: {msg}"


def stored(job) -> dict:
    """What a stage stores with its outputs: the typed config as plain types, without its logger
    (the logger's run-time paths are not part of what was computed)."""
    import json

    data = dataclasses.asdict(job) if dataclasses.is_dataclass(job) else dict(job)
    data.pop("logger", None)
    return json.loads(json.dumps(data, default=str))


# Each app's schema, and the modules whose `_target_` schemas type group options wherever they appear
APP_SCHEMAS = {"zoo": "wsl.population.schema:ZooJobConfig", "verify": "wsl.zoo.schema:VerifyConfig",
               "landscape": "wsl.landscape.schema:LandscapeApp", "plot": "wsl.landscape.schema:PlotApp",
               "align": "wsl.align.schema:AlignConfig", "train_encoder": "wsl.encoders.schema:TrainEncoderConfig",
               "train_generator": "wsl.generators.schema:TrainGeneratorConfig",
               "sample": "wsl.generators.schema:SampleConfig", "evaluate": "wsl.evaluate.schema:EvaluateConfig",
               "embed": "wsl.encoders.schema:EmbedConfig",
               "merge": "wsl.merge.schema:MergeConfig"}
# `_target_` prefix -> the schema module that registers its options (wsl.symmetry's augmentations are
# configured by the encoder room, which applies them)
TARGET_MODULES = {"lightning.pytorch.loggers.": "wsl.tracking", "wsl.tracking.": "wsl.tracking",
                  "wsl.data.": "wsl.data.schema", "wsl.nets.": "wsl.nets.schema",
                  "wsl.encoders.": "wsl.encoders.schema", "wsl.symmetry.": "wsl.encoders.schema",
                  "wsl.generators.": "wsl.generators.schema", "wsl.evaluate.": "wsl.evaluate.schema"}


def app_schema(app: str) -> type:
    """The schema class of an app (by its config name, e.g. "zoo"), with every target schema loaded."""
    load_schemas()
    module, _, name = APP_SCHEMAS[app].partition(":")
    return getattr(importlib.import_module(module), name)


@functools.cache
def load_schemas() -> None:
    """Import every room's schemas (registering the `_target_` ones) and store them in Hydra's
    ConfigStore: group `schema` holds each app's (`schema/<app>`), group `schema/target` each option
    class's, so that Python users composing configs can validate against them. (`typed` does not
    need it: it imports only the schema modules of the targets a config names.)"""
    from hydra.core.config_store import ConfigStore

    for m in set(TARGET_MODULES.values()):
        importlib.import_module(m)
    cs = ConfigStore.instance()
    for app, ref in APP_SCHEMAS.items():
        module, _, name = ref.partition(":")
        cs.store(group="schema", name=app, node=getattr(importlib.import_module(module), name))
    for target, cls in TARGETS.items():
        cs.store(group="schema/target", name=target, node=cls)
