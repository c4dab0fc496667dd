"""Constants and small checks of the zoo format (a contract: readable with h5py + safetensors alone)."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path, PurePosixPath

from wsl.errors import ZooFormatError
from wsl.schema import MAX_SEED

FORMAT_NAME = "wsl-zoo"
# 2: every table and annotation file carries content checksums (/integrity + attribute content_sha256);
# version 1 files (none) stay readable. Checkpoints are unchanged.
FORMAT_VERSION = 2
INDEX_FILE = "index.h5"
SHARD_DIR = "shards"
ANNOTATION_DIR = "annotations"
MODEL_DIR = "models"
LOCK_FILE = ".lock"
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
STATUSES = ("trained", "diverged", "sampled", "aligned", "merged")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,199}$")
MAX_DIM = 1 << 20  # largest size an architecture of an untrusted zoo may name (width, channels, input side)
MAX_LAYERS = 1024  # largest depth: building the net's skeleton must stay quick


MAX_HEADER = 100_000_000  # bytes of safetensors JSON header a checkpoint may have
MAX_DIMENSION = 1 << 40  # larger tensor dimensions are absurd, whatever the offsets say
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
               "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}
# torch dtype (as str(dtype)) -> safetensors dtype: what a checkpoint of a net's state dict must say
TORCH_DTYPES = {"torch.bool": "BOOL", "torch.uint8": "U8", "torch.int8": "I8", "torch.float8_e4m3fn": "F8_E4M3",
                "torch.float8_e5m2": "F8_E5M2", "torch.uint16": "U16", "torch.int16": "I16", "torch.float16": "F16",
                "torch.bfloat16": "BF16", "torch.uint32": "U32", "torch.int32": "I32", "torch.float32": "F32",
                "torch.uint64": "U64", "torch.int64": "I64", "torch.float64": "F64"}


def tensor_layout(header: dict, data_len: int) -> tuple[list[str], bool, dict]:
    """Check the tensor entries of a safetensors header (without `__metadata__`) against the `data_len`
    bytes that follow it: every entry's dtype, shape and byte range, no overlap, no gap.

    Returns (problems, truncated, {name: (dtype, shape)}); nothing is read but the header.
    """
    spans, specs = [], {}
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            return [f"tensor {name!r}: entry must have exactly dtype, shape, data_offsets"], False, specs
        dtype, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPE_BYTES:
            return [f"tensor {name!r}: unknown dtype {str(dtype)[:40]!r}"], False, specs
        if not isinstance(shape, list) or len(shape) > 8 or not all(
                isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_DIMENSION for s in shape):
            return [f"tensor {name!r}: absurd shape {str(shape)[:80]}"], False, specs
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) and not isinstance(o, bool)
                                                                  for o in offs) and 0 <= offs[0] <= offs[1]):
            return [f"tensor {name!r}: bad data_offsets {str(offs)[:80]}"], False, specs
        nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
        if offs[1] - offs[0] != nbytes:
            return [f"tensor {name!r}: shape {shape} of {dtype} needs {nbytes} bytes, its offsets span "
                    f"{offs[1] - offs[0]}"], False, specs
        spans.append((offs[0], offs[1], name))
        specs[name] = (dtype, tuple(shape))
    end = max([b for _, b, _ in spans] + [0])
    if end > data_len:
        return [f"truncated: its tensors need {end} data bytes, the file holds {data_len}"], True, specs
    pos = 0
    for a, b, name in sorted(spans):
        if a != pos:
            return [f"tensor {name!r} starts at byte {a}, expected {pos} (overlap or gap)"], False, specs
        pos = b
    if data_len > end:
        return [f"{data_len - end} bytes after the last tensor (appended data)"], False, specs
    return [], False, specs


def spec_mismatch(specs: dict, expected: dict) -> str | None:
    """The first difference between a checkpoint's {name: (dtype, shape)} and the architecture's, or None."""
    if specs == expected:
        return None
    diff = sorted(set(specs) ^ set(expected))
    if diff:
        k = diff[0]
        return (f"tensors do not match the architecture (first difference: {k!r}: {specs.get(k)} vs "
                f"{expected.get(k)})")
    k = next(k for k in expected if specs[k][1] != expected[k][1]) if any(
        specs[k][1] != expected[k][1] for k in expected) else None
    if k is not None:
        return (f"tensors do not match the architecture (first difference: {k!r}: {specs[k][1]} vs "
                f"{expected[k][1]})")
    k = next(k for k in expected if specs[k] != expected[k])
    return (f"tensor {k!r} is stored as {specs[k][0]}, the architecture has {expected[k][0]}: a wrong dtype "
            "would load as a silently different net")


def checkpoint_relpath(job_id: str, model_id: str, epoch: int) -> str:
    return f"{MODEL_DIR}/{job_id}/{model_id}/epoch_{int(epoch):04d}.safetensors"


def check_id(kind: str, value: str) -> str:
    """Ids become path components: allow letters, digits and . _ = - only."""
    if not isinstance(value, str) or not _SAFE_ID.match(value) or ".." in value:
        raise ZooFormatError(f"{kind} {value!r} is not a valid id (letters, digits, '.', '_', '=', '-'; no '..')")
    return value


def resolve_inside(root: Path, relpath: str, what: str = "checkpoint path") -> Path:
    """The file `relpath` names inside the zoo `root`; refuses absolute paths and escapes (untrusted index)."""
    if not isinstance(relpath, str) or not relpath:
        raise ZooFormatError(f"{root / INDEX_FILE}: empty {what}")
    pp = PurePosixPath(relpath)
    if pp.is_absolute() or "\\" in relpath or any(part in ("..", "") for part in pp.parts) or relpath.startswith("~"):
        raise ZooFormatError(f"{root / INDEX_FILE}: {what} {relpath!r} escapes the zoo directory; refused")
    full = (root / pp).resolve()
    if not full.is_relative_to(root.resolve()):
        raise ZooFormatError(f"{root / INDEX_FILE}: {what} {relpath!r} resolves outside the zoo (symlink?); refused")
    return root / pp  # the name the index gives (a link inside the zoo is named itself, not its target)


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_arch_limits(arch, where: str) -> dict:
    """Refuse an absurd architecture read from a file before anything is built from it.

    `arch` is data from an untrusted zoo: a depth of 10^9 would hang the reader while it builds
    the skeleton, a width of 10^12 would exhaust memory. Returns `arch` when it is plausible.
    """
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str):
        raise ZooFormatError(f"{where}: architecture must be a JSON object with a 'name', got {str(arch)[:80]!r}")

    def check(key: str, v, level: int) -> None:
        if level > 3:
            raise ZooFormatError(f"{where}: architecture field {key!r} is nested too deeply")
        if v is None or isinstance(v, bool):
            return
        if isinstance(v, int):
            limit = MAX_LAYERS if "depth" in key or "layers" in key else MAX_DIM
            if not -limit <= v <= limit:
                raise ZooFormatError(f"{where}: architecture field {key}={v} is absurd (limit {limit}); refused")
        elif isinstance(v, float):
            if v != v or abs(v) > 1e30:
                raise ZooFormatError(f"{where}: architecture field {key}={v} is not a usable number")
        elif isinstance(v, str):
            if len(v) > 200:
                raise ZooFormatError(f"{where}: architecture field {key!r} is a {len(v)}-character string; refused")
        elif isinstance(v, list):
            if len(v) > 16:
                raise ZooFormatError(f"{where}: architecture field {key!r} lists {len(v)} values; refused")
            for x in v:
                check(key, x, level + 1)
        elif isinstance(v, dict):
            for k, x in v.items():
                check(str(k), x, level + 1)
        else:
            raise ZooFormatError(f"{where}: architecture field {key!r} has unsupported type {type(v).__name__}")

    for k, v in arch.items():
        check(str(k), v, 0)
    return arch


MAX_STORED_COUNT = 50_000_000  # largest count (points, characters) a stored dataset config may ask for


def check_stored_dataset(ds: dict, where: str) -> None:
    """The dataset config a zoo records for a job (untrusted: the zoo may come from anyone) before
    the data is rebuilt from it: seeds integers in range, fractions finite and in [0, 1], image
    counts positive integers. A ZooFormatError names `where` (the file and model) and the key."""
    def bad(key, what):
        raise ZooFormatError(f"{where}: its job config's dataset.{key} must be {what}, got {ds[key]!r}")

    for k in ("subset_seed", "split_seed"):
        v = ds.get(k)
        if k in ds and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_SEED):
            bad(k, f"an integer in [0, {MAX_SEED}]")
    for k in ("train_fraction", "val_fraction", "test_fraction"):
        v = ds.get(k)
        if k in ds and v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                          or not math.isfinite(v) or not 0 <= v <= 1):
            bad(k, "a number in [0, 1]")
    # counts: image subsets; modular p; text context and truncation; convection point counts (bounded:
    # a stranger's zoo must not make the rebuild hold billions of points)
    for k in ("num_images", "per_class", "p", "context", "max_chars", "collocation", "initial", "boundary", "test_nx",
              "test_nt"):
        v = ds.get(k)
        if k in ds and v is not None and (isinstance(v, bool) or not isinstance(v, int)
                                          or not 1 <= v <= MAX_STORED_COUNT):
            bad(k, f"null or an integer in [1, {MAX_STORED_COUNT}]")
    grid = [ds.get(k) for k in ("test_nx", "test_nt")]
    if all(isinstance(g, int) for g in grid) and grid[0] * grid[1] > MAX_STORED_COUNT:
        bad("test_nx", f"such that test_nx * test_nt <= {MAX_STORED_COUNT}")
    v = ds.get("beta")
    if "beta" in ds and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
        bad("beta", "a finite number")
    for k in ("path", "op"):
        if ds.get(k) is not None and not isinstance(ds[k], str):
            bad(k, "null or a string")


def safetensors_header(path: Path, damaged: str = "") -> tuple[dict, dict]:
    """A safetensors file's metadata and {tensor name: (dtype, shape)}, from its header alone: nothing is
    allocated for the tensors before the caller knows they match what it expects. An unreadable file is a
    ZooFormatError naming it (`damaged`: what the caller adds, e.g. "; the saved encoder is damaged")."""
    from safetensors import safe_open

    from wsl.errors import printable

    try:
        with safe_open(str(path), "pt") as f:
            slices = {k: f.get_slice(k) for k in f.keys()}
            return f.metadata() or {}, {k: (str(s.get_dtype()), tuple(map(int, s.get_shape())))
                                        for k, s in slices.items()}
    except Exception as e:  # safetensors raises several error types on damaged files
        raise ZooFormatError(f"{printable(path)}: not a readable safetensors file ({type(e).__name__}: "
                             f"{printable(e)[:200]}){damaged}") from e
