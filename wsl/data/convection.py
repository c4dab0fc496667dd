"""The 1-D convection equation as a physics-informed learning problem (Krishnapriyan et al. 2021):

    u_t + beta u_x = 0,   x in [0, 2 pi) periodic,  t in [0, 1],   u(x, 0) = sin(x),

whose exact solution is u(x, t) = sin(x - beta t). A net u(x, t) (input [x, t], one output) is fitted by
the mean squared PDE residual at interior collocation points, the mean squared error of the initial
condition at points (x, 0), and the mean squared difference u(0, t) - u(2 pi, t) at boundary pairs
(periodicity). `beta` is the load axis: the larger it is, the harder the problem (PINNs fail beyond
beta ~ 10-30 in plain training).

Splits (fixed, drawn with `seed`, recorded): "train" and "val" are independent uniform draws of
`collocation` interior points, `initial` initial points and `boundary` boundary times; "test" is the
regular grid of `test_nx` x `test_nt` points (x without 2 pi, t with both ends), its t = 0 row the
initial points and its times the boundary pairs. `split(s)` gives (points [N, 2], exact u [N, 1]): the
relative L2 error of a net on a split is ||u - u_exact|| / ||u_exact|| over those points.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from wsl.errors import ConfigError

TWO_PI = 2 * math.pi
MAX_BETA = 100.0
SPLITS = ("train", "val", "test")


def exact_solution(points: torch.Tensor, beta: float) -> torch.Tensor:
    """u(x, t) = sin(x - beta t) at points [N, 2] (x, t) -> [N, 1]."""
    return torch.sin(points[:, :1] - beta * points[:, 1:2])


@dataclass
class PINNData:
    """Collocation, initial and boundary points of the convection problem (see the module doc)."""

    name: str
    beta: float
    points: dict  # split -> interior points [N, 2] (x, t) float32
    initial_points: dict  # split -> [Ni, 2] points (x, 0)
    boundary_times: dict  # split -> [Nb] times t of the pairs (0, t), (2 pi, t)
    info: dict = field(default_factory=dict)
    kind: ClassVar[str] = "pinn"
    vocab_size: ClassVar = None  # float inputs
    causal: ClassVar[bool] = False

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (2,)

    @property
    def num_classes(self) -> int:  # the net's outputs: u
        return 1

    @property
    def x_train(self) -> torch.Tensor:
        return self.points["train"]

    def _check(self, name: str) -> None:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected train, val or test")

    def exact(self, points: torch.Tensor) -> torch.Tensor:
        return exact_solution(points, self.beta)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(interior points [N, 2], exact u there [N, 1])."""
        self._check(name)
        x = self.points[name]
        return x, self.exact(x)

    def initial(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(points (x, 0) [Ni, 2], u(x, 0) = sin(x) [Ni, 1])."""
        self._check(name)
        x = self.initial_points[name]
        return x, torch.sin(x[:, :1])

    def boundary(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(points (0, t) [Nb, 2], points (2 pi, t) [Nb, 2]): u must agree on each pair."""
        self._check(name)
        t = self.boundary_times[name][:, None]
        return torch.cat([torch.zeros_like(t), t], 1), torch.cat([torch.full_like(t, TWO_PI), t], 1)

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"convection beta={self.beta!r}".encode())
        for s in SPLITS:
            for t in (self.points[s], self.initial_points[s], self.boundary_times[s]):
                h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()


def check_beta(beta) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) \
            or not 0.0 <= beta <= MAX_BETA:
        raise ConfigError(f"dataset.beta must be a number in [0, {MAX_BETA:g}], got {beta!r}")
    return float(beta)


def convection(root=None, beta: float = 1.0, collocation: int = 1000, initial: int = 128, boundary: int = 128,
               test_nx: int = 128, test_nt: int = 64, subset_seed: int = 0) -> PINNData:
    """The convection problem's points (see the module doc); `subset_seed` draws the train and val points.
    `root` is accepted for the common dataset interface and unused."""
    beta = check_beta(beta)
    for key, v in (("collocation", collocation), ("initial", initial), ("boundary", boundary),
                   ("test_nx", test_nx), ("test_nt", test_nt)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (2 if key == "test_nt" else 1):
            raise ConfigError(f"dataset.{key} must be an integer >= {2 if key == 'test_nt' else 1}, got {v!r}")
    points, initial_points, times = {}, {}, {}
    for i, s in enumerate(("train", "val")):  # independent streams per split
        rng = np.random.default_rng([int(subset_seed), i])
        xt = np.stack([rng.uniform(0.0, TWO_PI, collocation), rng.uniform(0.0, 1.0, collocation)], 1)
        x0 = rng.uniform(0.0, TWO_PI, initial)
        points[s] = torch.from_numpy(xt.astype(np.float32))
        initial_points[s] = torch.from_numpy(np.stack([x0, np.zeros(initial)], 1).astype(np.float32))
        times[s] = torch.from_numpy(rng.uniform(0.0, 1.0, boundary).astype(np.float32))
    gx = np.arange(test_nx) * (TWO_PI / test_nx)
    gt = np.linspace(0.0, 1.0, test_nt)
    xx, tt = np.meshgrid(gx, gt, indexing="ij")
    points["test"] = torch.from_numpy(np.stack([xx.reshape(-1), tt.reshape(-1)], 1).astype(np.float32))
    initial_points["test"] = torch.from_numpy(np.stack([gx, np.zeros(test_nx)], 1).astype(np.float32))
    times["test"] = torch.from_numpy(gt.astype(np.float32))
    info = {"pde": "u_t + beta u_x = 0, x in [0, 2pi) periodic, t in [0, 1], u(x, 0) = sin(x)",
            "exact": "u = sin(x - beta t)", "beta": beta, "collocation": collocation, "initial": initial,
            "boundary": boundary, "test_grid": [test_nx, test_nt], "subset_seed": int(subset_seed),
            "sampling": "uniform (numpy default_rng([subset_seed, split])), train and val independent",
            "loss": "mean squared residual + initial MSE + periodic boundary MSE (weights 1)",
            "n_train": collocation, "n_val": collocation, "n_test": test_nx * test_nt, "input_shape": [2]}
    return PINNData("convection", beta, points, initial_points, times, info)
