"""How far sampling trajectories are from straight lines: two curvature measures.

A trajectory is a sequence of states ``x_0, …, x_K`` (shape ``(K+1, n, d)``: ``K+1`` times, ``n``
trajectories of dimension ``d``), e.g. the ``Step.x`` of an ODE sampler stacked with
``torch.stack``, at the times ``t_0, …, t_K`` of the sampler's clock.

* :func:`chord_deficit` measures the *shape* of the path and ignores the clock:

  .. math::  \\kappa_\\text{path} = 1 - \\frac{\\lVert x_K - x_0\\rVert}{\\sum_k \\lVert x_{k+1} - x_k\\rVert},

  zero for a straight segment (at any speed) and ``1 − sin(Θ/2)/(Θ/2)`` for a circular arc of
  angle ``Θ``.

* :func:`time_nonlinearity` measures how far the state is from a *linear function of the time
  variable*, which is what decides whether large Euler steps are accurate (an ODE solution that
  is linear in ``t`` is integrated exactly by Euler's method with any step; Karras et al. 2022,
  Sec. 3):

  .. math::  \\kappa_t = \\max_k \\frac{\\lVert x_k - \\ell(t_k)\\rVert}{\\lVert x_K - x_0\\rVert},
     \\qquad \\ell(t) = x_0 + \\frac{t - t_0}{t_K - t_0}\\,(x_K - x_0),

  the largest distance from the chord travelled at constant speed in ``t``, relative to the
  chord's length. It is unchanged by an affine change of the clock (units do not matter) but not
  by a nonlinear one: the same path has different ``κ_t`` under different schedules. A straight
  segment at constant speed gives 0, ``x = t²`` on ``[0, 1]`` gives ``1/4``, and a circular arc of
  angle ``Θ`` at constant angular speed gives the sagitta over the chord, ``tan(Θ/4)/2``, when the
  midpoint is on the grid.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scoretut.errors import UsageError

__all__ = ["chord_deficit", "time_nonlinearity"]


def _check(xs: Tensor) -> Tensor:
    xs = torch.as_tensor(xs)
    if xs.ndim != 3 or xs.shape[0] < 2:
        raise UsageError(f"trajectories must have shape (K+1, n, d) with K >= 1, got {tuple(xs.shape)}; "
                         "stack the sampler's states with torch.stack")  # fmt: skip
    return xs


def chord_deficit(xs: Tensor) -> Tensor:
    """``1 − |x_K − x_0| / (path length)`` per trajectory; ``(K+1, n, d) -> (n,)``."""
    xs = _check(xs)
    length = (xs[1:] - xs[:-1]).norm(dim=-1).sum(0)
    return 1 - (xs[-1] - xs[0]).norm(dim=-1) / length


def time_nonlinearity(ts: Tensor, xs: Tensor) -> Tensor:
    """``max_k |x_k − ℓ(t_k)| / |x_K − x_0|`` per trajectory, ``ℓ`` the chord linear in ``t``;
    ``ts`` of shape ``(K+1,)``, ``xs`` of shape ``(K+1, n, d)`` -> ``(n,)``."""
    xs = _check(xs)
    ts = torch.as_tensor(ts, dtype=xs.dtype, device=xs.device)
    if ts.shape != xs.shape[:1] or ts[-1] == ts[0]:
        raise UsageError(f"need one time per state ({xs.shape[0]}) and t_K != t_0, got {tuple(ts.shape)}")
    u = ((ts - ts[0]) / (ts[-1] - ts[0]))[:, None, None]  # (K+1, 1, 1), from 0 to 1
    chord = xs[-1] - xs[0]
    deviation = (xs - (xs[0] + u * chord)).norm(dim=-1).amax(0)
    return deviation / chord.norm(dim=-1)
