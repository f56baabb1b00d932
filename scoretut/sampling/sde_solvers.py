"""Stochastic samplers of the reverse SDE: Euler–Maruyama and predictor–corrector (Song et al. 2021).

Each has the shared signature ``sampler(sde, score_fn, x, ts, *, generator=None, **options)`` of
:mod:`scoretut.sampling` and yields a :class:`~scoretut.sampling.core.Step` after every update.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from scoretut.sampling.core import Step, reverse_em_step
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
    score_fn: ScoreFn, x: Tensor, t: Tensor, snr: float, n_steps: int, generator=None
) -> Tensor:
    """Langevin corrector with a target signal-to-noise ratio (Song et al. 2021, Alg. 5).

    ``ε = 2 (snr ‖z‖ / ‖∇log p‖)²`` with both norms averaged over the batch, then
    ``x ← x + ε ∇log p + √(2ε) z``. (A per-sample step size would explode at points where the
    score nearly vanishes, e.g. at a mode in low dimension.)
    """
    for _ in range(n_steps):
        grad = score_fn(x, t)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        grad_norm = grad.flatten(1).norm(dim=1).mean().clamp_min(1e-12)
        noise_norm = z.flatten(1).norm(dim=1).mean()
        eps = 2 * (snr * noise_norm / grad_norm) ** 2
        x = x + eps * grad + torch.sqrt(2 * eps) * z
    return x


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
    Langevin corrector steps at the current ``t``, then one reverse-SDE Euler–Maruyama step."""
    rev = sde.reverse(score_fn)
    yield Step(0, float(ts[0]), x)
    for i in range(len(ts) - 1):
        t, h = float(ts[i]), float(ts[i + 1] - ts[i])
        if n_corrector:
            x = langevin_correct(score_fn, x, as_time(t, x), snr, n_corrector, generator)
        last = i == len(ts) - 2
        x = reverse_em_step(rev, x, t, h, not (denoise_last and last), generator)
        yield Step(i + 1, float(ts[i + 1]), x)

