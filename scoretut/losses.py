"""Training objectives for score networks and denoisers.

Every loss is a small callable object used the same way::

    loss = loss_fn(model, x0, generator=None)   # scalar: the batch mean

with ``x0`` of shape ``(batch, *dims)`` and all randomness (times, noise, projections) drawn
from ``generator`` when one is given (it must live on ``x0``'s device). ``model`` is a score
function ``s(x, t)`` for :class:`DSMLoss`, :class:`ISMLoss` and :class:`SSMLoss`, and a denoiser
``D(x, σ)`` for :class:`EDMLoss`. Squared norms are summed over the data dimensions and averaged
over the batch.

Conventions, so the losses can be compared with each other:

* :class:`DSMLoss` follows Song et al. (2021, Eq. 7), ``E[λ ‖s − ∇log p(x_t|x_0)‖²]`` *without*
  a ½, while :class:`ISMLoss` and :class:`SSMLoss` follow Hyvärinen (2005, Eq. 4) and
  Song et al. (2019, Eq. 8) *with* their ½. Hence, at one noise level and with the same ``λ``,
  ``DSM = 2·ISM + const`` (Vincent 2011, Eq. 9–11), and ``E_v[SSM] = ISM`` (Song et al. 2019).
* With an ``sde``, ISM and SSM are applied to ``x_t ~ p_t`` at random ``t`` (the
  noise-conditional score-matching objectives) with the same ``λ(t)`` as DSM; without one they
  score the data themselves at a fixed conditioning ``t``.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor

from scoretut.sde import SDE, ScoreFn, as_time, bcast

Weighting = Literal["std2", "none"] | Callable[[Tensor], Tensor]
"""``λ(t)``: ``"std2"`` (``std(t)²``, Song et al. 2021, Sec. 3.3), ``"none"`` (1) or a function
of ``t`` ``(batch,)`` returning ``(batch,)``."""

def min_snr_weighting(sde: SDE, gamma: float) -> Callable[[Tensor], Tensor]:
    """Min-SNR-γ weighting (Hang et al. 2023) as a :data:`Weighting` of :class:`DSMLoss`.

    With ``SNR(t) = s(t)²/std(t)²`` it weights the ε-residual by ``min(SNR, γ)/SNR``, i.e.

    .. math::  \\lambda(t) = \\mathrm{std}(t)^2\\,\\frac{\\min(\\mathrm{SNR}(t), \\gamma)}{\\mathrm{SNR}(t)},

    which is the weight ``min(SNR, γ)`` on the x₀-residual ``‖x̂₀ − x₀‖²``. Levels noisier than
    ``SNR = γ`` keep DDPM's plain ε-loss; the nearly clean ones, whose noise is easy to predict
    in ε but whose x₀-error is tiny, are down-weighted so they no longer compete with the
    noise levels that decide the content of a sample.
    """
    if not gamma > 0:
        raise ValueError(f"min-SNR needs gamma > 0, got {gamma}")

    def weight(t: Tensor) -> Tensor:
        std2 = sde.std(t) ** 2
        snr = sde.scale(t) ** 2 / std2
        return std2 * snr.clamp(max=gamma) / snr

    return weight


DenoiserFn = Callable[[Tensor, Tensor], Tensor]
"""``D(x, σ)``: ``x`` ``(batch, *dims)``, ``σ`` ``(batch,)`` → estimate of ``x_0`` of ``x``'s shape."""

TIME_SAMPLING = ("uniform", "stratified")


def sample_times(
    n: int,
    t_min: float,
    t_max: float,
    *,
    stratified: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``n`` times in ``U(t_min, t_max)``, shape ``(n,)``.

    With ``stratified=True`` the uniforms are the low-discrepancy set ``u_i = (u + i/n) mod 1``
    for one ``u ~ U(0, 1)`` (Kingma et al. 2021, VDM, App. I.1): still marginally uniform, so
    the loss stays unbiased, but the batch covers ``[t_min, t_max]`` evenly, which lowers the
    variance of the time integral.
    """
    if stratified:
        u0 = torch.rand((), generator=generator, device=device, dtype=dtype)
        u = (u0 + torch.arange(n, device=device, dtype=dtype) / n) % 1.0
    else:
        u = torch.rand(n, generator=generator, device=device, dtype=dtype)
    return t_min + (t_max - t_min) * u


def log_sigma_density(sde: SDE, t: Tensor) -> tuple[Tensor, Tensor]:
    """``(ln σ(t), p(ln σ(t)))``: the density of the noise level met in training when the times
    are uniform, ``t ~ U(sde.t_min, sde.T)``, as in :class:`DSMLoss`.

    By the change of variables ``p(ln σ) = 1 / ((T − t_min) |d ln σ(t)/dt|)``, with the derivative
    of ``sde.sigma`` taken by automatic differentiation: ``2σ²/((T − t_min) β(t)(1 + σ²))`` for
    :class:`~scoretut.sde.VPSDE` and about ``1/ln(σ_max/σ_min)`` for the geometric schedule of
    :class:`~scoretut.sde.VESDE`. ``t`` is a 1-D tensor of times in ``(t_min, T]`` (float64 inside).
    """
    t = torch.as_tensor(t, dtype=torch.float64).detach().requires_grad_(True)
    with torch.enable_grad():
        log_sigma = torch.log(sde.sigma(t))
        (slope,) = torch.autograd.grad(log_sigma.sum(), t)
    return log_sigma.detach(), 1.0 / ((sde.T - sde.t_min) * slope.abs())


def divergence(y: Tensor, x: Tensor, create_graph: bool = True) -> Tensor:
    """Exact ``tr ∇ₓ y(x) = Σ_i ∂y_i/∂x_i`` per sample by one backward pass per dimension.

    ``x`` ``(batch, *dims)`` must require grad and ``y`` of the same shape be computed from it
    sample-wise; returns ``(batch,)``. Cost: ``prod(dims)`` backward passes — fine for the 2D
    toys, which is why :class:`SSMLoss` exists for anything larger.
    """
    y_flat = y.flatten(1)
    div = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
    for i in range(y_flat.shape[1]):
        (grad,) = torch.autograd.grad(y_flat[:, i].sum(), x, create_graph=create_graph, retain_graph=True)
        div = div + grad.flatten(1)[:, i]
    return div


class _NoiseConditional:
    """Shared plumbing: the noise level at which a score loss is evaluated, and its weight.

    With an ``sde``: ``t ~ U(t_min, T)`` (default ``[sde.t_min, sde.T]``; equal bounds give a
    single noise level), ``x_t = s(t) x_0 + std(t) z`` and weight ``λ(t)``. Without one: ``x_0``
    itself, conditioning ``t = fixed_t`` and weight 1. With ``t_grid`` (a 1-D list of times),
    ``t`` is drawn uniformly from that finite set instead: NCSN's noise levels ``σ_1..σ_L`` on
    :class:`~scoretut.sde.EDMSDE` (where ``t = σ``, Song & Ermon 2019, Eq. 5), or DDPM's steps
    ``1..T`` on :class:`~scoretut.schedules.DiscreteVP` (Ho et al. 2020, Eq. 14).
    """

    def __init__(
        self,
        sde: SDE | None = None,
        weighting: Weighting = "std2",
        t_min: float | None = None,
        T: float | None = None,
        time_sampling: str = "uniform",
        fixed_t: float = 0.0,
        t_grid: Tensor | list[float] | None = None,
    ):
        if time_sampling not in TIME_SAMPLING:
            raise ValueError(f"time_sampling must be one of {TIME_SAMPLING}, got {time_sampling!r}")
        if not callable(weighting) and weighting not in ("std2", "none"):
            raise ValueError(f"weighting must be 'std2', 'none' or a callable, got {weighting!r}")
        self.sde, self.weighting, self.time_sampling, self.fixed_t = sde, weighting, time_sampling, fixed_t
        self.t_min = (sde.t_min if sde is not None else fixed_t) if t_min is None else float(t_min)
        self.t_max = (sde.T if sde is not None else fixed_t) if T is None else float(T)
        if not self.t_min <= self.t_max:
            raise ValueError(f"need t_min <= t_max, got {self.t_min} > {self.t_max}")
        self.t_grid = None if t_grid is None else torch.as_tensor(t_grid, dtype=torch.float64).flatten()
        if self.t_grid is not None and (sde is None or len(self.t_grid) == 0):
            raise ValueError("t_grid needs an sde and at least one time")

    def times(self, x0: Tensor, generator: torch.Generator | None) -> Tensor:
        """Conditioning times ``(batch,)`` for the batch ``x0``."""
        if self.sde is None:
            return as_time(self.fixed_t, x0)
        if self.t_grid is not None:
            idx = torch.randint(len(self.t_grid), (x0.shape[0],), generator=generator, device=x0.device)
            return self.t_grid.to(device=x0.device, dtype=x0.dtype)[idx]
        stratified = self.time_sampling == "stratified"
        return sample_times(x0.shape[0], self.t_min, self.t_max, stratified=stratified,
                            generator=generator, device=x0.device, dtype=x0.dtype)  # fmt: skip

    def weight(self, t: Tensor) -> Tensor:
        """``λ(t)`` of shape ``(batch,)``."""
        if callable(self.weighting):
            return self.weighting(t)
        if self.weighting == "none" or self.sde is None:
            return torch.ones_like(t)
        return self.sde.std(t) ** 2


class DSMLoss(_NoiseConditional):
    """Denoising score matching (Vincent 2011; Song et al. 2021, Eq. 7).

    .. math::  \\mathcal L = \\mathbb E_{t, x_0, z}\\Big[\\lambda(t)\\,
               \\big\\| s_\\theta(x_t, t) + z/\\mathrm{std}(t) \\big\\|^2\\Big], \\quad
               x_t = s(t) x_0 + \\mathrm{std}(t) z,\\; t \\sim U(t_\\min, t_\\max)

    since ``∇log p(x_t | x_0) = −z/std(t)``. It is computed as ``λ/std² ‖std·s_θ + z‖²`` (the
    ε-prediction residual), which for the default ``λ = std²`` is well-conditioned at small ``t``.

    Args:
        sde: the forward process (:mod:`scoretut.sde`).
        weighting: ``λ(t)``, see :data:`Weighting`.
        t_min, T: bounds of the training times (default ``sde.t_min``, ``sde.T``); ``t_min == T``
            trains a single noise level.
        time_sampling: ``"uniform"`` or ``"stratified"`` (see :func:`sample_times`).
        t_grid: draw ``t`` uniformly from these times instead (NCSN levels, DDPM steps).
    """

    def __init__(
        self,
        sde: SDE,
        weighting: Weighting = "std2",
        t_min: float | None = None,
        T: float | None = None,
        time_sampling: str = "uniform",
        t_grid: Tensor | list[float] | None = None,
    ):
        super().__init__(sde, weighting, t_min, T, time_sampling, t_grid=t_grid)

    def __call__(self, score_fn: ScoreFn, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        t = self.times(x0, generator)
        x_t, z = self.sde.perturb(x0, t, generator)
        std = self.sde.std(t)
        residual = bcast(std, x0) * score_fn(x_t, t) + z  # std·(s_θ − ∇log p(x_t|x_0))
        return (self.weight(t) / std**2 * residual.flatten(1).pow(2).sum(1)).mean()


class ISMLoss(_NoiseConditional):
    """Implicit score matching (Hyvärinen 2005, Eq. 4), with the exact divergence.

    .. math::  \\mathcal L = \\mathbb E\\Big[\\lambda(t)\\big(\\tfrac12\\|s_\\theta(x, t)\\|^2
               + \\operatorname{tr}\\nabla_x s_\\theta(x, t)\\big)\\Big]

    with ``x = x_t`` at ``t ~ U(t_min, T)`` when an ``sde`` is given (the noise-conditional form),
    otherwise ``x = x_0`` and ``t = fixed_t``. Equal to ``½ E‖s_θ − ∇log p‖²`` up to a constant
    (Hyvärinen 2005, Thm. 1). The divergence costs one backward pass per data dimension.

    Args:
        sde: forward process, or ``None`` to score the data directly.
        weighting, t_min, T, time_sampling: as for :class:`DSMLoss` (used only with an ``sde``).
        fixed_t: conditioning passed to the model when ``sde`` is ``None``.
    """

    def per_sample(
        self, score_fn: ScoreFn, x: Tensor, t: Tensor, generator: torch.Generator | None, create_graph: bool
    ) -> Tensor:
        """``½‖s(x,t)‖² + tr ∇ₓ s(x,t)`` for each sample, shape ``(batch,)``; ``x`` requires grad."""
        s = score_fn(x, t)
        return 0.5 * s.flatten(1).pow(2).sum(1) + divergence(s, x, create_graph=create_graph)

    def __call__(self, score_fn: ScoreFn, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        training = torch.is_grad_enabled()  # under no_grad: evaluate only, keep no graph
        t = self.times(x0, generator)
        x = x0 if self.sde is None else self.sde.perturb(x0, t, generator)[0]
        with torch.enable_grad():  # the objective itself differentiates the model in x
            x = x.detach().requires_grad_(True)
            loss = (self.weight(t) * self.per_sample(score_fn, x, t, generator, training)).mean()
        return loss if training else loss.detach()


class SSMLoss(ISMLoss):
    """Sliced score matching (Song et al. 2019, Eq. 8; SSM-VR Eq. 9).

    .. math::  \\mathcal L = \\mathbb E_{x, v}\\Big[\\lambda(t)\\big(v^\\top \\nabla_x (v^\\top s_\\theta)
               + \\tfrac12 (v^\\top s_\\theta)^2\\big)\\Big]

    with random projections ``v`` satisfying ``E[v vᵀ] = I`` (Rademacher or standard Gaussian),
    ``n_projections`` per sample. ``variance_reduced=True`` replaces ``½(vᵀs)²`` by its
    expectation ``½‖s‖²`` (SSM-VR). Needs one backward pass however large the data.
    ``E_v[SSM] = ISM``, hence the same gradients in expectation.

    Args:
        sde, and as keywords weighting, t_min, T, time_sampling, fixed_t, t_grid: as for
            :class:`ISMLoss`.
        n_projections: projections per data point.
        projection: ``"rademacher"`` or ``"gaussian"``.
        variance_reduced: use SSM-VR.
    """

    def __init__(
        self,
        sde: SDE | None = None,
        n_projections: int = 1,
        projection: Literal["rademacher", "gaussian"] = "rademacher",
        variance_reduced: bool = False,
        **times,
    ):
        super().__init__(sde, **times)
        if projection not in ("rademacher", "gaussian"):
            raise ValueError(f"projection must be 'rademacher' or 'gaussian', got {projection!r}")
        if n_projections < 1:
            raise ValueError("n_projections must be >= 1")
        self.n_projections, self.projection, self.variance_reduced = n_projections, projection, variance_reduced

    def projections(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """Random directions ``v`` of ``x``'s shape, each with ``E[v vᵀ] = I``."""
        if self.projection == "gaussian":
            return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        bits = torch.randint(0, 2, x.shape, generator=generator, device=x.device)
        return (2 * bits - 1).to(x.dtype)

    def per_sample(
        self, score_fn: ScoreFn, x: Tensor, t: Tensor, generator: torch.Generator | None, create_graph: bool
    ) -> Tensor:
        """The SSM objective for each sample averaged over its projections, shape ``(batch,)``.

        The batch is repeated once per projection so a single backward pass of ``Σ vᵀs`` gives
        every ``∇ₓ(vᵀs)`` (each row of the repeated batch only sees its own input).
        """
        M, batch = self.n_projections, x.shape[0]
        x_rep, t_rep = x.repeat(M, *([1] * (x.ndim - 1))), t.repeat(M)  # (M·batch, *dims), (M·batch,)
        v = self.projections(x_rep, generator)  # (M·batch, *dims)
        s = score_fn(x_rep, t_rep)
        vs = (v * s).flatten(1).sum(1)  # (M·batch,): vᵀs
        (grad_vs,) = torch.autograd.grad(vs.sum(), x_rep, create_graph=create_graph)
        vjv = (v * grad_vs).flatten(1).sum(1)  # vᵀ ∇ₓ(vᵀs)
        quad = 0.5 * s.flatten(1).pow(2).sum(1) if self.variance_reduced else 0.5 * vs**2
        return (vjv + quad).reshape(M, batch).mean(0)


class EDMLoss:
    """The denoiser loss of Karras et al. (2022, Eq. 2 and 8, Table 1 "training" row).

    .. math::  \\mathcal L = \\mathbb E_{\\sigma, x_0, n}\\Big[\\lambda(\\sigma)\\,
               \\big\\| D_\\theta(x_0 + n;\\,\\sigma) - x_0 \\big\\|^2\\Big], \\quad
               \\ln\\sigma \\sim \\mathcal N(P_\\text{mean}, P_\\text{std}^2),\\;
               n \\sim \\mathcal N(0, \\sigma^2 I),\\;
               \\lambda(\\sigma) = \\frac{\\sigma^2 + \\sigma_\\text{data}^2}{(\\sigma\\,\\sigma_\\text{data})^2}

    ``λ = 1/c_out²`` makes the effective target of the raw network ``F`` inside
    :class:`scoretut.parametrisation.EDMPrecond` unit-variance at every σ. The defaults are those tuned
    for images scaled to ``[-1, 1]``; for other data set ``sigma_data`` to the data's standard
    deviation (and the same value in ``EDMPrecond``) and move ``P_mean`` with the noise levels
    that matter for it.

    Args:
        P_mean, P_std: mean and standard deviation of ``ln σ``.
        sigma_data: data standard deviation ``σ_data`` in ``λ``.
    """

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5):
        if P_std < 0 or sigma_data <= 0:
            raise ValueError("EDMLoss needs P_std >= 0 and sigma_data > 0")
        self.P_mean, self.P_std, self.sigma_data = float(P_mean), float(P_std), float(sigma_data)

    def sample_sigma(
        self, n: int, generator: torch.Generator | None = None,
        device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
    ) -> Tensor:  # fmt: skip
        """``σ = exp(P_mean + P_std·ξ)``, ``ξ ~ N(0, 1)``, shape ``(n,)``."""
        xi = torch.randn(n, generator=generator, device=device, dtype=dtype)
        return torch.exp(self.P_mean + self.P_std * xi)

    def weight(self, sigma: Tensor) -> Tensor:
        """``λ(σ) = (σ² + σ_d²)/(σ σ_d)²``, shape of ``sigma``."""
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def at_sigma(
        self, denoiser: DenoiserFn, x0: Tensor, sigma: Tensor | list[float], generator: torch.Generator | None = None
    ) -> Tensor:
        """The weighted loss at fixed noise levels: ``λ(σ) E_{x_0, n}‖D(x_0 + n; σ) − x_0‖²``.

        One Monte-Carlo value per entry of the 1-D ``sigma`` (each averaged over the batch ``x0``
        with fresh noise ``n ~ N(0, σ² I)``); the training loss is this curve averaged over
        ``ln σ ~ N(P_mean, P_std²)``. With the EDM preconditioning the denoiser error is
        ``D − x_0 = c_out (F − F_target)``, and ``λ = 1/c_out²`` makes the value the raw network's
        own error ``E‖F − F_target‖²``: for the network that outputs zero (``D = c_skip x``) on
        data with ``E‖x_0‖² = dim · σ_data²`` it equals ``dim`` at every σ.
        """
        sigma = torch.as_tensor(sigma, dtype=x0.dtype, device=x0.device).flatten()
        values = []
        for s in sigma:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            denoised = denoiser(x0 + s * noise, s.expand(x0.shape[0]))
            values.append(self.weight(s) * (denoised - x0).flatten(1).pow(2).sum(1).mean())
        return torch.stack(values)

    def __call__(self, denoiser: DenoiserFn, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        sigma = self.sample_sigma(x0.shape[0], generator, x0.device, x0.dtype)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        denoised = denoiser(x0 + bcast(sigma, x0) * noise, sigma)
        return (self.weight(sigma) * (denoised - x0).flatten(1).pow(2).sum(1)).mean()


LOSSES: dict[str, type] = {"dsm": DSMLoss, "ism": ISMLoss, "ssm": SSMLoss, "edm": EDMLoss}
"""Loss classes by config name."""
