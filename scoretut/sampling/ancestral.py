"""DDPM ancestral sampling and DDIM, as generators with the shared sampler signature.

Both samplers step from ``t = ts[i]`` to ``s = ts[i+1] < t`` through the Gaussian posterior
``q(x_s | x_t, x_0)`` of :func:`scoretut.schedules.gaussian_posterior`, with ``x_0`` replaced by
the model's estimate ``x̂_0`` and its noise ``ε̂``, tied by ``x_t = α_t x̂_0 + σ_t ε̂``
(``α_t = s(t)``, ``σ_t = std(t)``; :meth:`scoretut.parametrisation.Prediction.eps_x0`). An
ε-network gives ``ε̂`` directly; a score ``s_θ`` gives ``ε̂ = −σ_t s_θ(x_t, t)`` (Tweedie).

* :func:`ddpm` (Ho et al. 2020, Alg. 2): ``x_s = c_0 x̂_0 + c_t x_t + σ z`` with
  ``σ² = β̃`` (``variance="beta_tilde"``, the posterior variance) or ``σ² = β`` (``"beta"``, the
  forward step's variance ``1 − ᾱ_t/ᾱ_s``). Over a subsequence of steps this is the respaced
  sampler of Nichol & Dhariwal (2021, Sec. 4).
* :func:`ddim` (Song et al. 2021, DDIM, Eq. 12 and 16):
  ``x_s = α_s x̂_0 + √(σ_s² − σ²) ε̂ + σ z`` with ``σ = η √β̃``; ``η = 0`` is deterministic
  (an ODE solver), ``η = 1`` is exactly :func:`ddpm` with ``β̃``.

The formulas use only ``sde.scale`` and ``sde.std``, so they run on any SDE of
:mod:`scoretut.sde`; on DDPM's own process (:class:`scoretut.schedules.DiscreteVP`, integer
``ts`` from :func:`scoretut.schedules.ddpm_timesteps`, ending at ``t = 0``) they are the
samplers of the papers, and the last step returns ``x̂_0`` with no noise. ``x`` may be any
shape ``(batch, *dims)`` — points ``(B, 2)`` or images ``(B, C, H, W)``. For an ε-prediction
network pass ``Prediction(sde, eps_model, "eps")`` as ``score_fn``.
"""

from __future__ import annotations

import math
from typing import Iterator, NamedTuple

import torch
from torch import Tensor

from scoretut.errors import UsageError
from scoretut.parametrisation import Prediction, noise_from_x0, prediction_of
from scoretut.sampling.core import Step, gaussian_noise
from scoretut.schedules import gaussian_posterior
from scoretut.sde import SDE, ScoreFn

VARIANCES = ("beta_tilde", "beta")


class _Coefficients(NamedTuple):
    """``α_t, σ_t, α_s, σ_s`` and the posterior ``q(x_s | x_t, x_0) = N(c0 x_0 + ct x_t, var)``."""

    a_t: float
    sd_t: float
    a_s: float
    sd_s: float
    c0: float
    ct: float
    var: float


def _steps(sde: SDE, ts: Tensor) -> Iterator[tuple[int, float, float, _Coefficients]]:
    """``(i, t, s, coefficients)`` for every step ``t = ts[i] → s = ts[i+1]`` of a checked grid."""
    for i in range(len(ts) - 1):
        t, s = float(ts[i]), float(ts[i + 1])
        tt = torch.tensor([t, s], dtype=torch.float64)
        scale, std = sde.scale(tt).to(torch.float64), sde.std(tt).to(torch.float64)
        c0, ct, var = (float(v) for v in gaussian_posterior(scale[0], std[0], scale[1], std[1]))
        yield i, t, s, _Coefficients(float(scale[0]), float(std[0]), float(scale[1]), float(std[1]), c0, ct, var)


def _predict(model: Prediction, x: Tensor, t: float, a_t: float, sd_t: float, clip_x0: float | None):
    """``(ε̂, x̂_0)`` at ``(x, t)`` from the model's own prediction (:meth:`Prediction.eps_x0`);
    with ``clip_x0`` the estimate ``x̂_0`` is clamped to ``[−clip_x0, clip_x0]`` and ``ε̂``
    recomputed from it (Ho et al. 2020's clipping for images)."""
    eps, x0 = model.eps_x0(x, t)
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
        eps = noise_from_x0(x, x0, a_t, sd_t)
    return eps, x0


def _check_grid(ts: Tensor) -> Tensor:
    ts = torch.as_tensor(ts, dtype=torch.float64)
    if ts.ndim != 1 or len(ts) < 2 or bool((ts[1:] >= ts[:-1]).any()):
        raise UsageError("DDPM/DDIM need a strictly decreasing grid of times, e.g. ddpm_timesteps(sde, 50)")
    return ts


def ddpm(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator=None,
    variance: str = "beta_tilde",
    clip_x0: float | None = None,
) -> Iterator[Step]:
    """Ancestral sampling ``x_s ~ N(c_0 x̂_0 + c_t x_t, σ²)`` (Ho et al. 2020, Alg. 2).

    ``σ² = β̃ = (1−ᾱ_s)/(1−ᾱ_t)·(1−ᾱ_t/ᾱ_s)`` for ``variance="beta_tilde"`` (the exact posterior
    variance; best for deterministic data) or ``σ² = β = 1 − ᾱ_t/ᾱ_s`` for ``"beta"`` (best for
    ``x_0 ~ N(0, I)``, Ho et al. 2020, Sec. 3.2); in the general notation ``β = σ_t² − a² σ_s²``
    with ``a = α_t/α_s``. No noise is added on a step that ends where ``std = 0`` (``t = 0``).
    """
    if variance not in VARIANCES:
        raise UsageError(f"unknown DDPM variance {variance!r}; choose one of: {', '.join(VARIANCES)}")
    ts, model = _check_grid(ts), prediction_of(sde, score_fn)
    yield Step(0, float(ts[0]), x)
    for i, t, s, c in _steps(sde, ts):
        _, x0 = _predict(model, x, t, c.a_t, c.sd_t, clip_x0)
        x_next = c.c0 * x0 + c.ct * x
        if c.sd_s > 0:  # β = σ_t² − a² σ_s², a = α_t/α_s: the variance of the forward step s → t
            var = c.sd_t**2 - (c.a_t / c.a_s) ** 2 * c.sd_s**2 if variance == "beta" else c.var
            x_next = x_next + math.sqrt(var) * gaussian_noise(x, generator)
        x = x_next
        yield Step(i + 1, s, x)


def ddim(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator=None,
    eta: float = 0.0,
    clip_x0: float | None = None,
) -> Iterator[Step]:
    """DDIM: ``x_s = α_s x̂_0 + √(σ_s² − σ²) ε̂ + σ z`` with ``σ = η √β̃`` (Song et al. 2021, Eq. 12, 16).

    ``η = 0``: deterministic; the update is exact for the probability-flow ODE written in
    ``x/α`` and ``σ_t/α_t`` when ``ε̂`` is held fixed over the step (an Euler step in that
    variable, Karras et al. 2022, Sec. 3). ``η = 1``: the same distribution as :func:`ddpm`
    with ``β̃`` (and with the same ``generator`` the same numbers).
    """
    if eta < 0:
        raise UsageError(f"DDIM needs eta >= 0 (0 deterministic, 1 = DDPM), got {eta}")
    ts, model = _check_grid(ts), prediction_of(sde, score_fn)
    yield Step(0, float(ts[0]), x)
    for i, t, s, c in _steps(sde, ts):
        eps, x0 = _predict(model, x, t, c.a_t, c.sd_t, clip_x0)
        sigma = eta * math.sqrt(c.var)
        x = c.a_s * x0 + math.sqrt(max(c.sd_s**2 - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * gaussian_noise(x, generator)
        yield Step(i + 1, s, x)
