"""Stochastic samplers of the reverse SDE: Euler–Maruyama and predictor–corrector (Song et al. 2021).

Each has the shared signature ``sampler(sde, score_fn, x, ts, *, generator=None, **options)`` of
:mod:`scoretut.sampling` and yields a :class:`~scoretut.sampling.core.Step` after every update.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from scoretut.sampling.core import Step, gaussian_noise, reverse_em_step
from scoretut.sde import SDE, ScoreFn, as_time


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
        z = gaussian_noise(x, generator)
        grad_norm = grad.flatten(1).norm(dim=1).mean().clamp_min(1e-12)
        noise_norm = z.flatten(1).norm(dim=1).mean()
        step = 2 * alpha * (snr * noise_norm / grad_norm) ** 2
        x = x + step * grad + torch.sqrt(2 * step) * z
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
        x = reverse_em_step(rev, x, t, h, not (denoise_last and last), generator)
        yield Step(i + 1, float(ts[i + 1]), x)

