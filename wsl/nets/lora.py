"""LoRA fine-tunes (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") of a zoo member,
the math (wsl.population.lora trains them for a whole population in one vmapped program).

Each adapted weight W [out, in] (a Conv weight [out, in, *k] is read as [out, in*prod(k)]) gets
A [rank, in*prod(k)] and B [out, rank]; the net computes with

    W' = W + (alpha / rank) * (B @ A).view(W.shape)

(for a Conv this is peft's LoRA: a conv with A's kernels to `rank` channels, then a 1x1 conv with B).
A starts Kaiming-uniform (U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the nn.Linear default, drawn from the
member's seed_init), B at zeros, so every member starts exactly at the base net. The base is frozen
(its biases too); BatchNorm statistics, if any, keep updating in train mode as in any fine-tune.

Checkpoints of a LoRA model hold its adapters `<weight name>.lora_A` / `.lora_B` and its buffers
(BatchNorm statistics), and name the base checkpoint (metadata `lora`: normalized reference, base
checkpoint file, sha256, rank, alpha, layers); the row's hyperparameters carry what a reader needs:
finetune="lora", lora_rank, lora_alpha, lora_layers (comma-separated weight names), init_from,
init_sha256. `wsl.zoo.Zoo.state_dict` / `load_model` / `weights` return the MERGED net (W + scale B A),
so every other stage sees a LoRA zoo as a zoo of ordinary nets; `Zoo.adapters(model_id)` reads A and B.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from wsl.errors import ConfigError

ADAPTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
SUFFIX_A, SUFFIX_B = ".lora_A", ".lora_B"


@dataclass(frozen=True)
class LoRASpec:
    """Which weights carry adapters, their shapes, rank and alpha (scaling alpha / rank)."""

    rank: int
    alpha: float
    shapes: dict  # adapted weight name -> its shape, in the net's order

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def layers(self) -> list[str]:
        return list(self.shapes)

    def adapter_shapes(self) -> dict[str, tuple[int, ...]]:
        """{"<w>.lora_A": (rank, fan_in), "<w>.lora_B": (out, rank)} for every adapted weight w."""
        out = {}
        for w, shape in self.shapes.items():
            out[w + SUFFIX_A] = (self.rank, math.prod(shape[1:]))
            out[w + SUFFIX_B] = (shape[0], self.rank)
        return out

    def hparams(self) -> dict:
        return {"lora_rank": self.rank, "lora_alpha": float(self.alpha), "lora_scale": float(self.scale),
                "lora_layers": ",".join(self.shapes)}


def adaptable(net: nn.Module) -> dict[str, tuple[int, ...]]:
    """{weight name: shape} of every Linear and Conv layer of `net` (what finetune.layers=null adapts)."""
    return {(f"{n}.weight" if n else "weight"): tuple(m.weight.shape)
            for n, m in net.named_modules() if isinstance(m, ADAPTED)}


def make_spec(net: nn.Module, rank: int, alpha: float | None = None, layers=None, key: str = "finetune") -> LoRASpec:
    """The LoRA spec of `net`: `layers` names weights ("layers.0.weight") or their modules ("layers.0");
    None adapts every Linear/Conv weight. One-line ConfigError for an unknown layer or a rank above
    a layer's size (min(out, fan_in))."""
    have = adaptable(net)
    if not have:
        raise ConfigError(f"{key}.mode=lora: net {getattr(net, 'arch', {}).get('name', type(net).__name__)} has no "
                          "Linear or Conv layer to adapt")
    if layers is None:
        chosen = list(have)
    else:
        chosen = []
        for name in layers:
            w = name if name in have else f"{name}.weight" if f"{name}.weight" in have else None
            if w is None:
                raise ConfigError(f"{key}.layers: {name!r} is not a Linear or Conv layer of the net; have "
                                  f"{', '.join(have)}")
            if w not in chosen:
                chosen.append(w)
        chosen.sort(key=list(have).index)
    for w in chosen:
        out, fan_in = have[w][0], math.prod(have[w][1:])
        if rank > min(out, fan_in):
            raise ConfigError(f"{key}.rank={rank} is above the size of layer {w} ({out} x {fan_in}: rank at most "
                              f"{min(out, fan_in)}); lower {key}.rank or leave {w} out of {key}.layers")
    return LoRASpec(int(rank), float(rank if alpha is None else alpha), {w: have[w] for w in chosen})


def spec_from_hparams(net: nn.Module, hp: dict) -> LoRASpec:
    """The spec a LoRA row's hyperparameters (lora_rank, lora_alpha, lora_layers) describe for `net`."""
    layers = [w for w in str(hp["lora_layers"]).split(",") if w]
    return make_spec(net, int(hp["lora_rank"]), float(hp["lora_alpha"]), layers)


def init_adapters(spec: LoRASpec, seed: int) -> dict[str, torch.Tensor]:
    """One member's adapters: A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) from `seed`, B = 0."""
    g = torch.Generator().manual_seed(int(seed))
    out = {}
    for name, shape in spec.adapter_shapes().items():
        if name.endswith(SUFFIX_A):
            bound = 1.0 / math.sqrt(shape[1])
            out[name] = (torch.rand(shape, generator=g) * 2 - 1) * bound
        else:
            out[name] = torch.zeros(shape)
    return out


def delta(spec: LoRASpec, adapters: dict[str, torch.Tensor], w: str) -> torch.Tensor:
    """scale * B @ A in the shape of weight w; adapters may be stacked ([P, ...]: a [P, *shape] delta)."""
    a, b = adapters[w + SUFFIX_A], adapters[w + SUFFIX_B]
    return spec.scale * (b @ a).reshape(*b.shape[:-2], *spec.shapes[w])


def merge(spec: LoRASpec, base: dict[str, torch.Tensor], checkpoint: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The merged state dict: base weights plus scale * B A on the adapted ones; buffers (BatchNorm
    statistics) from the LoRA checkpoint where it holds them. In `base`'s order and dtypes."""
    out = {}
    for k, v in base.items():
        if k in spec.shapes:
            out[k] = (v + delta(spec, checkpoint, k).to(v.dtype)).contiguous()
        else:
            out[k] = checkpoint[k].clone() if k in checkpoint else v.clone()
    return out


def checkpoint_tensors(net: nn.Module, spec: LoRASpec) -> dict[str, tuple[torch.dtype, tuple]]:
    """{name: (torch dtype, shape)} a LoRA checkpoint of `net` holds: adapters (float32), then buffers."""
    params = {k for k, _ in net.named_parameters()}
    out = {k: (torch.float32, s) for k, s in spec.adapter_shapes().items()}
    out.update({k: (v.dtype, tuple(v.shape)) for k, v in net.state_dict().items() if k not in params})
    return out


class AdaptedForward:
    """Context manager: `net` computes base + adapters UNMERGED (x W^T + scale (x A^T) B^T for a Linear;
    for a Conv, a conv with A's kernels then a 1x1 conv with B), by forward hooks. The reference the
    merged weights are tested against; `adapters` holds one member's A and B."""

    def __init__(self, net: nn.Module, spec: LoRASpec, adapters: dict[str, torch.Tensor]):
        self.net, self.spec, self.adapters, self.handles = net, spec, adapters, []

    def __enter__(self):
        import torch.nn.functional as F

        mods = dict(self.net.named_modules())
        for w in self.spec.shapes:
            mod = mods[w.rsplit(".", 1)[0] if "." in w else ""]
            a, b = self.adapters[w + SUFFIX_A], self.adapters[w + SUFFIX_B]

            def hook(m, inputs, output, a=a, b=b):
                x = inputs[0]
                if isinstance(m, nn.Linear):
                    return output + self.spec.scale * F.linear(F.linear(x, a), b)
                conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[m.weight.dim() - 2]
                k = a.view(self.spec.rank, *m.weight.shape[1:])
                mid = conv(x, k, None, m.stride, m.padding, m.dilation, m.groups)
                return output + self.spec.scale * conv(mid, b.view(*b.shape, *([1] * (m.weight.dim() - 2))))

            self.handles.append(mod.register_forward_hook(hook))
        return self.net

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []


