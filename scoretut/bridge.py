"""Schrödinger bridges between two data sets by simulation-free score and flow matching.

The Schrödinger bridge (SB) between ``p_0`` and ``p_1`` is the process closest in KL to a
Brownian motion ``σ W`` that starts in ``p_0`` and ends in ``p_1``. Its law on the endpoints is
the entropic optimal-transport plan ``π_{2σ²}`` (squared Euclidean cost, regularisation
``2σ²``), and given its endpoints it is a Brownian bridge (Léonard 2014). So, following
Tong et al. (2024, "Simulation-free Schrödinger bridges via score and flow matching", SB-CFM):

.. math::  (x_0, x_1) \\sim π_{2σ^2}, \\quad t \\sim U(0,1), \\quad
           x_t = (1-t)\\,x_0 + t\\,x_1 + σ\\sqrt{t(1-t)}\\,ε,

whose conditional velocity and score are

.. math::  u_t = x_1 - x_0 + \\frac{1-2t}{2t(1-t)}\\big(x_t - μ_t\\big), \\qquad
           \\nabla\\log p_t(x_t \\mid x_0, x_1) = -\\frac{x_t - μ_t}{σ^2 t(1-t)} = -\\frac{ε}{λ(t)},

with ``μ_t = (1−t)x_0 + t x_1`` and ``λ(t) = σ√(t(1−t))``. Regressing a velocity network on
``u_t`` and a noise network ``e_θ ≈ ε`` (the score loss ``λ² ‖s_θ − ∇log p‖²`` with
``s_θ = −e_θ/λ``) gives the marginal fields of the bridge. Its marginals then follow

* the ODE ``dx/dt = v_θ(x, t)`` in either direction, and
* the SDEs ``dx = [v_θ + ½σ² s_θ] dt + σ dW`` forward and ``dx = [−v_θ + ½σ² s_θ] dτ + σ dW``
  backward in ``τ = 1 − t``.

With ``σ → 0`` this is OT-CFM (Tong et al. 2024, "Improving and generalizing flow-based
generative models with minibatch optimal transport"), whose ODE map approaches the OT map.
The plan is computed with POT (``ot.sinkhorn``, or ``ot.emd`` for ``σ = 0``) on minibatches,
which is the minibatch approximation of both papers. Sinkhorn on every optimiser step is the
slow part on a CPU, so :func:`coupled_pairs` draws the coupled pairs once, from many
minibatch plans, and training draws minibatches of pairs from that set
(:func:`scoretut.train.train` with a ``(N, 2, dim)`` tensor of pairs).
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import ot
import torch
from torch import Tensor, nn

from scoretut.config import UsageError
from scoretut.losses import sample_times
from scoretut.nets import ScoreMLP
from scoretut.samplers import Step
from scoretut.sde import bcast

T_EPS = 1e-3
"""Training and integration use ``t ∈ [T_EPS, 1 − T_EPS]``: the conditional velocity and score
are singular at the two ends (``∝ 1/√(t(1−t))``)."""


# --------------------------------------------------------------------------- couplings


def _np(x: Tensor | np.ndarray) -> np.ndarray:
    return np.asarray(x.detach().cpu().double() if isinstance(x, Tensor) else x, dtype=np.float64)


def ot_plan(x0: Tensor, x1: Tensor, reg: float = 0.0, *, num_iter: int = 10_000, stop: float = 1e-6) -> Tensor:
    """The OT plan ``π`` ``(n, m)`` (float64, entries sum to 1) between the uniform empirical
    measures on ``x0`` ``(n, d)`` and ``x1`` ``(m, d)`` for the cost ``‖x0_i − x1_j‖²``.

    ``reg = 0``: the exact plan (``ot.emd``). ``reg > 0``: the entropic plan
    ``argmin ⟨π, C⟩ − reg·H(π)`` by Sinkhorn (``ot.sinkhorn``, stopping when the marginal error
    falls below ``stop``); for a Schrödinger bridge with noise ``σ``, ``reg = 2σ²``.
    """
    if reg < 0:
        raise UsageError(f"the entropic regularisation must be >= 0, got {reg}")
    a, b = _np(x0), _np(x1)
    cost = ot.dist(a, b)  # squared Euclidean
    wa, wb = np.full(len(a), 1.0 / len(a)), np.full(len(b), 1.0 / len(b))
    if reg == 0:
        plan = ot.emd(wa, wb, cost)
    else:
        plan = ot.sinkhorn(wa, wb, cost, reg, numItermax=num_iter, stopThr=stop)
    return torch.from_numpy(np.asarray(plan))


def couple(x0: Tensor, x1: Tensor, reg: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """Pair every row of ``x0`` with a row of ``x1`` drawn from the plan's conditional
    ``π(j | i) = π_ij / Σ_j π_ij``; returns pairs ``(n, 2, d)``.

    The first marginal is exactly ``x0``; the second is ``x1``'s in expectation (and exactly, as
    a permutation, for the exact plan between sets of equal size).
    """
    j = sample_pairs(ot_plan(x0, x1, reg), generator)
    return torch.stack([x0, x1[j.to(x1.device)]], dim=1)


def sample_pairs(plan: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """For each row ``i`` of ``plan`` ``(n, m)``, one column ``j ~ π(j | i) = π_ij / Σ_j π_ij``;
    returns the indices ``(n,)``. With uniform rows, ``(i, j)`` is then distributed as ``π``."""
    return torch.multinomial(plan / plan.sum(1, keepdim=True), 1, generator=generator).squeeze(1)


def coupled_pairs(data0: Tensor, data1: Tensor, n_pairs: int, *, batch_size: int = 256, reg: float = 0.0,
                  seed: int = 0) -> Tensor:  # fmt: skip
    """``n_pairs`` coupled pairs ``(n_pairs, 2, d)``: minibatches of ``batch_size`` points drawn
    with replacement from each data set are coupled by :func:`couple` (minibatch OT)."""
    if n_pairs < 1 or batch_size < 1:
        raise UsageError(f"need n_pairs >= 1 and batch_size >= 1, got {n_pairs} and {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(math.ceil(n_pairs / batch_size)):
        i = torch.randint(len(data0), (batch_size,), generator=gen)
        j = torch.randint(len(data1), (batch_size,), generator=gen)
        out.append(couple(data0[i], data1[j], reg, gen))
    return torch.cat(out)[:n_pairs]


def ot_cost(x0: Tensor, x1: Tensor) -> float:
    """Exact ``W₂²`` between the uniform empirical measures on ``x0`` and ``x1`` (``ot.emd2``,
    squared Euclidean cost)."""
    a, b = _np(x0), _np(x1)
    return float(ot.emd2(np.full(len(a), 1.0 / len(a)), np.full(len(b), 1.0 / len(b)), ot.dist(a, b)))


def transport_cost(x_start: Tensor, x_end: Tensor) -> float:
    """``E‖x_end − x_start‖²`` of a map or a coupling given as paired rows."""
    return float((x_end - x_start).double().pow(2).sum(1).mean())


# --------------------------------------------------------------------------- the bridge


class BrownianBridge:
    """The conditional path ``x_t = μ_t + λ(t) ε`` of a Brownian bridge of noise ``σ`` from
    ``x_0`` to ``x_1`` (module docstring), with its velocity and score."""

    def __init__(self, sigma: float):
        if sigma < 0:
            raise UsageError(f"the bridge noise sigma must be >= 0, got {sigma}")
        self.sigma = float(sigma)

    def std(self, t: Tensor) -> Tensor:
        """``λ(t) = σ√(t(1−t))``."""
        return self.sigma * torch.sqrt(t * (1 - t))

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """``x_t = (1−t) x_0 + t x_1 + λ(t) ε``."""
        t_ = bcast(t, x0)
        return (1 - t_) * x0 + t_ * x1 + bcast(self.std(t), x0) * eps

    def velocity(self, x: Tensor, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """``u_t = x_1 − x_0 + (1−2t)/(2t(1−t)) (x − μ_t)``."""
        t_ = bcast(t, x)
        return x1 - x0 + (1 - 2 * t_) / (2 * t_ * (1 - t_)) * (x - (1 - t_) * x0 - t_ * x1)

    def score(self, x: Tensor, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """``∇log p_t(x | x_0, x_1) = −(x − μ_t)/(σ² t(1−t))``."""
        t_ = bcast(t, x)
        return -(x - (1 - t_) * x0 - t_ * x1) / (self.sigma**2 * t_ * (1 - t_))


class BridgeModel(nn.Module):
    """Velocity ``v_θ(x, t)`` and, for ``σ > 0``, noise ``e_θ(x, t)`` networks of a bridge of
    noise ``sigma``; ``score(x, t) = −e_θ/λ(t)``. Both networks are called as ``net(x, t)``
    with ``t`` of shape ``(batch,)``."""

    def __init__(self, velocity_net: nn.Module, noise_net: nn.Module | None, sigma: float):
        super().__init__()
        if sigma > 0 and noise_net is None:
            raise UsageError("a bridge with sigma > 0 needs a noise network for its score")
        self.velocity_net, self.noise_net, self.sigma = velocity_net, noise_net, float(sigma)
        self.path = BrownianBridge(sigma)

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        return self.velocity_net(x, t)

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        if self.noise_net is None:
            raise UsageError("this bridge has sigma = 0 and no score; integrate it as an ODE")
        return -self.noise_net(x, t) / bcast(self.path.std(t), x)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.velocity(x, t)


def bridge_model(sigma: float, hidden: int = 128, depth: int = 3, emb_dim: int = 64) -> BridgeModel:
    """A :class:`BridgeModel` with two :class:`~scoretut.nets.ScoreMLP` networks (time
    embedded with ``cond_scale = 1000``, since ``t ∈ [0, 1]``); seed torch before calling."""
    make = lambda: ScoreMLP(dim=2, hidden=hidden, depth=depth, emb_dim=emb_dim, cond_scale=1000.0)  # noqa: E731
    return BridgeModel(make(), make() if sigma > 0 else None, sigma)


class BridgeLoss:
    """SB-CFM loss (Tong et al. 2024): ``loss_fn(model, pairs, generator)`` for
    :func:`scoretut.train.train`, with ``pairs`` ``(batch, 2, d)`` from :func:`coupled_pairs`.

    .. math::  \\mathcal L = \\mathbb E\\big[\\|v_θ(x_t, t) - u_t\\|^2 + \\|e_θ(x_t, t) - ε\\|^2\\big],
               \\quad t \\sim U(t_ε, 1 - t_ε)

    (the second term is ``λ(t)² ‖s_θ − ∇log p_t(x_t | x_0, x_1)‖²``; it is dropped for ``σ = 0``).
    ``time_sampling`` is ``"uniform"`` or ``"stratified"`` (:func:`scoretut.losses.sample_times`).
    """

    def __init__(self, t_eps: float = T_EPS, time_sampling: str = "uniform"):
        if not 0 < t_eps < 0.5:
            raise UsageError(f"t_eps must lie in (0, 0.5), got {t_eps}")
        if time_sampling not in ("uniform", "stratified"):
            raise UsageError(f"time_sampling must be 'uniform' or 'stratified', got {time_sampling!r}")
        self.t_eps, self.stratified = float(t_eps), time_sampling == "stratified"

    def __call__(self, model: BridgeModel, pairs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if pairs.ndim != 3 or pairs.shape[1] != 2:
            raise UsageError(f"the bridge trains on pairs of shape (batch, 2, dim), got {tuple(pairs.shape)}")
        x0, x1 = pairs[:, 0], pairs[:, 1]
        t = sample_times(len(x0), self.t_eps, 1 - self.t_eps, stratified=self.stratified,
                         generator=generator, device=x0.device, dtype=x0.dtype)  # fmt: skip
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        path = model.path
        x_t = path.sample(x0, x1, t, eps)
        loss = (model.velocity(x_t, t) - path.velocity(x_t, x0, x1, t)).pow(2).sum(1)
        if model.noise_net is not None:
            loss = loss + (model.noise_net(x_t, t) - eps).pow(2).sum(1)
        return loss.mean()


@torch.no_grad()
def integrate(model: BridgeModel, x: Tensor, *, reverse: bool = False, steps: int = 100, stochastic: bool = False,
              generator: torch.Generator | None = None, t_eps: float = T_EPS) -> Iterator[Step]:  # fmt: skip
    """Carry samples ``x`` of one end of the bridge to the other over ``t ∈ [t_ε, 1 − t_ε]``
    (forward from ``t_ε``, or ``reverse`` from ``1 − t_ε``) in ``steps`` uniform steps,
    yielding a :class:`~scoretut.samplers.Step` after each (the first is the start).

    ODE (``stochastic=False``): Heun's method on ``dx/dt = v_θ``. SDE: Euler–Maruyama with drift
    ``v_θ ± ½σ² s_θ`` (``+`` forward, ``−`` in reverse, where ``dt < 0``) and noise ``σ√|h| z``;
    the last step adds no noise.
    """
    if steps < 1:
        raise UsageError(f"the number of integration steps must be positive, got {steps}")
    if stochastic and model.noise_net is None:
        raise UsageError("a bridge with sigma = 0 has no SDE; integrate it with stochastic=False")
    ts = torch.linspace(t_eps, 1 - t_eps, steps + 1, dtype=torch.float64)
    if reverse:
        ts = ts.flip(0)
    tt = lambda t: torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)  # noqa: E731
    sign = -1.0 if reverse else 1.0
    yield Step(0, float(ts[0]), x)
    for i in range(steps):
        t, t_next = float(ts[i]), float(ts[i + 1])
        h = t_next - t
        if stochastic:
            drift = model.velocity(x, tt(t)) + sign * 0.5 * model.sigma**2 * model.score(x, tt(t))
            x = x + h * drift
            if i < steps - 1:
                z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = x + model.sigma * math.sqrt(abs(h)) * z
        else:
            d = model.velocity(x, tt(t))
            x_euler = x + h * d
            x = x + 0.5 * h * (d + model.velocity(x_euler, tt(t_next)))
        yield Step(i + 1, t_next, x)


def transport(model: BridgeModel, x: Tensor, **options) -> Tensor:
    """The end state of :func:`integrate` (same options)."""
    for step in integrate(model, x, **options):
        x = step.x
    return x
