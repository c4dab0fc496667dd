"""Architectures that populate zoos, each declaring its permutation structure."""

from wsl.nets.cnn import CNN
from wsl.nets.common import count_parameters
from wsl.nets.mlp import MLP
from wsl.nets.registry import NETS, build_net, register_net
from wsl.nets.resnet import ResNet
from wsl.nets.siren import SIREN
from wsl.nets.spec import PermutationSpec
from wsl.nets.transformer import Transformer

__all__ = ["MLP", "CNN", "SIREN", "ResNet", "Transformer", "NETS", "build_net", "register_net", "PermutationSpec", "count_parameters"]
