"""The zoo format: writing shards, reading, indexing, integrity, a torch Dataset over weights."""

from wsl.zoo.dataset import ZooDataset
from wsl.zoo.layout import Layout
from wsl.zoo.reader import Zoo, read_checkpoint_metadata
from wsl.zoo.writer import ShardWriter, merge_index, write_annotation

__all__ = ["Zoo", "ZooDataset", "Layout", "ShardWriter", "merge_index", "write_annotation", "read_checkpoint_metadata"]
