"""The shared sampling interface: :class:`Step`, time grids, NFE counting, the one Gaussian draw
of every sampler (:func:`gaussian_noise`), one reverse-SDE Euler–Maruyama step
(:func:`reverse_em_step`), the probability-flow velocity (:func:`pf_velocity`)
and the steppers :func:`euler_steps` and :func:`heun_steps` (``velocity(x, t)`` along any grid),
which every ODE solver, flow matching and the Schrödinger bridge use: the package has one Heun.
:func:`run_steps` runs a sampler to the end, keeping a thinned trajectory if asked, and
:class:`Generated` is what every pipeline's ``generate`` returns.

Build time grids with :func:`timesteps`: ``uniform`` in ``t`` (Song et al. 2021) or the
``karras`` grid in ``σ`` with ``ρ = 7`` (Karras et al. 2022, Eq. 5).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator, NamedTuple

import torch
from torch import Tensor

from scoretut.errors import UsageError
from scoretut.parametrisation import prediction_of
from scoretut.schedules import edm_sigmas
from scoretut.sde import SDE, EDMSDE, ScoreFn, bcast


class Step(NamedTuple):
    """One state of a sampling trajectory: step index ``i``, time ``t``, state ``x``."""

    i: int
    t: float
    x: Tensor


Sampler = Callable[..., Iterator[Step]]


class Generated(NamedTuple):
    """What every pipeline's ``generate`` returns: the samples ``x``, the network evaluations
    ``nfe`` spent on them, and the recorded states ``[(t, x), …]`` (on the CPU) when
    ``generate`` was asked for them with ``trajectory_every`` (else ``None``)."""

    x: Tensor
    nfe: int
    trajectory: list[tuple[float, Tensor]] | None = None


def run_steps(steps: Iterable[Step], trajectory_every: int | None = None) -> tuple[Tensor, list | None]:
    """Run a sampler's steps to the end without gradients: the last state, and with
    ``trajectory_every = k`` the ``(t, x)`` (``x`` on the CPU) of every step whose index is a
    multiple of ``k`` (the start included) and of the last step; ``None`` without it."""
    if trajectory_every is not None and trajectory_every < 1:
        raise UsageError(f"`trajectory_every` must be a positive number of steps, got {trajectory_every}")
    trajectory = None if trajectory_every is None else []
    with torch.no_grad():
        for step in steps:
            if trajectory is not None and step.i % trajectory_every == 0:
                trajectory.append((step.t, step.x.cpu()))
    if trajectory is not None and step.i % trajectory_every != 0:
        trajectory.append((step.t, step.x.cpu()))
    return step.x, trajectory


def timesteps(sde: SDE, n: int, kind: str = "uniform", rho: float = 7.0, t_end: float | None = None) -> Tensor:
    """A decreasing grid of ``n + 1`` times for ``n`` sampler steps.

    ``uniform``: ``linspace(T, t_min, n+1)``. ``karras``: ``n`` noise levels from ``σ(T)`` to
    ``σ(t_min)`` spaced as in Karras et al. (2022, Eq. 5), mapped back to times with
    ``sde.t_from_sigma``. For :class:`~scoretut.sde.EDMSDE` the grid is ``n`` noise levels followed
    by ``t = 0``, where one Euler step lands exactly on the denoiser output (Karras et al. 2022).
    """
    if n < 1:
        raise UsageError(f"the number of sampler steps must be positive, got {n}")
    t_end = sde.t_min if t_end is None else t_end
    if kind == "uniform":
        return torch.linspace(sde.T, t_end, n + 1, dtype=torch.float64)
    if kind == "karras":
        s_hi = float(sde.sigma(torch.tensor(sde.T, dtype=torch.float64)))
        s_lo = float(sde.sigma(torch.tensor(t_end, dtype=torch.float64)))
        if isinstance(sde, EDMSDE):  # n noise levels, then the exact jump to σ = 0
            if n == 1:
                return torch.tensor([sde.T, 0.0], dtype=torch.float64)
            ts = edm_sigmas(n, s_lo, s_hi, rho)
            return torch.cat([ts, ts.new_zeros(1)])
        ts = sde.t_from_sigma(edm_sigmas(n + 1, s_lo, s_hi, rho)).to(torch.float64)
        ts[0], ts[-1] = sde.T, t_end
        return ts
    raise UsageError(f"unknown time grid {kind!r}; use 'uniform' or 'karras'")


def gaussian_noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """``z ~ N(0, I)`` of ``x``'s shape, dtype and device, one ``torch.randn`` draw from
    ``generator`` (``None``: the global torch RNG). Every sampler draws its noise here."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def reverse_em_step(rev, x: Tensor, t: float, h: float, add_noise: bool, generator) -> Tensor:
    """One Euler–Maruyama step of the reverse SDE ``rev`` from ``t`` to ``t + h`` (``h < 0``)."""
    drift, g = rev.sde(x, t)
    x = x + drift * h
    if add_noise:
        x = x + bcast(g, x) * math.sqrt(-h) * gaussian_noise(x, generator)
    return x


def pf_velocity(sde: SDE, score_fn: ScoreFn) -> Callable[[Tensor, float], Tensor]:
    """``dx/dt = f(x, t) − ½ g(t)² ∇log p_t(x)`` (probability-flow ODE, Song et al. 2021 Eq. 13):
    the :meth:`~scoretut.parametrisation.Prediction.velocity` view of ``score_fn``."""
    return prediction_of(sde, score_fn).velocity


Velocity = Callable[[Tensor, float], Tensor]
"""``velocity(x, t) -> dx/dt`` at one time ``t`` (a float) for the whole batch ``x``."""


def euler_steps(velocity: Velocity, x: Tensor, ts: Tensor) -> Iterator[Step]:
    """Explicit Euler on ``dx/dt = velocity(x, t)`` along the grid ``ts`` (either direction):
    ``x ← x + h v(x, t)``, ``h = t_{i+1} − t_i``; one evaluation per step."""
    yield Step(0, float(ts[0]), x)
    for i in range(len(ts) - 1):
        t, h = float(ts[i]), float(ts[i + 1] - ts[i])
        x = x + h * velocity(x, t)
        yield Step(i + 1, float(ts[i + 1]), x)


def heun_steps(velocity: Velocity, x: Tensor, ts: Tensor, *, euler_last: bool = False) -> Iterator[Step]:
    """Heun's method (explicit trapezoid, second order) on ``dx/dt = velocity(x, t)`` along
    ``ts`` (either direction): ``x' = x + h v(x, t)``, then
    ``x ← x + h/2 (v(x, t) + v(x', t + h))``. With ``euler_last`` the last step stays an Euler
    step (for a ``velocity`` that is singular at the last time)."""
    yield Step(0, float(ts[0]), x)
    n = len(ts) - 1
    for i in range(n):
        t, t_next = float(ts[i]), float(ts[i + 1])
        h = t_next - t
        d = velocity(x, t)
        x_euler = x + h * d
        x = x_euler if euler_last and i == n - 1 else x + 0.5 * h * (d + velocity(x_euler, t_next))
        yield Step(i + 1, t_next, x)
