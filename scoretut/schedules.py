"""Discrete-time diffusion (DDPM): β schedules, ᾱ_t, the posterior q(x_{t−1} | x_t, x_0), log-SNR.

The forward chain of Ho et al. (2020, Eq. 2 and 4), for integer steps ``t = 1, …, T``:

.. math::  q(x_t \\mid x_{t-1}) = \\mathcal N(\\sqrt{1-\\beta_t}\\,x_{t-1},\\ \\beta_t I), \\qquad
           q(x_t \\mid x_0) = \\mathcal N(\\sqrt{\\bar\\alpha_t}\\,x_0,\\ (1-\\bar\\alpha_t) I), \\qquad
           \\bar\\alpha_t = \\prod_{s=1}^t (1-\\beta_s),\\quad \\bar\\alpha_0 = 1.

The posterior (Ho et al. 2020, Eq. 6–7) is Gaussian with

.. math::  \\tilde\\mu_t = \\frac{\\sqrt{\\bar\\alpha_{t-1}}\\,\\beta_t}{1-\\bar\\alpha_t}\\,x_0
           + \\frac{\\sqrt{\\alpha_t}\\,(1-\\bar\\alpha_{t-1})}{1-\\bar\\alpha_t}\\,x_t, \\qquad
           \\tilde\\beta_t = \\frac{1-\\bar\\alpha_{t-1}}{1-\\bar\\alpha_t}\\,\\beta_t,

and at ``t = 1`` the convention ``ᾱ_0 = 1`` gives ``μ̃_1 = x_0`` and ``β̃_1 = 0``. The
log signal-to-noise ratio is ``λ_t = log(ᾱ_t / (1 − ᾱ_t))`` (Kingma et al. 2021).

Schedules: :func:`linear_betas` (``β`` from 1e-4 to 0.02 over ``T = 1000``, Ho et al. 2020)
and :func:`cosine_betas` (Nichol & Dhariwal 2021, Eq. 17: ``ᾱ_t = f(t)/f(0)``,
``f(t) = cos²(π/2 · (t/T + s)/(1 + s))``, ``β_t = min(1 − ᾱ_t/ᾱ_{t−1}, 0.999)``).

**The SDE view.** :class:`DiscreteVP` is a :class:`scoretut.sde.SDE` whose time is the step
index: ``scale(t) = √ᾱ_t`` and ``std(t) = √(1 − ᾱ_t)`` exactly at integers ``t = 0, …, T``, and
``log ᾱ`` is linear in between. That is the VP SDE ``dx = −½ β(t) x dt + √β(t) dw`` with the
piecewise-constant rate ``β(t) = −log(1 − β_k)`` on ``(k−1, k]`` — so DDPM *is* a VP SDE observed
at integer times, and every sampler of :mod:`scoretut.samplers` runs on it unchanged.

**Using an ε-prediction network.** Like every sampler in scoretut, the DDPM samplers
(:mod:`scoretut.ancestral`: ``ddpm``, ``ddim``) take a *score* function ``score_fn(x, t)`` with
``t`` the (float) step index, shape ``(batch,)``. Wrap a noise-prediction network
``eps_model(x, t)`` with :func:`eps_score` (``∇log p_t = −ε̂/√(1−ᾱ_t)``); the samplers recover
``ε̂ = −√(1−ᾱ_t)·score`` from it, so ``eps_model`` is what they effectively use. A guided model
(classifier-free guidance, ``ε̂ = ε(x, t, ∅) + w (ε(x, t, y) − ε(x, t, ∅))``, the convention of
:mod:`scoretut.image_ddpm`) is just another ``eps_model``.
Train it with :class:`scoretut.losses.DSMLoss` on ``DiscreteVP`` with ``t_grid=sde.train_grid()``
(uniform integer ``t``; with the default ``λ = std²`` this is ``‖ε − ε̂‖²``, Ho et al. 2020, Eq. 14).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from scoretut.config import UsageError
from scoretut.sde import SDE, ScoreFn, as_time, bcast, ftensor


# -- β schedules ----------------------------------------------------------------------------------
def linear_betas(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """``β_t`` linear from ``beta_start`` to ``beta_end``, ``t = 1..T``; shape ``(T,)`` float64 (Ho et al. 2020)."""
    if T < 1 or not 0 < beta_start <= beta_end < 1:
        raise UsageError(f"linear schedule needs T >= 1 and 0 < beta_start <= beta_end < 1; got {T}, {beta_start}, {beta_end}")
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def cosine_alpha_bar(t: Tensor, T: int = 1000, s: float = 0.008) -> Tensor:
    """``ᾱ(t) = f(t)/f(0)`` with ``f(t) = cos²(π/2 · (t/T + s)/(1 + s))`` (Nichol & Dhariwal 2021, Eq. 17)."""
    f = lambda u: torch.cos(0.5 * math.pi * (ftensor(u).double() / T + s) / (1 + s)) ** 2  # noqa: E731
    return f(t) / f(torch.zeros(()))


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """``β_t = min(1 − ᾱ(t)/ᾱ(t−1), max_beta)`` of the cosine schedule, ``t = 1..T``; ``(T,)`` float64.

    The clip (Nichol & Dhariwal 2021, Sec. 3.2) only bites at the very end, where ``ᾱ(T) = 0``
    would make ``β_T = 1``.
    """
    if T < 1 or s < 0 or not 0 < max_beta < 1:
        raise UsageError(f"cosine schedule needs T >= 1, s >= 0 and 0 < max_beta < 1; got {T}, {s}, {max_beta}")
    ab = cosine_alpha_bar(torch.arange(T + 1, dtype=torch.float64), T, s)
    return (1 - ab[1:] / ab[:-1]).clamp(max=max_beta)


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}
"""β schedules by name: ``name -> fn(T, ...) -> (T,)``."""


def alpha_bars(betas: Tensor) -> Tensor:
    """``ᾱ_t = ∏_{s≤t}(1 − β_s)`` for ``t = 0..T`` with ``ᾱ_0 = 1``; shape ``(T+1,)`` float64."""
    betas = torch.as_tensor(betas, dtype=torch.float64)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


def log_snr(alpha_bar: Tensor) -> Tensor:
    """``λ = log(ᾱ / (1 − ᾱ))``, the log signal-to-noise ratio of ``x_t = √ᾱ x_0 + √(1−ᾱ) ε``."""
    alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float64)
    return torch.log(alpha_bar) - torch.log1p(-alpha_bar)


# -- the Gaussian posterior, for any pair of times ------------------------------------------------
def gaussian_posterior(
    scale_t: Tensor, std_t: Tensor, scale_s: Tensor, std_s: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Coefficients of ``q(x_s | x_t, x_0) = N(c_0 x_0 + c_t x_t, v)`` for ``s < t``.

    For a linear-Gaussian process with ``x_u = s(u) x_0 + std(u) z``, the step from ``s`` to ``t``
    is ``x_t = a x_s + √b z'`` with ``a = s(t)/s(s)`` and ``b = std_t² − a² std_s²``; Bayes' rule
    for two Gaussians gives

    .. math::  c_0 = \\frac{s(s)\\,b}{\\mathrm{std}_t^2},\\qquad c_t = \\frac{a\\,\\mathrm{std}_s^2}{\\mathrm{std}_t^2},
               \\qquad v = \\frac{b\\,\\mathrm{std}_s^2}{\\mathrm{std}_t^2}.

    With ``s(u)² = ᾱ_u``, ``std(u)² = 1 − ᾱ_u`` and ``s = t − 1`` this is Ho et al. (2020, Eq. 7):
    ``b = β_t``, ``c_0 = √ᾱ_{t−1} β_t/(1−ᾱ_t)``, ``c_t = √α_t (1−ᾱ_{t−1})/(1−ᾱ_t)``, ``v = β̃_t``.
    Inputs are tensors of one shape or Python numbers (taken as float64); so are the outputs.
    """
    scale_t, std_t, scale_s, std_s = (
        v if isinstance(v, Tensor) else torch.tensor(v, dtype=torch.float64) for v in (scale_t, std_t, scale_s, std_s)
    )
    a = scale_t / scale_s
    b = (std_t**2 - a**2 * std_s**2).clamp_min(0)
    return scale_s * b / std_t**2, a * std_s**2 / std_t**2, b * std_s**2 / std_t**2


# -- DDPM as an SDE --------------------------------------------------------------------------------
class DiscreteVP(SDE):
    """The DDPM chain with ``betas`` ``(T,)`` as an SDE on ``[0, T]`` (time = step index).

    ``log ᾱ(t)`` is the piecewise-linear interpolation of ``log ᾱ_k``, ``k = 0..T``, so
    ``scale(k) = √ᾱ_k`` and ``std(k) = √(1 − ᾱ_k)`` at every integer ``k``; in between the process
    is the VP SDE with rate ``β(t) = −log(1 − β_k)`` for ``t ∈ (k−1, k]`` (module docstring).
    ``eps = 1``: training and sampling stop at the first noisy step, ``x_0`` is reached by the
    final DDPM/DDIM step to ``t = 0``.

    Build with :meth:`linear` or :meth:`cosine`, or from any β array.
    """

    def __init__(self, betas: Tensor, name: str = "custom"):
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().clone()
        if betas.ndim != 1 or len(betas) < 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise UsageError("DiscreteVP needs a 1-D array of betas in (0, 1), e.g. linear_betas(1000)")
        self.betas, self.name = betas, name
        self.num_steps = len(betas)
        self.T, self.eps = float(self.num_steps), 1.0
        self.log_alpha_bars = torch.log(alpha_bars(betas))  # (T+1,), index = step

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "DiscreteVP":
        """DDPM's linear schedule (Ho et al. 2020): ``β`` from 1e-4 to 0.02, ``T = 1000``."""
        return cls(linear_betas(T, beta_start, beta_end), "linear")

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "DiscreteVP":
        """The cosine schedule of iDDPM (Nichol & Dhariwal 2021)."""
        return cls(cosine_betas(T, s, max_beta), "cosine")

    def __repr__(self) -> str:
        return f"DiscreteVP({self.name}, T={self.num_steps})"

    # -- discrete quantities at integer steps ---------------------------------------------------
    def alpha_bars(self) -> Tensor:
        """``ᾱ_k`` for ``k = 0..T`` (``ᾱ_0 = 1``), shape ``(T+1,)`` float64."""
        return self.log_alpha_bars.exp()

    def posterior(self, t: int | Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(c_0, c_t, β̃_t)`` of ``q(x_{t−1} | x_t, x_0) = N(c_0 x_0 + c_t x_t, β̃_t I)``, ``t ≥ 1``.

        Ho et al. (2020, Eq. 7), with ``ᾱ_0 = 1``: at ``t = 1``, ``(1, 0, 0)``.
        """
        t = torch.as_tensor(t, dtype=torch.float64)
        if bool((t < 1).any()) or bool((t > self.num_steps).any()) or bool((t != t.round()).any()):
            raise UsageError(f"the DDPM posterior needs integer steps 1..{self.num_steps}")
        return gaussian_posterior(self.scale(t), self.std(t), self.scale(t - 1), self.std(t - 1))

    def train_grid(self) -> Tensor:
        """The training steps ``1, …, T`` (float64), for ``DSMLoss(..., t_grid=...)``."""
        return torch.arange(1, self.num_steps + 1, dtype=torch.float64)

    # -- continuous view --------------------------------------------------------------------------
    def log_alpha_bar(self, t: Tensor) -> Tensor:
        """``log ᾱ(t)``, linear between integer steps; ``t`` in ``[0, T]``."""
        t = ftensor(t)
        table = self.log_alpha_bars.to(device=t.device, dtype=t.dtype)
        u = t.clamp(0, self.T)
        k = u.floor().clamp(max=self.num_steps - 1)
        lo = table[k.long()]
        hi = table[(k + 1).long()]
        return lo + (u - k) * (hi - lo)

    def alpha_bar(self, t: Tensor) -> Tensor:
        """``ᾱ(t) = exp(log ᾱ(t))``."""
        return self.log_alpha_bar(t).exp()

    def log_snr(self, t: Tensor) -> Tensor:
        """``λ(t) = log(ᾱ/(1 − ᾱ)) = −log(exp(−log ᾱ) − 1)``."""
        return -torch.log(torch.expm1(-self.log_alpha_bar(t)))

    def beta(self, t: Tensor) -> Tensor:
        """Continuous rate ``β(t) = −d log ᾱ/dt = −log(1 − β_k)`` on ``(k−1, k]``."""
        t = ftensor(t)
        k = t.ceil().clamp(1, self.num_steps).long()
        return -torch.log1p(-self.betas.to(device=t.device, dtype=t.dtype)[k - 1])

    def sde(self, x, t):
        beta = self.beta(as_time(t, x))
        return -0.5 * bcast(beta, x) * x, torch.sqrt(beta)

    def scale(self, t):
        return torch.exp(0.5 * self.log_alpha_bar(t))

    def std(self, t):
        return torch.sqrt(-torch.expm1(self.log_alpha_bar(t)))

    def sigma(self, t):
        return torch.sqrt(torch.expm1(-self.log_alpha_bar(t)))


def ddpm_timesteps(sde: SDE, n: int) -> Tensor:
    """``n + 1`` evenly spaced integer steps from ``T`` down to ``0`` (float64), for ``n`` DDPM/DDIM steps.

    ``round(linspace(T, 0, n + 1))`` ("uniform" respacing): ``n = T`` gives ``T, T−1, …, 0``;
    ``n = 10`` with ``T = 1000`` gives ``1000, 900, …, 100, 0``. The last step goes to ``t = 0``
    (``ᾱ_0 = 1``), where DDPM and DDIM both return their estimate of ``x_0``.
    """
    T = int(round(sde.T))
    if not 1 <= n <= T:
        raise UsageError(f"the number of DDPM/DDIM steps must be in 1..{T}, got {n}")
    return torch.linspace(T, 0, n + 1, dtype=torch.float64).round()


def eps_score(sde: SDE, eps_model: nn.Module) -> ScoreFn:
    """Score ``∇log p_t(x) = −ε̂(x, t)/std(t)`` of a noise-prediction network ``eps_model(x, t)``.

    Same as :func:`scoretut.precond.score_from_prediction` with ``kind="eps"``; the samplers of
    :mod:`scoretut.ancestral` invert it exactly (``ε̂ = −std(t)·score``).
    """
    from scoretut.precond import score_from_prediction

    return score_from_prediction(sde, eps_model, "eps")
