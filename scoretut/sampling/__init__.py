"""Samplers for the reverse process, all with one signature and all Python generators.

Every sampler is called as ::

    sampler(sde, score_fn, x, ts, *, generator=None, **options)

with ``score_fn`` a score function ``(x, t) -> ∇log p_t(x)`` or any model
:func:`~scoretut.parametrisation.prediction_of` accepts (a
:class:`~scoretut.parametrisation.Prediction` of an ε-, x₀-, v-network or a denoiser, whose own
output the DDPM/DDIM and EDM samplers then use), ``x`` the starting state at time ``ts[0]``
(usually ``sde.prior_sampling(shape)``) and
``ts`` a decreasing 1-D tensor of times from ``ts[0]`` (≈ ``T``) down to ``ts[-1]`` (≈
``sde.t_min``, or ``0`` for :class:`~scoretut.sde.EDMSDE`). Each sampler *yields* a
:class:`Step` after every update — the first yield is the starting state — so a chapter can
record a trajectory (or build widget frames) with a plain ``for`` loop, and :func:`sample` just
keeps the last state.

The shared pieces live in :mod:`~scoretut.sampling.core`, one module per family beside it
(``sde_solvers``, ``ode_solvers``, ``ancestral``, ``langevin``); :data:`SAMPLERS` names them all.
"""

from __future__ import annotations

from torch import Tensor

from scoretut.errors import UsageError
from scoretut.sampling.ancestral import ddim, ddpm
from scoretut.parametrisation import CountingScore, Prediction, prediction_of
from scoretut.sampling.core import (Generated, Sampler, Step, Velocity, euler_steps, gaussian_noise,
                                    heun_steps, pf_velocity, reverse_em_step, run_steps, timesteps)
from scoretut.sampling.langevin import annealed_langevin, langevin
from scoretut.sampling.ode_solvers import edm_sampler, ode_euler, ode_heun, ode_rk45
from scoretut.sampling.sde_solvers import corrector_alpha, euler_maruyama, langevin_correct, predictor_corrector
from scoretut.sde import SDE, ScoreFn

SAMPLERS: dict[str, Sampler] = {
    "em": euler_maruyama,
    "pc": predictor_corrector,
    "ode_euler": ode_euler,
    "ode_heun": ode_heun,
    "ode_rk45": ode_rk45,
    "edm": edm_sampler,
    "ddpm": ddpm,
    "ddim": ddim,
    "langevin": langevin,
    "annealed_langevin": annealed_langevin,
}


def get_sampler(name: str) -> Sampler:
    """Look a sampler up by name, with an error that lists the valid names."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise UsageError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}") from None


def sample(sampler: Sampler | str, sde: SDE, score_fn: ScoreFn, x: Tensor, ts: Tensor, **options) -> Tensor:
    """Run ``sampler`` to the end and return the final state (no trajectory is kept)."""
    sampler = get_sampler(sampler) if isinstance(sampler, str) else sampler
    return run_steps(sampler(sde, score_fn, x, ts, **options))[0]


def nfe_per_step(sampler: str, options: dict | None = None) -> int | None:
    """Score evaluations per step (``None`` for the adaptive ``ode_rk45``): 2 for Heun (``ode_heun``,
    ``edm``), ``1 + n_corrector`` for ``pc``, 1 for Euler-type steps (``em``, ``ode_euler``, ``ddpm``, ``ddim``)."""
    options = options or {}
    if sampler == "ode_rk45":
        return None
    if sampler == "pc":
        return 1 + int(options.get("n_corrector", 1))
    if sampler == "ode_heun" or (sampler == "edm" and options.get("solver", "heun") == "heun"):
        return 2
    if sampler in ("em", "ode_euler", "ddim", "ddpm", "edm"):
        return 1
    raise UsageError(f"no NFE count for sampler {sampler!r}; use a fixed-step sampler")


def steps_for_nfe(sampler: str, nfe: int, options: dict | None = None, *, saves_last: bool = False) -> int:
    """The most steps of ``sampler`` whose cost is at most ``nfe`` evaluations (0 if none fits).

    ``steps = ⌊(nfe + saves) / nfe_per_step⌋`` with ``saves = 1`` when ``saves_last`` and the sampler
    takes Heun steps: a Heun step that lands on ``σ = 0`` is an Euler step (one evaluation saved).
    """
    per = nfe_per_step(sampler, options)
    if per is None:
        raise UsageError(f"`nfe` does not apply to the adaptive sampler {sampler}; drop `nfe`")
    saves = int(saves_last and per == 2 and sampler in ("ode_heun", "edm"))
    return max(0, (nfe + saves) // per)

