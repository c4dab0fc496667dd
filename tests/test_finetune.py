"""Fine-tuning from a zoo member: model references (init.from), full and LoRA fine-tunes."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch

from wsl.errors import ConfigError, ZooFormatError
from wsl.zoo import Zoo
from wsl.zoo.reference import LAST, ModelRef, load_model_ref, parse_model_ref, resolve_model_ref


# ---- references ----------------------------------------------------------------------------------
def test_parse_model_ref(tmp_path):
    r = parse_model_ref(f"{tmp_path}/a:b:digits-mlp-x-m000@7")
    assert r == ModelRef(tmp_path / "a:b", "digits-mlp-x-m000", 7) and r.text == f"{tmp_path}/a:b:digits-mlp-x-m000@7"
    assert parse_model_ref(f"{tmp_path}:m0").epoch == LAST
    for bad in ["", "nozoo", f"{tmp_path}:", ":m0", f"{tmp_path}:m0@x", f"{tmp_path}:m 0", f"{tmp_path}:m0@-1"]:
        with pytest.raises(ConfigError, match="init.from="):
            parse_model_ref(bad)


def test_load_model_ref(tiny_zoo, tmp_path):
    zoo = Zoo(tiny_zoo)
    mid = zoo.ids[1]
    sd, arch, sha = load_model_ref(f"{tiny_zoo}:{mid}")
    last = zoo.checkpoint_epochs(mid)[-1]
    assert arch == zoo.arch(mid) and sha == hashlib.sha256(zoo.checkpoint_path(mid).read_bytes()).hexdigest()
    assert all(torch.equal(sd[k], v) for k, v in zoo.state_dict(mid).items())
    assert resolve_model_ref(parse_model_ref(f"{tiny_zoo}:{mid}")).text == f"{tiny_zoo}:{mid}@{last}"
    sd0, _, sha0 = load_model_ref(parse_model_ref(f"{tiny_zoo}:{mid}@0"))
    assert sha0 != sha and all(torch.equal(sd0[k], v) for k, v in zoo.state_dict(mid, 0).items())
    # one-line errors naming what is missing
    for text, what in [(f"{tmp_path}/nozoo:{mid}", "does not exist"), (f"{tiny_zoo}:nomodel", "'nomodel' is not in"),
                       (f"{tiny_zoo}:{mid}@99", "no checkpoint at epoch 99")]:
        with pytest.raises(ConfigError, match=what) as e:
            load_model_ref(text)
        assert "\n" not in str(e.value)
    # a corrupted checkpoint: one line naming the file
    copy = tmp_path / "copy"
    shutil.copytree(tiny_zoo, copy)
    p = Zoo(copy).checkpoint_path(mid)
    b = bytearray(p.read_bytes())
    b[-3] ^= 0xFF
    p.write_bytes(bytes(b))
    with pytest.raises(ZooFormatError, match="sha256 does not match") as e:
        load_model_ref(f"{copy}:{mid}")
    assert str(p) in str(e.value) and "\n" not in str(e.value)
