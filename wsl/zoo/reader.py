"""Reading a zoo: the index as a table, checkpoints as verified state dicts, nets and weight matrices."""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from wsl.errors import ConfigError, ZooFormatError
from wsl.zoo.format import (FORMAT_VERSION, INDEX_FILE, MAX_HEADER, METRICS, TORCH_DTYPES, check_arch_limits, check_id,
                            check_stored_dataset, resolve_inside, sha256_bytes, spec_mismatch, tensor_layout)
from wsl.zoo.layout import Layout
from wsl.zoo.table import ReadBudget, read_table

log = logging.getLogger(__name__)

SEED_COLUMNS = ("seed_init", "seed_data")
MAX_PARAMS = 2_000_000_000  # refuse absurd architectures from untrusted files


class Zoo:
    """A zoo directory opened for reading. Everything it loads is checked: format version, paths
    inside the zoo, checksums, tensor names and shapes against the recorded architecture."""

    def __init__(self, path):
        self.path = Path(path).expanduser().resolve()
        index = self.path / INDEX_FILE
        if not self.path.is_dir():
            raise ZooFormatError(f"{self.path}: not a directory, so not a zoo")
        if index.is_symlink():  # the writer never makes one: it could redirect the read outside the zoo
            target = os.readlink(index)
            try:
                where = "outside the zoo" if not index.resolve().is_relative_to(self.path) else "inside the zoo"
            except (OSError, RuntimeError):  # a loop of links
                where = "unresolvable"
            raise ZooFormatError(f"{index}: a symbolic link to {target!r} ({where}); zoo files are never links; "
                                 "refused")
        if not index.exists():
            raise ZooFormatError(f"{self.path}: not a zoo ({INDEX_FILE} is missing)")
        self._budget = ReadBudget()  # what this zoo's reads may load in all
        self._table = read_table(index, self._budget)
        if not self._table.checked:
            log.info("%s: written by an older wsl (format version 1): no content checksums to check; "
                     "`wsl-verify` compares it with its shards", index)
        self.attrs = self._table.attrs
        self._rows = {}
        for r in self._table.rows:
            try:
                check_id("model id", r.model_id)
            except ZooFormatError as e:
                raise ZooFormatError(f"{index}: {e}") from e
            if r.model_id in self._rows:
                raise ZooFormatError(f"{index}: model {r.model_id!r} is listed twice")
            for e, p, _ in r.checkpoints:
                resolve_inside(self.path, p)  # refuse escaping paths up front, before any read
            self._rows[r.model_id] = r
        self.ids = [r.model_id for r in self._table.rows]
        self._layouts: dict = {}
        self._specs: dict = {}
        self._bases: dict = {}  # LoRA zoos: base checkpoints by reference

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"Zoo({str(self.path)!r}, models={len(self)})"

    # ---- table -------------------------------------------------------------------------------
    def row(self, model_id: str):
        if model_id not in self._rows:
            raise KeyError(f"model {model_id!r} is not in {self.path / INDEX_FILE}")
        return self._rows[model_id]

    def table(self):
        """One row per model: ids, status, seeds and hyperparameters, final metrics, annotations."""
        import pandas as pd

        recs = []
        # the standard metrics, then any other per-epoch metric (e.g. an INR zoo's train_psnr)
        metrics = list(METRICS) + sorted({k for r in self._table.rows for k, h in r.history.items() if len(h)}
                                         - set(METRICS))
        for r in self._table.rows:
            rec = {"model_id": r.model_id, "job_id": r.job_id, "status": r.status, "net": r.arch.get("name"),
                   "diverged_epoch": r.diverged_epoch, "n_checkpoints": len(r.checkpoints)}
            rec.update(r.hparams)
            for m in metrics:
                h = r.history.get(m, [])
                rec[m] = h[-1] if h and r.status != "diverged" else float("nan")
            recs.append(rec)
        df = pd.DataFrame.from_records(recs)
        for name, ann in self._table.annotations.items():
            for col, values in ann.columns.items():
                arr = values if isinstance(values, list) else np.asarray(values)
                if isinstance(arr, np.ndarray) and arr.ndim > 1:
                    continue  # multi-dimensional annotations are read with .annotation()
                df[f"{name}/{col}"] = list(arr)
        return df.set_index("model_id", drop=False) if len(df) else df

    def annotation(self, group: str) -> dict:
        """Columns (aligned to self.ids) and attributes of one annotation group."""
        if group not in self._table.annotations:
            raise KeyError(f"{self.path}: no annotation group {group!r}; have {sorted(self._table.annotations)}")
        a = self._table.annotations[group]
        return {"columns": a.columns, "attrs": a.attrs}

    def hparams(self, model_id: str) -> dict:
        return dict(self.row(model_id).hparams)

    def filter(self, **equals) -> list[str]:
        """Model ids whose status/hyperparameters equal the given values (a callable tests a value)."""
        out = []
        for mid in self.ids:
            r = self._rows[mid]
            rec = {"status": r.status, "job_id": r.job_id, "net": r.arch.get("name"), **r.hparams}
            ok = True
            for k, v in equals.items():
                if k not in rec:
                    raise ConfigError(f"filter key {k!r} is not a column of {self.path}; have {sorted(rec)}")
                ok &= bool(v(rec[k])) if callable(v) else rec[k] == v
            if ok:
                out.append(mid)
        return out

    def cell_key(self, model_id: str) -> str:
        """Every hyperparameter except the seeds: seed replicas of one cell share it."""
        r = self.row(model_id)
        hp = {k: v for k, v in r.hparams.items() if k not in SEED_COLUMNS and k != "replica"}
        return json.dumps({"arch": r.arch, **hp}, sort_keys=True, default=str)

    def cells(self, ids=None) -> dict[str, list[str]]:
        out: dict = {}
        for mid in ids if ids is not None else self.ids:
            out.setdefault(self.cell_key(mid), []).append(mid)
        return out

    def split(self, fractions=(0.7, 0.15, 0.15), seed: int = 0, ids=None) -> dict[str, list[str]]:
        """Model-level train/val/test split that keeps all seed replicas of a cell in one split."""
        if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
            raise ConfigError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
        cells = list(self.cells(ids).values())
        order = np.random.default_rng(seed).permutation(len(cells))
        total = sum(len(c) for c in cells)
        out = {"train": [], "val": [], "test": []}
        bounds = np.cumsum(fractions) * total
        done = 0
        for i in order:
            name = "train" if done < bounds[0] else "val" if done < bounds[1] else "test"
            out[name].extend(cells[i])
            done += len(cells[i])
        return out

    def history(self, model_id: str) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self.row(model_id).history.items()}

    # ---- architecture and data ---------------------------------------------------------------
    def arch(self, model_id: str) -> dict:
        return dict(self.row(model_id).arch)

    def skeleton(self, model_id: str):
        """The model's architecture on the meta device (no memory, no init)."""
        from wsl.nets import build_net

        arch = check_arch_limits(self.arch(model_id), f"{self.path / INDEX_FILE}: model {model_id}")
        try:
            with torch.device("meta"):
                net = build_net(arch)
        except (ConfigError, TypeError, ValueError, RuntimeError) as e:
            raise ZooFormatError(f"{self.path / INDEX_FILE}: model {model_id} has an unusable architecture {arch} ({e})") from e
        n = sum(p.numel() for p in net.parameters())
        if n > MAX_PARAMS:
            raise ZooFormatError(f"{self.path / INDEX_FILE}: model {model_id} claims {n} parameters; refused")
        return net

    def permutation_spec(self, model_id: str):
        return self.skeleton(model_id).permutation_spec()

    def job_config(self, model_id: str) -> dict:
        return self._table.jobs.get(self.row(model_id).job_id, {}).get("config", {})

    def training_data(self, model_id: str | None = None):
        """The exact train/val/test data (splits, train fraction) `model_id` was trained on; for an INR
        zoo (dataset=digits_inr), the INRData of its images (row k: image_index[k], label[k]); for
        dataset=modular|text|convection the data their recorded options build (wsl.data.rebuild_dataset)."""
        from wsl.data import rebuild_dataset

        mid = model_id or self.ids[0]
        cfg = self.job_config(mid).get("dataset")
        if not cfg:
            raise ZooFormatError(f"{self.path}: job of model {mid} records no dataset config")

        where = f"{self.path / INDEX_FILE}: model {mid}"
        check_stored_dataset(cfg, where)
        try:
            return rebuild_dataset(cfg)
        except ConfigError as e:  # a recorded value this wsl cannot build the data from
            raise ZooFormatError(f"{where}: its job config's dataset cannot be rebuilt: {e}") from None

    # ---- checkpoints --------------------------------------------------------------------------
    def checkpoint_epochs(self, model_id: str) -> list[int]:
        return [e for e, _, _ in self.row(model_id).checkpoints]

    def checkpoint_path(self, model_id: str, epoch: int = -1) -> Path:
        return resolve_inside(self.path, self._checkpoint(model_id, epoch)[1])

    def _checkpoint(self, model_id: str, epoch: int):
        ck = self.row(model_id).checkpoints
        if not ck:
            raise ZooFormatError(f"{self.path / INDEX_FILE}: model {model_id} lists no checkpoints")
        if epoch == -1:
            return ck[-1]
        for c in ck:
            if c[0] == epoch:
                return c
        raise KeyError(f"model {model_id} has no checkpoint at epoch {epoch}; has {[c[0] for c in ck]}")

    def state_dict(self, model_id: str, epoch: int = -1, verify: bool = True) -> dict[str, torch.Tensor]:
        """The checkpoint's tensors, after checking checksum, metadata, names and shapes. For a LoRA
        fine-tune (finetune="lora"), the merged net: its base's weights plus (alpha / rank) B A
        (wsl.nets.lora.merge), with its own buffers; `adapters()` reads A and B."""
        sd = self._stored_state(model_id, epoch, verify)
        spec = self.lora_spec(model_id)
        if spec is None:
            return sd
        from wsl.nets.lora import merge

        return merge(spec, self._base_state(model_id), sd)

    def lora_spec(self, model_id: str):
        """The wsl.nets.lora.LoRASpec of a LoRA fine-tune (rank, alpha, adapted weights), else None."""
        hp = self.row(model_id).hparams
        if hp.get("finetune") != "lora":
            return None
        key = ("lora", json.dumps(self.arch(model_id), sort_keys=True), hp.get("lora_rank"), hp.get("lora_alpha"),
               hp.get("lora_layers"))
        if key not in self._specs:
            from wsl.nets.lora import spec_from_hparams

            try:
                self._specs[key] = spec_from_hparams(self.skeleton(model_id), hp)
            except (ConfigError, KeyError, TypeError, ValueError) as e:
                raise ZooFormatError(f"{self.path / INDEX_FILE}: LoRA model {model_id} has unusable lora_* "
                                     f"hyperparameters ({e})") from None
        return self._specs[key]

    def adapters(self, model_id: str, epoch: int = -1) -> dict[str, torch.Tensor]:
        """A LoRA fine-tune's adapters {"<weight>.lora_A": A [rank, fan_in], "<weight>.lora_B": B [out, rank]}
        as its checkpoint stores them (verified read); W' = W + (alpha / rank) B A (see lora_spec)."""
        spec = self.lora_spec(model_id)
        if spec is None:
            raise ZooFormatError(f"{self.path}: model {model_id} is not a LoRA fine-tune (finetune="
                                 f"{self.row(model_id).hparams.get('finetune', 'none')!r}); it has no adapters")
        sd = self._stored_state(model_id, epoch, True)
        return {k: sd[k] for k in spec.adapter_shapes()}

    def _base_state(self, model_id: str) -> dict[str, torch.Tensor]:
        """The base checkpoint a LoRA model names (init_from, "<abs zoo>:<model_id>@<epoch>"), read and
        verified by its own zoo, and checked against the recorded init_sha256."""
        hp = self.row(model_id).hparams
        text, sha = str(hp.get("init_from", "")), str(hp.get("init_sha256", ""))
        if text not in self._bases:
            where = f"{self.path / INDEX_FILE}: LoRA model {model_id} needs its base {text!r}"
            zoo_path, _, tail = text.rpartition(":")
            base_id, _, epoch = tail.rpartition("@")
            if not zoo_path or not base_id or not re.fullmatch(r"[0-9]{1,9}", epoch):
                raise ZooFormatError(f"{where}: not a '<zoo>:<model_id>@<epoch>' reference")
            try:
                base = Zoo(zoo_path)
                if base_id not in base.ids:
                    raise ZooFormatError(f"model {base_id!r} is not in {base.path}")
                state = base.state_dict(base_id, int(epoch))
                got = next(s for e, _, s in base.row(base_id).checkpoints if e == int(epoch))
            except (KeyError, ZooFormatError) as e:
                raise ZooFormatError(f"{where}: {str(e).strip(chr(39))}") from None
            if got != sha:
                raise ZooFormatError(f"{where}: its sha256 {got[:12]}... is not the recorded init_sha256 "
                                     f"{sha[:12]}... (the base was changed)")
            if base.arch(base_id) != self.arch(model_id):
                raise ZooFormatError(f"{where}: the base has another architecture")
            self._bases[text] = state
        return self._bases[text]

    def _stored_state(self, model_id: str, epoch: int = -1, verify: bool = True) -> dict[str, torch.Tensor]:
        """The checkpoint file's tensors as stored (a LoRA model's: adapters and buffers), verified."""
        e, rel, sha = self._checkpoint(model_id, epoch)
        path = resolve_inside(self.path, rel)
        if not path.exists():
            raise ZooFormatError(f"{path}: listed in the index but missing")
        if not path.is_file():  # a FIFO or device would block the read
            raise ZooFormatError(f"{path}: not a regular file; refused")
        expected = self._expected_specs(model_id)
        data = self._read_checked(path, expected)
        if verify and sha256_bytes(data) != sha:
            raise ZooFormatError(f"{path}: sha256 does not match the index (corrupted or modified)")
        try:
            sd = st_load(data)
        except (SafetensorError, Exception) as e2:  # safetensors raises several types on bad input
            raise ZooFormatError(f"{path}: not a readable safetensors file ({e2})") from e2
        meta = read_checkpoint_metadata(path, data)
        version, ep = str(meta.get("format_version", "")), str(meta.get("epoch", ""))
        if not re.fullmatch(r"[0-9]{1,9}", version) or not re.fullmatch(r"[0-9]{1,9}", ep):
            raise ZooFormatError(f"{path}: metadata format_version={version[:20]!r}, epoch={ep[:20]!r}: not integers")
        if int(version) > FORMAT_VERSION:
            raise ZooFormatError(f"{path}: format version {int(version)} is newer than this wsl reads "
                                 f"({FORMAT_VERSION}); upgrade wsl")
        if int(ep) != e:
            raise ZooFormatError(f"{path}: metadata says epoch {int(ep)}, the index says {e}")
        if meta.get("model_id") != model_id:
            raise ZooFormatError(f"{path}: metadata says model {meta.get('model_id')!r}, index says {model_id!r}")
        got = {k: (TORCH_DTYPES.get(str(v.dtype), str(v.dtype)), tuple(v.shape)) for k, v in sd.items()}
        if (why := spec_mismatch(got, expected)) is not None:
            raise ZooFormatError(f"{path}: {why}")
        # safetensors hands tensors back in hash order, which differs from process to process: the
        # architecture's own order makes every consumer (layouts, seeded noise) reproducible
        return {k: sd[k] for k in expected}

    def _expected_specs(self, model_id: str) -> dict:
        """{tensor name: (safetensors dtype, shape)} of the model's architecture (the skeleton's dtypes);
        a LoRA model's checkpoint: its adapters and buffers."""
        spec = self.lora_spec(model_id)
        if spec is not None:
            from wsl.nets.lora import checkpoint_tensors

            key = ("checkpoint", json.dumps(self.arch(model_id), sort_keys=True), spec.rank, tuple(spec.layers))
            if key not in self._specs:
                self._specs[key] = {k: (TORCH_DTYPES.get(str(d), str(d)), s)
                                    for k, (d, s) in checkpoint_tensors(self.skeleton(model_id), spec).items()}
            return self._specs[key]
        key = json.dumps(self.arch(model_id), sort_keys=True)
        if key not in self._specs:
            self._specs[key] = {k: (TORCH_DTYPES.get(str(v.dtype), str(v.dtype)), tuple(v.shape))
                                for k, v in self.skeleton(model_id).state_dict().items()}
        return self._specs[key]

    @staticmethod
    def _read_checked(path: Path, expected: dict) -> bytes:
        """The checkpoint's bytes, read only after its header declared the expected tensors (names,
        dtypes, shapes) laid out exactly over the file's size: a crafted file cannot make us read more."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n < 2 or n > MAX_HEADER or 8 + n > size:
                raise ZooFormatError(f"{path}: header length {n} is impossible for a {size}-byte file "
                                     "(truncated, or not a safetensors file)")
            try:
                header = json.loads(f.read(n))
            except (ValueError, RecursionError) as e:
                raise ZooFormatError(f"{path}: unreadable safetensors header ({e})") from e
            if not isinstance(header, dict):
                raise ZooFormatError(f"{path}: unreadable safetensors header (not a JSON object)")
            header.pop("__metadata__", None)
            problems, _, specs = tensor_layout(header, size - 8 - n)
            if problems:
                raise ZooFormatError(f"{path}: {problems[0]}")
            if (why := spec_mismatch(specs, expected)) is not None:
                raise ZooFormatError(f"{path}: {why}")
            f.seek(0)
            data = f.read(size + 1)
        if len(data) != size:
            raise ZooFormatError(f"{path}: changed while it was read")
        return data

    def load_model(self, model_id: str, epoch: int = -1):
        """The net with the checkpoint's weights, in eval mode."""
        from wsl.nets import build_net

        sd = self.state_dict(model_id, epoch)
        net = build_net(self.arch(model_id))
        net.load_state_dict(sd)
        return net.eval()

    def layout(self, model_id: str | None = None) -> Layout:
        """Where each weight (parameter) sits in a flat vector; BatchNorm statistics are not weights."""
        mid = model_id or self.ids[0]
        key = json.dumps(self.arch(mid), sort_keys=True)
        if key not in self._layouts:
            self._layouts[key] = Layout.of(self.skeleton(mid))
        return self._layouts[key]

    def weights(self, ids=None, epoch: int = -1) -> tuple[torch.Tensor, Layout]:
        """Flat weights [M, N] of the given models (one architecture; parameters only) and their layout."""
        ids = list(self.ids if ids is None else ids)
        if not ids:
            raise ValueError("no models selected")
        archs = {json.dumps(self.arch(m), sort_keys=True) for m in ids}
        if len(archs) > 1:
            raise ZooFormatError(f"{self.path}: selected models have {len(archs)} different architectures; "
                                 "select one (e.g. zoo.filter(width=...))")
        layout = self.layout(ids[0])
        return torch.stack([layout.flatten(self.state_dict(m, epoch)) for m in ids]), layout


def read_checkpoint_metadata(path: Path, data: bytes | None = None) -> dict:
    """The safetensors header's metadata (str->str; JSON values decoded), without loading tensors."""
    data = path.read_bytes() if data is None else data
    try:
        n = int.from_bytes(data[:8], "little")
        if n <= 0 or n > len(data) - 8 or n > 100_000_000:
            raise ValueError(f"header length {n} is impossible for a {len(data)}-byte file")
        header = json.loads(data[8 : 8 + n])
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        meta = header.get("__metadata__", {}) or {}
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise ValueError("metadata is not a str->str map")
    except (ValueError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ZooFormatError(f"{path}: unreadable safetensors header ({e})") from e
    out = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v) if k in ("arch",) else v
        except (json.JSONDecodeError, RecursionError) as e:
            raise ZooFormatError(f"{path}: metadata {k!r} is not valid JSON") from e
    return out
