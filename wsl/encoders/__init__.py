"""Weight-space encoders and the property-prediction task.

Every encoder is a plain nn.Module built as `Encoder(space: WeightSpace, out_dim: int, **hparams)`
whose forward maps a `WSBatch` of nets to [B, out_dim]; `invariant` says whether it is invariant to
the permutations of the nets' spec (only the flattened-weights MLP is not). Every encoder reads
every structure a WeightSpace represents: chains (MLP, CNN, SIREN), residual nets (ResNet), with
or without BatchNorm, and transformers (attention sets with heads: invariant to the head symmetry as to
any permutation of those units).
"""

from wsl.encoders.deepsets import DeepSets
from wsl.encoders.flat import FlatMLP
from wsl.encoders.graph import GraphEncoder
from wsl.encoders.nfn import NFN
from wsl.encoders.stats import StatNN
from wsl.encoders.transformer import NeuronTransformer
from wsl.encoders.weightspace import EdgeSlot, NodeSet, NodeSlot, WeightSpace, WSBatch

ENCODERS = {"flat": FlatMLP, "stats": StatNN, "deepsets": DeepSets, "nfn": NFN, "graph": GraphEncoder,
            "transformer": NeuronTransformer}

__all__ = ["WeightSpace", "WSBatch", "NodeSet", "EdgeSlot", "NodeSlot", "FlatMLP", "StatNN", "DeepSets", "NFN",
           "GraphEncoder", "NeuronTransformer", "ENCODERS"]
