"""Weight-space representation: a net's state dict seen as a chain of neuron layers.

Every encoder reads nets through this module. A `WeightSpace` is derived from a net's declared
`PermutationSpec` (wsl.nets) and its parameter shapes: the layers form a chain

    neuron layer 0 (inputs) --W_1--> neuron layer 1 --W_2--> ... --W_L--> neuron layer L (outputs)

where W_l has shape [n_l, n_{l-1}, *kernel] (a Linear weight has no kernel; a Conv weight's spatial
kernel entries become K = prod(kernel) features of one edge, as NFN and Neural Graphs treat them),
and b_l [n_l]. Hidden neuron layers (1..L-1) are the ones a permutation acts on; the input and output
layers are fixed (no symmetry permutes them).

`WSBatch` is a batch of nets in that form: per layer W_l [B, n_l, n_{l-1}, K_l], b_l [B, n_l], and a
mask per neuron layer [B, n_m] (1 = real neuron, 0 = padding). Padding lets nets of different widths
share one batch: missing neurons get zero weights in and out, which leaves every net's function
unchanged; masked encoders never look at them.

Anything that does not fit this chain (a parameter that is neither a layer's weight nor its bias,
e.g. a BatchNorm scale; a flattening head whose input axis is wider than the permutation it names)
is refused with a ConfigError naming the model and the layer, before any training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from wsl.errors import ConfigError
from wsl.nets.spec import PermutationSpec

MASK_PREFIX = "__mask__."  # pseudo-parameters that carry neuron masks through permutation augmentation


@dataclass(frozen=True)
class LayerSlot:
    """One weight layer of the chain: which tensors hold it and which permutations act on it."""

    weight: str  # state-dict key of the weight [n_out, n_in, *kernel]
    bias: str | None  # state-dict key of the bias [n_out], or None
    out_perm: str | None  # permutation of the output neurons (None: the net's outputs)
    in_perm: str | None  # permutation of the input neurons (None: the net's inputs)
    kernel: tuple  # spatial kernel shape, () for a Linear layer

    @property
    def kernel_numel(self) -> int:
        return math.prod(self.kernel) if self.kernel else 1


@dataclass
class WSBatch:
    """A batch of nets as per-layer tensors (see the module docstring for shapes)."""

    weights: list  # L tensors [B, n_l, n_{l-1}, K_l]
    biases: list  # L tensors [B, n_l] (zeros for a layer without bias)
    masks: list  # L + 1 tensors [B, n_m], float, 1 = real neuron

    @property
    def batch_size(self) -> int:
        return self.weights[0].shape[0]


@dataclass
class WeightSpace:
    """Static structure shared by every net an encoder reads (padded sizes when widths differ)."""

    layers: list  # [LayerSlot] in forward order, l = 1..L
    sizes: list  # neuron counts n_0..n_L (per hidden layer: the largest width in the zoo)
    spec: PermutationSpec  # the nets' permutation spec, with the padded sizes
    shapes: dict = field(default_factory=dict)  # param name -> padded shape (without batch axis)
    padded: bool = False  # True when some nets are narrower than `sizes` (their masks have zeros)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_spec(cls, spec: PermutationSpec, shapes: dict, model: str = "net") -> "WeightSpace":
        """Derive the chain of layers from a permutation spec and the parameter shapes of one net.

        shapes: {param name: tuple shape}. Raises ConfigError naming `model` and the layer when a
        parameter does not fit a chain of (weight, bias) layers.
        """
        shapes = {k: tuple(int(s) for s in v) for k, v in shapes.items()}
        missing = [k for k in spec.axes if k not in shapes]
        if missing:
            raise ConfigError(f"model {model}: the permutation spec declares {missing} but the checkpoint lacks them")
        undeclared = [k for k in shapes if k not in spec.axes]
        if undeclared:
            raise ConfigError(f"model {model}: layer {undeclared[0]!r} has no entry in the permutation spec, "
                              "so no encoder can tell how its units move under permutations")
        groups: dict = {}
        for name in shapes:
            prefix, _, leaf = name.rpartition(".")
            groups.setdefault(prefix, {})[leaf] = name
        slots = []
        for prefix, members in groups.items():
            extra = sorted(set(members) - {"weight", "bias"})
            if extra or "weight" not in members:
                bad = members[extra[0]] if extra else next(iter(members.values()))
                raise ConfigError(f"model {model}: layer {bad!r} is an unsupported layer type for weight-space "
                                  "encoders (only Linear/Conv layers with a weight and an optional bias are read)")
            w, b = members["weight"], members.get("bias")
            wshape, wax = shapes[w], spec.axes[w]
            if len(wshape) < 2 or len(wax) != len(wshape) or any(p is not None for p in wax[2:]):
                raise ConfigError(f"model {model}: layer {w!r} with shape {wshape} and permutation axes {wax} is "
                                  "an unsupported layer type (expected [out, in, *kernel] with permutations on "
                                  "out/in only)")
            out_p, in_p = wax[0], wax[1]
            for ax, p in ((0, out_p), (1, in_p)):
                if p is not None and spec.sizes.get(p) != wshape[ax]:
                    raise ConfigError(f"model {model}: layer {w!r} axis {ax} has {wshape[ax]} entries but permutation "
                                      f"{p!r} permutes {spec.sizes.get(p)} units (a flattening layer is unsupported)")
            if b is not None and (shapes[b] != (wshape[0],) or tuple(spec.axes[b]) != (out_p,)):
                raise ConfigError(f"model {model}: layer {b!r} with shape {shapes[b]} does not match the "
                                  f"output axis of {w!r} {wshape} (unsupported layer type)")
            slots.append(LayerSlot(w, b, out_p, in_p, wshape[2:]))
        layers = cls._chain(slots, model)
        sizes = [shapes[layers[0].weight][1]] + [shapes[s.weight][0] for s in layers]
        return cls(layers, sizes, spec, shapes)

    @staticmethod
    def _chain(slots: list, model: str) -> list:
        """Order the layers input -> output by following the permutations that link them."""
        firsts = [s for s in slots if s.in_perm is None]
        if len(firsts) != 1:
            names = [s.weight for s in firsts] or [s.weight for s in slots]
            raise ConfigError(f"model {model}: expected exactly one input layer (input axis not permuted), "
                              f"found {names}; only chains of Linear/Conv layers are supported")
        by_in = {}
        for s in slots:
            if s.in_perm is not None:
                if s.in_perm in by_in:
                    raise ConfigError(f"model {model}: layers {by_in[s.in_perm].weight!r} and {s.weight!r} both read "
                                      f"permutation {s.in_perm!r} (branching/residual nets are unsupported)")
                by_in[s.in_perm] = s
        chain = [firsts[0]]
        while chain[-1].out_perm is not None:
            nxt = by_in.get(chain[-1].out_perm)
            if nxt is None:
                raise ConfigError(f"model {model}: layer {chain[-1].weight!r} feeds permutation "
                                  f"{chain[-1].out_perm!r} that no layer reads")
            chain.append(nxt)
            if len(chain) > len(slots):
                raise ConfigError(f"model {model}: layer {nxt.weight!r} closes a cycle of permutations")
        left = [s.weight for s in slots if s not in chain]
        if left:
            raise ConfigError(f"model {model}: layer {left[0]!r} is not on the input->output chain of layers")
        return chain

    @classmethod
    def from_models(cls, models: list, pad: bool = False) -> "WeightSpace":
        """One space for many nets: models = [(model id, PermutationSpec, {name: shape})].

        All nets must share the layer structure; widths may differ only with pad=True (the space
        then has each hidden layer's largest width). Raises ConfigError naming the first model and
        layer that does not fit.
        """
        if not models:
            raise ConfigError("no models to read")
        first_id, spec0, shapes0 = models[0]
        ref = cls.from_spec(spec0, shapes0, first_id)
        sizes, padded = list(ref.sizes), False
        for mid, spec, shapes in models[1:]:
            ws = cls.from_spec(spec, shapes, mid)
            kinds = [[(s.weight, s.bias, s.kernel) for s in x.layers] for x in (ref, ws)]
            if kinds[0] != kinds[1]:
                diff = next((b[0] for a, b in zip(*kinds) if a != b), ws.layers[-1].weight)
                raise ConfigError(f"model {mid}: layer {diff!r} differs in type or kernel from model {first_id} "
                                  "(mixed architectures cannot share one encoder)")
            for m, (a, b) in enumerate(zip(ref.sizes, ws.sizes)):
                if a == b:
                    continue
                layer = ws.layers[max(m - 1, 0)].weight
                if m in (0, len(sizes) - 1):
                    raise ConfigError(f"model {mid}: layer {layer!r} has {b} {'inputs' if m == 0 else 'outputs'}, "
                                      f"model {first_id} has {a} (nets of different tasks cannot share one encoder)")
                if not pad:
                    raise ConfigError(f"model {mid}: layer {layer!r} has {b} units, model {first_id} has {a}; "
                                      "mixed widths need the padding option (zoo.pad=true)")
                sizes[m], padded = max(sizes[m], b), True
        # every permuted axis takes its layer's padded width; the fixed axes (inputs, outputs, kernels) match already
        perm_sizes = {**ref.spec.sizes, **{s.out_perm: sizes[l] for l, s in enumerate(ref.layers, 1) if s.out_perm}}
        padded_shapes = {k: tuple(d if p is None else perm_sizes[p] for p, d in zip(ref.spec.axes[k], shape))
                         for k, shape in ref.shapes.items()}
        spec = PermutationSpec(dict(ref.spec.axes), perm_sizes)
        return cls(ref.layers, sizes, spec, padded_shapes, padded=padded)

    # ---------------------------------------------------------------- properties
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def kernel_numels(self) -> list:
        return [s.kernel_numel for s in self.layers]

    @property
    def numel(self) -> int:
        """Number of (padded) parameters per net."""
        return sum(math.prod(shape) for shape in self.shapes.values())

    def mask_spec(self) -> PermutationSpec:
        """The spec extended by one mask pseudo-parameter per hidden layer, so that a permutation
        augmentation moves the masks with the neurons they describe."""
        masks = {MASK_PREFIX + s.out_perm: (s.out_perm,) for s in self.layers if s.out_perm is not None}
        return PermutationSpec({**self.spec.axes, **masks}, dict(self.spec.sizes))

    def describe(self) -> dict:
        return {"layers": [s.weight for s in self.layers], "sizes": list(self.sizes),
                "kernels": [list(s.kernel) for s in self.layers], "padded": self.padded}

    # ---------------------------------------------------------------- data
    def pad_state_dict(self, state_dict: dict) -> tuple:
        """Zero-pad one net to the space's sizes -> (params {name: Tensor}, masks {mask name: Tensor[n]})."""
        params = {}
        for name, shape in self.shapes.items():
            t = state_dict[name].detach().to(torch.float32)
            params[name] = torch.zeros(shape)
            params[name][tuple(slice(0, s) for s in t.shape)] = t
        masks = {MASK_PREFIX + s.out_perm: (torch.arange(self.sizes[l]) < state_dict[s.weight].shape[0]).float()
                 for l, s in enumerate(self.layers, start=1) if s.out_perm is not None}
        return params, masks

    def to_batch(self, params: dict, masks: dict | None = None) -> WSBatch:
        """Stacked parameters {name: Tensor[B, *shape]} (+ mask pseudo-parameters) -> WSBatch."""
        first = params[self.layers[0].weight]
        bsz, masks = first.shape[0], masks or {}
        weights, biases, out_masks = [], [], [first.new_ones(bsz, self.sizes[0])]
        for l, s in enumerate(self.layers, start=1):
            w = params[s.weight]  # [B, n_l, n_{l-1}, *kernel]
            weights.append(w.reshape(bsz, w.shape[1], w.shape[2], -1))
            biases.append(params[s.bias] if s.bias is not None else w.new_zeros(bsz, w.shape[1]))
            m = masks.get(MASK_PREFIX + s.out_perm) if s.out_perm is not None else None
            out_masks.append(m.to(first.dtype) if m is not None else first.new_ones(bsz, self.sizes[l]))
        return WSBatch(weights, biases, out_masks)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean of x over `dim`, counting only entries whose mask is 1.

    x [B, ..., n, ..., C]; mask [B, n] broadcast along the axes of x other than batch and `dim`.
    """
    dim = dim % x.dim()
    shape = [1] * x.dim()
    shape[0], shape[dim] = mask.shape[0], mask.shape[1]
    m = mask.view(shape)
    return (x * m).sum(dim) / m.sum(dim).clamp_min(1.0)
