"""Langevin dynamics and annealed Langevin dynamics (NCSN).

Unadjusted Langevin dynamics with step size ``α`` (Song & Ermon 2020, NCSNv2, Alg. 1):

.. math::  x \\leftarrow x + \\alpha\\,\\nabla_x \\log p(x) + \\sqrt{2\\alpha}\\, z, \\qquad z \\sim \\mathcal N(0, I),

which samples ``p`` as ``α → 0`` and the number of steps → ∞. (NCSN, Song & Ermon 2019, wrote the
same update with ``α/2`` and ``√α``; we use the NCSNv2 form, the same as
:func:`scoretut.sampling.langevin_correct`.)

Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1) runs ``n_steps_each`` such steps at each
of the noise levels ``σ_1 > σ_2 > … > σ_L``, with ``α_i = step_size · σ_i²/σ_L²``, then
(Jolicoeur-Martineau et al. 2021; not one of NCSNv2's five techniques) one denoising step
``x ← x + σ_L² s_θ(x, σ_L)`` — Tweedie's estimate of the clean point. Because of the factor 2
above, NCSN's ``ε = 2·10⁻⁵`` is ``step_size = 1e-5`` here; the default ``2e-5`` takes twice NCSN's
step. Technique 3 (``s_θ(x, σ) = f_θ(x, σ)/σ``) is ``ToyScoreModel(..., param="score")`` and
technique 5 (sample with an EMA of the weights) is the EMA of :func:`scoretut.train.train`.

Both are generators with the shared sampler signature ``fn(sde, score_fn, x, ts, *, generator,
**opts)``. For NCSN the natural SDE is :class:`scoretut.sde.EDMSDE` (``t = σ``, ``s = 1``), so
``ts`` *is* the list of noise levels and ``score_fn(x, σ)`` is the noise-conditional score; train
it with ``DSMLoss(EDMSDE(σ_L, σ_1), t_grid=sigmas)`` (weight ``λ = σ²``, Song & Ermon 2019, Eq. 6).

The NCSNv2 rules that choose the levels and the step size (Song & Ermon 2020, Sec. 4, techniques
1, 2 and 4) are in :mod:`scoretut.schedules` (:func:`~scoretut.schedules.ncsnv2_sigmas`,
:func:`~scoretut.schedules.ncsnv2_step_size`).
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import Tensor

from scoretut.errors import UsageError
from scoretut.sampling.core import Step, gaussian_noise
from scoretut.sde import SDE, ScoreFn, as_time


def _langevin_step(score_fn: ScoreFn, x: Tensor, t: Tensor, alpha: float, generator) -> Tensor:
    """``x + α ∇log p_t(x) + √(2α) z``."""
    z = gaussian_noise(x, generator)  # drawn before the score, as always (same random stream)
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
    step_size: float = 2e-5,
    n_steps_each: int = 100,
    denoise_last: bool = True,
) -> Iterator[Step]:
    """Annealed Langevin dynamics over the levels ``σ_i = sde.sigma(ts[i])``, ``i = 0..L−1``.

    ``n_steps_each`` Langevin steps at every level (``ts[0]`` included) with
    ``α_i = step_size · σ_i²/σ_L²``; then, with ``denoise_last``, ``x ← x + std(t_L)² ∇log p_{t_L}(x)``
    (Tweedie's ``E[x_0 | x]`` for ``s = 1``). Yields the start, every Langevin step (with the time of
    its level) and the denoised state: ``L · n_steps_each + 1 (+1)`` steps in all.
    """
    if step_size <= 0 or n_steps_each < 1:
        raise UsageError(f"annealed Langevin needs step_size > 0 and n_steps_each >= 1, got {step_size}, {n_steps_each}")
    ts = torch.as_tensor(ts, dtype=torch.float64)
    sigmas = sde.sigma(ts)
    sigma_L = float(sigmas[-1])
    if not sigma_L > 0:
        raise UsageError("annealed Langevin needs noise levels > 0; end the grid at σ_L > 0, e.g. ts = ncsnv2_sigmas(data)")
    k = 0
    yield Step(k, float(ts[0]), x)
    for t, sigma in zip(ts.tolist(), sigmas.tolist()):
        alpha = step_size * sigma**2 / sigma_L**2
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
