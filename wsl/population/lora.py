"""LoRA fine-tunes trained for a whole population in one vmapped program (the math: wsl.nets.lora)."""

from __future__ import annotations

import torch
from torch import nn

from wsl.nets.lora import LoRASpec, delta
from wsl.population.module import PopulationModule


class LoRAPopulationModule(PopulationModule):
    """A PopulationModule whose members train LoRA adapters on one frozen base net.

    The base parameters are held once (unstacked buffers); the optimizer sees only the stacked
    adapters [P, ...]. `params()` returns every member's merged weights (base expanded, plus
    scale * B A on the adapted ones), so training, evaluation and metrics are PopulationModule's own;
    `member_state_dict(k)` returns member k's adapters and buffers (what a LoRA checkpoint holds).
    """

    def __init__(self, net: nn.Module, base: dict[str, torch.Tensor], adapters: dict[str, torch.Tensor],
                 spec: LoRASpec, data, lr, weight_decay, **kwargs):
        p = next(iter(adapters.values())).shape[0]
        stacked = {k: v.expand(p, *v.shape) for k, v in base.items()}
        super().__init__(net, stacked, data, lr, weight_decay, **kwargs)
        self.spec = spec
        self.base_names = list(self.names)
        self.base_params = _Frozen([base[k].detach().clone() for k in self.base_names])
        self.adapter_names = list(spec.adapter_shapes())
        self.stacked = nn.ParameterList([nn.Parameter(adapters[k].detach().clone()) for k in self.adapter_names])

    def params(self) -> dict[str, torch.Tensor]:
        ad = dict(zip(self.adapter_names, self.stacked))
        p = self.population_size
        out = {}
        for k, w in zip(self.base_names, self.base_params.tensors()):
            out[k] = w + delta(self.spec, ad, k) if k in self.spec.shapes else w.expand(p, *w.shape)
        return out

    @torch.no_grad()
    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's adapters and buffers: the tensors of its LoRA checkpoint."""
        ad = dict(zip(self.adapter_names, self.stacked))
        out = {n: ad[n][k].detach().cpu().clone() for n in self.adapter_names}
        state = self.stacked_state()
        out.update({n: state[n][k].detach().cpu().clone() for n in self.buffer_names})
        return out

    @torch.no_grad()
    def merged_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's merged net (parameters W + scale B A, buffers), in the net's state_dict order."""
        state = {**self.params(), **self.stacked_state()}
        return {n: state[n][k].detach().cpu().clone() for n in self.state_names}


class _Frozen(nn.Module):
    """Base tensors as buffers (moved with the module, never optimized)."""

    def __init__(self, tensors):
        super().__init__()
        for i, t in enumerate(tensors):
            self.register_buffer(str(i), t, persistent=False)

    def tensors(self):
        return [getattr(self, str(i)) for i in range(len(self._buffers))]
