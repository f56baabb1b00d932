"""Controllable generation with a score model: guidance by a likelihood, and imputation.

**Conditional sampling** (Song et al. 2021, Sec. 5, Eq. 14). Bayes' rule in log form holds at
every noise level, so the score of the conditional ``p_t(x | y)`` is the unconditional score
plus the score of a (time-dependent) likelihood — a classifier, or any differentiable
constraint:

.. math::  \\nabla_x \\log p_t(x \\mid y) = \\nabla_x \\log p_t(x) + \\nabla_x \\log p_t(y \\mid x).

:func:`guided_score` builds that sum, with ``∇ₓ log p_t(y|x)`` from autograd; a ``scale`` γ ≠ 1
samples ``∝ p_t(x) p_t(y|x)^γ`` instead (classifier guidance, Dhariwal & Nichol 2021). Any
sampler of :mod:`scoretut.sampling` can then run on the guided score.
:func:`mixture_classifier` is the exact classifier ``log p_t(y = k | x_t)`` of Gaussian-mixture
data, for which the guided score is exactly the score of component ``k``.

**Imputation** (Song et al. 2021, App. I.2, the "replacement" method). To fill in the unknown
coordinates of ``x`` given known ones ``y``, run the reverse SDE on the whole ``x`` and after
every update overwrite the known coordinates with a fresh draw of the *forward* process,
``s(t) y + std(t) z``. The unknown coordinates then follow the joint score evaluated next to
a plausible noisy ``y``. This is an approximation: the exact conditional score
``∇ log p_t(x_u | y)`` is not the joint score at a noisy ``y``, and on correlated data the
imputations are visibly less concentrated than the exact conditional
(:func:`mixture_conditional` gives it in closed form for a Gaussian mixture).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
from torch import Tensor

from scoretut.data.toy2d import GaussianMixture2D
from scoretut.errors import UsageError
from scoretut.sampling import Step, gaussian_noise, langevin_correct, reverse_em_step
from scoretut.sde import SDE, ScoreFn, as_time, bcast

LogLikelihood = Callable[[Tensor, Tensor], Tensor]
"""``log p_t(y | x)``: ``x`` ``(batch, *dims)`` and ``t`` ``(batch,)`` → ``(batch,)`` (``y`` is fixed)."""


def likelihood_score(log_likelihood: LogLikelihood) -> ScoreFn:
    """``∇ₓ log p_t(y | x)`` of a differentiable ``log_likelihood(x, t)``, by autograd."""

    def grad_fn(x: Tensor, t: Tensor) -> Tensor:
        with torch.enable_grad():
            x_ = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(log_likelihood(x_, as_time(t, x_)).sum(), x_)
        return g

    return grad_fn


def guided_score(score_fn: ScoreFn, log_likelihood: LogLikelihood, scale: float = 1.0) -> ScoreFn:
    """``s(x, t) + γ ∇ₓ log p_t(y | x)`` (Song et al. 2021, Eq. 14; γ = ``scale``)."""
    if scale < 0:
        raise UsageError(f"the guidance scale must be >= 0, got {scale}")
    grad_fn = likelihood_score(log_likelihood)
    return lambda x, t: score_fn(x, t) + scale * grad_fn(x, t)


def mixture_classifier(gmm: GaussianMixture2D, sde: SDE, k: int) -> LogLikelihood:
    """Exact ``log p_t(y = k | x_t) = log w_k + log N(x_t; s μ_k, s² Σ_k + std² I) − log p_t(x_t)``.

    The noisy-data classifier of a Gaussian mixture under ``sde``: the posterior probability
    that ``x_t`` came from component ``k`` (``s = s(t)``, ``std = std(t)``).
    """
    if not 0 <= k < gmm.num_components:
        raise UsageError(f"component k must be in 0..{gmm.num_components - 1}, got {k}")
    comp = GaussianMixture2D(gmm.weights[k : k + 1], gmm.means[k : k + 1], gmm.covariances[k : k + 1])
    log_w = math.log(float(gmm.weights[k]))

    def log_likelihood(x: Tensor, t: Tensor) -> Tensor:
        s, std = sde.scale(t), sde.std(t)
        return log_w + comp.perturbed_log_prob(x, s, std) - gmm.perturbed_log_prob(x, s, std)

    return log_likelihood


def mixture_conditional(gmm: GaussianMixture2D, known: int, value: float) -> tuple[Tensor, Tensor, Tensor]:
    """Exact ``p(x_u | x_known = value)`` of a 2-D Gaussian mixture: a 1-D mixture.

    Component ``k`` contributes weight ``∝ w_k N(value; μ_k,o, Σ_k,oo)``, mean
    ``μ_k,u + Σ_k,uo/Σ_k,oo (value − μ_k,o)`` and variance ``Σ_k,uu − Σ_k,uo²/Σ_k,oo``.
    Returns ``(weights, means, stds)``, each ``(K,)`` float64.
    """
    if known not in (0, 1):
        raise UsageError(f"known must be the coordinate 0 or 1, got {known}")
    u = 1 - known
    mu, cov = gmm.means, gmm.covariances
    s_oo, s_uu, s_uo = cov[:, known, known], cov[:, u, u], cov[:, u, known]
    log_w = torch.log(gmm.weights) - 0.5 * ((value - mu[:, known]) ** 2 / s_oo + torch.log(2 * math.pi * s_oo))
    weights = torch.softmax(log_w, 0)
    means = mu[:, u] + s_uo / s_oo * (value - mu[:, known])
    return weights, means, torch.sqrt(s_uu - s_uo**2 / s_oo)


def replacement_imputation(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    mask: Tensor,
    known: Tensor,
    generator: torch.Generator | None = None,
    snr: float = 0.16,
    n_corrector: int = 0,
) -> Iterator[Step]:
    """Imputation by replacement (Song et al. 2021, App. I.2), in the shared sampler interface.

    ``mask`` (broadcastable to ``x``, 1 = known) marks the known coordinates and ``known`` holds
    their clean values ``y`` (shape of ``x``; only the masked entries are read). Each step is
    ``n_corrector`` Langevin corrector steps and one reverse-SDE Euler–Maruyama step (as
    :func:`scoretut.sampling.predictor_corrector`), each followed by
    ``x ← (1 − mask) x + mask (s(t) y + std(t) z)``. The last step adds no noise and sets the
    known coordinates to ``s(t_end) y``.
    """
    mask = torch.as_tensor(mask, dtype=x.dtype, device=x.device)
    known = torch.as_tensor(known, dtype=x.dtype, device=x.device).expand_as(x)
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise UsageError("mask must contain only 0 (unknown) and 1 (known)")
    rev = sde.reverse(score_fn)

    def replace(x: Tensor, t: float, noise: bool) -> Tensor:
        mean, std = sde.marginal_prob(known, t)
        if noise:
            mean = mean + bcast(std, x) * gaussian_noise(x, generator)
        return (1 - mask) * x + mask * mean

    x = replace(x, float(ts[0]), True)
    yield Step(0, float(ts[0]), x)
    for i in range(len(ts) - 1):
        t, t_next, last = float(ts[i]), float(ts[i + 1]), i == len(ts) - 2
        for _ in range(n_corrector):
            x = replace(langevin_correct(score_fn, x, as_time(t, x), snr, 1, generator), t, True)
        x = reverse_em_step(rev, x, t, t_next - t, not last, generator)
        x = replace(x, t_next, not last)
        yield Step(i + 1, t_next, x)
