"""Character-level language modelling on a corpus that needs no network.

The default corpus is the documentation text that ships with every CPython install (`pydoc_data.topics`:
its topic texts joined by newlines in sorted key order; the text differs between Python releases, so
the version is recorded and the data's fingerprint tells them apart); `path=` reads any UTF-8 file.
The vocabulary is the sorted set of the corpus's characters (recorded: `LMData.vocab`, `info["vocab"]`).

Splits are contiguous blocks of the text, fixed and recorded by their character offsets: train first,
then validation (`val_fraction` of the characters), then test (`test_fraction`). Each block is cut into
non-overlapping windows of `context` characters: sample i is x = ids[s + iT : s + (i+1)T], y = the same
window one character later (the next character at every position). `train_fraction` keeps a seeded
random subset of the train windows (the load axis), as for the image datasets.
"""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from wsl.data.classification import ClassificationData, subsample_train
from wsl.errors import ConfigError, printable

DEFAULT_CORPUS = "pydoc_data.topics"
MAX_CORPUS_BYTES = 1 << 30  # a corpus is held in memory as int64 ids: 8 bytes per character


@dataclass
class LMData(ClassificationData):
    """Next-token prediction: x_*, y_* [N, T] int64 character ids (y = x shifted by one character);
    num_classes = vocab_size = len(vocab); causal (a prediction at every position)."""

    vocab: str = ""
    kind: ClassVar[str] = "lm"

    def fingerprint(self) -> str:
        """sha256 over the split tensors and the vocabulary (the same ids may spell another corpus)."""
        return hashlib.sha256((super().fingerprint() + self.vocab).encode("utf-8")).hexdigest()

    def decode(self, ids) -> str:
        return "".join(self.vocab[int(i)] for i in ids)


def read_corpus(path: str | None) -> tuple[str, str]:
    """(text, source) of the corpus: `path` (any UTF-8 file) or, when None, CPython's pydoc topics."""
    if path is None:
        from pydoc_data.topics import topics

        return "\n".join(topics[k] for k in sorted(topics)), f"{DEFAULT_CORPUS} (Python {platform.python_version()})"
    p = Path(path).expanduser()
    shown = printable(path)
    if not p.exists():
        raise ConfigError(f"dataset.path={shown}: no such file")
    if not p.is_file():
        raise ConfigError(f"dataset.path={shown} is not a regular file")
    size = p.stat().st_size
    if size > MAX_CORPUS_BYTES:
        raise ConfigError(f"dataset.path={shown} has {size} bytes; a corpus may have {MAX_CORPUS_BYTES} at most")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"dataset.path={shown} is not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r})") \
            from None
    return text, str(p.resolve())


def corpus_blocks(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Character offsets (val start, test start) of the three contiguous blocks of n characters."""
    n_test, n_val = int(round(n * test_fraction)), int(round(n * val_fraction))
    return n - n_test - n_val, n - n_test


def corpus_vocab(path: str | None, max_chars: int | None = None) -> str:
    """The sorted characters of the (truncated) corpus: its vocabulary."""
    text, _ = read_corpus(path)
    return "".join(sorted(set(text[:max_chars] if max_chars else text)))


def check_context(context: int, n: int, val_fraction: float, test_fraction: float, source: str) -> None:
    """Every non-empty block must hold one window (context + 1 characters); one line naming the key otherwise."""
    b1, b2 = corpus_blocks(n, val_fraction, test_fraction)
    for block, size in (("train", b1), ("val", b2 - b1), ("test", n - b2)):
        if block == "val" and val_fraction == 0:
            continue
        if size < context + 1:
            raise ConfigError(f"dataset.context={context} is longer than the corpus allows: the {block} block of "
                              f"{printable(source)} has {size} characters, a window needs context + 1 = {context + 1}")


def text(root=None, path: str | None = None, context: int = 64, max_chars: int | None = None,
         train_fraction: float = 1.0, subset_seed: int = 0, val_fraction: float = 0.1,
         test_fraction: float = 0.1) -> LMData:
    """A character-level LM dataset of the corpus (see the module doc). `max_chars`: only the corpus's
    first max_chars characters (None: all of it); `root` is accepted for the common interface, unused."""
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise ConfigError(f"dataset.context must be an integer >= 1, got {context!r}")
    corpus, source = read_corpus(path)
    if max_chars:
        corpus = corpus[:max_chars]
    if len(corpus) < 2:
        raise ConfigError(f"dataset.path={printable(source)} holds {len(corpus)} characters; a corpus needs 2 at least")
    check_context(context, len(corpus), val_fraction, test_fraction, source)
    vocab = "".join(sorted(set(corpus)))
    lookup = {c: i for i, c in enumerate(vocab)}
    ids = np.fromiter((lookup[c] for c in corpus), dtype=np.int64, count=len(corpus))
    b1, b2 = corpus_blocks(len(corpus), val_fraction, test_fraction)

    def windows(start, stop):
        count = (stop - start - 1) // context if stop - start > context else 0
        s = start + np.arange(count)[:, None] * context + np.arange(context)[None, :]
        return torch.from_numpy(ids[s]), torch.from_numpy(ids[s + 1])

    (xtr, ytr), (xva, yva), (xte, yte) = windows(0, b1), windows(b1, b2), windows(b2, len(corpus))
    sha = hashlib.sha256(corpus.encode("utf-8")).hexdigest()
    info = {"source": source, "corpus_sha256": sha, "chars": len(corpus), "max_chars": max_chars, "context": context,
            "vocab": vocab, "vocab_size": len(vocab), "blocks": {"train": [0, b1], "val": [b1, b2],
                                                                 "test": [b2, len(corpus)]},
            "windows": "non-overlapping, stride = context; y = x one character later",
            "val_fraction": float(val_fraction), "test_fraction": float(test_fraction), "train_fraction": 1.0,
            "subset_seed": int(subset_seed), "n_train": len(xtr), "n_val": len(xva), "n_test": len(xte),
            "input_shape": [context]}
    data = LMData("text", xtr, ytr, xva, yva, xte, yte, len(vocab), info, vocab_size=len(vocab), causal=True,
                  vocab=vocab)
    return subsample_train(data, train_fraction, subset_seed)
