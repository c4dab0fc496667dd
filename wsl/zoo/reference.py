"""References to one checkpoint of one zoo member: "<zoo path>:<model_id>[@epoch]".

Used by `init.from=` (fine-tuning from a zoo member) and by tools that name a pretrained net
(wsl-merge's base for Model Stock / task vectors). The zoo path is everything before the LAST ':'
(model ids never contain ':' or '@'); the epoch, after '@', defaults to the model's last checkpoint.
A path alone ("zoos/base", no ':') names the zoo's only model (an error if it holds several).

    ref = parse_model_ref("zoos/base:digits-mlp-...-m000@10")
    state, arch, sha = load_model_ref(ref)         # verified read (wsl.zoo.reader.Zoo.state_dict)
    resolve_model_ref(ref).text                     # "/abs/zoos/base:digits-mlp-...-m000@10"

Errors are one line: ConfigError for a zoo, model or epoch that is not there (the reference is
wrong), ZooFormatError (naming the file) for a zoo or checkpoint that is corrupted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from wsl.errors import ConfigError, ZooFormatError, printable

LAST = -1  # ModelRef.epoch before resolution: the model's last checkpoint
_TAIL = re.compile(r"^(?P<model>[A-Za-z0-9][A-Za-z0-9._=-]{0,199})(?:@(?P<epoch>[0-9]{1,9}))?$")


@dataclass(frozen=True)
class ModelRef:
    """One checkpoint of one zoo member. `epoch` is LAST (-1) and `model_id` "" (the zoo's only model)
    until resolve_model_ref fills them in."""

    zoo: Path
    model_id: str
    epoch: int = LAST

    @property
    def text(self) -> str:
        """The normalized reference "<abs zoo>:<model_id>@<epoch>" (epoch omitted while unresolved)."""
        if not self.model_id:
            return str(self.zoo)
        tail = "" if self.epoch == LAST else f"@{self.epoch}"
        return f"{self.zoo}:{self.model_id}{tail}"

    def __str__(self) -> str:
        return self.text


def parse_model_ref(text, key: str = "init.from") -> ModelRef:
    """"<zoo path>:<model_id>[@epoch]" -> ModelRef(zoo=absolute path, model_id, epoch or LAST).
    Only the syntax is checked here; `key` names the option in the error message."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{key}={printable(text)!s}: expected '<zoo path>:<model_id>[@epoch]'")
    zoo, sep, tail = text.strip().rpartition(":")
    if not sep and "@" not in tail:  # a zoo path alone: its only model
        return ModelRef(Path(tail).expanduser().resolve(), "", LAST)
    m = _TAIL.match(tail)
    if not sep or not zoo or m is None:
        raise ConfigError(f"{key}={printable(text)}: expected '<zoo path>:<model_id>[@epoch]' "
                          "(a model id of letters, digits, '.', '_', '=', '-'; an epoch of digits)")
    epoch = LAST if m.group("epoch") is None else int(m.group("epoch"))
    return ModelRef(Path(zoo).expanduser().resolve(), m.group("model"), epoch)


def _open(ref: ModelRef, key: str):
    from wsl.zoo.reader import Zoo

    if not ref.zoo.is_dir():
        raise ConfigError(f"{key}={printable(ref.text)}: zoo {printable(ref.zoo)} does not exist")
    zoo = Zoo(ref.zoo)  # a directory that is not a zoo / a corrupted index: ZooFormatError naming the file
    if not ref.model_id:
        if len(zoo) != 1:
            raise ConfigError(f"{key}={printable(ref.text)}: zoo {ref.zoo} holds {len(zoo)} models; name one: "
                              f"{key}=<zoo path>:<model_id>[@epoch] (e.g. {ref.zoo}:{zoo.ids[0] if zoo.ids else '...'})")
        ref = ModelRef(ref.zoo, zoo.ids[0], ref.epoch)
    if ref.model_id not in zoo.ids:
        raise ConfigError(f"{key}={printable(ref.text)}: model {ref.model_id!r} is not in zoo {ref.zoo} "
                          f"({len(zoo)} models)")
    epochs = zoo.checkpoint_epochs(ref.model_id)
    if not epochs:
        raise ConfigError(f"{key}={printable(ref.text)}: model {ref.model_id!r} has no checkpoints")
    if ref.epoch != LAST and ref.epoch not in epochs:
        raise ConfigError(f"{key}={printable(ref.text)}: model {ref.model_id!r} has no checkpoint at epoch "
                          f"{ref.epoch}; has {epochs}")
    return zoo, ModelRef(ref.zoo, ref.model_id, epochs[-1] if ref.epoch == LAST else ref.epoch)


def resolve_model_ref(ref: ModelRef, key: str = "init.from") -> ModelRef:
    """The same reference with its model id (a zoo path alone: its only model) and epoch (LAST: the
    model's last checkpoint) filled in, after checking that the zoo, model and epoch exist (nothing is loaded)."""
    return _open(ref, key)[1]


def load_model_ref(ref: ModelRef | str, key: str = "init.from") -> tuple[dict, dict, str]:
    """(state_dict, arch, sha256) of the referenced checkpoint, read and verified by wsl.zoo.reader.Zoo
    (sha256 against the index, header, names and shapes against the architecture). `sha256` is the
    checkpoint file's sha256 (hex), equal to the one the zoo's index lists."""
    if isinstance(ref, str):
        ref = parse_model_ref(ref, key)
    zoo, ref = _open(ref, key)
    try:
        sd = zoo.state_dict(ref.model_id, ref.epoch)
    except ZooFormatError as e:
        raise ZooFormatError(f"{key}={printable(ref.text)}: {e}") from None
    sha = next(s for e, _, s in zoo.row(ref.model_id).checkpoints if e == ref.epoch)
    return sd, zoo.arch(ref.model_id), sha
