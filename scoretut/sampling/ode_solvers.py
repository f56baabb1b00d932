"""Probability-flow ODE samplers: Euler, Heun, adaptive Dormand–Prince, and the EDM sampler.

Each has the shared signature ``sampler(sde, score_fn, x, ts, *, generator=None, **options)`` of
:mod:`scoretut.sampling`; the fixed-step ones run :func:`~scoretut.sampling.core.euler_steps` or
:func:`~scoretut.sampling.core.heun_steps` on the velocity they need.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import Tensor

from scoretut.errors import UsageError
from scoretut.parametrisation import prediction_of
from scoretut.sampling.core import Step, euler_steps, gaussian_noise, heun_steps, pf_velocity
from scoretut.sde import SDE, ScoreFn


def ode_euler(sde: SDE, score_fn: ScoreFn, x: Tensor, ts: Tensor, *, generator=None) -> Iterator[Step]:
    """Explicit Euler on the probability-flow ODE (first order; one evaluation per step)."""
    yield from euler_steps(pf_velocity(sde, score_fn), x, ts)


def ode_heun(sde: SDE, score_fn: ScoreFn, x: Tensor, ts: Tensor, *, generator=None) -> Iterator[Step]:
    """Heun's method (explicit trapezoid) on the probability-flow ODE — second order.

    ``x' = x + h v(x, t)``, then ``x ← x + h/2 (v(x, t) + v(x', t + h))``. A step that ends at
    ``t = 0`` stays an Euler step, because ``v`` is singular there (Karras et al. 2022, Alg. 1):
    ``n`` steps cost ``2n − 1`` evaluations on an EDM grid and ``2n`` otherwise.
    """
    yield from heun_steps(pf_velocity(sde, score_fn), x, ts, euler_last=float(ts[-1]) <= 0)


# Dormand–Prince 5(4) tableau (Dormand & Prince 1980), FSAL.
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DP_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DP_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)


def ode_rk45(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator=None,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    h0: float | None = None,
    max_steps: int = 10_000,
) -> Iterator[Step]:
    """Adaptive Dormand–Prince 5(4) on the probability-flow ODE from ``ts[0]`` to ``ts[-1]``.

    Only the endpoints of ``ts`` are used (on a grid that ends where std = 0, such as the EDM
    grid, it integrates to ``ts[-2]``, or to ``sde.t_min`` on the two-point grid ``[T, 0]``, and
    finishes with one Euler step, since the velocity is singular at std = 0); the step size follows the embedded error estimate
    (RMS over all elements of the batch, scaled by ``atol + rtol·|x|``), as in
    ``scipy.integrate.RK45``, which Song et al. (2021) used. Yields every accepted step; the
    number of score evaluations is about ``6 × accepted + 6 × rejected`` (+1).
    """
    v = pf_velocity(sde, score_fn)
    t, t_end = float(ts[0]), float(ts[-1])
    finish = None  # a grid ending where std = 0 (the EDM grid) ends with one Euler step, as Heun's
    if float(sde.std(torch.tensor(t_end, dtype=torch.float64))) == 0.0:
        finish, t_end = t_end, float(ts[-2]) if len(ts) > 2 else sde.t_min
    span = t_end - t
    h = h0 if h0 is not None else span / 20
    k1 = v(x, t)
    i = 0
    yield Step(0, t, x)
    while (t - t_end) * math.copysign(1, span) < 0:
        if i >= max_steps:
            raise RuntimeError(f"ode_rk45 took more than {max_steps} steps; loosen rtol/atol")
        last = (t + h - t_end) * math.copysign(1, span) >= 0
        if last:
            h = t_end - t
        ks = [k1]
        for c, a in zip(_DP_C[1:], _DP_A[1:]):
            xi = x + h * sum(aj * kj for aj, kj in zip(a, ks) if aj != 0.0)
            ks.append(v(xi, t + c * h))
        x5 = x + h * sum(b * k for b, k in zip(_DP_B5, ks) if b != 0.0)
        err = h * sum((b5 - b4) * k for b5, b4, k in zip(_DP_B5, _DP_B4, ks))
        scale = atol + rtol * torch.maximum(x.abs(), x5.abs())
        err_norm = float((err / scale).pow(2).mean().sqrt())
        if err_norm <= 1.0:
            # FSAL: the 7th stage is v at the new point; the last step lands exactly on t_end
            # (t + (t_end − t) can miss it by one ulp and cost a spurious step).
            t, x, k1 = (t_end if last else t + h), x5, ks[-1]
            i += 1
            yield Step(i, t, x)
        factor = 0.9 * err_norm ** (-1 / 5) if err_norm > 0 else 5.0
        h *= min(5.0, max(0.2, factor))
    if finish is not None:
        yield Step(i + 1, finish, x + (finish - t) * v(x, t))


EDM_SOLVERS = ("heun", "euler")


def edm_sampler(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator=None,
    solver: str = "heun",
    S_churn: float = 0.0,
    S_tmin: float = 0.0,
    S_tmax: float = math.inf,
    S_noise: float = 1.0,
) -> Iterator[Step]:
    """Karras et al. (2022), Algorithm 2: Heun (or Euler) steps in σ with stochastic "churn".

    It works on the rescaled state ``x̂ = x/s(t)`` at noise level ``σ = σ(t)``, where the
    probability-flow ODE of every SDE here reads ``dx̂/dσ = (x̂ − D(x̂; σ))/σ`` (Karras et al.
    2022, Eq. 4 with ``x̂``), ``D`` being the model's denoiser
    (:meth:`scoretut.parametrisation.Prediction.denoise`: a preconditioned network's own output,
    or Tweedie's formula from a score). With ``σ_i = σ(ts[i])`` and ``N = len(ts) − 1``:

    1. churn: ``γ_i = min(S_churn/N, √2 − 1)`` if ``S_tmin ≤ σ_i ≤ S_tmax`` else 0;
       ``σ̂ = (1 + γ_i) σ_i`` and ``x̂ ← x̂ + S_noise √(σ̂² − σ_i²) z`` (noise added back);
    2. Euler: ``d = (x̂ − D(x̂; σ̂))/σ̂`` and ``x̂' = x̂ + (σ_{i+1} − σ̂) d``;
    3. Heun (``solver="heun"`` and ``σ_{i+1} > 0``):
       ``x̂ ← x̂ + (σ_{i+1} − σ̂) · ½ (d + (x̂' − D(x̂'; σ_{i+1}))/σ_{i+1})``, else ``x̂ ← x̂'``.

    Steps 2–3 are one step of :func:`~scoretut.sampling.core.heun_steps` (or ``euler_steps``)
    from ``σ̂`` to ``σ_{i+1}`` on ``dx̂/dσ = (x̂ − D(x̂; σ))/σ``.

    Yields ``x = s(t_{i+1}) x̂``. Without churn on :class:`~scoretut.sde.EDMSDE` it is exactly
    :func:`ode_heun` / :func:`ode_euler`. NFE: Euler ``N``; Heun ``2N``, or ``2N − 1`` when the
    grid ends at ``σ = 0`` (the EDM grid of :func:`timesteps`). The churned level is mapped back
    to a time with ``sde.t_from_sigma``; except for ``EDMSDE`` (``t = σ``) that map stops at ``T``,
    so there keep ``S_tmax < σ(T)/(1 + γ)``.
    """
    if solver not in EDM_SOLVERS:
        raise UsageError(f"unknown EDM solver {solver!r}; choose one of: {', '.join(EDM_SOLVERS)}")
    if S_churn < 0 or S_noise < 0:
        raise UsageError(f"S_churn and S_noise must be >= 0, got {S_churn} and {S_noise}")
    ts, model = torch.as_tensor(ts, dtype=torch.float64), prediction_of(sde, score_fn)
    sigmas, scales = sde.sigma(ts), sde.scale(ts)
    n = len(ts) - 1
    gamma_max = min(S_churn / n, math.sqrt(2) - 1) if n else 0.0
    x_hat = x / float(scales[0])
    yield Step(0, float(ts[0]), x)
    for i in range(n):
        sigma, sigma_next, t_next = float(sigmas[i]), float(sigmas[i + 1]), float(ts[i + 1])
        gamma = gamma_max if S_tmin <= sigma <= S_tmax else 0.0
        sigma_hat, t_hat = sigma, float(ts[i])
        if gamma > 0:
            sigma_hat = sigma * (1 + gamma)
            t_hat = float(sde.t_from_sigma(torch.tensor(sigma_hat, dtype=torch.float64)))
            x_hat = x_hat + S_noise * math.sqrt(sigma_hat**2 - sigma**2) * gaussian_noise(x_hat, generator)
        time_of = {sigma_hat: t_hat, sigma_next: t_next}
        d = lambda y, s: (y - model.denoise(y, time_of[s])) / s  # noqa: E731
        grid = torch.tensor([sigma_hat, sigma_next], dtype=torch.float64)
        if solver == "heun":
            *_, last = heun_steps(d, x_hat, grid, euler_last=sigma_next <= 0)
        else:
            *_, last = euler_steps(d, x_hat, grid)
        x_hat = last.x
        yield Step(i + 1, t_next, float(scales[i + 1]) * x_hat)
