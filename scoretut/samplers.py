"""Samplers for the reverse process, all with one signature and all Python generators.

Every sampler is called as ::

    sampler(sde, score_fn, x, ts, *, generator=None, **options)

with ``x`` the starting state at time ``ts[0]`` (usually ``sde.prior_sampling(shape)``) and
``ts`` a decreasing 1-D tensor of times from ``ts[0]`` (≈ ``T``) down to ``ts[-1]`` (≈ ``eps``,
or ``0`` for :class:`~scoretut.sde.EDMSDE`). Each sampler *yields* a :class:`Step` after every
update — the first yield is the starting state — so a chapter can record a trajectory (or build
widget frames) with a plain ``for`` loop, and :func:`sample` just keeps the last state.

The ODE solvers are built on two velocity-level steppers, :func:`euler_steps` and
:func:`heun_steps` (``velocity(x, t)`` along any grid, either direction), which flow matching
(:mod:`scoretut.flow`) and the Schrödinger bridge use directly, so the package has one Heun.

Build time grids with :func:`timesteps`: ``uniform`` in ``t`` (Song et al. 2021) or the
``karras`` grid in ``σ`` with ``ρ = 7`` (Karras et al. 2022, Eq. 5).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, NamedTuple

import torch
from torch import Tensor

from scoretut.config import UsageError
from scoretut.precond import denoiser_from_score
from scoretut.sde import SDE, EDMSDE, ScoreFn, as_time, bcast


class Step(NamedTuple):
    """One state of a sampling trajectory: step index ``i``, time ``t``, state ``x``."""

    i: int
    t: float
    x: Tensor


Sampler = Callable[..., Iterator[Step]]


def edm_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """``σ_i = (σ_max^{1/ρ} + i/(n−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ``, ``i = 0..n−1`` (Karras Eq. 5).

    ``n`` decreasing noise levels from ``σ_max`` to ``σ_min``, shape ``(n,)`` float64. ``ρ = 1`` is
    uniform in σ, ``ρ → ∞`` geometric; ``ρ = 7`` shortens the steps near ``σ_min``.
    """
    if n < 2:
        raise UsageError("an EDM (Karras) grid needs at least 2 noise levels; raise the number of steps")
    if not 0 < sigma_min < sigma_max or rho <= 0:
        raise UsageError(f"edm_sigmas needs 0 < sigma_min < sigma_max and rho > 0; got {sigma_min}, {sigma_max}, {rho}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


karras_sigmas = edm_sigmas  # the name k-diffusion uses (get_sigmas_karras)


def timesteps(sde: SDE, n: int, kind: str = "uniform", rho: float = 7.0, t_end: float | None = None) -> Tensor:
    """A decreasing grid of ``n + 1`` times for ``n`` sampler steps.

    ``uniform``: ``linspace(T, eps, n+1)``. ``karras``: ``n`` noise levels from ``σ(T)`` to
    ``σ(eps)`` spaced as in Karras et al. (2022, Eq. 5), mapped back to times with
    ``sde.t_from_sigma``. For :class:`~scoretut.sde.EDMSDE` the grid is ``n`` noise levels followed
    by ``t = 0``, where one Euler step lands exactly on the denoiser output (Karras et al. 2022).
    """
    if n < 1:
        raise UsageError(f"the number of sampler steps must be positive, got {n}")
    t_end = sde.eps if t_end is None else t_end
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


# -- stochastic samplers ----------------------------------------------------------------------
def _reverse_em_step(rev, x: Tensor, t: float, h: float, add_noise: bool, generator) -> Tensor:
    """One Euler–Maruyama step of the reverse SDE ``rev`` from ``t`` to ``t + h`` (``h < 0``)."""
    drift, g = rev.sde(x, t)
    x = x + drift * h
    if add_noise:
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = x + bcast(g, x) * math.sqrt(-h) * z
    return x


def euler_maruyama(
    sde: SDE, score_fn: ScoreFn, x: Tensor, ts: Tensor, *, generator=None, denoise_last: bool = True
) -> Iterator[Step]:
    """Euler–Maruyama on the reverse SDE: ``x ← x − [f − g² ∇log p] |h| + g √|h| z``.

    With ``denoise_last`` the final step adds no noise (it returns the step's mean), as in
    Song et al. (2021, App. G).
    """
    yield from predictor_corrector(
        sde, score_fn, x, ts, generator=generator, n_corrector=0, denoise_last=denoise_last
    )


def langevin_correct(
    score_fn: ScoreFn, x: Tensor, t: Tensor, snr: float, n_steps: int, generator=None, alpha: float = 1.0
) -> Tensor:
    """Langevin corrector with a target signal-to-noise ratio (Song et al. 2021, Algs. 4 and 5).

    ``ε = 2 α (snr ‖z‖ / ‖∇log p‖)²`` with both norms averaged over the batch, then
    ``x ← x + ε ∇log p + √(2ε) z``. ``α = 1`` is Alg. 4 (VE); Alg. 5 (VP) uses ``α = α_i``
    (:func:`corrector_alpha`). (A per-sample step size would explode at points where the score
    nearly vanishes, e.g. at a mode in low dimension.)
    """
    for _ in range(n_steps):
        grad = score_fn(x, t)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        grad_norm = grad.flatten(1).norm(dim=1).mean().clamp_min(1e-12)
        noise_norm = z.flatten(1).norm(dim=1).mean()
        eps = 2 * alpha * (snr * noise_norm / grad_norm) ** 2
        x = x + eps * grad + torch.sqrt(2 * eps) * z
    return x


def corrector_alpha(sde: SDE, t: float, t_next: float) -> float:
    """The ``α_i`` of Song et al. (2021, Alg. 5) for a corrector at ``t`` before a step to ``t_next``:
    ``α = (s(t) / s(t_next))²``, the ``ᾱ_i / ᾱ_{i−1} = 1 − β_i`` of the DDPM chain (exactly, for
    :class:`~scoretut.schedules.DiscreteVP` at integer times), and 1 for an SDE with ``s ≡ 1`` (VE,
    Alg. 4)."""
    s, s_next = sde.scale(torch.tensor([t, t_next], dtype=torch.float64)).expand(2).tolist()
    return (s / s_next) ** 2


def predictor_corrector(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator=None,
    snr: float = 0.16,
    n_corrector: int = 1,
    denoise_last: bool = True,
) -> Iterator[Step]:
    """Predictor–corrector sampling (Song et al. 2021, Alg. 1): at each time, ``n_corrector``
    Langevin corrector steps at the current ``t`` (step size with Alg. 5's ``α_i``,
    :func:`corrector_alpha`), then one reverse-SDE Euler–Maruyama step."""
    rev = sde.reverse(score_fn)
    yield Step(0, float(ts[0]), x)
    for i in range(len(ts) - 1):
        t, h = float(ts[i]), float(ts[i + 1] - ts[i])
        if n_corrector:
            alpha = corrector_alpha(sde, t, float(ts[i + 1]))
            x = langevin_correct(score_fn, x, as_time(t, x), snr, n_corrector, generator, alpha)
        last = i == len(ts) - 2
        x = _reverse_em_step(rev, x, t, h, not (denoise_last and last), generator)
        yield Step(i + 1, float(ts[i + 1]), x)


# -- probability-flow ODE samplers -------------------------------------------------------------
def _velocity(sde: SDE, score_fn: ScoreFn) -> Callable[[Tensor, float], Tensor]:
    """``dx/dt = f(x, t) − ½ g(t)² ∇log p_t(x)`` (probability-flow ODE, Song et al. 2021 Eq. 13)."""
    rev = sde.reverse(score_fn, probability_flow=True)
    return lambda x, t: rev.sde(x, t)[0]


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


def ode_euler(sde: SDE, score_fn: ScoreFn, x: Tensor, ts: Tensor, *, generator=None) -> Iterator[Step]:
    """Explicit Euler on the probability-flow ODE (first order; one evaluation per step)."""
    yield from euler_steps(_velocity(sde, score_fn), x, ts)


def ode_heun(sde: SDE, score_fn: ScoreFn, x: Tensor, ts: Tensor, *, generator=None) -> Iterator[Step]:
    """Heun's method (explicit trapezoid) on the probability-flow ODE — second order.

    ``x' = x + h v(x, t)``, then ``x ← x + h/2 (v(x, t) + v(x', t + h))``. A step that ends at
    ``t = 0`` stays an Euler step, because ``v`` is singular there (Karras et al. 2022, Alg. 1):
    ``n`` steps cost ``2n − 1`` evaluations on an EDM grid and ``2n`` otherwise.
    """
    yield from heun_steps(_velocity(sde, score_fn), x, ts, euler_last=float(ts[-1]) <= 0)


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
    grid, it integrates to ``ts[-2]``, or to ``sde.eps`` on the two-point grid ``[T, 0]``, and
    finishes with one Euler step, since the velocity is singular at std = 0); the step size follows the embedded error estimate
    (RMS over all elements of the batch, scaled by ``atol + rtol·|x|``), as in
    ``scipy.integrate.RK45``, which Song et al. (2021) used. Yields every accepted step; the
    number of score evaluations is about ``6 × accepted + 6 × rejected`` (+1).
    """
    v = _velocity(sde, score_fn)
    t, t_end = float(ts[0]), float(ts[-1])
    finish = None  # a grid ending where std = 0 (the EDM grid) ends with one Euler step, as Heun's
    if float(sde.std(torch.tensor(t_end, dtype=torch.float64))) == 0.0:
        finish, t_end = t_end, float(ts[-2]) if len(ts) > 2 else sde.eps
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


# -- the EDM sampler ----------------------------------------------------------------------------
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
    2022, Eq. 4 with ``x̂``), ``D`` being the Tweedie denoiser of ``score_fn``
    (:func:`scoretut.precond.denoiser_from_score`). With ``σ_i = σ(ts[i])`` and ``N = len(ts) − 1``:

    1. churn: ``γ_i = min(S_churn/N, √2 − 1)`` if ``S_tmin ≤ σ_i ≤ S_tmax`` else 0;
       ``σ̂ = (1 + γ_i) σ_i`` and ``x̂ ← x̂ + S_noise √(σ̂² − σ_i²) z`` (noise added back);
    2. Euler: ``d = (x̂ − D(x̂; σ̂))/σ̂`` and ``x̂' = x̂ + (σ_{i+1} − σ̂) d``;
    3. Heun (``solver="heun"`` and ``σ_{i+1} > 0``):
       ``x̂ ← x̂ + (σ_{i+1} − σ̂) · ½ (d + (x̂' − D(x̂'; σ_{i+1}))/σ_{i+1})``, else ``x̂ ← x̂'``.

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
    ts = torch.as_tensor(ts, dtype=torch.float64)
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
            z = torch.randn(x_hat.shape, generator=generator, dtype=x_hat.dtype, device=x_hat.device)
            x_hat = x_hat + S_noise * math.sqrt(sigma_hat**2 - sigma**2) * z
        d = (x_hat - denoiser_from_score(sde, score_fn, x_hat, t_hat)) / sigma_hat
        x_next = x_hat + (sigma_next - sigma_hat) * d
        if solver == "heun" and sigma_next > 0:
            d_next = (x_next - denoiser_from_score(sde, score_fn, x_next, t_next)) / sigma_next
            x_next = x_hat + (sigma_next - sigma_hat) * 0.5 * (d + d_next)
        x_hat = x_next
        yield Step(i + 1, t_next, float(scales[i + 1]) * x_hat)


SAMPLERS: dict[str, Sampler] = {
    "em": euler_maruyama,
    "pc": predictor_corrector,
    "ode_euler": ode_euler,
    "ode_heun": ode_heun,
    "ode_rk45": ode_rk45,
    "edm": edm_sampler,
}


def get_sampler(name: str) -> Sampler:
    """Look a sampler up by name, with an error that lists the valid names."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise UsageError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}") from None


def sample(sampler: Sampler | str, sde: SDE, score_fn: ScoreFn, x: Tensor, ts: Tensor, **options) -> Tensor:
    """Run ``sampler`` to the end and return the final state (no trajectory is kept)."""
    sampler = get_sampler(sampler) if isinstance(sampler, str) else sampler
    with torch.no_grad():
        for step in sampler(sde, score_fn, x, ts, **options):
            x = step.x
    return x


class CountingScore:
    """Wrap a score function and count network evaluations (NFE), one per batched call."""

    def __init__(self, score_fn: ScoreFn):
        self.score_fn, self.nfe = score_fn, 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        return self.score_fn(x, t)


# Samplers defined in their own modules register themselves in SAMPLERS on import:
# "ddpm", "ddim" (scoretut.ancestral) and "langevin", "annealed_langevin" (scoretut.ncsn).
from scoretut import ancestral as _ancestral, ncsn as _ncsn  # noqa: E402, F401
