"""Weight-space representation: a net's state dict seen as a graph of neuron sets.

Every encoder reads nets through this module. A `WeightSpace` is derived from a net's declared
`PermutationSpec` (wsl.nets) and its parameter shapes:

- node sets: one per permutation of the spec (its units are permuted together), plus the net's
  fixed inputs ("in") and outputs ("out"), which no symmetry permutes. In a residual net the units
  of one residual stream are ONE set, shared by every layer that reads or writes the stream
  (ResNet's "S<s>"); the channels inside a block are their own set ("B<s>.<b>").
- edges: every weight tensor [n_out, n_in, *kernel] whose output axis is named by permutation (or
  fixed outputs) `out` and input axis by `in` connects those two sets; a Conv's spatial kernel
  entries become K = prod(kernel) features of one edge (as NFN and Neural Graphs treat them).
- node features: every per-unit tensor [n] on a set's axis: the biases, BatchNorm's scale and shift
  (and, on request, its running mean and variance).

A plain MLP/CNN is the chain in -W_1-> P0 -W_2-> ... -> out with one bias per set; a ResNet is a
graph with several edges into and out of each stream. A transformer (wsl.nets.Transformer) is one too:
in -embed-> S (tokens or patches and positions are one input layer), per block S -q,k-> A<b>.qk,
S -v-> A<b>.vo -o-> S, S -fc1-> M<b> -fc2-> S, and S -head-> out, with the LayerNorm scales and shifts
as features of the stream's units. Its attention sets carry head structure (spec.heads): the space
keeps it, so that permutation augmentation draws only block permutations; encoders treat each set
as exchangeable units, which the head symmetry is a part of (they are invariant to more than the
symmetry, never to less). The order of the sets (inputs, then every
permutation by the first layer that writes it, then outputs) is fixed by the architecture.

`WSBatch` is a batch of nets in that form: per edge [B, n_out, n_in, K], per node feature [B, n],
and a mask per set [B, n] (1 = real neuron, 0 = padding). Padding lets nets of different widths
share one batch: missing neurons get zero weights in and out, which leaves every net's function
unchanged; masked encoders never look at them.

BatchNorm running statistics are left out by default: they describe the data a net saw, are
re-estimated rather than learned, and a flat weight vector or a generated net does not carry them.
`bn_stats=True` adds running_mean and running_var as two more features of their units.

Anything that does not fit (a scalar parameter, a kernel axis that a permutation acts on, a
flattening layer whose input axis is wider than the permutation it names) is refused with a
ConfigError naming the model and the layer, before any training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from wsl.errors import ConfigError
from wsl.nets.spec import PermutationSpec

MASK_PREFIX = "__mask__."  # pseudo-parameters that carry neuron masks through permutation augmentation
IN, OUT = "in", "out"  # names of the fixed node sets
BN_STATS = ("running_mean", "running_var")  # the BatchNorm buffers bn_stats=True reads


@dataclass(frozen=True)
class NodeSet:
    name: str  # the permutation acting on these units, or IN / OUT
    fixed: bool  # no symmetry permutes them (the net's inputs and outputs)


@dataclass(frozen=True)
class EdgeSlot:
    """One weight tensor [n_out, n_in, *kernel]: edges from set `inp` to set `out` (indices into sets)."""

    name: str
    out: int
    inp: int
    kernel: tuple  # spatial kernel shape, () for a Linear layer

    @property
    def kernel_numel(self) -> int:
        return math.prod(self.kernel) if self.kernel else 1


@dataclass(frozen=True)
class NodeSlot:
    """One per-unit tensor [n] of set `set` (a bias, a BatchNorm scale or shift, a running statistic)."""

    name: str
    set: int


@dataclass
class WSBatch:
    """A batch of nets: per edge slot [B, n_out, n_in, K], per node slot [B, n], per set a mask [B, n]."""

    edges: list
    nodes: list
    masks: list

    @property
    def batch_size(self) -> int:
        return self.edges[0].shape[0]


@dataclass
class WeightSpace:
    """Static structure shared by every net an encoder reads (padded sizes when widths differ)."""

    sets: list  # [NodeSet]
    sizes: list  # units per set (per permuted set: the largest width in the zoo)
    edges: list  # [EdgeSlot] in state-dict order
    nodes: list  # [NodeSlot] in state-dict order
    spec: PermutationSpec  # the spec of the tensors read, with the padded sizes
    shapes: dict = field(default_factory=dict)  # tensor name -> padded shape (without batch axis)
    padded: bool = False  # True when some nets are narrower than `sizes` (their masks have zeros)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_spec(cls, spec: PermutationSpec, shapes: dict, model: str = "net", bn_stats: bool = False) -> "WeightSpace":
        """The graph of one net from its permutation spec and tensor shapes {name: shape} (buffers
        in `shapes` are ignored unless bn_stats=True reads the running statistics). Raises ConfigError
        naming `model` and the layer when a tensor does not fit."""
        shapes = {k: tuple(int(s) for s in v) for k, v in shapes.items()}
        undeclared = [k for k in shapes if k not in spec.axes]
        if undeclared:
            raise ConfigError(f"model {model}: layer {undeclared[0]!r} has no entry in the permutation spec, "
                              "so no encoder can tell how its units move under permutations")
        wanted = [k for k in spec.axes if k not in spec.buffers
                  or (bn_stats and k.rsplit(".", 1)[-1] in BN_STATS)]
        missing = [k for k in wanted if k not in shapes]
        if missing:
            raise ConfigError(f"model {model}: the permutation spec declares {missing} but the checkpoint lacks them")
        if bn_stats and not any(k in spec.buffers for k in wanted):
            raise ConfigError(f"model {model}: zoo.bn_stats=true but the net has no BatchNorm running statistics")
        shapes = {k: v for k, v in shapes.items() if k in wanted}  # state-dict order
        sets, index = [], {}

        def set_of(perm, fixed_name):
            key = perm if perm is not None else fixed_name
            if key not in index:
                index[key] = len(sets)
                sets.append(NodeSet(key, perm is None))
            return index[key]

        fixed_size: dict = {}

        def check_axis(name, ax, perm, n, fixed_name):
            if perm is None:
                if fixed_size.setdefault(fixed_name, (n, name))[0] != n:
                    raise ConfigError(f"model {model}: layer {name!r} has {n} fixed {'inputs' if fixed_name == IN else 'outputs'}, "
                                      f"layer {fixed_size[fixed_name][1]!r} {fixed_size[fixed_name][0]} (one input and one "
                                      "output set per net)")
            elif spec.sizes.get(perm) != n:
                raise ConfigError(f"model {model}: layer {name!r} axis {ax} has {n} entries but permutation {perm!r} "
                                  f"permutes {spec.sizes.get(perm)} units (a flattening layer is unsupported)")

        set_of(None, IN)  # the inputs come first, the outputs last
        edges, per_unit = [], []
        for name, shape in shapes.items():
            ax = tuple(spec.axes[name])
            if len(ax) != len(shape):
                raise ConfigError(f"model {model}: layer {name!r} has shape {shape} but the spec declares {len(ax)} axes")
            if len(shape) >= 2:
                if any(p is not None for p in ax[2:]):
                    raise ConfigError(f"model {model}: layer {name!r} with shape {shape} and permutation axes {ax} is "
                                      "an unsupported layer type (expected [out, in, *kernel] with permutations on "
                                      "out/in only)")
                check_axis(name, 0, ax[0], shape[0], OUT)
                check_axis(name, 1, ax[1], shape[1], IN)
                edges.append((name, ax[0], ax[1], shape[2:]))
                if ax[0] is not None:
                    set_of(ax[0], OUT)
            elif len(shape) == 1:
                per_unit.append((name, ax[0], shape[0]))
            else:
                raise ConfigError(f"model {model}: layer {name!r} is a scalar parameter, an unsupported layer type "
                                  "for weight-space encoders (they read weights [out, in, *kernel] and per-unit vectors)")
        if not edges:
            raise ConfigError(f"model {model}: no weight tensor [out, in, *kernel] to read")
        out_perm = {n.rpartition(".")[0]: o for n, o, _, _ in edges}  # layer prefix -> its output permutation
        nodes = []
        for name, perm, n in per_unit:
            if perm is None:  # a fixed per-unit vector: the bias of a layer with fixed outputs
                prefix = name.rpartition(".")[0]
                if prefix not in out_perm or out_perm[prefix] is not None:
                    raise ConfigError(f"model {model}: layer {name!r} is a per-unit vector on no permuted axis and "
                                      "is not the bias of an output layer (unsupported layer type)")
                check_axis(name, 0, None, n, OUT)
            else:
                check_axis(name, 0, perm, n, OUT)
            nodes.append((name, perm))
        for p in spec.sizes:  # permutations only per-unit vectors name (none in wsl's nets) still get a set
            if any(p in spec.axes[k] for k in shapes):
                set_of(p, OUT)
        has_out = any(o is None for _, o, _, _ in edges)
        if has_out:
            set_of(None, OUT)
        if not any(i is None for _, _, i, _ in edges):
            raise ConfigError(f"model {model}: no layer reads the net's inputs (an input axis no permutation names)")
        key = lambda p, fixed_name: index[p if p is not None else fixed_name]  # noqa: E731
        edge_slots = [EdgeSlot(n, key(o, OUT), key(i, IN), k) for n, o, i, k in edges]
        node_slots = [NodeSlot(n, key(p, OUT)) for n, p in nodes]
        sizes = [fixed_size[s.name][0] if s.fixed else spec.sizes[s.name] for s in sets]
        kept = {k: tuple(spec.axes[k]) for k in shapes}
        used = {s.name for s in sets if not s.fixed}
        sub = spec.with_axes(kept, {p: n for p, n in spec.sizes.items() if p in used},
                             frozenset(k for k in kept if k in spec.buffers))  # heads kept (augmentations)
        return cls(sets, sizes, edge_slots, node_slots, sub, shapes)

    def structure(self) -> list:
        """What two nets must share to be read by one encoder (everything but the hidden widths)."""
        return ([(s.name, s.fixed) for s in self.sets] + [(e.name, e.out, e.inp, e.kernel) for e in self.edges]
                + [(n.name, n.set) for n in self.nodes])

    @classmethod
    def from_models(cls, models: list, pad: bool = False, bn_stats: bool = False) -> "WeightSpace":
        """One space for many nets: models = [(model id, PermutationSpec, {name: shape})].

        All nets must share the structure; widths may differ only with pad=True (the space then
        has each permuted set's largest width). Raises ConfigError naming the first model and
        layer that does not fit.
        """
        if not models:
            raise ConfigError("no models to read")
        first_id, spec0, shapes0 = models[0]
        ref = cls.from_spec(spec0, shapes0, first_id, bn_stats)
        sizes, padded = list(ref.sizes), False
        for mid, spec, shapes in models[1:]:
            ws = cls.from_spec(spec, shapes, mid, bn_stats)
            a, b = ref.structure(), ws.structure()
            if a != b:
                diff = next((y for x, y in zip(a, b) if x != y), b[-1] if len(b) > len(a) else a[-1])
                layer = next((t for t in diff if isinstance(t, str) and "." in t), diff[0])
                raise ConfigError(f"model {mid}: layer {layer!r} differs in type, kernel or connections from model "
                                  f"{first_id} (mixed architectures cannot share one encoder)")
            for m, (x, y) in enumerate(zip(ref.sizes, ws.sizes)):
                if x == y:
                    continue
                layer = next(e.name for e in ws.edges if m in (e.out, e.inp))
                if ref.sets[m].fixed:
                    raise ConfigError(f"model {mid}: layer {layer!r} has {y} {ref.sets[m].name}puts, model {first_id} "
                                      f"has {x} (nets of different tasks cannot share one encoder)")
                if not pad:
                    raise ConfigError(f"model {mid}: layer {layer!r} has {y} units, model {first_id} has {x}; "
                                      "mixed widths need the padding option (zoo.pad=true)")
                if ref.sets[m].name in ref.spec.heads:
                    raise ConfigError(f"model {mid}: layer {layer!r} has {y} units in attention heads, model "
                                      f"{first_id} has {x}; zoo.pad=true cannot pad heads (zeros at the end would "
                                      "fall into the last head only): use nets of one width")
                sizes[m], padded = max(sizes[m], y), True
        perm_sizes = {s.name: n for s, n in zip(ref.sets, sizes) if not s.fixed}
        shapes = {k: tuple(d if p is None else perm_sizes[p] for p, d in zip(ref.spec.axes[k], shape))
                  for k, shape in ref.shapes.items()}
        spec = ref.spec.with_axes(ref.spec.axes, perm_sizes)
        return cls(ref.sets, sizes, ref.edges, ref.nodes, spec, shapes, padded=padded)

    # ---------------------------------------------------------------- properties
    @property
    def num_layers(self) -> int:
        """Number of weight tensors (edge slots)."""
        return len(self.edges)

    @property
    def kernel_numels(self) -> list:
        return [e.kernel_numel for e in self.edges]

    @property
    def numel(self) -> int:
        """Number of (padded) numbers per net."""
        return sum(math.prod(shape) for shape in self.shapes.values())

    def incoming(self, m: int) -> list:
        """Indices of the edge slots whose outputs are set m."""
        return [l for l, e in enumerate(self.edges) if e.out == m]

    def outgoing(self, m: int) -> list:
        """Indices of the edge slots that read set m."""
        return [l for l, e in enumerate(self.edges) if e.inp == m]

    def features(self, m: int) -> list:
        """Indices of the node slots of set m."""
        return [j for j, n in enumerate(self.nodes) if n.set == m]

    def node_features(self, batch: WSBatch, m: int) -> torch.Tensor | None:
        """[B, n_m, F_m]: the per-unit tensors of set m side by side (None when it has none)."""
        idx = self.features(m)
        return torch.stack([batch.nodes[j] for j in idx], dim=-1) if idx else None

    def mask_spec(self) -> PermutationSpec:
        """The spec extended by one mask pseudo-parameter per permuted set, so that a permutation
        augmentation moves the masks with the neurons they describe."""
        masks = {MASK_PREFIX + s.name: (s.name,) for s in self.sets if not s.fixed}
        return self.spec.with_axes({**self.spec.axes, **masks})

    def describe(self) -> dict:
        return {"sets": {s.name: n for s, n in zip(self.sets, self.sizes)}, "edges": len(self.edges),
                "node_features": len(self.nodes), "kernels": sorted({e.kernel for e in self.edges}),
                "padded": self.padded}

    # ---------------------------------------------------------------- data
    def pad_state_dict(self, state_dict: dict) -> tuple:
        """Zero-pad one net to the space's sizes -> (tensors {name: Tensor}, masks {mask name: Tensor[n]}).
        Tensors the space does not read (buffers by default) are ignored."""
        params = {}
        for name, shape in self.shapes.items():
            t = state_dict[name].detach().to(torch.float32)
            params[name] = torch.zeros(shape)
            params[name][tuple(slice(0, s) for s in t.shape)] = t
        width = {}
        for name in self.shapes:
            for ax, p in enumerate(self.spec.axes[name]):
                if p is not None:
                    width.setdefault(p, state_dict[name].shape[ax])
        masks = {MASK_PREFIX + s.name: (torch.arange(n) < width[s.name]).float()
                 for s, n in zip(self.sets, self.sizes) if not s.fixed}
        return params, masks

    def to_batch(self, params: dict, masks: dict | None = None) -> WSBatch:
        """Stacked tensors {name: Tensor[B, *shape]} (+ mask pseudo-parameters) -> WSBatch."""
        first = params[self.edges[0].name]
        bsz, masks = first.shape[0], masks or {}
        edges = [params[e.name].reshape(bsz, *params[e.name].shape[1:3], -1) for e in self.edges]
        nodes = [params[n.name] for n in self.nodes]
        out_masks = []
        for s, n in zip(self.sets, self.sizes):
            m = None if s.fixed else masks.get(MASK_PREFIX + s.name)
            out_masks.append(m.to(first.dtype) if m is not None else first.new_ones(bsz, n))
        return WSBatch(edges, nodes, out_masks)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean of x over `dim`, counting only entries whose mask is 1.

    x [B, ..., n, ..., C]; mask [B, n] broadcast along the axes of x other than batch and `dim`.
    """
    dim = dim % x.dim()
    shape = [1] * x.dim()
    shape[0], shape[dim] = mask.shape[0], mask.shape[1]
    m = mask.view(shape)
    return (x * m).sum(dim) / m.sum(dim).clamp_min(1.0)
