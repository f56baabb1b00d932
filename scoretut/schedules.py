"""Noise schedules in one place: DDPM's β, ᾱ, log-SNR and posterior (below), the EDM and iDDPM
noise-level grids (:func:`edm_sigmas`, :func:`iddpm_sigmas`), the NCSNv2 rules for choosing noise
levels (Song & Ermon 2020), and VDM's ``γ(t) = −λ(t)`` schedules with :class:`GammaSDE`.

**Discrete-time diffusion (DDPM).**

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
at integer times, and every sampler of :mod:`scoretut.sampling` runs on it unchanged.

**Using an ε-prediction network.** Like every sampler in scoretut, the DDPM samplers
(:mod:`scoretut.sampling`: ``ddpm``, ``ddim``) take a model ``score_fn(x, t)`` with ``t`` the
(float) step index, shape ``(batch,)``. Wrap a noise-prediction network ``eps_model(x, t)`` as
``scoretut.parametrisation.Prediction(sde, eps_model, "eps")``: its score is
``∇log p_t = −ε̂/√(1−ᾱ_t)``, and the DDPM samplers take ``ε̂`` from it unchanged. A guided model
(classifier-free guidance, ``ε̂ = ε(x, t, ∅) + w (ε(x, t, y) − ε(x, t, ∅))``, the convention of
:mod:`scoretut.pipelines.images`) is just another ``eps_model``.
Train it with :class:`scoretut.losses.DSMLoss` on ``DiscreteVP`` with ``t_grid=sde.train_grid()``
(uniform integer ``t``; with the default ``λ = std²`` this is ``‖ε − ε̂‖²``, Ho et al. 2020, Eq. 14).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from scoretut.errors import UsageError
from scoretut.sde import SDE, as_time, bcast, ftensor


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


BETA_SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}
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
    ``t_min = 1``: training and sampling stop at the first noisy step, ``x_0`` is reached by the
    final DDPM/DDIM step to ``t = 0``.

    Build with :meth:`linear` or :meth:`cosine`, or from any β array.
    """

    def __init__(self, betas: Tensor, name: str = "custom"):
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().clone()
        if betas.ndim != 1 or len(betas) < 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise UsageError("DiscreteVP needs a 1-D array of betas in (0, 1), e.g. linear_betas(1000)")
        self.betas, self.name = betas, name
        self.num_steps = len(betas)
        self.T, self.t_min = float(self.num_steps), 1.0
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
        """``λ(t) = log(ᾱ(t)/(1 − ᾱ(t)))`` (:func:`log_snr`)."""
        return log_snr(self.alpha_bar(t))

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


# -- EDM and iDDPM noise-level grids ------------------------------------------------------------
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


def iddpm_sigmas(M: int = 1000, C_1: float = 0.001, C_2: float = 0.008) -> Tensor:
    """The ``M + 1`` noise levels ``u_0 > … > u_M = 0`` of iDDPM (Karras et al. 2022, Table 1).

    ``u_{j−1} = √((u_j² + 1) / max(ᾱ_{j−1}/ᾱ_j, C_1) − 1)`` with Karras et al.'s
    ``ᾱ_j = sin²(π/2 · j / (M (C_2 + 1)))``, which is the cosine schedule of Nichol & Dhariwal
    (2021) read backwards: ``ᾱ_j = ᾱ(M − j)/ᾱ(0)`` of :func:`cosine_alpha_bar` with ``T = M``,
    ``s = C_2`` (the ratios do not see the normalisation). Where the clip is inactive
    ``u_j² + 1 = ᾱ_M/ᾱ_j``, i.e. ``u_j`` is the noise level of DDPM step ``M − j``.
    """
    alpha_bar = cosine_alpha_bar(torch.arange(M, -1, -1, dtype=torch.float64), M, C_2)
    u = torch.zeros(M + 1, dtype=torch.float64)
    for j in range(M, 0, -1):
        ratio = max(float(alpha_bar[j - 1] / alpha_bar[j]), C_1)
        u[j - 1] = math.sqrt((float(u[j]) ** 2 + 1) / ratio - 1)
    return u


# -- NCSNv2 rules for choosing the noise levels and the Langevin step size -----------------------
def max_pairwise_distance(data: Tensor, chunk: int = 2048) -> float:
    """``max_{i,j} ‖x_i − x_j‖`` over all pairs of rows of ``data`` ``(n, *dims)`` (NCSNv2 technique 1).

    Exact, computed block by block in float64, so ``n`` of a few ten thousand is fine.
    """
    x = torch.as_tensor(data).detach().flatten(1).to(torch.float64)
    if x.shape[0] < 2:
        raise UsageError("max_pairwise_distance needs at least two data points")
    best = 0.0
    for i in range(0, x.shape[0], chunk):
        best = max(best, float(torch.cdist(x[i : i + chunk], x).max()))
    return best


def _overlap(gamma: float, dim: int) -> float:
    """``Φ(√(2D)(γ−1) + 3γ) − Φ(√(2D)(γ−1) − 3γ)``."""
    phi = lambda u: 0.5 * math.erfc(-u / math.sqrt(2))  # noqa: E731
    c = math.sqrt(2 * dim) * (gamma - 1)
    return phi(c + 3 * gamma) - phi(c - 3 * gamma)


def ncsnv2_ratio(dim: int, overlap: float = 0.5) -> float:
    """The ratio ``γ > 1`` with ``Φ(√(2D)(γ−1) + 3γ) − Φ(√(2D)(γ−1) − 3γ) = overlap`` (NCSNv2 technique 2).

    The left side is the probability that a sample of ``N(0, σ_{i−1}² I)`` falls within three
    standard deviations of the typical norm ``√D σ_i`` of ``N(0, σ_i² I)``, using the normal
    approximation ``‖x‖ ≈ N(√D σ, σ²/2)``. It tends to 0 as ``γ → ∞`` only when ``√(2D) > 3``;
    for ``D ≤ 4`` it never drops below ``Φ(3) − Φ(−3)``, the shells always overlap, and the rule
    puts no limit on ``γ``: then ``math.inf`` is returned.
    """
    if dim < 1 or not 0 < overlap < 1:
        raise UsageError(f"ncsnv2_ratio needs dim >= 1 and 0 < overlap < 1, got {dim}, {overlap}")
    if math.sqrt(2 * dim) <= 3:
        return math.inf
    lo, hi = 1.0, 2.0
    while _overlap(hi, dim) > overlap:
        lo, hi = hi, 2 * hi
    for _ in range(100):  # above `overlap` left of the root, below it right of the root
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _overlap(mid, dim) > overlap else (lo, mid)
    return (lo + hi) / 2


def ncsnv2_sigmas(
    data: Tensor, sigma_min: float = 0.01, overlap: float = 0.5, max_ratio: float = 2.0
) -> Tensor:
    """NCSNv2 noise levels ``σ_1 > … > σ_L`` for ``data`` ``(n, *dims)``, float64 ``(L,)``.

    ``σ_1`` = :func:`max_pairwise_distance`, ratio ``γ = min(ncsnv2_ratio(D, overlap), max_ratio)``
    (the cap only matters in low dimension, where the rule sets no limit), and
    ``L = ⌈log(σ_1/σ_min)/log γ⌉ + 1`` levels spaced geometrically from ``σ_1`` to ``σ_min``
    (so the actual ratio is at most ``γ``).
    """
    if not 0 < sigma_min or max_ratio <= 1:
        raise UsageError(f"ncsnv2_sigmas needs sigma_min > 0 and max_ratio > 1, got {sigma_min}, {max_ratio}")
    data = torch.as_tensor(data)
    sigma_1 = max_pairwise_distance(data)
    if sigma_1 <= sigma_min:
        raise UsageError(f"the data spread ({sigma_1:.3g}) is below sigma_min ({sigma_min}); lower sigma_min")
    gamma = min(ncsnv2_ratio(data[0].numel(), overlap), max_ratio)
    n_levels = math.ceil(math.log(sigma_1 / sigma_min) / math.log(gamma)) + 1
    return torch.logspace(math.log10(sigma_1), math.log10(sigma_min), n_levels, dtype=torch.float64)


def ncsnv2_variance_ratio(step_size: float | Tensor, ratio: float, sigma_min: float, n_steps_each: int) -> Tensor:
    """``Var[x_T]/σ_i²`` after ``T = n_steps_each`` Langevin steps at level ``i`` (NCSNv2, Prop. 3).

    For data at a single point, ``p_{σ_i} = N(0, σ_i² I)``; started from ``N(0, (γσ_i)² I)`` and run
    with ``α_i = ε σ_i²/σ_L²``, each step is ``x ← (1 − u) x + √(2 u) σ_i z`` with ``u = ε/σ_L²``, so

    .. math::  \\frac{\\mathrm{Var}[x_T]}{\\sigma_i^2} = (1-u)^{2T}\\gamma^2
               + \\big(1 - (1-u)^{2T}\\big)\\frac{2}{2-u},

    the same for every level. ``2/(2−u) > 1`` is the bias of the unadjusted chain.
    """
    u = torch.as_tensor(step_size, dtype=torch.float64) / sigma_min**2
    a = (1 - u) ** (2 * n_steps_each)
    return a * ratio**2 + (1 - a) * 2 / (2 - u)


def ncsnv2_step_size(ratio: float, sigma_min: float, n_steps_each: int) -> float:
    """The ``ε`` that brings :func:`ncsnv2_variance_ratio` closest to 1 (NCSNv2 technique 4).

    Minimised over ``u = ε/σ_L² ∈ (0, 1)`` on a fine log grid (the ratio exceeds 1 everywhere).
    """
    if ratio <= 1 or sigma_min <= 0 or n_steps_each < 1:
        raise UsageError(f"ncsnv2_step_size needs ratio > 1, sigma_min > 0, n_steps_each >= 1; got {ratio}, {sigma_min}, {n_steps_each}")
    u = torch.logspace(-8, math.log10(0.999), 20001, dtype=torch.float64)
    best = u[ncsnv2_variance_ratio(u * sigma_min**2, ratio, sigma_min, n_steps_each).argmin()]
    return float(best) * sigma_min**2


# -- VDM: the γ(t) schedule (log-SNR λ = −γ) and its SDE -------------------------------------------
GAMMA_MIN = -13.3
"""Initial ``γ(0)`` of Kingma et al. (2021): ``SNR(0) = e^{13.3} ≈ 6·10⁵``."""
GAMMA_MAX = 5.0
"""Initial ``γ(1)``: ``SNR(1) = e^{−5} ≈ 0.0067``."""


def alpha_sigma(gamma: Tensor) -> tuple[Tensor, Tensor]:
    """``(α, σ) = (√sigmoid(−γ), √sigmoid(γ))``, so ``α² + σ² = 1`` and ``α²/σ² = e^{−γ}``."""
    return torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()


def snr(gamma: Tensor) -> Tensor:
    """``SNR = α²/σ² = exp(−γ)``."""
    return torch.exp(-gamma)


class NoiseSchedule(nn.Module):
    """``γ(t) = γ₀ + (γ₁ − γ₀) u(t)`` with a *shape* ``u`` increasing from ``u(0) = 0`` to ``u(1) = 1``.

    The endpoints ``γ₀ = γ(0)`` and ``γ₁ = γ(1)`` fix ``SNR(0)`` and ``SNR(1)``, the only part of
    the schedule the continuous-time loss depends on; the shape ``u`` only moves the variance of
    its estimate. Subclasses implement :meth:`shape`, returning ``u(t)`` and ``u'(t)``.
    Inputs of any float dtype are evaluated in the parameters' dtype and returned in their own.
    """

    def __init__(self, gamma_min: float, gamma_max: float, learn_endpoints: bool):
        super().__init__()
        if not gamma_min < gamma_max:
            raise UsageError(f"need gamma_min < gamma_max, got {gamma_min} >= {gamma_max}")
        ends = torch.tensor([gamma_min, gamma_max], dtype=torch.float32)
        if learn_endpoints:
            self.ends = nn.Parameter(ends)
        else:
            self.register_buffer("ends", ends)

    def shape(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(u(t), u'(t))``, each of ``t``'s shape."""
        raise NotImplementedError

    def shape_parameters(self) -> list[nn.Parameter]:
        """Parameters of the shape ``u`` (trained to lower the loss variance), not the endpoints."""
        return [p for name, p in self.named_parameters() if name != "ends"]

    @property
    def gamma_0(self) -> Tensor:
        return self.ends[0]

    @property
    def gamma_1(self) -> Tensor:
        return self.ends[1]

    def combine(self, u: Tensor, du: Tensor) -> tuple[Tensor, Tensor]:
        """``(γ, γ') = (γ₀ + (γ₁ − γ₀) u, (γ₁ − γ₀) u')``."""
        span = self.gamma_1 - self.gamma_0
        return self.gamma_0 + span * u, span * du

    def gamma_and_derivative(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``γ(t)`` and ``γ'(t)``, shape of ``t``."""
        t = ftensor(t)
        g, dg = self.combine(*self.shape(t.to(self.ends.dtype)))
        return g.to(t.dtype), dg.to(t.dtype)

    def forward(self, t: Tensor) -> Tensor:
        """``γ(t)``, shape of ``t``."""
        return self.gamma_and_derivative(t)[0]

    def derivative(self, t: Tensor) -> Tensor:
        """``γ'(t)``, shape of ``t``."""
        return self.gamma_and_derivative(t)[1]


class LinearSchedule(NoiseSchedule):
    """``γ(t) = γ_min + (γ_max − γ_min) t`` (VDM's fixed schedule; ``learn_endpoints`` gives
    their "learnable scalar" schedule)."""

    def __init__(self, gamma_min: float = GAMMA_MIN, gamma_max: float = GAMMA_MAX, learn_endpoints: bool = False):
        super().__init__(gamma_min, gamma_max, learn_endpoints)

    def shape(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return t, torch.ones_like(t)


class MonotoneSchedule(NoiseSchedule):
    """VDM's monotone network (Kingma et al. 2021, App. H; ``NoiseSchedule_NNet`` of their code).

    .. math::  \\tilde γ(t) = w_1 t + \\frac1K \\sum_{k=1}^K w_{3,k}\\; 2\\big(\\operatorname{sigmoid}
               (w_{2,k}(2t - 1) + b_k) - \\tfrac12\\big), \\qquad
               u(t) = \\frac{\\tilde γ(t) - \\tilde γ(0)}{\\tilde γ(1) - \\tilde γ(0)}

    with every weight made positive (``|w|`` as in VDM, or ``softplus(w)``), so ``γ̃`` and hence
    ``γ`` are strictly increasing whatever the weights. ``w₁`` starts at ``γ_max − γ_min`` as in
    VDM, so the initial schedule is close to linear; ``w₂, w₃ ~ N(0, 1)``, ``b = 0``. ``u'`` is
    computed by autograd (keeping the graph when gradients are enabled).

    Args:
        gamma_min, gamma_max: initial ``γ(0)`` and ``γ(1)``.
        n_features: width ``K`` of the sigmoid layer (1024 in VDM).
        positive: ``"abs"`` or ``"softplus"``.
        learn_endpoints: train ``γ(0)``, ``γ(1)`` (by the ELBO) or keep them fixed.
    """

    def __init__(self, gamma_min: float = GAMMA_MIN, gamma_max: float = GAMMA_MAX, n_features: int = 1024,
                 positive: str = "abs", learn_endpoints: bool = True):  # fmt: skip
        super().__init__(gamma_min, gamma_max, learn_endpoints)
        if positive not in ("abs", "softplus"):
            raise UsageError(f"positive must be 'abs' or 'softplus', got {positive!r}")
        if n_features < 1:
            raise UsageError(f"n_features must be positive, got {n_features}")
        self.positive, self.n_features = positive, int(n_features)
        w1 = torch.tensor(gamma_max - gamma_min)
        if positive == "softplus":  # softplus⁻¹ so that the effective weight is γ_max − γ_min
            w1 = w1 + torch.log(-torch.expm1(-w1))
        self.w1 = nn.Parameter(w1)
        self.w2 = nn.Parameter(torch.randn(n_features))
        self.b2 = nn.Parameter(torch.zeros(n_features))
        self.w3 = nn.Parameter(torch.randn(n_features))

    def _pos(self, w: Tensor) -> Tensor:
        return w.abs() if self.positive == "abs" else nn.functional.softplus(w)

    def raw(self, t: Tensor) -> Tensor:
        """The unnormalised ``γ̃(t)``, shape of ``t``."""
        h = torch.sigmoid((2 * t - 1)[..., None] * self._pos(self.w2) + self.b2)  # (..., K)
        return self._pos(self.w1) * t + (2 * (h - 0.5)) @ self._pos(self.w3) / self.n_features

    def shape(self, t: Tensor) -> tuple[Tensor, Tensor]:
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            t_ = t.detach().requires_grad_(True)
            raw = self.raw(t_)
            (draw,) = torch.autograd.grad(raw.sum(), t_, create_graph=keep_graph)
        ends = self.raw(torch.tensor([0.0, 1.0], dtype=t.dtype, device=t.device))
        span = ends[1] - ends[0]
        u, du = (raw - ends[0]) / span, draw / span
        return (u, du) if keep_graph else (u.detach(), du.detach())


class GammaSDE(SDE):
    """The VDM forward process as a VP SDE on ``[0, 1]`` (so every sampler of
    :mod:`scoretut.sampling` and :class:`scoretut.losses.DSMLoss` can use it).

    ``s(t) = α_t = √sigmoid(−γ)``, ``std(t) = σ_t = √sigmoid(γ)``, ``σ(t) = e^{γ/2}`` and

    .. math::  dz = -\\tfrac12 β(t) z\\,dt + \\sqrt{β(t)}\\,dw, \\qquad β(t) = γ'(t)\\,σ_t^2,

    because ``d log α_t/dt = −½ γ' σ_t²`` and ``dσ_t²/dt = β (1 − σ_t²)``. The prior is
    ``N(0, I)`` (as in VDM), and ``t_min = 0``: ``σ_0 > 0``, so nothing is singular at ``t = 0``.
    """

    def __init__(self, schedule: NoiseSchedule):
        self.schedule, self.T, self.t_min = schedule, 1.0, 0.0

    @classmethod
    def linear(cls, gamma_min: float = GAMMA_MIN, gamma_max: float = GAMMA_MAX) -> "GammaSDE":
        """VDM's fixed schedule, ``γ(t) = γ_min + (γ_max − γ_min) t`` (:class:`LinearSchedule`)."""
        return cls(LinearSchedule(gamma_min, gamma_max))

    def beta(self, t: Tensor) -> Tensor:
        """``β(t) = γ'(t) sigmoid(γ(t))``."""
        g, dg = self.schedule.gamma_and_derivative(ftensor(t))
        return dg * torch.sigmoid(g)

    def sde(self, x, t):
        beta = self.beta(as_time(t, x))
        return -0.5 * bcast(beta, x) * x, beta.sqrt()

    def scale(self, t):
        return torch.sigmoid(-self.schedule(ftensor(t))).sqrt()

    def std(self, t):
        return torch.sigmoid(self.schedule(ftensor(t))).sqrt()

    def sigma(self, t):
        return torch.exp(0.5 * self.schedule(ftensor(t)))

    def prior_std(self) -> float:
        return 1.0

    def __repr__(self) -> str:
        return f"GammaSDE({type(self.schedule).__name__})"
