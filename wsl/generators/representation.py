"""What a generator sees of a network: aligned, flattened, normalized weights (optionally a latent code).

Pipeline (each step invertible except the alignment, which only picks one of the function-
preserving permutations of every net):

    state dict --its parameters (Layout.of)-->     weights               (BatchNorm statistics dropped)
               --weight matching to a reference--> aligned weights       (optional: align=False)
               --Layout.flatten-->                 flat [N]
               --per-tensor standardization-->     normalized [N]        ((w - μ_t) / σ_t, one μ, σ per tensor)
               --autoencoder (optional)-->         latent [L], then standardized per coordinate
               --or a stage (representation=pca|latent)--> PCA codes [k] / chunk-VAE latent means, standardized
                                                   (wsl.generators.representations)

Alignment matters: hidden units of independently trained nets come in arbitrary order, so the
training set is a union of n!-fold copies of each net; matching every net to one reference
(Git Re-Basin) leaves one copy, which a generator can model (DeepWeightFlow's re-basin step).
Per-tensor standardization puts layers of different scales on an equal footing.

BatchNorm running statistics are not weights: they describe the data a net saw, not what it learned.
They are never matched (the alignment uses the spec of the parameters, `spec.parameters()`), never
encoded and never generated; a sampled net gets them re-estimated on the train split
(wsl.generators.sample).
"""

from __future__ import annotations

import torch
from torch import nn

from wsl.errors import ConfigError, ZooFormatError
from wsl.nets.spec import PermutationSpec
from wsl.zoo.layout import Layout


def layer_segments(layout: Layout) -> list[tuple[int, int]]:
    """(start, stop) of each layer in the flat vector: tensors sharing a module prefix
    (e.g. hidden.0.weight and hidden.0.bias) form one layer, i.e. one group of tokens."""
    out, prev = [], None
    for name, _, a, b in layout.entries:
        prefix = name.rsplit(".", 1)[0]
        if out and prefix == prev and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
        prev = prefix
    return out


def align_to_reference(reference: dict, state_dicts: list[dict], spec: PermutationSpec, max_iter: int = 100) -> list:
    """Every state dict permuted (function-preserving) to be closest in L2 to `reference`."""
    from wsl.symmetry import align

    return [align(reference, sd, spec, max_iter=max_iter) for sd in state_dicts]


def weights_only(state_dict: dict, layout: Layout, what: str = "state dict") -> dict:
    """The tensors of `layout` (a net's parameters) of a state dict, in layout order: BatchNorm
    statistics (and any other buffer) are left out."""
    missing = [n for n in layout.names if n not in state_dict]
    if missing:
        raise ZooFormatError(f"{what} lacks weight(s) {missing[:3]} of the layout ({len(missing)} missing)")
    return {n: state_dict[n] for n in layout.names}


class WeightAutoencoder(nn.Module):
    """MLP autoencoder of normalized weight vectors (p-diff's latent, for nets too large to model directly).

    encoder: [B, D] -> [B, latent]; decoder: [B, latent] -> [B, D]. The sizes are checked (and capped)
    by wsl.generators.schema.LatentConfig, for a config and a loaded run alike.
    """

    name = "mlp_autoencoder"

    def __init__(self, dim: int, latent_dim: int = 64, hidden: int = 512, depth: int = 2):
        super().__init__()
        self.kwargs = {"dim": dim, "latent_dim": latent_dim, "hidden": hidden, "depth": depth}

        def mlp(i, o):
            layers, d = [], i
            for _ in range(depth):
                layers += [nn.Linear(d, hidden), nn.LayerNorm(hidden), nn.SiLU()]
                d = hidden
            return nn.Sequential(*layers, nn.Linear(d, o))

        self.encoder, self.decoder = mlp(dim, latent_dim), mlp(latent_dim, dim)


class WeightRepresentation:
    """The fitted transform between nets and generator vectors, and its inverse.

    layout: the zoo's layout table; mean/std: [E] per layout entry; reference: the state dict every
    net is aligned to (None: no alignment); spec: the nets' permutation spec; autoencoder and
    latent_mean/latent_std [L]: the optional latent stage.
    """

    def __init__(self, layout: Layout, mean: torch.Tensor, std: torch.Tensor, reference: dict | None = None,
                 spec: PermutationSpec | None = None, autoencoder: WeightAutoencoder | None = None,
                 latent_mean: torch.Tensor | None = None, latent_std: torch.Tensor | None = None,
                 max_iter: int = 100, stage=None, kind: str = "flat"):
        self.layout, self.mean, self.std = layout, mean.double(), std.double()
        self.reference, self.spec, self.max_iter = reference, spec, int(max_iter)
        self.autoencoder, self.latent_mean, self.latent_std = autoencoder, latent_mean, latent_std
        self.stage, self.kind = stage, kind  # stage: PCACodes | ChunkVAE (wsl.generators.representations); kind: the
        # representation= choice (flat | tokens | pca | latent), recorded in runs written by this wsl (version 2)
        sizes = torch.tensor([b - a for _, _, a, b in layout.entries])
        self._index = torch.repeat_interleave(torch.arange(len(sizes)), sizes)  # [N] entry of each coordinate

    # ---- fitting ---------------------------------------------------------------------------------
    @classmethod
    def fit(cls, state_dicts: list[dict], layout: Layout, spec: PermutationSpec | None = None, align: bool = True,
            reference: int = 0, iterations: int = 1, max_iter: int = 100,
            min_std: float = 1e-8) -> tuple["WeightRepresentation", torch.Tensor]:
        """Align (optionally), flatten and fit per-tensor statistics. Returns (representation, flat [M, N]).

        iterations > 1 re-aligns every net to the mean of the previous alignment (closer to a
        barycenter than any single net, so later nets pay less for an atypical first reference).
        """
        if not 0 <= reference < len(state_dicts):
            raise ConfigError(f"reference={reference!r} must index one of the {len(state_dicts)} nets")
        sds = [{k: v.detach().double() for k, v in weights_only(sd, layout, f"net {i}").items()}
               for i, sd in enumerate(state_dicts)]
        ref = None
        if align:
            if spec is None:
                raise ConfigError("align=True needs the nets' permutation spec")
            spec = spec.parameters()  # buffers are never matched (nor present: weights only)
            ref = sds[reference]
            for it in range(iterations):
                sds = align_to_reference(ref, sds, spec, max_iter=max_iter)
                if it + 1 < iterations:
                    ref = layout.unflatten(torch.stack([layout.flatten(sd) for sd in sds]).mean(0))
        flat = torch.stack([layout.flatten(sd) for sd in sds])  # [M, N]
        blocks = [flat[:, a:b] for _, _, a, b in layout.entries]
        means = [x.mean() for x in blocks]
        stds = [x.std(unbiased=False).clamp_min(min_std) if x.numel() > 1 else torch.tensor(1.0) for x in blocks]
        return cls(layout, torch.stack(means), torch.stack(stds), reference=None if ref is None else
                   {k: v.clone() for k, v in ref.items()}, spec=spec if align else None, max_iter=max_iter), flat

    def fit_latent(self, autoencoder: WeightAutoencoder, normalized: torch.Tensor) -> None:
        """Attach a trained autoencoder; its latents of the training set fix the latent standardization."""
        autoencoder.eval()
        with torch.no_grad():
            z = autoencoder.encoder(normalized.float()).double()  # [M, L]
        self.autoencoder, self.latent_mean = autoencoder, z.mean(0)
        self.latent_std = z.std(0, unbiased=False).clamp_min(1e-6)

    # ---- transforms --------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Dimension of the generator's vectors."""
        if self.stage is not None:
            return self.stage.dim
        return int(self.latent_mean.numel()) if self.autoencoder is not None else self.layout.numel

    def segments(self) -> list[tuple[int, int]] | None:
        """Per-layer slices of the generator's vectors (None in latent space: it has no layers)."""
        return None if self.autoencoder is not None or self.stage is not None else layer_segments(self.layout)

    def align(self, state_dicts: list[dict]) -> list[dict]:
        """The weights of each state dict (buffers dropped), aligned to the reference when there is one."""
        sds = [weights_only(sd, self.layout) for sd in state_dicts]
        return sds if self.reference is None else align_to_reference(self.reference, sds, self.spec,
                                                                     max_iter=self.max_iter)

    def normalize(self, flat: torch.Tensor) -> torch.Tensor:  # [..., N] -> [..., N]
        mu, sd = self.mean[self._index], self.std[self._index]
        return ((flat.double() - mu) / sd).to(torch.float32)

    def encode(self, flat: torch.Tensor) -> torch.Tensor:
        """Flat (already aligned) weights [M, N] -> generator vectors [M, D]."""
        x = self.normalize(flat)
        if self.stage is not None:
            with torch.no_grad():
                return self.stage.encode(x).float()
        if self.autoencoder is None:
            return x
        with torch.no_grad():
            z = self.autoencoder.encoder(x).double()
        return ((z - self.latent_mean) / self.latent_std).float()

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Generator vectors [M, D] -> flat weights [M, N]."""
        if self.stage is not None:
            with torch.no_grad():
                x = self.stage.decode(x)
        elif self.autoencoder is not None:
            z = (x.double() * self.latent_std.to(x.device) + self.latent_mean.to(x.device)).float()
            with torch.no_grad():
                x = self.autoencoder.decoder(z)
        mu, sd = self.mean[self._index].to(x.device), self.std[self._index].to(x.device)
        return (x.double() * sd + mu).to(torch.float32)

    def state_dicts(self, flat: torch.Tensor) -> list[dict]:
        """[M, N] -> M state dicts of weights (contiguous copies; no BatchNorm statistics: wsl.generators.sample
        re-estimates them)."""
        return [{k: v.contiguous().clone() for k, v in self.layout.unflatten(row).items()} for row in flat]

    # ---- storage (tensors for safetensors + a JSON-able description) -------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"representation.mean": self.mean, "representation.std": self.std}
        if self.reference is not None:
            out.update({f"representation.reference.{k}": v for k, v in self.reference.items()})
        if self.autoencoder is not None:
            out.update({f"autoencoder.{k}": v for k, v in self.autoencoder.state_dict().items()})
            out.update({"representation.latent_mean": self.latent_mean, "representation.latent_std": self.latent_std})
        if self.stage is not None:
            out.update({f"stage.{k}": v for k, v in self.stage.tensors().items()})
        return out

    def meta(self) -> dict:
        return {"layout": self.layout.to_json(), "align": self.reference is not None, "max_iter": self.max_iter,
                "spec": None if self.spec is None else self.spec.to_json(),
                "autoencoder": None if self.autoencoder is None else dict(self.autoencoder.kwargs,
                                                                           name=WeightAutoencoder.name),
                **({} if self.kind == "flat" else {"kind": self.kind}),  # a flat run stays a version-1 run
                **({} if self.stage is None else {"stage": self.stage.meta()})}

    @classmethod
    def load(cls, meta: dict, tensors: dict[str, torch.Tensor], source: str = "generator checkpoint"):
        """Rebuild from `meta()` and `tensors()` (as read back from a generator run)."""
        try:
            layout = Layout.from_json(meta["layout"])
            ref = {n: tensors[f"representation.reference.{n}"] for n in layout.names} if meta["align"] else None
            spec = PermutationSpec.from_json(meta["spec"]).parameters() if meta.get("spec") else None
            ae = lm = ls = None
            if meta.get("autoencoder"):  # its name and sizes were checked by wsl.generators.generator_run.load_run
                ae = WeightAutoencoder(**{k: v for k, v in meta["autoencoder"].items() if k != "name"}).eval()
                ae.load_state_dict({k[len("autoencoder."):]: v for k, v in tensors.items()
                                    if k.startswith("autoencoder.")})
                lm, ls = tensors["representation.latent_mean"], tensors["representation.latent_std"]
            stage = None
            if meta.get("stage"):  # its name and sizes were checked by wsl.generators.generator_run.load_run
                from wsl.generators.representations import stage_class

                stage = stage_class(meta["stage"]["name"]).load(
                    meta["stage"], {k[len("stage."):]: v for k, v in tensors.items() if k.startswith("stage.")})
            return cls(layout, tensors["representation.mean"], tensors["representation.std"], reference=ref,
                       spec=spec, autoencoder=ae, latent_mean=lm, latent_std=ls, max_iter=meta.get("max_iter", 100),
                       stage=stage, kind=meta.get("kind", "flat"))
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ZooFormatError(f"{source}: the weight representation cannot be rebuilt ({type(e).__name__}: {e})") from e
