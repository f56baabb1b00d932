"""Forward SDEs with Gaussian transition kernels, and their reverse-time processes.

Every SDE here has a linear drift, so the law of ``x_t`` given ``x_0`` is Gaussian:

.. math::  dx = f(x, t)\\,dt + g(t)\\,dw, \\qquad x_t \\mid x_0 \\sim \\mathcal N\\big(s(t)\\,x_0,\\; s(t)^2\\sigma(t)^2 I\\big)

with a *scale* ``s(t)`` and a *noise level* ``σ(t)`` in the notation of Karras et al. (2022,
Eq. 11–12). ``marginal_prob`` returns the mean ``s(t)·x0`` and the standard deviation
``std(t) = s(t)·σ(t)``.

The reverse-time SDE (Anderson 1982; Song et al. 2021, Eq. 6) and the probability-flow ODE
(Song et al. 2021, Eq. 13) are derived once, in :class:`ReverseSDE`:

.. math::  dx = [f(x,t) - g(t)^2\\,\\nabla_x\\log p_t(x)]\\,dt + g(t)\\,d\\bar w, \\qquad
           \\frac{dx}{dt} = f(x,t) - \\tfrac12 g(t)^2\\,\\nabla_x\\log p_t(x),

both integrated from ``t = T`` down to ``t = t_min`` (``dt < 0``).

Times may be Python floats or tensors of shape ``(batch,)``; results broadcast against ``x`` of
shape ``(batch, *dims)``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable

import torch
from torch import Tensor

from scoretut.errors import UsageError

ScoreFn = Callable[[Tensor, Tensor], Tensor]
"""``score_fn(x, t) -> ∇ₓ log p_t(x)``; ``x`` has shape ``(batch, *dims)``, ``t`` shape ``(batch,)``."""


def as_time(t: float | Tensor, x: Tensor) -> Tensor:
    """Return ``t`` as a float tensor of shape ``(batch,)`` on ``x``'s device."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


def ftensor(t: float | Tensor) -> Tensor:
    """``t`` as a floating tensor (Python numbers become the default float dtype)."""
    t = torch.as_tensor(t)
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


def bcast(v: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample tensor ``(batch,)`` to broadcast against ``x`` ``(batch, *dims)``."""
    v = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    if v.ndim == 0:
        return v
    return v.reshape(v.shape[0], *([1] * (x.ndim - 1)))


class SDE(ABC):
    """A forward SDE ``dx = f(x,t) dt + g(t) dw`` on ``[0, T]`` with Gaussian marginals.

    Subclasses define the drift ``f``, the diffusion ``g``, the scale ``s(t)`` and the
    standard deviation ``std(t)``; everything else is derived here.
    """

    T: float = 1.0
    """Time horizon: ``x_T`` is (approximately) distributed as :meth:`prior_sampling`."""
    t_min: float = 1e-3
    """Smallest time used for training and sampling (the scores blow up as ``t → 0``)."""

    # -- the process -------------------------------------------------------------------
    @abstractmethod
    def sde(self, x: Tensor, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """Drift ``f(x, t)`` (shape of ``x``) and diffusion ``g(t)`` (shape ``(batch,)``)."""

    @abstractmethod
    def scale(self, t: Tensor) -> Tensor:
        """Mean coefficient ``s(t)``: ``E[x_t | x_0] = s(t) x_0``."""

    @abstractmethod
    def std(self, t: Tensor) -> Tensor:
        """Marginal standard deviation ``s(t)σ(t)`` of ``x_t`` given ``x_0``."""

    def sigma(self, t: Tensor) -> Tensor:
        """Noise level ``σ(t) = std(t)/s(t)`` of the rescaled variable ``x_t / s(t)``."""
        return self.std(t) / self.scale(t)

    def t_from_sigma(self, sigma: Tensor) -> Tensor:
        """Invert :meth:`sigma` (monotone increasing) by bisection on ``[0, T]``."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        lo, hi = torch.zeros_like(sigma), torch.full_like(sigma, self.T)
        for _ in range(60):
            mid = (lo + hi) / 2
            below = self.sigma(mid) < sigma
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return (lo + hi) / 2

    def marginal_prob(self, x0: Tensor, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``s(t) x0`` (shape of ``x0``) and std ``s(t)σ(t)`` (shape ``(batch,)``)."""
        t = as_time(t, x0)
        return bcast(self.scale(t), x0) * x0, self.std(t)

    def perturb(
        self, x0: Tensor, t: float | Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Sample ``x_t = s(t) x0 + std(t) z`` with ``z ~ N(0, I)``; return ``(x_t, z)``."""
        mean, std = self.marginal_prob(x0, t)
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        return mean + bcast(std, x0) * z, z

    # -- the prior ---------------------------------------------------------------------
    def prior_std(self) -> float:
        """Standard deviation of the Gaussian prior used to start sampling."""
        return float(self.std(torch.tensor(self.T, dtype=torch.float64)))

    def prior_sampling(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Draw from ``N(0, prior_std² I)``, the approximate law of ``x_T``."""
        z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return self.prior_std() * z

    def prior_logp(self, z: Tensor) -> Tensor:
        """Log-density of the prior at ``z`` (shape ``(batch, *dims)``) → ``(batch,)``."""
        s2 = self.prior_std() ** 2
        d = z[0].numel()
        return -0.5 * d * math.log(2 * math.pi * s2) - z.flatten(1).pow(2).sum(1) / (2 * s2)

    # -- reverse time --------------------------------------------------------------------
    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE, or with ``probability_flow=True`` the probability-flow ODE."""
        return ReverseSDE(self, score_fn, probability_flow)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


class ReverseSDE:
    """Reverse-time process of ``forward`` driven by ``score_fn``.

    ``sde(x, t)`` returns ``(drift, diffusion)`` to be integrated with ``dt < 0``:
    ``drift = f - g² ∇log p_t`` and ``diffusion = g`` for the SDE, or
    ``drift = f - ½ g² ∇log p_t`` and ``diffusion = 0`` for the probability-flow ODE.
    """

    def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool = False):
        self.forward, self.score_fn, self.probability_flow = forward, score_fn, probability_flow
        self.T, self.t_min = forward.T, forward.t_min

    def sde(self, x: Tensor, t: float | Tensor) -> tuple[Tensor, Tensor]:
        t = as_time(t, x)
        f, g = self.forward.sde(x, t)
        weight = 0.5 if self.probability_flow else 1.0
        drift = f - weight * bcast(g, x) ** 2 * self.score_fn(x, t)
        diffusion = torch.zeros_like(g) if self.probability_flow else g
        return drift, diffusion


class OU(SDE):
    """Ornstein–Uhlenbeck process ``dX = -μ X dt + σ dB``.

    ``E[X_t|X_0] = X_0 e^{-μt}`` and ``Var[X_t|X_0] = σ²/(2μ) (1 - e^{-2μt})``, which tends to
    the stationary variance ``σ²/(2μ)`` (= 1 for the default ``μ = ½, σ = 1``).
    """

    def __init__(self, mu: float = 0.5, sigma: float = 1.0, T: float = 10.0, t_min: float = 1e-3):
        if mu <= 0 or sigma <= 0:
            raise ValueError("OU needs mu > 0 and sigma > 0")
        self.mu, self.sigma_ou, self.T, self.t_min = mu, sigma, T, t_min

    def sde(self, x, t):
        t = as_time(t, x)
        return -self.mu * x, torch.full_like(t, self.sigma_ou)

    def scale(self, t):
        return torch.exp(-self.mu * ftensor(t))

    def std(self, t):
        t = ftensor(t)
        return torch.sqrt(self.sigma_ou**2 / (2 * self.mu) * -torch.expm1(-2 * self.mu * t))

    def prior_std(self) -> float:
        return self.sigma_ou / math.sqrt(2 * self.mu)


class VPSDE(SDE):
    """Variance-preserving SDE, the continuous limit of DDPM (Song et al. 2021, Eq. 11).

    ``dx = -½ β(t) x dt + √β(t) dw`` with ``β(t) = β_min + t (β_max - β_min)``;
    ``s(t) = exp(-½ ∫₀ᵗ β)`` and ``std(t)² = 1 - exp(-∫₀ᵗ β)``.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0, t_min: float = 1e-3):
        if not 0 < beta_min <= beta_max:
            raise ValueError("VPSDE needs 0 < beta_min <= beta_max")
        self.beta_min, self.beta_max, self.T, self.t_min = beta_min, beta_max, T, t_min

    def beta(self, t: Tensor) -> Tensor:
        """``β(t) = β_min + t(β_max − β_min)``."""
        return self.beta_min + ftensor(t) * (self.beta_max - self.beta_min)

    def int_beta(self, t: Tensor) -> Tensor:
        """``∫₀ᵗ β(u) du = β_min t + ½ t² (β_max − β_min)``."""
        t = ftensor(t)
        return self.beta_min * t + 0.5 * t**2 * (self.beta_max - self.beta_min)

    def sde(self, x, t):
        beta = self.beta(as_time(t, x))
        return -0.5 * bcast(beta, x) * x, torch.sqrt(beta)

    def scale(self, t):
        return torch.exp(-0.5 * self.int_beta(t))

    def std(self, t):
        return torch.sqrt(-torch.expm1(-self.int_beta(t)))

    def sigma(self, t):
        return torch.sqrt(torch.expm1(self.int_beta(t)))

    def t_from_sigma(self, sigma):
        # ∫β(t) = log(1 + σ²): solve ½Δβ t² + β_min t − log(1+σ²) = 0 for t ≥ 0.
        target = torch.log1p(torch.as_tensor(sigma, dtype=torch.float64) ** 2)
        d = self.beta_max - self.beta_min
        if d == 0:
            return target / self.beta_min
        return (torch.sqrt(self.beta_min**2 + 2 * d * target) - self.beta_min) / d


class SubVPSDE(VPSDE):
    """Sub-VP SDE (Song et al. 2021, Eq. 14): the VP drift with ``g(t)² = β(t)(1 − e^{−2∫β})``.

    Same mean as VP; ``std(t) = 1 − exp(−∫₀ᵗ β)``, never above the VP std.
    """

    def sde(self, x, t):
        t = as_time(t, x)
        beta = self.beta(t)
        g2 = beta * -torch.expm1(-2 * self.int_beta(t))
        return -0.5 * bcast(beta, x) * x, torch.sqrt(g2)

    def std(self, t):
        return -torch.expm1(-self.int_beta(t))

    def sigma(self, t):
        return self.std(t) / self.scale(t)

    t_from_sigma = SDE.t_from_sigma


class VESDE(SDE):
    """Variance-exploding SDE, the continuous limit of SMLD/NCSN (Song et al. 2021, Eq. 9).

    ``dx = σ_min (σ_max/σ_min)^t √(2 log(σ_max/σ_min)) dw``, so ``d[σ²]/dt = g²`` with
    ``σ(t) = σ_min (σ_max/σ_min)^t``. Started at ``t = 0`` the variance is exactly
    ``σ(t)² − σ_min²`` (≈ σ(t)² once ``σ(t) ≫ σ_min``); we use the exact value.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0, t_min: float = 1e-5):
        if not 0 < sigma_min < sigma_max:
            raise ValueError("VESDE needs 0 < sigma_min < sigma_max")
        self.sigma_min, self.sigma_max, self.T, self.t_min = sigma_min, sigma_max, T, t_min

    def geometric_sigma(self, t: Tensor) -> Tensor:
        """``σ_min (σ_max/σ_min)^t``."""
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** ftensor(t)

    def sde(self, x, t):
        t = as_time(t, x)
        g = self.geometric_sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))
        return torch.zeros_like(x), g

    def scale(self, t):
        return torch.ones_like(ftensor(t))

    def std(self, t):
        return torch.sqrt(self.geometric_sigma(t) ** 2 - self.sigma_min**2)

    def t_from_sigma(self, sigma):
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        ratio = torch.sqrt(sigma**2 + self.sigma_min**2) / self.sigma_min
        return torch.log(ratio) / math.log(self.sigma_max / self.sigma_min)


class EDMSDE(SDE):
    """The SDE behind EDM (Karras et al. 2022): ``σ(t) = t``, ``s(t) = 1``, ``dx = √(2t) dw``.

    Time *is* the noise level, so ``T = σ_max`` and ``x_t = x_0 + t·z``; the probability-flow ODE
    is ``dx/dt = (x − D(x; t))/t`` with the denoiser ``D(x; σ) = x + σ² ∇log p``.
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError("EDMSDE needs 0 < sigma_min < sigma_max")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.T, self.t_min = sigma_max, sigma_min

    def sde(self, x, t):
        t = as_time(t, x)
        return torch.zeros_like(x), torch.sqrt(2 * t)

    def scale(self, t):
        return torch.ones_like(ftensor(t))

    def std(self, t):
        return ftensor(t)

    def sigma(self, t):
        return ftensor(t)

    def t_from_sigma(self, sigma):
        return torch.as_tensor(sigma, dtype=torch.float64)


def simulate(
    sde: SDE, x0: Tensor, ts: Tensor | list[float], generator: torch.Generator | None = None
) -> Tensor:
    """Euler–Maruyama on the *forward* SDE along the increasing times ``ts``; return the path.

    ``x_{k+1} = x_k + f(x_k, t_k) h_k + g(t_k) √h_k z_k`` with ``h_k = t_{k+1} − t_k`` and
    ``z_k ~ N(0, I)`` (Kloeden & Platen 1992, Sec. 9.1). ``x0`` ``(batch, *dims)`` is the state
    at ``ts[0]``; the result has shape ``(len(ts), batch, *dims)``, with ``result[0] = x0``.
    The weak error of the marginal moments is ``O(max h_k)``.
    """
    ts = torch.as_tensor(ts, dtype=torch.float64)
    if ts.ndim != 1 or len(ts) < 1 or bool((ts[1:] <= ts[:-1]).any()):
        raise UsageError("simulate needs a 1-D increasing grid of times, e.g. torch.linspace(0, T, n)")
    path = [x0]
    x = x0
    for k in range(len(ts) - 1):
        t, h = float(ts[k]), float(ts[k + 1] - ts[k])
        f, g = sde.sde(x, t)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = x + f * h + bcast(g, x) * math.sqrt(h) * z
        path.append(x)
    return torch.stack(path)

