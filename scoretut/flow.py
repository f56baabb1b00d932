"""Flow matching and rectified flow: Gaussian paths, the loss, reflow, straightness, and the
conversion between a flow's velocity and a diffusion's score.

**Paths.** Noise ``x_0 ~ N(0, I)`` at ``t = 0``, data ``x_1 ~ p_data`` at ``t = 1`` (the
convention of Lipman et al. 2023 and of :mod:`scoretut.bridge`, whose ``σ = 0`` limit this is):

.. math::  x_t = α_t\\,x_1 + σ_t\\,x_0, \\qquad u_t = \\dot α_t\\,x_1 + \\dot σ_t\\,x_0

with ``α_0 = 0, σ_0 = 1`` and ``α_1 = 1, σ_1 = 0``. :class:`LinearPath` (``α_t = t``,
``σ_t = 1 − t``; rectified flow, Liu et al. 2023, and the OT path of Lipman et al.) has the
constant conditional velocity ``u_t = x_1 − x_0``; :class:`CosinePath` (``α_t = sin(πt/2)``,
``σ_t = cos(πt/2)``) is a variance-preserving path.

**Flow matching** (Lipman et al. 2023; Liu et al. 2023; Albergo & Vanden-Eijnden 2023):
regressing ``v_θ(x_t, t)`` on ``u_t`` (:class:`FlowMatchingLoss`) has the minimiser
``v(x, t) = E[u_t | x_t = x]``, the *marginal* velocity, whose ODE ``dx/dt = v`` carries
``N(0, I)`` to the data. With pairs ``(x_0, x_1)`` from a coupling (:mod:`scoretut.couplings`:
minibatch OT gives OT-CFM, Tong et al. 2024) or from the model's own ODE (:func:`reflow_pairs`,
Liu et al. 2023) the same loss applies.

**Diffusion ↔ flow.** ``E[x_0 | x] = (x − α E[x_1 | x])/σ`` and Tweedie's formula
``E[x_1 | x] = (x + σ² ∇log p_t(x))/α`` give

.. math::  v(x, t) = \\frac{\\dot α_t}{α_t}\\,x - \\Big(\\dot σ_t σ_t - \\frac{\\dot α_t}{α_t}σ_t^2\\Big)\\nabla\\log p_t(x)

(:func:`velocity_from_score`, :func:`score_from_velocity`). So a flow is the probability-flow
ODE of a diffusion with scale ``s(τ) = α_{1−τ}`` and standard deviation ``σ_{1−τ}`` in diffusion
time ``τ = 1 − t`` (:class:`PathSDE`), and every sampler of :mod:`scoretut.sampling` runs on it.

**Straightness** (Liu et al. 2023, Eq. 5): ``S = ∫₀¹ E‖(x_1 − x_0) − v(x_t, t)‖² dt`` along the
flow's own trajectories; ``S = 0`` exactly when every trajectory is a straight line travelled
at constant speed, which is what lets one Euler step land on the end point.

The pipeline (a recipe, ``build``, ``fit``, ``load``, ``generate``) is
:mod:`scoretut.pipelines.flow2d`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from scoretut.couplings import split_pairs
from scoretut.errors import UsageError
from scoretut.losses import sample_times
from scoretut.nets import ScoreMLP
from scoretut.runtime import default_device
from scoretut.sampling import Step, euler_steps, heun_steps
from scoretut.sde import SDE, ScoreFn, as_time, bcast, ftensor

VelocityFn = Callable[[Tensor, Tensor], Tensor]
"""``velocity(x, t) -> dx/dt``; ``x`` ``(batch, dim)``, ``t`` ``(batch,)`` in flow time."""

SOLVERS = {"euler": "ode_euler", "heun": "ode_heun"}
"""Solvers of :func:`integrate`, by the sampler of :mod:`scoretut.sampling` whose steps they take
(and whose cost per step :func:`scoretut.sampling.nfe_per_step` gives)."""


# --------------------------------------------------------------------------- paths


class GaussianPath(ABC):
    """``x_t = α_t x_1 + σ_t x_0`` with ``x_0 ~ N(0, I)``; subclasses give ``α, σ`` and their
    time derivatives (``t`` a float or tensor; results broadcast against ``x``)."""

    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def d_alpha(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def d_sigma(self, t: Tensor) -> Tensor: ...

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """``x_t = α_t x_1 + σ_t x_0``."""
        return bcast(self.alpha(t), x1) * x1 + bcast(self.sigma(t), x0) * x0

    def velocity(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """The conditional velocity ``u_t = α̇_t x_1 + σ̇_t x_0``."""
        return bcast(self.d_alpha(t), x1) * x1 + bcast(self.d_sigma(t), x0) * x0

    def diffusion_coefficient(self, t: Tensor) -> Tensor:
        """``½g² = (α̇/α) σ² − σ̇ σ``: the score's coefficient in :func:`velocity_from_score`."""
        return self.d_alpha(t) / self.alpha(t) * self.sigma(t) ** 2 - self.d_sigma(t) * self.sigma(t)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearPath(GaussianPath):
    """``α_t = t``, ``σ_t = 1 − t``: straight conditional paths, ``u_t = x_1 − x_0``."""

    def alpha(self, t):
        return ftensor(t)

    def sigma(self, t):
        return 1 - ftensor(t)

    def d_alpha(self, t):
        return torch.ones_like(ftensor(t))

    def d_sigma(self, t):
        return -torch.ones_like(ftensor(t))


class CosinePath(GaussianPath):
    """``α_t = sin(πt/2)``, ``σ_t = cos(πt/2)``: ``α² + σ² = 1`` (variance preserving)."""

    def alpha(self, t):
        return torch.sin(0.5 * math.pi * ftensor(t))

    def sigma(self, t):
        return torch.cos(0.5 * math.pi * ftensor(t))

    def d_alpha(self, t):
        return 0.5 * math.pi * torch.cos(0.5 * math.pi * ftensor(t))

    def d_sigma(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * ftensor(t))


PATHS = {"linear": LinearPath, "cosine": CosinePath}
"""The paths by name (a flow recipe's ``path``)."""


# --------------------------------------------------------------------------- diffusion ↔ flow


def velocity_from_score(path: GaussianPath, score_fn: ScoreFn) -> VelocityFn:
    """``v(x, t) = (α̇/α) x − (σ̇σ − (α̇/α)σ²) ∇log p_t(x)`` from the score of the marginal
    ``p_t`` (``score_fn(x, t)`` in flow time ``t``, ``0 < t ≤ 1``)."""

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        t = as_time(t, x)
        drift = bcast(path.d_alpha(t) / path.alpha(t), x) * x
        return drift + bcast(path.diffusion_coefficient(t), x) * score_fn(x, t)

    return velocity


def score_from_velocity(path: GaussianPath, velocity_fn: VelocityFn) -> ScoreFn:
    """The inverse of :func:`velocity_from_score`:
    ``∇log p_t(x) = (v(x, t) − (α̇/α) x) / ((α̇/α)σ² − σ̇σ)`` (``0 < t < 1``)."""

    def score(x: Tensor, t: Tensor) -> Tensor:
        t = as_time(t, x)
        drift = bcast(path.d_alpha(t) / path.alpha(t), x) * x
        return (velocity_fn(x, t) - drift) / bcast(path.diffusion_coefficient(t), x)

    return score


def velocity_from_posterior(path: GaussianPath, x1_mean: Callable[[Tensor, Tensor], Tensor]) -> VelocityFn:
    """``v(x, t) = E[u_t | x_t = x] = α̇ E[x_1 | x] + σ̇ E[x_0 | x]`` with
    ``E[x_0 | x] = (x − α E[x_1 | x])/σ``, from the posterior mean ``x1_mean(x, t)`` of the
    data (``0 ≤ t < 1``)."""

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        t = as_time(t, x)
        m1 = x1_mean(x, t)
        m0 = (x - bcast(path.alpha(t), x) * m1) / bcast(path.sigma(t), x)
        return bcast(path.d_alpha(t), x) * m1 + bcast(path.d_sigma(t), x) * m0

    return velocity


class PathSDE(SDE):
    """The diffusion whose marginals are those of ``path``, in diffusion time ``τ = 1 − t``:
    ``s(τ) = α_{1−τ}``, ``std(τ) = σ_{1−τ}``, hence

    .. math::  f(x, τ) = -\\frac{\\dot α}{α}\\,x, \\qquad g(τ)^2 = 2\\Big(\\frac{\\dot α}{α}σ^2 - \\dot σσ\\Big)

    (``α, σ`` and their ``t``-derivatives at ``t = 1 − τ``), and the probability-flow ODE
    ``dx/dτ = f − ½g² ∇log p = −v``. ``f`` is singular at pure noise (``α = 0``), so the
    process starts at ``T = 1 − t_min``; it ends at ``t_min = 0`` (the data, ``std = 0``).
    Pair it with :func:`diffusion_score` to run any sampler of :mod:`scoretut.sampling` on a
    flow model.
    """

    def __init__(self, path: GaussianPath | None = None, t_start: float = 1e-3):
        if not 0 < t_start < 1:
            raise UsageError(f"t_start must lie in (0, 1), got {t_start}")
        self.path, self.t_start = path or LinearPath(), float(t_start)
        self.T, self.t_min = 1 - self.t_start, 0.0

    def sde(self, x, t):
        t = 1 - as_time(t, x)
        f = -bcast(self.path.d_alpha(t) / self.path.alpha(t), x) * x
        return f, torch.sqrt(2 * self.path.diffusion_coefficient(t))

    def scale(self, t):
        return self.path.alpha(1 - ftensor(t))

    def std(self, t):
        return self.path.sigma(1 - ftensor(t))

    def prior_std(self) -> float:
        return 1.0  # start from pure noise N(0, I) at τ = T (t = t_min)


def diffusion_score(path: GaussianPath, velocity_fn: VelocityFn) -> ScoreFn:
    """``score(x, τ)`` in :class:`PathSDE` time ``τ = 1 − t`` from a flow's velocity."""
    score = score_from_velocity(path, velocity_fn)
    return lambda x, tau: score(x, 1 - as_time(tau, x))


# --------------------------------------------------------------------------- training


def velocity_net(dim: int = 2, hidden: int = 128, depth: int = 3, emb_dim: int = 64) -> ScoreMLP:
    """A velocity network ``v_θ(x, t)`` (:class:`~scoretut.nets.ScoreMLP`, time embedded with
    ``cond_scale = 1000`` since ``t ∈ [0, 1]``); seed torch before calling."""
    return ScoreMLP(dim=dim, hidden=hidden, depth=depth, emb_dim=emb_dim, cond_scale=1000.0)


class FlowMatchingLoss:
    """Conditional flow matching, ``loss_fn(model, batch, generator)`` for
    :func:`scoretut.train.train`:

    .. math::  \\mathcal L = \\mathbb E_{t, (x_0, x_1)}\\,\\|v_θ(x_t, t) - u_t\\|^2, \\qquad
               t \\sim U(t_\\text{min}, t_\\text{max}).

    ``batch`` is data ``(B, dim)`` — then ``x_0 ~ N(0, I)`` is drawn independently (the
    independent coupling) — or pairs ``(B, 2, dim)`` of ``(x_0, x_1)`` from a coupling
    (:func:`scoretut.couplings.coupled_pairs`, :func:`reflow_pairs`).
    """

    def __init__(self, path: GaussianPath | None = None, t_min: float = 0.0, t_max: float = 1.0,
                 time_sampling: str = "uniform"):  # fmt: skip
        if not 0 <= t_min < t_max <= 1:
            raise UsageError(f"need 0 <= t_min < t_max <= 1, got {t_min} and {t_max}")
        if time_sampling not in ("uniform", "stratified"):
            raise UsageError(f"time_sampling must be 'uniform' or 'stratified', got {time_sampling!r}")
        self.path, self.t_min, self.t_max = path or LinearPath(), float(t_min), float(t_max)
        self.stratified = time_sampling == "stratified"

    def __call__(self, model: nn.Module, batch: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if batch.ndim == 3:
            x0, x1 = split_pairs(batch)
        elif batch.ndim == 2:
            x1 = batch
            x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        else:
            raise UsageError(f"flow matching trains on data (batch, dim) or pairs (batch, 2, dim), "
                             f"got {tuple(batch.shape)}")  # fmt: skip
        t = sample_times(len(x1), self.t_min, self.t_max, stratified=self.stratified,
                         generator=generator, device=x1.device, dtype=x1.dtype)  # fmt: skip
        x_t = self.path.sample(x0, x1, t)
        return (model(x_t, t) - self.path.velocity(x0, x1, t)).pow(2).sum(1).mean()


# --------------------------------------------------------------------------- sampling


def time_grid(steps: int, t_start: float = 0.0, t_end: float = 1.0) -> Tensor:
    """``steps + 1`` uniform times from ``t_start`` to ``t_end`` (float64)."""
    if steps < 1:
        raise UsageError(f"the number of integration steps must be positive, got {steps}")
    return torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)


@torch.no_grad()
def integrate(model: VelocityFn, x: Tensor, steps: int, solver: str = "euler", *, t_start: float = 0.0,
              t_end: float = 1.0) -> Iterator[Step]:  # fmt: skip
    """Solve ``dx/dt = v_θ(x, t)`` from ``t_start`` to ``t_end`` (either direction) in
    ``steps`` uniform steps of :func:`scoretut.sampling.euler_steps` or
    :func:`~scoretut.sampling.heun_steps`, yielding a :class:`~scoretut.sampling.Step` after
    each (the first is the start). NFE: ``steps ×`` 1 (Euler) or 2 (Heun)."""
    if solver not in SOLVERS:
        raise UsageError(f"unknown solver {solver!r}; choose one of: {', '.join(SOLVERS)}")
    ts = time_grid(steps, t_start, t_end)
    velocity = lambda y, t: model(y, as_time(t, y))  # noqa: E731
    yield from (euler_steps if solver == "euler" else heun_steps)(velocity, x, ts)


def transport(model: VelocityFn, x: Tensor, steps: int, solver: str = "euler", **options) -> Tensor:
    """The end state of :func:`integrate` (same arguments)."""
    for step in integrate(model, x, steps, solver, **options):
        x = step.x
    return x


def noise(n: int, seed: int, dim: int = 2, device=None) -> Tensor:
    """``x_0 ~ N(0, I)``, shape ``(n, dim)``, drawn with ``seed`` (on the CPU, then moved, so the
    draw does not depend on the device)."""
    if n < 1:
        raise UsageError(f"the number of samples must be positive, got {n}")
    z = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    return z.to(device or default_device())


def reflow_pairs(model: nn.Module, n: int, *, seed: int = 0, steps: int = 32, solver: str = "heun",
                 batch_size: int = 10_000) -> Tensor:  # fmt: skip
    """Rectified-flow pairs (Liu et al. 2023, Alg. 1): noise ``x_0`` drawn with ``seed`` and the
    end point ``x_1 = ODE_θ(x_0)`` of the model's own flow; returns ``(n, 2, 2)`` on the
    model's device. Retraining on these pairs gives the next, straighter flow."""
    device = next(model.parameters()).device
    x0 = noise(n, seed, 2, device)
    x1 = torch.cat([transport(model.eval(), b, steps, solver) for b in x0.split(batch_size)])
    return torch.stack([x0, x1], dim=1)


@torch.no_grad()
def straightness(model: VelocityFn, x0: Tensor, steps: int = 100, solver: str = "heun") -> float:
    """``S = ∫₀¹ E‖(x_1 − x_0) − v(x_t, t)‖² dt`` along the ODE trajectories from ``x0``
    ``(n, dim)``: the states of :func:`integrate` on a uniform grid of ``steps`` steps, the
    velocity evaluated at each, and the trapezoid rule in ``t``."""
    states = list(integrate(model, x0, steps, solver))
    chord = states[-1].x - states[0].x
    gaps = torch.stack([(chord - model(s.x, as_time(s.t, s.x))).pow(2).sum(1).mean() for s in states])
    gaps = gaps.double().cpu()
    return float(((gaps[1:] + gaps[:-1]) / 2).sum() / steps)
