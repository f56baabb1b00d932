"""Langevin dynamics, annealed Langevin dynamics (NCSN) and the NCSNv2 rules for choosing σ's.

Unadjusted Langevin dynamics with step size ``α`` (Song & Ermon 2020, NCSNv2, Alg. 1):

.. math::  x \\leftarrow x + \\alpha\\,\\nabla_x \\log p(x) + \\sqrt{2\\alpha}\\, z, \\qquad z \\sim \\mathcal N(0, I),

which samples ``p`` as ``α → 0`` and the number of steps → ∞. (NCSN, Song & Ermon 2019, wrote the
same update with ``α/2`` and ``√α``; we use the NCSNv2 form, the same as
:func:`scoretut.samplers.langevin_correct`.)

Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1) runs ``n_steps_each`` such steps at each
of the noise levels ``σ_1 > σ_2 > … > σ_L``, with ``α_i = ε σ_i²/σ_L²``, then (Jolicoeur-Martineau
et al. 2021; not one of NCSNv2's five techniques) one denoising step ``x ← x + σ_L² s_θ(x, σ_L)``
— Tweedie's estimate of the clean point. Because of the factor 2 above, NCSN's ``ε = 2·10⁻⁵`` is
``eps = 1e-5`` here; the default ``eps = 2e-5`` takes twice NCSN's step.

Both are generators with the shared sampler signature ``fn(sde, score_fn, x, ts, *, generator,
**opts)``. For NCSN the natural SDE is :class:`scoretut.sde.EDMSDE` (``t = σ``, ``s = 1``), so
``ts`` *is* the list of noise levels and ``score_fn(x, σ)`` is the noise-conditional score; train
it with ``DSMLoss(EDMSDE(σ_L, σ_1), t_grid=sigmas)`` (weight ``λ = σ²``, Song & Ermon 2019, Eq. 6).

The NCSNv2 rules (Song & Ermon 2020, Sec. 4), for data of dimension ``D``:

* technique 1: ``σ_1`` = the largest Euclidean distance between two training points (:func:`max_pairwise_distance`);
* technique 2: a geometric sequence whose ratio ``γ = σ_{i−1}/σ_i`` satisfies
  ``Φ(√(2D)(γ−1) + 3γ) − Φ(√(2D)(γ−1) − 3γ) ≈ 0.5`` (:func:`ncsnv2_ratio`), so that a sample of
  one level lies in the high-density shell of the next;
* technique 4: ``ε`` chosen so that ``n_steps_each`` Langevin steps at level ``i`` started from level
  ``i−1`` end with the right variance (:func:`ncsnv2_variance_ratio`, :func:`ncsnv2_step_size`).

Technique 3 (``s_θ(x, σ) = f_θ(x, σ)/σ``) is ``ToyScoreModel(..., param="score")`` and technique 5
(sample with an EMA of the weights) is the EMA of :func:`scoretut.train.train`.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import Tensor

from scoretut.config import UsageError
from scoretut.samplers import SAMPLERS, Step
from scoretut.sde import SDE, ScoreFn, as_time


def _langevin_step(score_fn: ScoreFn, x: Tensor, t: Tensor, alpha: float, generator) -> Tensor:
    """``x + α ∇log p_t(x) + √(2α) z``."""
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x + alpha * score_fn(x, t) + math.sqrt(2 * alpha) * z


def langevin(
    sde: SDE | None, score_fn: ScoreFn, x: Tensor, ts: Tensor, *, generator=None, step_size: float = 1e-2
) -> Iterator[Step]:
    """Plain Langevin dynamics: one step ``x ← x + α ∇log p_t(x) + √(2α) z`` per time in ``ts[1:]``.

    ``sde`` is not used (pass ``None``); a constant ``ts`` such as ``torch.zeros(n + 1)`` targets a
    single density, e.g. the data score ``score_fn(x, t) = p.score(x)``.
    """
    if step_size <= 0:
        raise UsageError(f"the Langevin step size must be positive, got {step_size}")
    ts = torch.as_tensor(ts, dtype=torch.float64)
    yield Step(0, float(ts[0]), x)
    for i in range(1, len(ts)):
        x = _langevin_step(score_fn, x, as_time(float(ts[i]), x), step_size, generator)
        yield Step(i, float(ts[i]), x)


def annealed_langevin(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator=None,
    eps: float = 2e-5,
    n_steps_each: int = 100,
    denoise_last: bool = True,
) -> Iterator[Step]:
    """Annealed Langevin dynamics over the levels ``σ_i = sde.sigma(ts[i])``, ``i = 0..L−1``.

    ``n_steps_each`` Langevin steps at every level (``ts[0]`` included) with
    ``α_i = eps · σ_i²/σ_L²``; then, with ``denoise_last``, ``x ← x + std(t_L)² ∇log p_{t_L}(x)``
    (Tweedie's ``E[x_0 | x]`` for ``s = 1``). Yields the start, every Langevin step (with the time of
    its level) and the denoised state: ``L · n_steps_each + 1 (+1)`` steps in all.
    """
    if eps <= 0 or n_steps_each < 1:
        raise UsageError(f"annealed Langevin needs eps > 0 and n_steps_each >= 1, got {eps}, {n_steps_each}")
    ts = torch.as_tensor(ts, dtype=torch.float64)
    sigmas = sde.sigma(ts)
    sigma_L = float(sigmas[-1])
    if not sigma_L > 0:
        raise UsageError("annealed Langevin needs noise levels > 0; end the grid at σ_L > 0, e.g. ts = ncsnv2_sigmas(data)")
    k = 0
    yield Step(k, float(ts[0]), x)
    for t, sigma in zip(ts.tolist(), sigmas.tolist()):
        alpha = eps * sigma**2 / sigma_L**2
        t_b = as_time(t, x)
        for _ in range(n_steps_each):
            x = _langevin_step(score_fn, x, t_b, alpha, generator)
            k += 1
            yield Step(k, t, x)
    if denoise_last:
        t_L = float(ts[-1])
        std = float(sde.std(torch.tensor(t_L, dtype=torch.float64)))
        x = x + std**2 * score_fn(x, as_time(t_L, x))
        yield Step(k + 1, t_L, x)


# -- NCSNv2 rules --------------------------------------------------------------------------------
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


def ncsnv2_variance_ratio(eps: float | Tensor, ratio: float, sigma_min: float, n_steps_each: int) -> Tensor:
    """``Var[x_T]/σ_i²`` after ``T = n_steps_each`` Langevin steps at level ``i`` (NCSNv2, Prop. 3).

    For data at a single point, ``p_{σ_i} = N(0, σ_i² I)``; started from ``N(0, (γσ_i)² I)`` and run
    with ``α_i = ε σ_i²/σ_L²``, each step is ``x ← (1 − u) x + √(2 u) σ_i z`` with ``u = ε/σ_L²``, so

    .. math::  \\frac{\\mathrm{Var}[x_T]}{\\sigma_i^2} = (1-u)^{2T}\\gamma^2
               + \\big(1 - (1-u)^{2T}\\big)\\frac{2}{2-u},

    the same for every level. ``2/(2−u) > 1`` is the bias of the unadjusted chain.
    """
    u = torch.as_tensor(eps, dtype=torch.float64) / sigma_min**2
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


SAMPLERS.update({"langevin": langevin, "annealed_langevin": annealed_langevin})
