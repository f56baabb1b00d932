"""Denoisers ``D(x; σ)`` and conversions between the ways a network can be parametrised.

Karras et al. (2022, Eq. 7) write every diffusion model as a denoiser of the rescaled variable
``x̂ = x_t / s(t)`` at noise level ``σ = σ(t)``; Tweedie's formula ties it to the score:

.. math::  \\nabla_x \\log p_t(x) = \\frac{s(t)\\,D(x/s(t);\\,\\sigma(t)) - x}{s(t)^2\\,\\sigma(t)^2}.

Every model of Karras et al. (2022, Table 1) wraps a raw network ``F`` the same way (Eq. 7):

.. math::  D(x̂;σ) = c_\\text{skip}(σ)\\,x̂ + c_\\text{out}(σ)\\,F\\big(c_\\text{in}(σ)\\,x̂,\\; c_\\text{noise}(σ)\\big),

and the models differ only in the four coefficients (one :class:`Precond` subclass each):

========  ==============  ==============  ===================  ==================================
model     c_skip          c_out           c_in                 c_noise
========  ==============  ==============  ===================  ==================================
VP        1               −σ              1/√(σ²+1)            (M−1) t(σ)  (VP time of σ)
VE        1               σ               1                    ln(σ/2)
iDDPM     1               −σ              1/√(σ²+1)            M−1−argmin_j |u_j − σ|
EDM       σ_d²/(σ²+σ_d²)  σσ_d/√(σ²+σ_d²)  1/√(σ²+σ_d²)         ¼ ln σ
========  ==============  ==============  ===================  ==================================

With ``c_skip = 1`` and ``c_out = ∓σ`` the VP and iDDPM networks predict the noise ``ε`` and the
VE network predicts ``−ε``; EDM's choice keeps the network's input and its training target at
unit variance for data of standard deviation ``σ_d`` at every σ (Karras et al. 2022, App. B.6).

The conversions below use the VP-style notation ``x_t = α x_0 + σ_t ε`` with ``α = s(t)`` and
``σ_t = std(t)``; ``v = α ε − σ_t x_0`` (Salimans & Ho 2022) assumes ``α² + σ_t² = 1``.

:class:`Prediction` is the one place where "what the network predicts" is decided: it wraps a
network of any output kind (ε, x₀, v, score, or a preconditioned denoiser) and gives each sampler
the view it asks for — the score for SDE and PF-ODE solvers, ``(ε̂, x̂₀)`` for DDPM/DDIM, ``D`` for
the EDM sampler — converting the network's own output once, as k-diffusion's ``to_d`` does.
:func:`prediction_of` turns whatever a sampler was given (a ``Prediction``, a model with a
``prediction_view()``, or a plain score function) into one.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from scoretut.errors import UsageError
from scoretut.schedules import iddpm_sigmas
from scoretut.sde import SDE, VPSDE, as_time, bcast


def edm_coefficients(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(c_skip, c_out, c_in, c_noise)`` of Karras et al. (2022), Table 1, at noise level σ."""
    sigma = torch.as_tensor(sigma)
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data / total.sqrt()
    c_in = 1 / total.sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def vp_coefficients(sigma: Tensor, beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000):
    """VP row of Karras et al. (2022), Table 1: ``(1, −σ, 1/√(σ²+1), (M−1) t(σ))``.

    ``t(σ)`` inverts ``σ(t) = √(exp(½β_d t² + β_min t) − 1)``, the noise level of
    :class:`~scoretut.sde.VPSDE` with ``β_max = β_min + β_d`` (Song et al. 2021).
    """
    sigma = torch.as_tensor(sigma)
    t = VPSDE(beta_min, beta_min + beta_d).t_from_sigma(sigma).to(sigma.dtype)
    return torch.ones_like(sigma), -sigma, 1 / (sigma**2 + 1).sqrt(), (M - 1) * t


def ve_coefficients(sigma: Tensor):
    """VE row of Karras et al. (2022), Table 1: ``(1, σ, 1, ln(σ/2))`` (NCSN / SMLD)."""
    sigma = torch.as_tensor(sigma)
    return torch.ones_like(sigma), sigma, torch.ones_like(sigma), torch.log(sigma / 2)


def iddpm_coefficients(sigma: Tensor, u: Tensor):
    """iDDPM row of Karras et al. (2022), Table 1: ``(1, −σ, 1/√(σ²+1), M−1−argmin_j |u_j − σ|)``.

    ``u`` is :func:`iddpm_sigmas` (length ``M + 1``); ``c_noise`` is the DDPM step index of the
    nearest tabulated noise level.
    """
    sigma = torch.as_tensor(sigma)
    M = len(u) - 1
    j = (sigma.to(u.dtype)[..., None] - u.to(sigma.device)).abs().argmin(-1)
    return torch.ones_like(sigma), -sigma, 1 / (sigma**2 + 1).sqrt(), (M - 1 - j).to(sigma.dtype)


class Precond(nn.Module):
    """``D(x̂; σ) = c_skip x̂ + c_out F(c_in x̂, c_noise)`` around a network ``F(x, c_noise)``.

    Subclasses give :meth:`coefficients`. ``x̂`` has shape ``(batch, *dims)`` and ``sigma``
    shape ``(batch,)`` (or a scalar).
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(c_skip, c_out, c_in, c_noise)`` at noise levels ``sigma`` ``(batch,)``."""
        raise NotImplementedError

    def forward(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        sigma = as_time(sigma, x)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        F = self.net(bcast(c_in, x) * x, c_noise, **cond)
        return bcast(c_skip, x) * x + bcast(c_out, x) * F


class EDMPrecond(Precond):
    """EDM preconditioning (:func:`edm_coefficients`) with data standard deviation ``sigma_data``."""

    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__(net)
        self.sigma_data = float(sigma_data)

    def coefficients(self, sigma):
        return edm_coefficients(sigma, self.sigma_data)


class VPPrecond(Precond):
    """VP preconditioning (:func:`vp_coefficients`): ``F`` predicts ``ε`` from the DDPM-scaled input."""

    def __init__(self, net: nn.Module, beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000):
        super().__init__(net)
        self.beta_d, self.beta_min, self.M = float(beta_d), float(beta_min), int(M)

    def coefficients(self, sigma):
        return vp_coefficients(sigma, self.beta_d, self.beta_min, self.M)


class VEPrecond(Precond):
    """VE preconditioning (:func:`ve_coefficients`): ``F`` predicts ``−ε`` from the raw input."""

    def coefficients(self, sigma):
        return ve_coefficients(sigma)


class IDDPMPrecond(Precond):
    """iDDPM preconditioning (:func:`iddpm_coefficients`) over the levels :func:`iddpm_sigmas`."""

    def __init__(self, net: nn.Module, M: int = 1000, C_1: float = 0.001, C_2: float = 0.008):
        super().__init__(net)
        self.register_buffer("u", iddpm_sigmas(M, C_1, C_2), persistent=False)

    def coefficients(self, sigma):
        return iddpm_coefficients(sigma, self.u)


PRECONDS: dict[str, type[Precond]] = {"vp": VPPrecond, "ve": VEPrecond, "iddpm": IDDPMPrecond, "edm": EDMPrecond}


# -- ε / x₀ / v / score conversions at one time t, for x_t = α x₀ + σ_t ε -----------------------
def score_from_noise(noise: Tensor, std: Tensor) -> Tensor:
    """``∇log p_t = −ε/σ_t``."""
    return -noise / bcast(std, noise)


def noise_from_score(score: Tensor, std: Tensor) -> Tensor:
    """``ε = −σ_t ∇log p_t``."""
    return -score * bcast(std, score)


def x0_from_noise(x_t: Tensor, noise: Tensor, alpha: Tensor, std: Tensor) -> Tensor:
    """``x₀ = (x_t − σ_t ε)/α``."""
    return (x_t - bcast(std, x_t) * noise) / bcast(alpha, x_t)


def noise_from_x0(x_t: Tensor, x0: Tensor, alpha: Tensor, std: Tensor) -> Tensor:
    """``ε = (x_t − α x₀)/σ_t``."""
    return (x_t - bcast(alpha, x_t) * x0) / bcast(std, x_t)


def v_from_noise_x0(noise: Tensor, x0: Tensor, alpha: Tensor, std: Tensor) -> Tensor:
    """``v = α ε − σ_t x₀`` (Salimans & Ho 2022, Sec. 4)."""
    return bcast(alpha, noise) * noise - bcast(std, noise) * x0


def noise_from_v(x_t: Tensor, v: Tensor, alpha: Tensor, std: Tensor) -> Tensor:
    """``ε = σ_t x_t + α v`` (needs ``α² + σ_t² = 1``)."""
    return bcast(std, x_t) * x_t + bcast(alpha, x_t) * v


def x0_from_v(x_t: Tensor, v: Tensor, alpha: Tensor, std: Tensor) -> Tensor:
    """``x₀ = α x_t − σ_t v`` (needs ``α² + σ_t² = 1``)."""
    return bcast(alpha, x_t) * x_t - bcast(std, x_t) * v


PREDICTIONS = ("eps", "x0", "v", "score")
"""What a network's output ``F(x, t)`` can stand for: noise ``ε``, clean data ``x₀``, ``v`` or the score."""


def noise_from_prediction(kind: str, pred: Tensor, x_t: Tensor, alpha: Tensor, std: Tensor) -> Tensor:
    """``ε̂`` from a prediction of ``kind`` (one of :data:`PREDICTIONS`) at ``x_t = α x₀ + σ_t ε``.

    ``x0``: ``ε = (x_t − α x̂₀)/σ_t``; ``v``: ``ε = σ_t x_t + α v̂`` (needs ``α² + σ_t² = 1``);
    ``score``: ``ε = −σ_t ŝ``.
    """
    if kind == "eps":
        return pred
    if kind == "x0":
        return noise_from_x0(x_t, pred, alpha, std)
    if kind == "v":
        return noise_from_v(x_t, pred, alpha, std)
    if kind == "score":
        return noise_from_score(pred, std)
    raise UsageError(f"unknown prediction {kind!r}; choose one of: {', '.join(PREDICTIONS)}")


class CountingScore:
    """Wrap a network function (a score, a velocity, a denoiser…) and count its evaluations
    (NFE), one per batched call."""

    def __init__(self, fn: Callable[..., Tensor]):
        self.fn, self.nfe = fn, 0

    def __call__(self, *args, **kwargs) -> Tensor:
        self.nfe += 1
        return self.fn(*args, **kwargs)


KINDS = PREDICTIONS + ("denoiser",)
"""What :class:`Prediction` accepts: :data:`PREDICTIONS` of ``F(x, t)``, or ``"denoiser"`` for a
``D(x̂; σ)`` of the rescaled state (a :class:`Precond`)."""


class Prediction:
    """A network on ``sde`` whose output is ``kind``, seen every way a sampler may ask for it.

    ``fn(x, t)`` predicts ``ε``, ``x₀``, ``v`` or the score (:data:`PREDICTIONS`); for
    ``kind="denoiser"`` it is ``D(x̂; σ)`` called as ``fn(x / s(t), σ(t))`` (Karras et al. 2022,
    Eq. 7). With ``α = s(t)``, ``σ_t = std(t)`` and ``σ = σ_t/α`` the views are

    * :meth:`score` ``∇log p_t(x) = −ε̂/σ_t = (α x̂₀ − x)/σ_t²``;
    * :meth:`eps_x0` ``(ε̂, x̂₀)``, tied by ``x = α x̂₀ + σ_t ε̂``; :meth:`eps`, :meth:`x0`;
    * :meth:`v` ``α ε̂ − σ_t x̂₀`` (Salimans & Ho 2022; ``α² + σ_t² = 1``);
    * :meth:`denoise` ``D(x̂; σ(t)) = x̂₀(s(t) x̂)``, the denoiser of the rescaled state;
    * :meth:`velocity` ``f(x, t) − ½ g(t)² ∇log p_t(x)``, the probability-flow ODE.

    Each view evaluates the network once and converts its output straight to what is asked for,
    so a sampler that needs ``ε̂`` from an ε-network, or ``D`` from a denoiser, gets the network's
    own output (no round trip through the score). A ``Prediction`` is itself a score function
    (``__call__`` is :meth:`score`), and :attr:`nfe` counts its network evaluations.
    """

    def __init__(self, sde: SDE, fn: Callable[[Tensor, Tensor], Tensor], kind: str = "score"):
        if kind not in KINDS:
            raise UsageError(f"unknown prediction {kind!r}; choose one of: {', '.join(KINDS)}")
        self.sde, self.kind, self.fn = sde, kind, CountingScore(fn)

    @property
    def nfe(self) -> int:
        """Network evaluations so far, over all views."""
        return self.fn.nfe

    def _denoised(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(s, σ, D(x/s; σ))`` at ``s = s(t)`` (broadcast to ``x``) and ``σ = σ(t)``."""
        s, sigma = bcast(self.sde.scale(t), x), self.sde.sigma(t)
        return s, sigma, self.fn(x / s, sigma)

    def score(self, x: Tensor, t: float | Tensor) -> Tensor:
        """``∇log p_t(x)``; from a denoiser ``(s D(x/s; σ) − x)/(s² σ²)`` (Tweedie)."""
        t = as_time(t, x)
        if self.kind == "score":
            return self.fn(x, t)
        if self.kind == "denoiser":
            s, sigma, D = self._denoised(x, t)
            return (s * D - x) / (s**2 * bcast(sigma, x) ** 2)
        alpha, std = self.sde.scale(t), self.sde.std(t)
        return score_from_noise(noise_from_prediction(self.kind, self.fn(x, t), x, alpha, std), std)

    __call__ = score

    def _eps_x0(self, x: Tensor, t: float | Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(ε̂, x̂₀, α, σ_t)`` at ``x_t = x``, from one network evaluation."""
        t = as_time(t, x)
        alpha, std = self.sde.scale(t), self.sde.std(t)
        if self.kind in ("x0", "denoiser"):
            x0 = self._denoised(x, t)[2] if self.kind == "denoiser" else self.fn(x, t)
            return noise_from_x0(x, x0, alpha, std), x0, alpha, std
        if self.kind == "v":
            v = self.fn(x, t)
            return noise_from_v(x, v, alpha, std), x0_from_v(x, v, alpha, std), alpha, std
        out = self.fn(x, t)
        noise = out if self.kind == "eps" else noise_from_score(out, std)
        return noise, x0_from_noise(x, noise, alpha, std), alpha, std

    def eps_x0(self, x: Tensor, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """``(ε̂, x̂₀)`` at ``x_t = x``, from one network evaluation."""
        return self._eps_x0(x, t)[:2]

    def eps(self, x: Tensor, t: float | Tensor) -> Tensor:
        """``ε̂(x, t)``."""
        return self._eps_x0(x, t)[0]

    def x0(self, x: Tensor, t: float | Tensor) -> Tensor:
        """``x̂₀(x, t) = E[x₀ | x_t = x]``."""
        return self._eps_x0(x, t)[1]

    def v(self, x: Tensor, t: float | Tensor) -> Tensor:
        """``v̂ = α ε̂ − σ_t x̂₀``."""
        return v_from_noise_x0(*self._eps_x0(x, t))

    def denoise(self, x_hat: Tensor, t: float | Tensor) -> Tensor:
        """``D(x̂; σ(t)) = x̂₀(s x̂, t)``; from a score ``x̂ + σ² s ∇log p_t(s x̂)`` (Tweedie)."""
        t = as_time(t, x_hat)
        if self.kind == "denoiser":
            return self.fn(x_hat, self.sde.sigma(t))
        s = bcast(self.sde.scale(t), x_hat)
        if self.kind == "score":
            return x_hat + bcast(self.sde.sigma(t), x_hat) ** 2 * s * self.fn(s * x_hat, t)
        return self.x0(s * x_hat, t)

    def velocity(self, x: Tensor, t: float | Tensor) -> Tensor:
        """``dx/dt = f(x, t) − ½ g(t)² ∇log p_t(x)`` (probability-flow ODE, Song et al. 2021, Eq. 13)."""
        return self.sde.reverse(self.score, probability_flow=True).sde(x, t)[0]


def prediction_of(sde: SDE, fn: Callable[[Tensor, Tensor], Tensor]) -> Prediction:
    """``fn`` as a :class:`Prediction` on ``sde``: itself if it is one, the model's own
    (``fn.prediction_view()``, e.g. a :class:`~scoretut.pipelines.toy2d.ToyScoreModel`) if it
    has one, else ``fn`` taken as a score function ``(x, t) -> ∇log p_t(x)``."""
    if isinstance(fn, Prediction):
        return fn
    if hasattr(fn, "prediction_view"):
        return fn.prediction_view()
    return Prediction(sde, fn, "score")
